"""What one received packet costs a bench subscriber (``python -m bench.clientbench``).

``telebridge bench`` must cost less per packet than the server it measures,
or a one-box run measures itself. This drives a :class:`LeanSubscriber`
without any network: a deterministic synthetic feed (VP8 video with MID and
abs-send-time header extensions, 30 frames per second, a keyframe first;
Opus audio every 20 ms) arrives as plaintext datagrams with a 10-byte
stand-in for the SRTP authentication tag, in the drain's batches 8 ms
apart, with loss, reordering, RTX repairs and spurious (duplicate)
retransmissions. It times two ways through the same code:

* ``general``: every datagram through :meth:`LeanSubscriber.receive_rtp`,
  the path that handles any packet (parse, RTX, duplicates, gaps);
* ``on_datagram``: what the drain calls, whose fast path takes in-order
  packets of a known stream and hands the rest to the general path.

Both must end with the same counters (``tests/test_bench.py`` checks it).
With ``--drain`` it also times reading 100 loopback UDP sockets holding 1,
2, 3 or 8 datagrams each: the drain's polling rounds against a ``recv``
loop per ready socket. Repetitions are interleaved and the report gives
medians and their ratio: on a shared machine absolute times drift, ratios
much less.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import selectors
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpDecodingParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpReceiveParameters,
    RTCRtpRtxParameters,
)

from bench.subscriber import Drain, LeanSubscriber, abs_send_time
from sfu.rtp import (
    FIXED_HEADER,
    URI_ABS_SEND_TIME,
    URI_AUDIO_LEVEL,
    URI_MID,
    build_extension_block,
    wrap_rtx,
)

VIDEO_SSRC = 0x1111_1111
RTX_SSRC = 0x2222_2222
AUDIO_SSRC = 0x3333_3333
VIDEO_PT, RTX_PT, AUDIO_PT = 96, 97, 111
MID_ID, ABS_SEND_TIME_ID, AUDIO_LEVEL_ID = 1, 3, 10
#: Stand-in for the SRTP authentication tag (RFC 3711 §3.1), which the
#: subscriber's fast path never reads.
SRTP_TAG = b"\xaa" * 10
BATCH_S = 0.008
#: First sequence numbers near the wrap, so that the run crosses it.
VIDEO_SEQ0, AUDIO_SEQ0 = 65_000, 65_400


@dataclass(frozen=True)
class Datagram:
    """One datagram as the drain hands it over: the bytes and its batch's clock."""

    data: bytes
    now: float
    now24: int


