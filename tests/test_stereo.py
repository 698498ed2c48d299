"""Stereo (3D) feeds: the layout is metadata that reaches every viewer and the recording."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from signaling_client import Client, ProtocolFailure, running_server, token

from bench.feed import EncodedLoopTrack, encode_loop
from bench.synthetic import StereoPattern, ToneAudioTrack
from recorder.manifest import read_manifest
from signaling.config import Config


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


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
