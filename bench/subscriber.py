"""Lightweight bench subscribers: real WebRTC receivers that never decode.

Each one joins over the real protocol (WebSocket, JWT, the SFU's offer and
its answer), completes ICE, DTLS and SRTP with aiortc, then takes its UDP
socket away from aiortc: a process-wide drain reads every subscriber's
socket in batches a few milliseconds apart, times each datagram by the
kernel's receive timestamp, and keeps counters from the RTP headers, which
SRTP leaves in the clear (RFC 3711 §3.1). It decrypts only
what it needs: RTX packets (their original sequence number) and video until
the first keyframe; payload integrity is therefore not checked for the
rest, which a loopback bench does not need. The next packet of a stream,
the common case, takes a fast path that reads only the fixed header (and
abs-send-time at its known place); ``python -m bench.clientbench`` measures
it against the general path.
It sends what a real receiver sends: RTCP receiver reports every second,
NACKs for gaps (retried like a browser), PLI when a packet is given up, and
it answers the SFU's STUN consent checks.

What a subscriber measures (``SubscriberStats``): connect time, time to the
first keyframe, packets, loss before and after NACK recovery, RFC 3550
jitter, bitrate, end-to-end latency (the presenter's abs-send-time → the
receive time; one machine, one clock), and freezes (gaps over 200 ms
between video frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCRtpReceiver, RTCRtpSender, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpReceiveParameters, RTCRtpSendParameters

from bench.impair import ImpairedPath, Impairment, impair_ice_connection
from sfu import rtcp
from sfu.codecs import codec_info
from sfu.nack import NackTracker
from sfu.reception import ReceptionStats
from sfu.rtp import FIXED_HEADER, URI_ABS_SEND_TIME, RtpError, SequenceUnwrapper, parse
from sfu.transport import ForwardingPeerConnection, PeerSink

logger = logging.getLogger(__name__)

#: Latency histogram: 0.1 ms bins up to 5 s.
LATENCY_BIN_S = 0.0001
LATENCY_BINS = 50_000
FREEZE_S = 0.2
#: How far behind the highest sequence number a late packet is still counted.
HOLE_WINDOW = 2048
_TICKS_TO_BINS = 1 / ((1 << 18) * LATENCY_BIN_S)
#: Joins retried after ``server-busy`` before a subscriber gives up.
BUSY_RETRIES = 8


def busy_backoff(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before retry ``attempt`` (0-based): 0.5 s doubling to 10 s, ±20 % jitter."""
    nominal = min(10.0, 0.5 * 2.0 ** min(attempt, 30))
    draw = rng.random() if rng is not None else random.random()
    return min(10.0, nominal * (0.8 + 0.4 * draw))


#: At most this many datagrams per socket in one batch (a busy socket waits for the next).
MAX_ROUNDS = 256
#: Linux's SO_TIMESTAMPNS (asm-generic/socket.h; Python's socket module does not
#: name it): each datagram comes with the time the kernel queued it, a
#: ``struct timespec`` in a control message (socket(7)).
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
#: Linux's SO_RXQ_OVFL: a datagram queued after the socket dropped some comes
#: with the socket's drop count so far (a ``__u32``; socket(7)).
SO_RXQ_OVFL = 40
_DROPS = struct.Struct("@I")
#: Room for both control messages (CMSG_SPACE of 16 and of 4 octets on 64-bit Linux).
_ANCILLARY_BYTES = 64
#: How often NACK retries are due and receiver reports (every second) are checked.
TICK_S = 0.02


