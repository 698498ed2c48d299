"""Stereo (3D) feeds: the layout is metadata that reaches every viewer and the recording."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from browser import ARTIFACTS, chromium, wait_js
from playwright.async_api import Page
from signaling_client import Client, ProtocolFailure, room_link, running_server, token

from bench.feed import EncodedLoopTrack, encode_loop
from bench.synthetic import StereoPattern, ToneAudioTrack
from recorder.manifest import read_manifest
from signaling.config import Config


def test_the_stereo_card_has_one_marker_per_eye_and_a_known_disparity() -> None:
    card = StereoPattern(640, 360, disparity=12)
    image = card.draw(5)
    assert image.shape == (360, 640, 3)
    left, right = image[:, :320], image[:, 320:]
    x0, y0, x1, y1 = card._marker_box()
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    assert tuple(left[cy, cx]) == StereoPattern.LEFT_BGR
    assert tuple(right[cy, cx]) == StereoPattern.RIGHT_BGR
    # Away from the markers, the right eye is the left eye's scene shifted by the disparity.
    band = slice(0, y0 - 10)
    assert np.array_equal(left[band, 12:200], right[band, 0:188])
    assert not np.array_equal(left[band, 0:188], right[band, 0:188])


def test_the_stereo_card_encodes_at_the_surgical_bitrate() -> None:
    card = StereoPattern(1920, 1080)
    frames = encode_loop("vp8", 1920, 1080, 30, 6_000_000, 30, card.draw)
    bits = 8 * sum(len(f) for f in frames)
    assert 4_000_000 <= bits <= 8_000_000  # one second at 30 fps: 4-8 Mbit/s


async def test_layout_reaches_viewers_late_joiners_and_the_recording(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = Config()
    config.recorder.directory = str(tmp_path)
    config.recorder.auto_record = ["theatre"]
    async with running_server(config) as (base, _server):
        presenter, viewer, late = (Client(base, http) for _ in range(3))
        try:
            await presenter.join(token("theatre", "presenter", "Tower"), receive=False)
            await viewer.join(token("theatre", "viewer", "Clinic"))
            with pytest.raises(ProtocolFailure) as bad:
                await presenter.publish([ToneAudioTrack()], stereo="3d")
            assert bad.value.code == "invalid-message"
            card = StereoPattern(320, 180)
            loop = EncodedLoopTrack(encode_loop("vp8", 320, 180, 30, 500_000, 30, card.draw), 30)
            await presenter.publish([loop, ToneAudioTrack()], stereo="sbs")
            update = await viewer.expect("participant-updated")
            while not update["participant"]["publishing"]:
                update = await viewer.expect("participant-updated")
            assert update["participant"]["stereo"] == "sbs"
            await asyncio.sleep(1.5)

            await presenter.request({"type": "set-stereo", "stereo": "tb"})
            changed = await viewer.expect("participant-updated")
            assert changed["participant"]["stereo"] == "tb"
            joined = await late.join(token("theatre", "viewer", "Island"))
            tower = next(p for p in joined["participants"] if p["name"] == "Tower")
            assert tower["stereo"] == "tb"
            with pytest.raises(ProtocolFailure) as refused:
                await late.request({"type": "set-stereo", "stereo": "sbs"})
            assert refused.value.code == "forbidden"
            await asyncio.sleep(1.0)
            await presenter.request({"type": "set-stereo", "stereo": "sbs"})
            await asyncio.sleep(0.5)
        finally:
            for client in (presenter, viewer, late):
                await client.close()
    [directory] = [d for d in tmp_path.iterdir() if d.is_dir()]
    manifest = read_manifest(directory)
    assert manifest is not None and manifest["status"] == "complete"
    assert manifest["stereo"] == "sbs"
    assert [c["stereo"] for c in manifest["stereo_changes"]] == ["sbs", "tb", "sbs"]
    assert {f["stereo"] for f in manifest["files"]} == {"sbs"}


LAYOUT_JS = "() => window.telebridge.stereo.layout"
#: The centre of the eye markers, as fractions of one eye.
MARK_X = (StereoPattern.marker[0] + StereoPattern.marker[2]) / 2
MARK_Y = (StereoPattern.marker[1] + StereoPattern.marker[3]) / 2
MARKER_JS = f"() => window.telebridge.stereo.pixel({MARK_X}, {MARK_Y})"


def red(p: list[int]) -> bool:
    return p[0] > 160 and p[1] < 90 and p[2] < 90


def green(p: list[int]) -> bool:
    return p[0] < 90 and p[1] > 160 and p[2] < 90


def yellow(p: list[int]) -> bool:  # red from the left eye, green (and no blue) from the right
    return p[0] > 160 and p[1] > 160 and p[2] < 90


async def test_chromium_viewers_see_2d_anaglyph_and_side_by_side(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    recordings = tmp_path / "recordings"
    config = Config()
    config.recorder.directory = str(recordings)
    config.recorder.auto_record = ["3d"]
    card = StereoPattern(960, 540, disparity=16)
    frames = encode_loop("vp8", 960, 540, 30, 1_500_000, 60, card.draw)
    async with running_server(config) as (base, _server):
        presenter = Client(base, http)
        try:
            await presenter.join(token("3d", "presenter", "3D tower"), receive=False)
            loop = EncodedLoopTrack(frames, 30)
            await presenter.publish([loop, ToneAudioTrack()], stereo="sbs")
            assert presenter.publisher is not None
            loop.attach(presenter.publisher)

            def link(view: str, name: str) -> str:
                return room_link(base, "3d", "viewer", name, view=view)

            async with chromium(tmp_path / "chromium") as browser:
                pages: dict[str, Page] = {}
                for view in ("2d", "anaglyph", "sbs"):
                    pages[view] = await browser.new_page()
                    await pages[view].goto(link(view, f"AV room {view}"))
                for page in pages.values():
                    await wait_js(page, LAYOUT_JS, lambda v: v == "sbs")

                # 2D: only the left eye, at the frame's 16:9 aspect ratio.
                two_d = pages["2d"]
                await wait_js(two_d, "() => window.telebridge.stereo.frames", lambda n: n > 10)
                await wait_js(two_d, MARKER_JS, red)
                size = await two_d.evaluate(
                    "() => { const c = document.getElementById('main-stereo');"
                    " const r = c.getBoundingClientRect();"
                    " return [c.width, c.height, r.width / r.height, c.hidden]; }"
                )
                assert size[:2] == [480, 540] and abs(size[2] - 16 / 9) < 0.02 and not size[3]
                assert await two_d.is_visible("#view-label")

                # Anaglyph: red from the left eye's red marker, green from the right's green one.
                anaglyph = pages["anaglyph"]
                await wait_js(anaglyph, MARKER_JS, yellow)
                drawn = await anaglyph.evaluate("() => window.telebridge.stereo.frames")
                await asyncio.sleep(1.0)
                rate = await anaglyph.evaluate("() => window.telebridge.stereo.frames") - drawn
                assert rate >= 15, rate  # keeps up with the 30 fps feed (give or take a busy box)

                # Side by side: the video itself, both halves untouched.
                sbs = pages["sbs"]
                assert await sbs.evaluate("() => document.getElementById('main-stereo').hidden")
                left = f"() => window.telebridge.stereo.pixel({MARK_X / 2}, {MARK_Y})"
                right = f"() => window.telebridge.stereo.pixel({0.5 + MARK_X / 2}, {MARK_Y})"
                await wait_js(sbs, left, red)
                await wait_js(sbs, right, green)

                ARTIFACTS.mkdir(exist_ok=True)
                for view, page in pages.items():
                    await page.screenshot(path=str(ARTIFACTS / f"stereo-{view}.png"))

                # The presenter changes layout mid-session: every viewer follows,
                # and a late joiner starts with the new one.
                await presenter.request({"type": "set-stereo", "stereo": "tb"})
                for page in pages.values():
                    await wait_js(page, LAYOUT_JS, lambda v: v == "tb")
                late = await browser.new_page()
                await late.goto(link("2d", "Late clinic"))
                await wait_js(late, LAYOUT_JS, lambda v: v == "tb")
                await presenter.request({"type": "set-stereo", "stereo": "sbs"})
                await wait_js(late, LAYOUT_JS, lambda v: v == "sbs")
                await asyncio.sleep(1.0)
        finally:
            await presenter.close()

    # The recording says sbs and plays back in each mode in the archive.
    [directory] = [d for d in recordings.iterdir() if d.is_dir()]
    manifest = read_manifest(directory)
    assert manifest is not None and manifest["stereo"] == "sbs"
    async with (
        running_server(config) as (base, _server),
        chromium(tmp_path / "archive") as browser,
    ):
        page = await browser.new_page()
        await page.goto(f"{base}/archive?token={token('3d', 'viewer', 'Resident')}")
        await page.click(f'.card[data-id="{manifest["id"]}"]', timeout=15000)
        selected = f"() => window.archive.manifest?.id === '{manifest['id']}'"
        await wait_js(page, selected)
        assert await page.is_visible("#view-label")
        await page.evaluate("() => window.archive.video.play()")
        await wait_js(page, "() => window.archive.video.currentTime", lambda t: t > 0.5)
        probe = f"() => window.archive.view.pixel({MARK_X}, {MARK_Y})"
        await page.select_option("#view", "2d")
        await wait_js(page, probe, lambda p: p is not None and red(p))
        await page.select_option("#view", "anaglyph")
        await wait_js(page, probe, lambda p: p is not None and yellow(p))
        await page.select_option("#view", "sbs")
        assert await page.evaluate("() => document.getElementById('anaglyph').hidden")
        both = f"() => window.archive.view.pixel({0.5 + MARK_X / 2}, {MARK_Y})"
        await wait_js(page, both, lambda p: p is not None and green(p))
