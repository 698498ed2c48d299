"""``telebridge demo``: the media plane end to end on loopback, in one process.

A synthetic publisher (moving test pattern + tone) sends VP8 or H.264 and
Opus into the SFU; several aiortc subscribers decode what the SFU forwards.
Every couple of seconds it prints what each subscriber decoded and the SFU's
counters; it exits non-zero if any subscriber decoded nothing.
"""

from __future__ import annotations

import asyncio
import time

from bench.clients import Subscriber, publish
from bench.synthetic import PatternVideoTrack, ToneAudioTrack
from sfu.server import Sfu, SfuConfig


async def run_demo(
    config: SfuConfig, subscribers: int, duration: float, codec: str, width: int, height: int
) -> int:
    async with Sfu(config) as sfu:
        publisher, producers = await publish(
            sfu,
            "presenter",
            [PatternVideoTrack(width, height), ToneAudioTrack()],
            video_codec=f"video/{codec.upper()}",
        )
        print(f"publisher: {', '.join(f'{p.id} ({p.codec})' for p in producers)}")
        subs = [Subscriber(sfu, f"viewer{i + 1}") for i in range(subscribers)]
        await asyncio.gather(*(s.connect([p.id for p in producers]) for s in subs))
        started = time.monotonic()
        try:
            while time.monotonic() - started < duration:
                await asyncio.sleep(min(2.0, duration))
                _print_status(sfu, subs, time.monotonic() - started)
        finally:
            for s in subs:
                await s.close()
            await publisher.close()
        failed = [s.id for s in subs if not s.track("video").frames or not s.track("audio").frames]
        if failed:
            print(f"FAILED: no media decoded by {', '.join(failed)}")
            return 1
        print(f"OK: {len(subs)} subscribers decoded forwarded audio and video")
        return 0


def _print_status(sfu: Sfu, subs: list[Subscriber], elapsed: float) -> None:
    stats = sfu.stats()
    packets_in = sum(p["packets"] for p in stats["producers"])
    packets_out = sum(c["packets"] for c in stats["consumers"])
    print(
        f"[{elapsed:5.1f} s] SFU: {packets_in} packets in, {packets_out} out, "
        f"{stats['keyframe_requests_sent']} keyframe requests, "
        f"{stats['send_dropped']} send drops"
    )
    for s in subs:
        video, audio = s.track("video"), s.track("audio")
        first = (
            f"{(video.first_frame_at - s.started_at) * 1000:.0f} ms"
            if video.first_frame_at is not None
            else "-"
        )
        print(
            f"    {s.id}: video {video.frames} frames {video.width}x{video.height} "
            f"(first after {first}), audio {audio.frames} frames"
        )
