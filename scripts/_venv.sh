# Shared by scripts/run and scripts/test: create .venv at the repository root
# when it is missing and install the project into it (editable), with the
# extras named in TELEBRIDGE_EXTRAS. Sourced, not executed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.telebridge-installed"
# Reinstall when pyproject.toml changed since the last install.
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] \
        || [ "$(cat "$STAMP")" != "${TELEBRIDGE_EXTRAS:-}" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    spec="$ROOT"
    [ -n "${TELEBRIDGE_EXTRAS:-}" ] && spec="$ROOT[${TELEBRIDGE_EXTRAS}]"
    "$VENV/bin/python" -m pip install -q -e "$spec"
    printf '%s' "${TELEBRIDGE_EXTRAS:-}" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
