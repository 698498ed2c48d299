"""End to end on loopback: a real aiortc publisher, the SFU, real decoding subscribers."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from bench.clients import Subscriber, publish
from bench.synthetic import PatternVideoTrack, ToneAudioTrack
from sfu.server import Sfu
from sfu.transport import ForwardingReceiver, ForwardingSender

WIDTH, HEIGHT = 320, 240


async def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())


def decoder_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.endswith("-decoder"))


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264"])
async def test_five_subscribers_decode_forwarded_audio_and_video(sfu: Sfu, codec: str) -> None:
    pub, producers = await publish(
        sfu, "pub", [PatternVideoTrack(WIDTH, HEIGHT), ToneAudioTrack()], video_codec=codec
    )
    assert [p.kind for p in producers] == ["video", "audio"]
    assert producers[0].codec.lower() == codec.lower()
    subs = [Subscriber(sfu, f"sub{i}") for i in range(5)]
    try:
        await asyncio.gather(*(s.connect([p.id for p in producers]) for s in subs))
        ok = await wait_for(
            lambda: all(s.track("video").frames >= 30 and s.track("audio").frames >= 50
                        for s in subs),
            timeout=20,
        )
        assert ok, [(s.track("video").frames, s.track("audio").frames) for s in subs]
        for s in subs:
            video = s.track("video")
            assert (video.width, video.height) == (WIDTH, HEIGHT)
        # The SFU runs no encoder or decoder: its own senders/receivers are the
        # forwarding ones, and the only decoder threads are the subscribers'.
        for peer in sfu.peers.values():
            for transceiver in peer.pc.getTransceivers():
                assert isinstance(transceiver.sender, ForwardingSender)
                assert isinstance(transceiver.receiver, ForwardingReceiver)
                assert transceiver.receiver._RTCRtpReceiver__decoder_thread is None
                assert transceiver.sender._RTCRtpSender__encoder is None
        assert decoder_threads() == 2 * len(subs)
        stats = sfu.stats()
        assert stats["subscribers"] == 5 and stats["publishers"] == 1
        for consumer in stats["consumers"]:
            assert consumer["packets"] > 0
    finally:
        for s in subs:
            await s.close()
        await pub.close()
