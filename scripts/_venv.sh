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
# Install when never done, when pyproject.toml changed since, or when extras
# are asked for that the last install did not include (the stamp holds them).
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] \
        || { [ -n "${TELEBRIDGE_EXTRAS:-}" ] && [ "$(cat "$STAMP")" != "$TELEBRIDGE_EXTRAS" ]; }; then
    spec="$ROOT"
    [ -n "${TELEBRIDGE_EXTRAS:-}" ] && spec="$ROOT[${TELEBRIDGE_EXTRAS}]"
    echo "Installing Telebridge into $VENV (log: $VENV/install.log)" >&2
    if ! { "$VENV/bin/python" -m pip install --upgrade pip \
            && "$VENV/bin/python" -m pip install -e "$spec"; } > "$VENV/install.log" 2>&1; then
        tail -n 40 "$VENV/install.log" >&2
        echo "scripts: installing into $VENV failed" >&2
        exit 1
    fi
    printf '%s' "${TELEBRIDGE_EXTRAS:-}" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
