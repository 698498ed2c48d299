"""A paced sender for the bench presenter's video, as a browser's would be.

aiortc has no pacer: it hands every packet of an encoded frame to the socket
at once, so a 720p keyframe (~50 packets at 2.5 Mbit/s) reaches the SFU as
one burst. Browsers do not send like that: libwebrtc's pacer (its
``PacingController``) releases video at ``kDefaultPaceMultiplier`` = 2.5
times the target bitrate, in bursts at most a few milliseconds apart, and
its RTP egress writes abs-send-time when a packet actually leaves. An SFU
fed by a browser therefore sees a keyframe spread over ~70 ms, and its
subscribers' latency (abs-send-time → arrival) does not include the time a
packet waited in the sender's queue.

:class:`Pacer` gives the bench presenter the same shape: it takes the place
of the peer connection's DTLS transport ``_send_rtp`` (the one call through
which aiortc sends every RTP and RTCP packet; ``tests/test_aiortc_hooks.py``
checks it still is),
delays the paced streams' RTP to a leaky bucket's schedule, and rewrites
their abs-send-time (draft-alvestrand-rmcat-remb, 6.18 fixed point) to the
moment each one is sent, before SRTP protects it. RTCP and unpaced streams
(audio, which libwebrtc puts ahead of video) go out at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from aiortc.sdp import SessionDescription

from bench.subscriber import abs_send_time
from sfu.rtp import FIXED_HEADER, URI_ABS_SEND_TIME, RtpError, parse

#: libwebrtc's ``kDefaultPaceMultiplier``: video leaves at this times its target bitrate.
PACE_MULTIPLIER = 2.5
#: A packet whose slot is at most this far ahead goes now (libwebrtc's pacer
#: wakes about every 5 ms and sends what is due in a burst).
BURST_S = 0.005


class Pacer:
    """A leaky bucket in front of an async ``send(data)`` for the given SSRCs' RTP.

    Each paced packet reserves the next slot of the bucket when it is
    offered (``rate_bps`` bits per second), so packets leave in the order
    they came, whichever coroutine offered them (frames and NACK repairs).
    ``clock`` and ``sleep`` are ``time.monotonic`` and ``asyncio.sleep``
    unless a test drives them.
    """

    def __init__(
        self,
        send: Callable[[bytes], Awaitable[None]],
        rate_bps: float,
        ssrcs: Collection[int],
        abs_send_time_id: int | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if rate_bps <= 0:
            raise ValueError("the pacing rate must be positive")
        self._send = send
        self._bytes_per_s = rate_bps / 8
        self._ssrcs = frozenset(ssrcs)
        self._abs_send_time_id = abs_send_time_id
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._next_slot = 0.0
        self._behind_since = 0.0
        #: Paced packets, and how many times the pacer slept for a slot.
        self.packets = 0
        self.delayed = 0
        #: The longest stretch, in seconds, from a packet that found the bucket
        #: empty to the last slot of the backlog that followed (a keyframe: its
        #: size over the pacing rate).
        self.longest_backlog_s = 0.0

    async def send(self, data: bytes) -> None:
        """Send ``data`` (plain RTP or RTCP) now or at its slot."""
        if len(data) < 12 or 192 <= data[1] <= 223:  # RTCP (RFC 5761 §4)
            await self._send(data)
            return
        if FIXED_HEADER.unpack_from(data)[4] not in self._ssrcs:
            await self._send(data)
            return
        now = self._clock()
        if self._next_slot <= now:
            slot = self._behind_since = now
        else:
            slot = self._next_slot
            self.longest_backlog_s = max(self.longest_backlog_s, slot - self._behind_since)
        self._next_slot = slot + len(data) / self._bytes_per_s
        self.packets += 1
        wait = slot - now
        if wait > BURST_S:
            self.delayed += 1
            await self._sleep(wait)
        await self._send(self._stamped(data))

    def _stamped(self, data: bytes) -> bytes:
        """``data`` with its abs-send-time set to now (unchanged if it has none)."""
        if self._abs_send_time_id is None:
            return data
        try:
            element = parse(data).extensions.get(self._abs_send_time_id)
        except RtpError:
            return data
        if element is None or element[1] != 3:
            return data
        pos = element[0]
        stamped = bytearray(data)
        stamped[pos : pos + 3] = abs_send_time(self._wall_clock()).to_bytes(3, "big")
        return bytes(stamped)


def pace_video(pc: Any, track: Any, bitrate_bps: float) -> Pacer:
    """Pace ``track``'s RTP (and its RTX) on aiortc peer ``pc`` at 2.5 x ``bitrate_bps``.

    Call once the answer is applied: aiortc sends with the extension ids
    of the remote description. Returns the pacer, whose counters say how
    much it delayed.
    """
    sender = next(t.sender for t in pc.getTransceivers() if t.sender.track is track)
    dtls = sender.transport
    extension_id = None
    for media in SessionDescription.parse(pc.remoteDescription.sdp).media:
        if media.kind == track.kind:
            for extension in media.rtp.headerExtensions:
                if extension.uri == URI_ABS_SEND_TIME:
                    extension_id = extension.id
    ssrcs = [sender._ssrc, sender._rtx_ssrc]
    pacer = Pacer(dtls._send_rtp, PACE_MULTIPLIER * bitrate_bps, ssrcs, extension_id)
    dtls._send_rtp = pacer.send
    return pacer
