"""Configuration: embedded defaults, optionally overridden by a TOML file.

``configs/default.toml`` documents every key; it is the dataclass defaults
written out (a test keeps the two equal).
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from sfu.router import RouterConfig
from sfu.server import SfuConfig


class ConfigError(ValueError):
    """A configuration file that cannot be used (unknown key, wrong type)."""


def apply_table(target: Any, values: dict[str, Any], where: str) -> None:
    """Set a dataclass's fields from a TOML table, recursing into nested dataclasses."""
    fields = {f.name: f for f in dataclasses.fields(target)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown setting {where}.{key}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key} must be a table")
            apply_table(current, value, f"{where}.{key}")
            continue
        if (
            isinstance(current, bool) != isinstance(value, bool)
            or (isinstance(current, int | float) and not isinstance(value, int | float))
            or (isinstance(current, list | str) and not isinstance(value, type(current)))
        ):
            raise ConfigError(f"{where}.{key} has the wrong type")
        setattr(target, key, float(value) if isinstance(current, float) else value)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict, or :class:`ConfigError`."""
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def load_sfu_config(path: str | Path | None = None) -> SfuConfig:
    """The ``[sfu]`` settings: defaults, overridden by ``path`` when given."""
    config = SfuConfig(router=RouterConfig())
    if path is None:
        return config
    data = read_toml(path)
    sfu_table = data.get("sfu", {})
    if not isinstance(sfu_table, dict):
        raise ConfigError("[sfu] must be a table")
    apply_table(config, sfu_table, "sfu")
    announced = config.announced_addresses
    if announced and (len(announced) != len(config.candidate_addresses) or not config.udp_mux):
        raise ConfigError(
            "sfu.announced_addresses needs udp_mux and one entry per candidate_addresses entry"
        )
    return config
