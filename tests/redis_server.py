"""A real ``redis-server`` on loopback for the tests that need Redis.

Use the module-scoped fixture in a test file with::

    from redis_server import redis_url  # noqa: F401

and take ``redis_url`` (``redis://127.0.0.1:PORT/0``) as a fixture argument.
Each test module that imports it gets its own server, stopped when the module
is done. Tests sharing a server should isolate themselves (a distinct key
prefix per test, or FLUSHDB).

If ``redis-server`` is not on PATH the tests using it are skipped, except in
CI (environment variable ``CI=true``), where a missing Redis fails them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

#: How long a started server may take to answer PING.
START_TIMEOUT_S = 5.0
#: How long a server may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 5.0
#: Launch attempts (another process may grab the free port we picked).
LAUNCH_ATTEMPTS = 3


@dataclass(frozen=True)
class RedisServer:
    """A running test server."""

    url: str
    port: int
    pid: int


def in_ci() -> bool:
    """Whether the tests run in CI (``CI=true``, as GitHub Actions and most CIs set)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def require_redis_server() -> str:
    """The path of ``redis-server``; skip the test if absent, fail it in CI."""
    path = shutil.which("redis-server")
    if path is None:
        message = (
            "redis-server is not on PATH (Debian/Ubuntu: apt-get install redis-server); "
            "the Redis tests need a real server"
        )
        if in_ci():
            pytest.fail(f"{message}. CI=true: a missing Redis is a failure, not a skip.")
        pytest.skip(message)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ping(port: int, timeout: float = 0.25) -> bool:
    """Whether a Redis server on 127.0.0.1:``port`` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate ``process`` (SIGTERM: Redis shuts down without saving), kill if it hangs."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _launch(binary: str, directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server on a free port and wait for PING; RuntimeError if it never answers."""
    log_tail = ""
    for _ in range(LAUNCH_ATTEMPTS):
        port = free_port()
        log_path = directory / f"redis-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    "--bind", "127.0.0.1",
                    "--port", str(port),
                    "--save", "",
                    "--appendonly", "no",
                    "--daemonize", "no",
                    "--dir", str(directory),
                    "--loglevel", "warning",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while process.poll() is None and time.monotonic() < deadline:
                if ping(port):
                    return process, port
                time.sleep(0.02)
        except BaseException:
            _stop(process)
            raise
        _stop(process)
        log_tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(
        f"redis-server did not answer PING within {START_TIMEOUT_S} s "
        f"({LAUNCH_ATTEMPTS} attempts); last log:\n{log_tail}"
    )


@contextmanager
def running_redis_server(directory: Path, binary: str | None = None) -> Iterator[RedisServer]:
    """Run a throw-away ``redis-server`` (no persistence) with its files in ``directory``.

    The server is stopped, and waited for, when the block exits.
    """
    directory.mkdir(parents=True, exist_ok=True)
    process, port = _launch(binary or require_redis_server(), directory)
    try:
        yield RedisServer(url=f"redis://127.0.0.1:{port}/0", port=port, pid=process.pid)
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL (``redis://127.0.0.1:PORT/0``) of a real Redis server for this test module."""
    with running_redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.url
