"""Real aiortc clients of the SFU's command API: a publisher and decoding subscribers.

Used by ``telebridge demo`` and the test suite. They are ordinary aiortc
peers (they encode and decode); only their ICE candidates are restricted to
the given addresses (loopback by default), per connection, without patching
aioice globally.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import RTCDtlsTransport
from av import VideoFrame

from sfu.server import Sfu, TrackInfo
from sfu.transport import restrict_host_candidates


class LoopbackPeerConnection(RTCPeerConnection):
    """An aiortc peer connection gathering host candidates on ``addresses`` only."""

    def __init__(self, addresses: Sequence[str] = ("127.0.0.1",)) -> None:
        self._addresses = list(addresses)
        super().__init__(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))

    def _RTCPeerConnection__createDtlsTransport(self) -> RTCDtlsTransport:
        dtls: RTCDtlsTransport = super()._RTCPeerConnection__createDtlsTransport()  # type: ignore[misc]
        restrict_host_candidates(dtls.transport.iceGatherer._connection, self._addresses)
        return dtls


def sending_peer(
    tracks: Sequence[MediaStreamTrack], video_codec: str = "video/VP8"
) -> LoopbackPeerConnection:
    """A loopback peer sending ``tracks``, its video restricted to ``video_codec`` (+RTX)."""
    pc = LoopbackPeerConnection()
    for track in tracks:
        transceiver = pc.addTransceiver(track, direction="sendonly")
        if track.kind == "video":
            transceiver.setCodecPreferences(
                [
                    c
                    for c in RTCRtpSender.getCapabilities("video").codecs
                    if c.mimeType.lower() in (video_codec.lower(), "video/rtx")
                ]
            )
    return pc


async def publish(
    sfu: Sfu,
    peer_id: str,
    tracks: Sequence[MediaStreamTrack],
    video_codec: str = "video/VP8",
) -> tuple[LoopbackPeerConnection, list[TrackInfo]]:
    """Publish ``tracks`` into the SFU from a new aiortc peer; returns it and the producers."""
    pc = sending_peer(tracks, video_codec)
    await pc.setLocalDescription(await pc.createOffer())
    answer, producers = await sfu.publish(peer_id, pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return pc, producers


@dataclass
class ReceivedTrack:
    """What a subscriber decoded on one track."""

    kind: str
    frames: int = 0
    width: int = 0
    height: int = 0
    first_frame_at: float | None = None
    arrivals: list[float] = field(default_factory=list)

    def longest_gap(self, since: float = 0.0) -> float:
        """Longest time between consecutive decoded frames after ``since``."""
        times = [t for t in self.arrivals if t >= since]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def frozen_time(self, threshold: float = 0.2) -> float:
        """Total time spent in gaps longer than ``threshold`` between decoded frames."""
        times = self.arrivals
        return sum(b - a for a, b in itertools.pairwise(times) if b - a > threshold)


class NackRetrier:
    """Re-sends an aiortc receiver's NACKs for packets still missing, as browsers do.

    aiortc's video receiver sends a generic NACK (RFC 4585 §6.2.1) only when a
    new gap appears, so a lost retransmission stalls it until the next loss.
    libwebrtc's receiver asks again every round trip, up to 10 times; this
    gives the test subscribers that behaviour. It reads the receiver's own
    ``NackGenerator`` (the packets it still misses) and learns the media SSRC
    from the first NACK the receiver sends itself.
    """

    def __init__(self, receiver: RTCRtpReceiver, interval: float, max_retries: int = 10) -> None:
        self.interval = interval
        self.max_retries = max_retries
        self.generator = getattr(receiver, "_RTCRtpReceiver__nack_generator", None)
        self.media_ssrc: int | None = None
        self.sent: dict[int, tuple[float, int]] = {}  # seq -> (last NACK time, NACKs)
        self._send = receiver._send_rtcp_nack
        receiver._send_rtcp_nack = self._on_nack  # type: ignore[method-assign]

    async def _on_nack(self, media_ssrc: int, lost: list[int]) -> None:
        self.media_ssrc = media_ssrc
        now = time.monotonic()
        for seq in lost:
            self.sent[seq] = (now, self.sent.get(seq, (now, 0))[1] + 1)
        await self._send(media_ssrc, lost)

    async def poll(self, now: float) -> None:
        """NACK again every packet still missing ``interval`` after its last NACK."""
        if self.generator is None or self.media_ssrc is None:
            return
        missing = self.generator.missing
        for seq in [s for s in self.sent if s not in missing]:
            del self.sent[seq]
        due = [
            seq
            for seq, (last, count) in self.sent.items()
            if now - last >= self.interval and count <= self.max_retries
        ]
        if due:
            await self._on_nack(self.media_ssrc, sorted(due))


class Subscriber:
    """A decoding aiortc subscriber: the SFU offers, it answers.

    Its video receivers NACK a packet again while it is missing
    (:class:`NackRetrier`), as a browser's do.
    """

    #: Interval between NACKs of one missing packet (about a loopback round
    #: trip plus the SFU's one-repair-per-RTT guard).
    nack_retry_interval = 0.05

    def __init__(self, sfu: Sfu, peer_id: str) -> None:
        self.sfu = sfu
        self.id = peer_id
        self.pc = LoopbackPeerConnection()
        self.tracks: list[ReceivedTrack] = []
        self.consumers: list[TrackInfo] = []
        self.started_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._retriers: dict[int, NackRetrier] = {}
        self.pc.on("track", self._on_track)

    async def connect(self, sources: Sequence[str]) -> None:
        self.started_at = time.monotonic()
        offer, self.consumers = await self.sfu.subscribe(self.id, list(sources))
        await self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.sfu.answer(self.id, self.pc.localDescription.sdp)

    def _on_track(self, track: MediaStreamTrack) -> None:
        received = ReceivedTrack(track.kind)
        self.tracks.append(received)
        self._tasks.append(asyncio.ensure_future(self._consume(track, received)))
        if track.kind == "video" and not self._retriers:
            self._tasks.append(asyncio.ensure_future(self._retry_nacks()))
        for transceiver in self.pc.getTransceivers():
            receiver = transceiver.receiver
            if transceiver.kind == "video" and id(receiver) not in self._retriers:
                self._retriers[id(receiver)] = NackRetrier(receiver, self.nack_retry_interval)

    async def _retry_nacks(self) -> None:
        while True:
            await asyncio.sleep(self.nack_retry_interval / 2)
            now = time.monotonic()
            for retrier in list(self._retriers.values()):
                await retrier.poll(now)

    async def _consume(self, track: MediaStreamTrack, received: ReceivedTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if received.first_frame_at is None:
                    received.first_frame_at = now
                received.frames += 1
                received.arrivals.append(now)
                if isinstance(frame, VideoFrame):
                    received.width, received.height = frame.width, frame.height

    def track(self, kind: str) -> ReceivedTrack:
        for received in self.tracks:
            if received.kind == kind:
                return received
        return ReceivedTrack(kind)

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