@dataclass
class StreamState:
    """Receive state of one incoming stream (main video or main audio)."""

    video: bool
    ssrc: int
    payload_type: int
    rtx_payload_type: int | None
    clock_rate: int
    keyframe_start: Any
    reception: ReceptionStats
    nacks: NackTracker
    #: The abs-send-time extension's id (RFC 8285) on video; 0 when not measured.
    abs_send_time_id: int = 0
    unwrapper: SequenceUnwrapper = field(default_factory=SequenceUnwrapper)
    #: Extended sequence numbers skipped by a gap and not received yet, at
    #: most HOLE_WINDOW behind the highest: a packet at or below the highest
    #: is new only if it fills one (or came before the first packet here).
    holes: set[int] = field(default_factory=set)
    lowest: int = -1
    #: The packet bytes from the extension header (offset 12) up to the
    #: abs-send-time value, the same in every packet of a stream: where they
    #: match, the value is at ``abs_send_time_pos`` without parsing (0: not
    #: known yet).
    abs_send_time_prefix: bytes = b""
    abs_send_time_pos: int = 0
    #: Extended sequence numbers bounding this window's packets (-1: none yet).
    first: int = -1
    last: int = -1

    def expected(self) -> int:
        return 0 if self.first < 0 else self.last - self.first + 1

    def is_new(self, ext: int, highest: int) -> bool:
        """Whether packet ``ext`` is new (not a duplicate), the highest before it being ``highest``.

        Keeps the holes up to date. Packets more than HOLE_WINDOW behind the
        highest count as duplicates.
        """
        holes = self.holes
        if highest < 0:
            self.lowest = ext
            return True
        if ext > highest:
            if ext > highest + 1:
                holes.update(range(max(highest + 1, ext - HOLE_WINDOW), ext))
                if len(holes) > 2 * HOLE_WINDOW:
                    floor = ext - HOLE_WINDOW
                    self.holes = {s for s in holes if s >= floor}
            return True
        if ext in holes:
            holes.remove(ext)
            return True
        if highest - HOLE_WINDOW < ext < self.lowest:  # reordered before the first packet
            holes.update(range(ext + 1, self.lowest))
            self.lowest = ext
            return True
        return False

    def abs_send_time_at(
        self, data: bytes, extensions: dict[int, tuple[int, int]] | None = None
    ) -> int:
        """Where the abs-send-time value of video packet ``data`` starts (-1: absent).

        ``extensions`` are the packet's parsed elements (parsed here when
        None). Remembers the bytes before the value for the fast path.
        """
        if extensions is None:
            try:
                extensions = parse(data).extensions
            except RtpError:
                return -1
        element = extensions.get(self.abs_send_time_id)
        if element is None or element[1] != 3:
            return -1
        pos = element[0]
        if data[0] & 0x1F == 0x10 and data[12:14] == b"\xbe\xde":  # one-byte elements
            self.abs_send_time_prefix = data[12:pos]
            self.abs_send_time_pos = pos
        return pos


@dataclass
class SubscriberStats:
    """What one subscriber measured in the current window."""

    packets: int = 0
    bytes: int = 0
    lost_before_recovery: int = 0
    recovered: int = 0
    gave_up: int = 0
    freezes: int = 0
    freeze_s: float = 0.0
    last_frame_at: float | None = None
    #: Latency histogram (LATENCY_BIN_S bins); a list, since numpy item
    #: updates cost several times more per packet.
    latency: list[int] = field(default_factory=lambda: [0] * LATENCY_BINS)


