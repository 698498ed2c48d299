"""Real Chromium for tests: Debian's /usr/bin/chromium driven by Playwright.

Never ``playwright install``: the machines have no access to its downloads,
and Debian's build is what AV-room PCs run. Without Chromium the browser
tests skip on a developer machine and fail in CI (``CI=true``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import BrowserContext, Page, async_playwright

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # AV-room kiosks launch Chromium like this so the feed plays with sound unattended.
    "--autoplay-policy=no-user-gesture-required",
    # Keep WebRTC on loopback: the tests only use 127.0.0.1.
    "--force-webrtc-ip-handling-policy=default_public_interface_only",
]

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def chromium_path() -> str:
    """Debian's Chromium, or skip (fail in CI)."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        message = "Debian's chromium is not installed (scripts/test installs it as root)"
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@asynccontextmanager
async def chromium(
    user_data_dir: Path, extra_flags: Sequence[str] = ()
) -> AsyncIterator[BrowserContext]:
    """One Chromium process (a persistent context) with fake camera and microphone."""
    executable = chromium_path()
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=executable,
            headless=True,
            args=[*CHROMIUM_FLAGS, *extra_flags],
            viewport={"width": 1280, "height": 720},
        )
        try:
            yield context
        finally:
            await context.close()


def write_y4m(
    path: Path, width: int, height: int, rgb: tuple[int, int, int], frames: int = 4
) -> Path:
    """A solid-colour YUV4MPEG2 clip, for ``--use-file-for-fake-video-capture``."""
    r, g, b = rgb
    y = int(0.257 * r + 0.504 * g + 0.098 * b + 16)
    u = int(-0.148 * r - 0.291 * g + 0.439 * b + 128)
    v = int(0.439 * r - 0.368 * g - 0.071 * b + 128)
    plane = width * height
    frame = b"FRAME\n" + bytes([y]) * plane + bytes([u]) * (plane // 4) + bytes([v]) * (plane // 4)
    header = f"YUV4MPEG2 W{width} H{height} F20:1 Ip A1:1 C420jpeg\n".encode()
    path.write_bytes(header + frame * frames)
    return path


async def wait_js(
    page: Page, script: str, predicate: Callable[[Any], Any] = bool, timeout: float = 20.0
) -> Any:
    """Evaluate ``script`` in ``page`` until ``predicate`` holds for its value (bounded)."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await page.evaluate(script)
        if predicate(value):
            return value
        await asyncio.sleep(0.25)
    raise AssertionError(f"{script.strip()[:70]}... stayed {value!r}")
