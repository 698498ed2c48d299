"""The bench presenter's pacer: video spread at its rate, stamped when sent, the rest at once."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from signaling_client import Client, running_server, token, wait_until

from bench.pacer import BURST_S, Pacer
from bench.presenter import run_presenter
from bench.subscriber import abs_send_time
from sfu.rtp import FIXED_HEADER, build_extension_block, parse
from signaling.config import Config

VIDEO, AUDIO = 0x1111_1111, 0x3333_3333
MID_ID, ABS_ID = 1, 3
WALL_ORIGIN = 1_800_000_000.0


def rtp(ssrc: int, seq: int, size: int = 1200, with_abs: bool = True) -> bytes:
    elements = [(MID_ID, b"0")] + ([(ABS_ID, b"\x00\x00\x00")] if with_abs else [])
    head = FIXED_HEADER.pack(0x90, 96, seq, 1000, ssrc) + build_extension_block(elements)
    return head + bytes(size - len(head))


class FakeTime:
    """A clock that moves only when the pacer sleeps; sends are recorded at its time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sent: list[tuple[float, bytes]] = []

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL_ORIGIN + self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds

    async def send(self, data: bytes) -> None:
        self.sent.append((self.now, data))


def pacer_for(fake: FakeTime, rate_bps: float) -> Pacer:
    return Pacer(fake.send, rate_bps, [VIDEO], ABS_ID, fake.clock, fake.sleep, fake.wall)


def test_a_keyframe_burst_leaves_at_the_pacing_rate_and_is_stamped_when_sent() -> None:
    fake = FakeTime()
    pacer = pacer_for(fake, 6_250_000)  # 2.5 x 2.5 Mbit/s
    burst = [rtp(VIDEO, seq) for seq in range(50)]

    async def send_all() -> None:
        for packet in burst:  # as aiortc's sender does: one await per packet
            await pacer.send(packet)

    asyncio.run(send_all())
    assert len(fake.sent) == 50
    bytes_per_s = 6_250_000 / 8
    # The last packet's slot comes after the 49 before it at the rate (58,800
    # bytes: 75 ms); a packet at most one burst from its slot goes at once.
    last_slot = 49 * 1200 / bytes_per_s
    assert last_slot - BURST_S <= fake.sent[-1][0] <= last_slot
    sent_bytes = 0
    for at, data in fake.sent:
        # Never ahead of the bucket by more than one burst's worth.
        assert sent_bytes <= (at + BURST_S) * bytes_per_s
        sent_bytes += len(data)
        header = parse(data)
        pos, length = header.extensions[ABS_ID]
        assert length == 3
        assert int.from_bytes(data[pos : pos + 3], "big") == abs_send_time(WALL_ORIGIN + at)
        assert header.extensions[MID_ID] and data[pos + 3 :] == bytes(len(data) - pos - 3)
    assert [parse(d).sequence_number for _, d in fake.sent] == list(range(50))
    # It sleeps once per burst of packets due within 5 ms: ~12 times over 75 ms.
    assert pacer.packets == 50 and 10 <= pacer.delayed <= 15
    assert abs(pacer.longest_backlog_s - last_slot) < 1e-9


def test_audio_and_rtcp_are_not_delayed_by_a_video_backlog() -> None:
    fake = FakeTime()
    pacer = pacer_for(fake, 1_000_000)
    receiver_report = bytes([0x80, 201, 0, 1]) + VIDEO.to_bytes(4, "big")
    audio = rtp(AUDIO, 7, size=200)

    async def scenario() -> None:
        for seq in range(20):  # 0.19 s of video at 1 Mbit/s, with audio and RTCP among it
            await pacer.send(rtp(VIDEO, seq))
            if seq == 5:
                await pacer.send(audio)
                await pacer.send(receiver_report)

    asyncio.run(scenario())
    audio_at = next(at for at, data in fake.sent if data == audio)
    rtcp_at = next(at for at, data in fake.sent if data == receiver_report)
    sixth_video_at = fake.sent[5][0]
    assert audio_at == rtcp_at == sixth_video_at  # right after the video before them, no slot
    # Audio and RTCP go out untouched and take no video budget: the video's
    # slots are those of 20 packets back to back.
    last_slot = 19 * 1200 / (1_000_000 / 8)
    assert last_slot - BURST_S <= fake.sent[-1][0] <= last_slot
    assert pacer.packets == 20


def test_a_packet_without_abs_send_time_is_paced_and_left_as_it_was() -> None:
    fake = FakeTime()
    pacer = pacer_for(fake, 1_000_000)
    packets = [rtp(VIDEO, seq, with_abs=False) for seq in range(3)]

    async def send_all() -> None:
        for packet in packets:
            await pacer.send(packet)

    asyncio.run(send_all())
    assert [data for _, data in fake.sent] == packets
    assert 2 * 1200 / (1_000_000 / 8) - BURST_S <= fake.sent[2][0] <= 2 * 1200 / (1_000_000 / 8)
    assert fake.sent[2][0] > 0  # 19.2 ms after the first: it waited


async def test_the_demo_presenter_publishes_paced_video_that_a_viewer_decodes(
    http: aiohttp.ClientSession,
) -> None:
    """``./scripts/run``'s synthetic presenter, paced, watched by a real aiortc viewer."""
    async with running_server(Config()) as (base, srv):
        presenter = asyncio.ensure_future(
            run_presenter(base, token("demo", "presenter", "Synthetic"), width=320, height=240)
        )
        viewer = Client(base, http)
        try:
            assert await wait_until(lambda: bool(srv.sfu.router.producers), 15)
            await viewer.join(token("demo", "viewer", "Clinic"))
            assert await wait_until(lambda: viewer.main("video").frames > 10, 15)
            assert (viewer.main("video").width, viewer.main("video").height) == (320, 240)
            video = next(p for p in srv.sfu.router.producers.values() if p.kind == "video")
            assert video.stats.packets > 10 and video.stats.keyframes >= 1
        finally:
            presenter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await presenter
            await viewer.close()