class LeanSubscriber:
    """One bench subscriber."""

    def __init__(
        self,
        name: str,
        base_url: str,
        token: str,
        http: aiohttp.ClientSession,
        drain: Drain,
        impairment: Impairment | None = None,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.drain = drain
        self.base_url = base_url
        self.token = token
        self.http = http
        self.impairment = impairment
        self.seed = seed
        self.pc: ForwardingPeerConnection | None = None
        self.sink: PeerSink | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.streams: dict[int, StreamState] = {}  # by media SSRC (and RTX SSRC)
        #: The same streams, each once (for the periodic work and the results).
        self.stream_list: list[StreamState] = []
        self.params: dict[str, RTCRtpReceiveParameters] = {}
        self.rtcp_ssrc = 0
        self.join_sent = 0.0
        self.offer_at: float | None = None
        self.connected_at: float | None = None
        self.first_keyframe_at: float | None = None
        self.stats = SubscriberStats()
        self.path: ImpairedPath | None = None
        self.sock: Any = None
        self.protocol: Any = None
        self.remote: tuple[str, int] | None = None
        self.error: str | None = None
        #: Joins the server refused with ``server-busy`` (each retried).
        self.busy_refusals = 0
        #: Datagrams this subscriber's socket dropped (its receive buffer was
        #: full: the load generator fell behind), as the kernel last told.
        self.socket_drops = 0
        self._socket_drops_before = 0
        #: The server shed this subscriber (``server-busy`` after the join:
        #: its media process was overloaded). It does not come back: the server
        #: holds the count it kept for longer than a bench run.
        self.shed = False
        self._last_pli = 0.0
        self._task: asyncio.Task[None] | None = None
        #: aioice's own receive function per socket, before impairment wrapping.
        self._stun_receive: dict[Any, Any] = {}
        self._protect_rtcp: Any = None
        #: SRTP and STUN receive functions, set when the drain takes the socket.
        self.unprotect: Callable[[bytes], bytes]
        self.unprotect_rtcp: Callable[[bytes], bytes]
        self.stun_receive: Callable[[bytes, Any], None]

    # ------------------------------------------------------------ signaling

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        """Join, answer offers; a ``server-busy`` refusal is retried like the browser client.

        The retry waits ``busy_backoff`` (0.5 s doubling to 10 s, ±20 %
        jitter, as ``backoffDelay`` in ``signaling/static/client.js``) and
        joins again on a new socket; the join, offer and first-frame times
        still count from the first attempt, as a user waiting would.
        """
        try:
            for attempt in range(BUSY_RETRIES + 1):
                if attempt:
                    await asyncio.sleep(busy_backoff(attempt - 1))
                if not await self._join_once():
                    return
        except asyncio.CancelledError:
            pass

    async def _join_once(self) -> bool:
        """One join on a new socket; True if the server refused it as busy."""
        busy = False
        try:
            self.ws = await self.http.ws_connect(f"{self.base_url}/ws", heartbeat=20)
            if not self.join_sent:
                self.join_sent = time.time()
            await self.ws.send_json({"type": "join", "token": self.token, "protocol": 1})
            async for message in self.ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(message.data)
                kind = data.get("type")
                if kind == "offer":
                    if self.offer_at is None:
                        self.offer_at = time.time()
                    await self._answer(data)
                elif kind == "error":
                    busy = data.get("code") == "server-busy" and self.pc is None
                    if busy:
                        self.busy_refusals += 1
                    elif data.get("code") == "server-busy":
                        self.shed = True
                    self.error = f"{data.get('code')}: {data.get('message')}"
                    logger.warning("%s: %s", self.name, self.error)
                elif kind in ("removed", "room-ended"):
                    break
        except (aiohttp.ClientError, OSError) as exc:
            self.error = f"connection: {exc}"
        return busy

    async def _answer(self, offer: dict[str, Any]) -> None:
        if self.pc is None:
            self.pc = ForwardingPeerConnection(
                ["127.0.0.1"],
                self._on_early_rtp,
                self._on_early_rtcp,
                self._on_sender_ready,
                self._on_receiver_ready,
            )
            self.sink = PeerSink(self.pc)
            self.pc.on("connectionstatechange", self._on_state)
        pc = self.pc
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        if self.impairment is not None and self.path is None:
            self._impair_ice()
        assert self.ws is not None
        await self.ws.send_json({"type": "answer", "sdp": pc.localDescription.sdp})

    def _on_early_rtp(self, data: bytes) -> None:
        """RTP through aiortc's receive loop, between DTLS up and the drain taking over."""
        self._handle_rtp(data, time.time())

    def _on_early_rtcp(self, data: bytes) -> None:
        """The SFU's sender reports: nothing to measure in them."""

    def _on_sender_ready(self, sender: RTCRtpSender, params: RTCRtpSendParameters) -> None:
        pass

    def _on_receiver_ready(self, receiver: RTCRtpReceiver, params: RTCRtpReceiveParameters) -> None:
        if not params.codecs:
            return
        primary = params.codecs[0]
        info = codec_info(primary.mimeType)
        payload_type = primary.payloadType
        if info is None or payload_type is None:
            return
        rtx = next(
            (
                c.payloadType
                for c in params.codecs
                if c.mimeType.lower().endswith("/rtx") and c.parameters.get("apt") == payload_type
            ),
            None,
        )
        abs_send_time_id = next(
            (e.id for e in params.headerExtensions if e.uri == URI_ABS_SEND_TIME), 0
        )
        self.rtcp_ssrc = getattr(receiver, "_RTCRtpReceiver__rtcp_ssrc", None) or 1
        for encoding in params.encodings:
            state = StreamState(
                video=info.is_video,
                ssrc=encoding.ssrc,
                payload_type=payload_type,
                rtx_payload_type=rtx,
                clock_rate=info.clock_rate,
                keyframe_start=info.keyframe_start,
                reception=ReceptionStats(encoding.ssrc, info.clock_rate),
                nacks=NackTracker(
                    retry_interval=self._nack_interval(), max_retries=10, max_age=3.0
                ),
                abs_send_time_id=abs_send_time_id if info.is_video else 0,
            )
            self.streams[encoding.ssrc] = state
            if encoding.rtx is not None and encoding.rtx.ssrc:
                self.streams[encoding.rtx.ssrc] = state
        self.stream_list = list({id(s): s for s in self.streams.values()}.values())

    def _nack_interval(self) -> float:
        """Retry a NACK about once per round trip (a receive-only peer guesses it)."""
        if self.impairment is None:
            return 0.05
        return max(0.05, 2 * (self.impairment.delay_s + self.impairment.jitter_s) + 0.03)

    def _on_state(self) -> None:
        assert self.pc is not None and self.sink is not None
        if self.pc.connectionState == "connected" and self.connected_at is None:
            self.connected_at = time.time()
            self.sink.bind()
            self._take_socket()

    # -------------------------------------------------------- the fast path

    def _take_socket(self) -> None:
        """Stop aiortc reading our socket; the process-wide drain reads it from now on."""
        assert self.pc is not None
        dtls = self.pc.getTransceivers()[0].receiver.transport
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            return
        self.protocol = pair.protocol
        self.remote = pair.remote_addr
        transport: Any = pair.protocol.transport  # selector transports can pause reading
        fileno = transport.get_extra_info("socket").fileno()
        # A plain duplicate of aioice's socket, read by the drain.
        self.sock = socket.socket(fileno=os.dup(fileno))
        self.sock.setblocking(False)
        self.unprotect = dtls._rx_srtp.unprotect
        self.unprotect_rtcp = dtls._rx_srtp.unprotect_rtcp
        self._protect_rtcp = dtls._tx_srtp.protect_rtcp
        self.stun_receive = self._stun_receive.get(
            id(pair.protocol), pair.protocol.datagram_received
        )
        transport.pause_reading()  # asyncio stops reading it; the drain reads the duplicate
        self.drain.add(self)

    def _impair_ice(self) -> None:
        """Put this subscriber's every datagram, both ways, behind the emulated link."""
        assert self.pc is not None and self.impairment is not None
        connection = self.pc.getTransceivers()[0].receiver.transport.transport._connection
        self.path = ImpairedPath(self.impairment, seed=self.seed)
        self._stun_receive.update(impair_ice_connection(connection, self.path))

    def on_delayed_datagram(self, data: bytes) -> None:
        """A datagram coming out of the emulated link."""
        self.on_datagram(data, time.time())

    def on_datagram(self, data: bytes, now: float, now24: int | None = None) -> None:
        """A datagram read by the drain (after the emulated link, when impaired).

        The fast path takes the common case, the next packet of a media
        stream after the first keyframe, from its fixed header alone (one
        ``unpack_from``): no parse, no duplicate or NACK bookkeeping, since
        the next sequence number can be neither. Everything else (RTX,
        gaps, late or duplicate packets, padding, the start of a stream)
        goes through :meth:`receive_rtp`, with the same result.
        """
        first = data[0] if data else 0
        if first < 4:  # STUN (RFC 7983 §7): consent checks go to aioice
            self.stun_receive(data, self.remote)
            return
        if not 127 < first < 192:
            return  # DTLS after the handshake (close_notify): nothing to do
        if len(data) < 12:
            return
        b0, b1, seq, timestamp, ssrc = FIXED_HEADER.unpack_from(data)
        if 192 <= b1 <= 223:
            with contextlib.suppress(Exception):
                self.unprotect_rtcp(data)  # SR from the SFU: authenticated, not used
            return
        state = self.streams.get(ssrc)
        if state is None:
            return
        unwrapper = state.unwrapper
        ext = unwrapper.highest + 1
        if (
            seq != ext & 0xFFFF
            or ssrc != state.ssrc
            or b1 & 0x7F != state.payload_type
            or b0 & 0x20  # padding: its length is encrypted
            or ext <= 0  # the stream's first packet
            or self.first_keyframe_at is None
        ):
            self.receive_rtp(data, now, now24)
            return
        unwrapper.highest = ext
        if state.first < 0:
            state.first = ext
        state.last = ext
        stats = self.stats
        stats.packets += 1
        size = len(data)
        stats.bytes += size
        state.reception.on_packet(ext, timestamp, now)
        if not state.video:
            return
        if b1 & 0x80:
            self._frame_end(now)
        # abs-send-time where the previous packet had it: X set, no CSRC and
        # the same extension bytes before it; the general path finds it otherwise.
        pos = state.abs_send_time_pos
        if pos and b0 == 0x90 and size >= pos + 3 and data[12:pos] == state.abs_send_time_prefix:
            self._latency(pos, data, now, now24)
        elif state.abs_send_time_id:
            self._latency(state.abs_send_time_at(data), data, now, now24)

    def receive_rtp(self, data: bytes, now: float, now24: int | None = None) -> None:
        """Any RTP packet of ours, SRTP-protected: the general path.

        SRTP encrypts payloads, not headers (RFC 3711 §3.1): counting,
        loss, jitter and latency need only the clear header. Payloads are
        decrypted where they matter: RTX (the original sequence number) and
        video until the first keyframe is seen.
        """
        try:
            state = self.streams.get(int.from_bytes(data[8:12], "big")) if len(data) >= 12 else None
            if state is None:
                return
            if state.video and (
                self.first_keyframe_at is None or data[1] & 0x7F == state.rtx_payload_type
            ):
                self._handle_rtp(self.unprotect(data), now, now24, decrypted=True)
                return
        except Exception:
            return
        self._handle_rtp(data, now, now24, decrypted=False)

    def _handle_rtp(
        self, data: bytes, now: float, now24: int | None = None, decrypted: bool = True
    ) -> None:
        try:
            header = parse(data)
        except RtpError:
            if decrypted:
                return
            # The P bit's count is inside the encrypted part: decrypt to parse.
            with contextlib.suppress(Exception):
                self._handle_rtp(self.unprotect(data), now, now24, decrypted=True)
            return
        state = self.streams.get(header.ssrc)
        if state is None:
            return
        stats = self.stats
        payload_offset = header.payload_offset
        retransmitted = False
        seq = header.sequence_number
        if header.payload_type == state.rtx_payload_type and header.ssrc != state.ssrc:
            if header.payload_end - payload_offset < 2:
                return
            seq = (data[payload_offset] << 8) | data[payload_offset + 1]
            payload_offset += 2
            retransmitted = True
        ext = state.unwrapper.unwrap(seq) if not retransmitted else _extend(state, seq)
        reception = state.reception
        previous = reception.highest
        if not state.is_new(ext, previous):
            return  # a duplicate
        stats.packets += 1
        stats.bytes += len(data)
        if state.first < 0:
            state.first = ext
        state.last = max(state.last, ext)
        if retransmitted:
            stats.recovered += 1
            state.nacks.on_packet(ext, previous, now)
        else:
            missing = state.nacks.on_packet(ext, previous, now)
            if missing and previous >= 0:
                stats.lost_before_recovery += len(missing)
                self._send_nack(state, missing)
            reception.on_packet(ext, header.timestamp, now)
            if ext <= previous:
                stats.recovered += 1  # a late original filled a gap
        if state.video:
            if self.first_keyframe_at is None and state.keyframe_start(
                data, payload_offset, header.payload_end
            ):
                self.first_keyframe_at = now
            if header.marker and not retransmitted:
                self._frame_end(now)
            if state.abs_send_time_id and not retransmitted:
                self._latency(state.abs_send_time_at(data, header.extensions), data, now, now24)

    def _frame_end(self, now: float) -> None:
        """The last packet of a video frame arrived: count a freeze if it came late."""
        stats = self.stats
        last = stats.last_frame_at
        if last is not None and now - last > FREEZE_S:
            stats.freezes += 1
            stats.freeze_s += now - last
        stats.last_frame_at = now

    def _latency(self, pos: int, data: bytes, now: float, now24: int | None) -> None:
        """Add a video packet's delay, abs-send-time at ``pos`` → ``now``, to the histogram."""
        if pos < 0:
            return
        sent = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
        if now24 is None:
            now24 = abs_send_time(now)
        delta = (now24 - sent) & 0xFFFFFF
        # abs-send-time ticks are 2**-18 s; "negative" (sent after this
        # batch's clock reading) counts as 0.
        index = 0 if delta >= 1 << 23 else int(delta * _TICKS_TO_BINS)
        self.stats.latency[index if index < LATENCY_BINS else LATENCY_BINS - 1] += 1

    def _send_nack(self, state: StreamState, seqs: list[int]) -> None:
        self._send_rtcp(rtcp.build_nack(self.rtcp_ssrc, state.ssrc, [s & 0xFFFF for s in seqs]))

    def _send_rtcp(self, packet: bytes) -> None:
        """Send RTCP now, or through the emulated link's upstream direction."""
        if self.path is None or self._protect_rtcp is None or self.sock is None:
            if self.sink is not None:
                self.sink.send_rtcp(packet)
            return
        self.path.deliver_later(_sendto, self._protect_rtcp(packet), "up", self.sock, self.remote)

    def tick(self, now: float, report: bool) -> None:
        """Periodic: NACK retries, PLI for packets given up, receiver reports."""
        if self.sink is None:
            return
        for state in self.stream_list:
            if state.nacks:
                retry, lost = state.nacks.due(now)
                if retry:
                    self._send_nack(state, retry)
                if lost:
                    self.stats.gave_up += len(lost)
                    if state.video and now - self._last_pli > 1.0:
                        self._last_pli = now
                        self._send_rtcp(rtcp.build_pli(self.rtcp_ssrc, state.ssrc))
            if report:
                block = state.reception.report_block(now)
                if block is not None:
                    self._send_rtcp(rtcp.build_rr(self.rtcp_ssrc, [block]))

    def reset_window(self) -> None:
        self.stats = SubscriberStats(last_frame_at=self.stats.last_frame_at)
        self._socket_drops_before = self.socket_drops
        for state in self.stream_list:
            state.first = state.last = -1

    def result(self, window_s: float) -> dict[str, Any]:
        """This subscriber's figures for the window (see bench/SCHEMA.md)."""
        stats = self.stats
        expected = sum(state.expected() for state in self.stream_list)
        lost = max(0, expected - stats.packets)
        counts = np.asarray(stats.latency, dtype=np.int64)
        total = int(counts.sum())
        jitter = [s.reception.jitter / s.clock_rate * 1000 for s in self.stream_list if s.video]
        return {
            "id": self.name,
            "offer_ms": _ms(self.offer_at, self.join_sent),
            "connect_ms": _ms(self.connected_at, self.join_sent),
            "first_frame_ms": _ms(self.first_keyframe_at, self.join_sent),
            "packets": stats.packets,
            "expected": expected,
            "lost_before_recovery": stats.lost_before_recovery,
            "lost": lost,
            "recovered": stats.recovered,
            "jitter_ms": round(jitter[0], 3) if jitter else None,
            "bitrate_bps": int(stats.bytes * 8 / window_s) if window_s > 0 else 0,
            "latency_p50_ms": _percentile_ms(counts, total, 0.50),
            "latency_p99_ms": _percentile_ms(counts, total, 0.99),
            "freezes": stats.freezes,
            "freeze_s": round(stats.freeze_s, 3),
            "impaired": self.impairment is not None,
            "error": self.error,
            "busy_refusals": self.busy_refusals,
            "shed": self.shed,
            "socket_drops": self.socket_drops - self._socket_drops_before,
            # The emulated link's counters since the join (the window's and
            # before it: a joiner's replayed keyframe burst meets the rate cap).
            "link": self.path.stats() if self.path is not None else None,
            # Sparse (bin index -> count): the dense array is 400 KB per subscriber.
            "latency_histogram": {int(i): int(counts[i]) for i in np.flatnonzero(counts)},
        }

    async def close(self) -> None:
        self.drain.discard(self)
        if self.sock is not None:
            self.sock.close()
        if self.path is not None:
            self.path.close()
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(Exception):
                await self.ws.send_json({"type": "leave"})
                await self.ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()


def abs_send_time(now: float) -> int:
    """``now`` in the abs-send-time format: 6.18 fixed-point seconds, 24 bits."""
    return (rtcp.ntp_from_unix(now) >> 14) & 0xFFFFFF


def _sendto(data: bytes, sock: Any, remote: tuple[str, int] | None) -> None:
    with contextlib.suppress(OSError):
        sock.sendto(data, remote)


def _extend(state: StreamState, seq: int) -> int:
    """Extend a retransmitted sequence number relative to the highest seen."""
    highest = state.unwrapper.highest
    if highest < 0:
        return seq
    return highest - ((highest - seq) & 0xFFFF)


def _ms(later: float | None, earlier: float) -> float | None:
    return None if later is None else round((later - earlier) * 1000, 1)


def _percentile_ms(counts: np.ndarray, total: int, q: float) -> float | None:
    if total == 0:
        return None
    index = int(np.searchsorted(np.cumsum(counts), q * total))
    return round((index + 0.5) * LATENCY_BIN_S * 1000, 2)


class Drain:
    """Reads every taken-over subscriber socket in batches, a few ms apart.

    A batch polls the sockets (``epoll``, or ``poll`` where there is none)
    and reads one datagram from each ready one, round after round until
    none is ready: a subscriber has two or three datagrams per batch, and a
    ``recv`` loop per socket would pay for a failing ``recv`` (an
    exception) on each, which costs about as much as the datagrams.

    Each datagram is timed by the kernel's receive timestamp
    (``SO_TIMESTAMPNS``), not by the batch that read it: latency, jitter
    and freezes then measure the path up to this machine's socket, not how
    long the load generator took to come round (up to the batch interval,
    or longer when its process waits for a core). Where the option is
    refused, datagrams keep the batch's time, and so do the few that arrive
    before the kernel has turned stamping on (deferred work, milliseconds).

    Each socket also reports what it dropped (``SO_RXQ_OVFL``): a full
    receive buffer means the load generator fell behind, and those losses
    are the bench's, not the server's (``socket_drops`` in the report).
    """

    def __init__(self, interval: float = 0.008) -> None:
        self.interval = interval
        self.subscribers: set[LeanSubscriber] = set()
        self.packets = 0
        self._poller = select.epoll() if hasattr(select, "epoll") else select.poll()
        #: Subscribers by socket file descriptor.
        self._by_fd: dict[int, LeanSubscriber] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, subscriber: LeanSubscriber) -> None:
        if sys.platform.startswith("linux"):  # elsewhere 35 is another option, or none
            with contextlib.suppress(OSError):
                subscriber.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                subscriber.sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        self.subscribers.add(subscriber)
        fd = subscriber.sock.fileno()
        self._by_fd[fd] = subscriber
        self._poller.register(fd, select.POLLIN)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def discard(self, subscriber: LeanSubscriber) -> None:
        if subscriber in self.subscribers:
            self.subscribers.discard(subscriber)
            fd = subscriber.sock.fileno()
            self._by_fd.pop(fd, None)
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._poller.unregister(fd)

    async def _run(self) -> None:
        next_report = time.time() + 1.0
        next_tick = 0.0
        while True:
            await asyncio.sleep(self.interval)
            now = time.time()
            self._drain(now, abs_send_time(now))
            if now < next_tick:
                continue
            next_tick = now + TICK_S  # NACK retries and reports need no finer clock
            report = now >= next_report
            if report:
                next_report = now + 1.0
            for subscriber in list(self.subscribers):
                subscriber.tick(now, report)

    def _drain(self, now: float, now24: int) -> None:
        """Read every ready socket empty, one datagram per socket per round."""
        poll = self._poller.poll
        by_fd = self._by_fd
        unpack_timespec = _TIMESPEC.unpack_from
        unpack_drops = _DROPS.unpack_from
        for _ in range(MAX_ROUNDS):
            ready = poll(0)
            if not ready:
                return
            for fd, _event in ready:
                subscriber = by_fd.get(fd)
                if subscriber is None:
                    continue  # discarded during this batch
                try:
                    data, ancillary, _, _ = subscriber.sock.recvmsg(2048, _ANCILLARY_BYTES)
                except OSError:  # nothing after all, or an ICMP error: next round
                    continue
                self.packets += 1
                arrival = None
                for level, kind, cdata in ancillary:
                    if level != socket.SOL_SOCKET:
                        continue
                    if kind == SO_TIMESTAMPNS:
                        seconds, nanoseconds = unpack_timespec(cdata)
                        arrival = seconds + nanoseconds * 1e-9
                    elif kind == SO_RXQ_OVFL:
                        subscriber.socket_drops = unpack_drops(cdata)[0]
                path = subscriber.path
                if path is None:
                    if arrival is not None:
                        subscriber.on_datagram(data, arrival)
                    else:
                        subscriber.on_datagram(data, now, now24)
                else:
                    path.deliver_later(subscriber.on_delayed_datagram, data, "down")