def synthetic_feed(
    seconds: float = 4.0,
    loss: float = 0.02,
    reorder: float = 0.01,
    duplicate: float = 0.003,
    video_packets_per_frame: int = 8,
    seed: int = 1,
) -> list[Datagram]:
    """A deterministic feed of ``seconds`` of video and audio as one subscriber receives it.

    Video packets are lost with probability ``loss`` and repaired by RTX
    40-70 ms later (a few repairs are lost too); audio is lost without
    repair. ``reorder`` swaps a packet with the next one; ``duplicate``
    resends, on RTX, a packet that did arrive.
    """
    rng = random.Random(seed)
    start = 1_800_000_000.0
    sends: list[tuple[float, bytes]] = []  # (arrival time, packet without tag)
    video_ext = build_extension_block([(MID_ID, b"0"), (ABS_SEND_TIME_ID, b"\x00\x00\x00")])
    audio_ext = build_extension_block([(MID_ID, b"1"), (AUDIO_LEVEL_ID, b"\x1e")])
    seq = VIDEO_SEQ0
    for frame in range(int(seconds * 30)):
        sent = start + frame / 30
        timestamp = (1000 + frame * 3000) & 0xFFFFFFFF
        delay = rng.uniform(0.001, 0.004)  # the network's, per frame: packets stay in order
        for index in range(video_packets_per_frame):
            at = sent + index * 0.0002
            ext = bytearray(video_ext)
            ext[7:10] = abs_send_time(at).to_bytes(3, "big")  # after BEDE, len, MID
            descriptor = bytes([0x10 if index == 0 else 0x00, 0x00 if frame == 0 else 0x01])
            b1 = VIDEO_PT | (0x80 if index == video_packets_per_frame - 1 else 0)
            header = FIXED_HEADER.pack(0x90, b1, seq & 0xFFFF, timestamp, VIDEO_SSRC)
            sends.append((at + delay, header + ext + descriptor + bytes(1100)))
            seq += 1
    for index in range(int(seconds * 50)):
        at = start + index / 50
        header = FIXED_HEADER.pack(
            0x90, AUDIO_PT, (AUDIO_SEQ0 + index) & 0xFFFF, index * 960, AUDIO_SSRC
        )
        sends.append((at + rng.uniform(0.001, 0.004), header + audio_ext + bytes(90)))
    sends.sort(key=lambda item: item[0])
    arrivals: list[tuple[float, bytes]] = []
    rtx_seq = 0
    for at, packet in sends:
        video = packet[8:12] == VIDEO_SSRC.to_bytes(4, "big")
        lost = rng.random() < loss
        if not lost:
            arrivals.append((at, packet))
        if video and (lost or rng.random() < duplicate) and rng.random() > 0.05:
            rtx = wrap_rtx(packet, RTX_PT, rtx_seq & 0xFFFF, RTX_SSRC)
            rtx_seq += 1
            arrivals.append((at + rng.uniform(0.04, 0.07), rtx))
    arrivals.sort(key=lambda item: item[0])
    for i in range(len(arrivals) - 1):
        if rng.random() < reorder:
            (a, first), (b, second) = arrivals[i], arrivals[i + 1]
            arrivals[i], arrivals[i + 1] = (a, second), (b, first)
    feed = []
    for at, packet in arrivals:
        now = (int(at / BATCH_S) + 1) * BATCH_S  # read by the drain's next batch
        feed.append(Datagram(packet + SRTP_TAG, now, abs_send_time(now)))
    return feed


def bench_subscriber() -> LeanSubscriber:
    """A subscriber that negotiated the synthetic feed's streams, with no network."""
    subscriber = LeanSubscriber("clientbench", "", "", cast(Any, None), Drain())
    receiver = cast(Any, object())
    extensions = [
        RTCRtpHeaderExtensionParameters(MID_ID, URI_MID),
        RTCRtpHeaderExtensionParameters(ABS_SEND_TIME_ID, URI_ABS_SEND_TIME),
    ]
    video = RTCRtpReceiveParameters(
        codecs=[
            RTCRtpCodecParameters("video/VP8", 90000, payloadType=VIDEO_PT),
            RTCRtpCodecParameters("video/rtx", 90000, payloadType=RTX_PT, parameters={"apt": 96}),
        ],
        headerExtensions=extensions,
        encodings=[
            RTCRtpDecodingParameters(VIDEO_SSRC, VIDEO_PT, rtx=RTCRtpRtxParameters(RTX_SSRC))
        ],
    )
    audio = RTCRtpReceiveParameters(
        codecs=[RTCRtpCodecParameters("audio/opus", 48000, 2, payloadType=AUDIO_PT)],
        headerExtensions=[
            RTCRtpHeaderExtensionParameters(MID_ID, URI_MID),
            RTCRtpHeaderExtensionParameters(AUDIO_LEVEL_ID, URI_AUDIO_LEVEL),
        ],
        encodings=[RTCRtpDecodingParameters(AUDIO_SSRC, AUDIO_PT)],
    )
    subscriber._on_receiver_ready(receiver, video)
    subscriber._on_receiver_ready(receiver, audio)
    subscriber.unprotect = _strip_tag
    return subscriber


def _strip_tag(data: bytes) -> bytes:
    """The plaintext stand-in for SRTP's unprotect: drop the tag."""
    return data[: -len(SRTP_TAG)]


Handler = Callable[[LeanSubscriber], Callable[[bytes, float, int], None]]
PATHS: dict[str, Handler] = {
    "general": lambda s: s.receive_rtp,
    "on_datagram": lambda s: s.on_datagram,
}


