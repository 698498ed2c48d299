"""The command line and the configuration file."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from sfu import __version__
from sfu.config import ConfigError, load_sfu_config

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "signaling.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_version_and_help() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"telebridge {__version__}"
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("demo", "microbench"):
        assert command in result.stdout


def test_default_toml_documents_the_embedded_defaults() -> None:
    assert load_sfu_config(ROOT / "configs" / "default.toml") == load_sfu_config()
    text = (ROOT / "configs" / "default.toml").read_text()
    config = load_sfu_config()
    for field in dataclasses.fields(config):
        assert f"{field.name} =" in text or field.name == "router"
    for field in dataclasses.fields(config.router):
        assert f"{field.name} =" in text


def test_config_overrides_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[sfu]\npeer_timeout = 3\n[sfu.router]\nkeyframe_interval = 1\n")
    config = load_sfu_config(path)
    assert config.peer_timeout == 3.0 and config.router.keyframe_interval == 1.0
    bad_files = [
        "[sfu]\nnope = 1\n",
        '[sfu]\npeer_timeout = "x"\n',
        "[sfu\n",
        "[sfu]\nrouter = 1\n",
        # One announced address per bound one, and only on the shared port.
        '[sfu]\nannounced_addresses = ["192.0.2.7", "192.0.2.8"]\n',
        '[sfu]\nudp_mux = false\nannounced_addresses = ["192.0.2.7"]\n',
    ]
    for bad in bad_files:
        path.write_text(bad)
        with pytest.raises(ConfigError):
            load_sfu_config(path)
    result = run_cli("demo", "--config", str(path))
    assert result.returncode == 2 and "error" in result.stderr


def test_demo_forwards_to_decoding_subscribers() -> None:
    result = run_cli("demo", "--subscribers", "2", "--duration", "3", "--size", "320x240")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 2 subscribers decoded forwarded audio and video" in result.stdout
    assert "320x240" in result.stdout


def test_default_toml_documents_the_signaling_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from signaling.config import SignalingConfig, load_config

    monkeypatch.delenv("TELEBRIDGE_SECRET", raising=False)
    path = ROOT / "configs" / "default.toml"
    assert load_config(path) == load_config()
    text = path.read_text()
    for field in dataclasses.fields(SignalingConfig):
        assert f"{field.name} =" in text
    monkeypatch.setenv("TELEBRIDGE_SECRET", "from-the-environment")
    assert load_config(path).signaling.secret == "from-the-environment"