def feed_through(path: str, feed: list[Datagram]) -> tuple[LeanSubscriber, float]:
    """A fresh subscriber fed ``feed`` through ``path``; returns it and the seconds taken."""
    subscriber = bench_subscriber()
    handle = PATHS[path](subscriber)
    begin = time.perf_counter()
    for datagram in feed:
        handle(datagram.data, datagram.now, datagram.now24)
    return subscriber, time.perf_counter() - begin


class _Counting(LeanSubscriber):
    """A subscriber that only counts what the drain hands it."""

    received = 0

    def on_datagram(self, data: bytes, now: float, now24: int | None = None) -> None:
        self.received += 1


def _recv_until_empty(selector: selectors.BaseSelector, now: float, now24: int) -> None:
    """The reference: each ready socket read until ``recv`` fails (BlockingIOError)."""
    for key, _ in selector.select(0):
        subscriber = key.data
        recv = subscriber.sock.recv
        while True:
            try:
                data = recv(2048)
            except OSError:
                break
            subscriber.on_datagram(data, now, now24)


async def drain_costs(per_socket: int, sockets: int, repeats: int) -> dict[str, float]:
    """µs per datagram to read ``per_socket`` datagrams from each of ``sockets`` UDP sockets.

    ``rounds``: :meth:`Drain._drain` (one datagram per ready socket per
    poll); ``recv loop``: each ready socket read until empty. Median of
    ``repeats`` interleaved batches.
    """
    drain = Drain(interval=3600)  # its own batches never come: batches are run here
    selector = selectors.DefaultSelector()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    subscribers = []
    for index in range(sockets):
        subscriber = _Counting(f"drain-{index}", "", "", cast(Any, None), drain)
        subscriber.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        subscriber.sock.bind(("127.0.0.1", 0))
        subscriber.sock.setblocking(False)
        drain.add(subscriber)
        selector.register(subscriber.sock, selectors.EVENT_READ, subscriber)
        subscribers.append(subscriber)
    datagram = bytes(1200)
    batches: dict[str, Callable[[float, int], None]] = {
        "rounds": drain._drain,
        "recv loop": lambda now, now24: _recv_until_empty(selector, now, now24),
    }
    times: dict[str, list[float]] = {name: [] for name in batches}
    try:
        for _ in range(repeats):
            for name, batch in batches.items():
                for subscriber in subscribers:
                    for _ in range(per_socket):
                        sender.sendto(datagram, subscriber.sock.getsockname())
                await asyncio.sleep(0.005)  # let loopback deliver them all
                before = sum(s.received for s in subscribers)
                now = time.time()
                begin = time.perf_counter()
                batch(now, abs_send_time(now))
                elapsed = time.perf_counter() - begin
                read = sum(s.received for s in subscribers) - before
                times[name].append(elapsed * 1e6 / max(1, read))
    finally:
        for subscriber in subscribers:
            drain.discard(subscriber)
            subscriber.sock.close()
        sender.close()
        selector.close()
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.clientbench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="synthetic feed length")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved repetitions")
    parser.add_argument(
        "--drain", action="store_true", help="also time reading sockets (100, loopback)"
    )
    options = parser.parse_args(argv)
    feed = synthetic_feed(options.seconds)
    times: dict[str, list[float]] = {path: [] for path in PATHS}
    for _ in range(options.repeats):
        for path in PATHS:
            _, elapsed = feed_through(path, feed)
            times[path].append(elapsed * 1e6 / len(feed))
    print(f"{len(feed)} datagrams, {options.repeats} interleaved repetitions")
    medians = {path: statistics.median(values) for path, values in times.items()}
    for path, median in medians.items():
        print(f"  {path:12s} {median:6.2f} µs per packet (median)")
    print(f"  ratio on_datagram / general: {medians['on_datagram'] / medians['general']:.2f}")
    if options.drain:
        print("reading 100 sockets, µs per datagram (median):")
        for per_socket in (1, 2, 3, 8):
            costs = asyncio.run(drain_costs(per_socket, 100, options.repeats))
            ratio = costs["rounds"] / costs["recv loop"]
            print(
                f"  {per_socket} per socket: rounds {costs['rounds']:5.2f}, "
                f"recv loop {costs['recv loop']:5.2f}, ratio {ratio:.2f}"
            )


if __name__ == "__main__":
    main()
