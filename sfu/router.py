"""The sans-I/O forwarding core: producers, consumers and the fan-out.

A :class:`Producer` is one published RTP stream (audio or video). A
:class:`Consumer` is one outgoing track of a subscriber, fed by one producer
at a time (its *source*), which can change at a keyframe without the
subscriber noticing: its SSRC, sequence numbers and timestamps continue.

Nothing here opens a socket, starts a task or reads a clock: every entry
point takes ``now`` (seconds, ``time.time()`` scale) and the core emits
packets through the :class:`Sink` objects the I/O layer supplies. Sinks
must not block and must not raise.

The fan-out (:meth:`Router.on_rtp`) builds one packet template per distinct
subscriber layout (payload type, MID and extension ids) and then, per
subscriber, packs a 12-byte fixed header in front of it (RFC 3550 §5.1)
with that subscriber's sequence number, timestamp and SSRC.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sfu import rtcp
from sfu.cache import PacketCache
from sfu.codecs import CodecInfo
from sfu.keyframes import KeyframeRequester
from sfu.nack import NackTracker
from sfu.reception import ReceptionStats
from sfu.rtp import (
    FIXED_HEADER,
    RtpError,
    RtpHeader,
    SequenceUnwrapper,
    audio_level,
    build_extension_block,
    build_template,
    parse,
    wrap_rtx,
)

_U32 = 0xFFFFFFFF
#: A packet made ready for one layout: the fixed header's first two bytes,
#: everything after the fixed header, its RTP timestamp and its size as received.
_Template = tuple[int, int, bytes, int, int]


class BandwidthEstimator(Protocol):
    """A receive-side delay-based estimator (aiortc's ``RemoteBitrateEstimator`` fits)."""

    def add(
        self, arrival_time_ms: int, abs_send_time: int, payload_size: int, ssrc: int
    ) -> tuple[int, list[int]] | None: ...


class Sink(Protocol):
    """Where the core's output for one peer connection goes (plaintext RTP/RTCP).

    A sink may also have ``send_rtp_header(b0, b1, seq, timestamp, ssrc,
    tail)`` (:data:`HeaderSend`): the fan-out then hands it the rewritten
    fixed header's fields and the rest of the packet instead of building
    the bytes (``SrtpSink`` protects them in place).
    """

    def send_rtp(self, packet: bytes) -> None: ...

    def send_rtcp(self, packet: bytes) -> None: ...


#: A sink's optional ``send_rtp_header``: (b0, b1, seq, timestamp, ssrc, tail).
HeaderSend = Callable[[int, int, int, int, int, bytes], None]


@dataclass(frozen=True, slots=True)
class Layout:
    """What makes a subscriber's copy of a packet differ beyond seq/ts/SSRC."""

    payload_type: int
    mid: str | None
    mid_ext_id: int | None
    audio_level_ext_id: int | None
    abs_send_time_ext_id: int | None


@dataclass(slots=True)
class RouterConfig:
    """Tunables of the forwarding core (see ``configs/default.toml``)."""

    #: Packets kept per video stream for NACKs and instant starts (power of two).
    video_cache_packets: int = 2048
    #: Packets kept per audio stream (power of two).
    audio_cache_packets: int = 256
    #: At most one keyframe request to a publisher per this many seconds.
    keyframe_interval: float = 0.5
    #: A cached keyframe older than this does not start new subscribers.
    keyframe_max_age: float = 1.0
    #: Shortest upstream NACK retry interval (retries follow the publisher's RTT once known).
    nack_retry_interval: float = 0.1
    #: Upstream NACK retries per missing packet.
    nack_max_retries: int = 5
    #: Ceiling of the REMB sent to video publishers (bits per second).
    max_publisher_bitrate: int = 8_000_000
    #: Repairs (NACK answers, each copy counted) a subscriber earns per packet
    #: forwarded to it: its retransmissions stay under this share of its stream.
    repair_ratio: float = 0.5
    #: Repairs a subscriber may spend at once (a whole lost 1080p keyframe: ~100-250 packets).
    repair_burst: int = 256
    #: The process is overloaded while it reads its input later than this
    #: (seconds, ``sfu/load.py``; 0: never): see :attr:`Router.lagging`.
    overload_lag: float = 0.25


@dataclass(slots=True)
class ProducerStats:
    packets: int = 0
    bytes: int = 0
    retransmissions: int = 0
    duplicates: int = 0
    malformed: int = 0
    keyframes: int = 0
    nacks_sent: int = 0
    lost_unrecovered: int = 0


@dataclass(slots=True)
class ConsumerStats:
    packets: int = 0
    bytes: int = 0
    nacks: int = 0
    retransmitted: int = 0
    nack_misses: int = 0
    keyframe_requests: int = 0
    #: NACKed packets not resent because the subscriber's repair budget was spent.
    repairs_shed: int = 0


@dataclass(slots=True)
class SenderReportInfo:
    ntp_timestamp: int
    rtp_timestamp: int
    arrival: float


class Producer:
    """One published stream: its cache, statistics and consumers."""

    def __init__(
        self,
        producer_id: str,
        codec: CodecInfo,
        payload_type: int,
        ssrc: int | None,
        sink: Sink,
        rtcp_ssrc: int,
        config: RouterConfig,
        rtx_payload_type: int | None = None,
        rtx_ssrc: int | None = None,
        audio_level_ext_id: int | None = None,
        abs_send_time_ext_id: int | None = None,
        estimator: BandwidthEstimator | None = None,
    ) -> None:
        self.id = producer_id
        self.codec = codec
        self.kind = "video" if codec.is_video else "audio"
        self.payload_type = payload_type
        self.ssrc = ssrc
        self.rtx_payload_type = rtx_payload_type
        self.rtx_ssrc = rtx_ssrc
        self.sink = sink
        self.rtcp_ssrc = rtcp_ssrc
        self.audio_level_ext_id = audio_level_ext_id
        self.abs_send_time_ext_id = abs_send_time_ext_id
        self.cache = PacketCache(
            config.video_cache_packets if codec.is_video else config.audio_cache_packets
        )
        self.unwrapper = SequenceUnwrapper()
        self.reception: ReceptionStats | None = (
            ReceptionStats(ssrc, codec.clock_rate) if ssrc is not None else None
        )
        self.nacks = NackTracker(
            retry_interval=config.nack_retry_interval, max_retries=config.nack_max_retries
        )
        self.keyframe_requests = KeyframeRequester(config.keyframe_interval)
        #: Delay-based estimate of the publisher's uplink, fed by abs-send-time,
        #: reported back as REMB (capped at ``max_bitrate``).
        self.estimator = estimator if abs_send_time_ext_id is not None else None
        self.max_bitrate = config.max_publisher_bitrate
        self.remb_bitrate = 0
        self.sender_report: SenderReportInfo | None = None
        #: RFC 6464 audio level of the last packet: (voice activity, -dBov), and when.
        self.audio_level: tuple[bool, int] | None = None
        self.audio_level_time = 0.0
        self.last_timestamp = 0
        self.last_arrival = 0.0
        self._last_key_ts: int | None = None
        #: Consumers forwarding this producer, grouped by layout.
        self.groups: dict[Layout, list[Consumer]] = {}
        #: Consumers switching to this producer at its next keyframe.
        self.pending: list[Consumer] = []
        #: The cached keyframe's packets as fan-out templates, per layout, built
        #: by the first replay and reused by the next joiners (see Router._replay).
        self.replay_templates: dict[Layout, list[_Template | None]] = {}
        self.stats = ProducerStats()
        #: Muted by a moderator: still cached, not forwarded.
        self.paused = False
        self.closed = False

    @property
    def consumers(self) -> list[Consumer]:
        return [c for group in self.groups.values() for c in group]

    def _attach(self, consumer: Consumer) -> None:
        self.groups.setdefault(consumer.layout, []).append(consumer)

    def _detach(self, consumer: Consumer) -> None:
        group = self.groups.get(consumer.layout)
        if group is not None and consumer in group:
            group.remove(consumer)
            if not group:
                del self.groups[consumer.layout]
        if consumer in self.pending:
            self.pending.remove(consumer)


@dataclass(slots=True)
class _Segment:
    """A stretch of a consumer's output fed by one source with fixed offsets."""

    out_start: int
    producer: Producer
    seq_offset: int
    ts_offset: int


@dataclass(slots=True)
class _Continuity:
    """Where a consumer's output stood when it last left a source."""

    out_ext_seq: int
    out_timestamp: int
    time: float
    clock_rate: int


@dataclass(eq=False, slots=True)
class Consumer:
    """One outgoing track of a subscriber."""

    id: str
    kind: str
    ssrc: int
    sink: Sink
    layout: Layout
    initial_seq: int
    initial_timestamp: int
    rtx_payload_type: int | None = None
    rtx_ssrc: int | None = None
    cname: str = "telebridge"
    #: The negotiated codec; a source must use the same one.
    mime_type: str | None = None
    source: Producer | None = None
    started: bool = False
    seq_offset: int = 0
    ts_offset: int = 0
    #: Source extended sequence number the consumer started at.
    start_seq: int = 0
    rtx_seq: int = 0
    rtt: float | None = None
    stats: ConsumerStats = field(default_factory=ConsumerStats)
    segments: list[_Segment] = field(default_factory=list)
    continuity: _Continuity | None = None
    last_sr_lsr: int = -1
    last_sr_time: float = 0.0
    last_rtcp: float = 0.0
    resent: dict[int, float] = field(default_factory=dict)
    #: Repairs the subscriber may still spend (full when added to a router),
    #: and ``stats.packets`` when that was counted.
    repair_credit: float = 0.0
    repair_mark: int = 0
    closed: bool = False
    #: The sink's ``send_rtp_header`` if it has one (set by the router).
    send_header: HeaderSend | None = None

    def out_highest(self) -> int:
        """Extended sequence number of the newest packet sent (or -1)."""
        if self.source is not None and self.started:
            return self.source.cache.highest + self.seq_offset
        if self.continuity is not None:
            return self.continuity.out_ext_seq
        return -1


_MAX_SEGMENTS = 4
_MAX_RESENT = 1024
#: Subscribers at least this RTT away (s) get NACKed packets twice.
_FAR_RTT = 0.25


class Router:
    """Routes packets from producers to consumers; owns no I/O."""

    def __init__(self, config: RouterConfig | None = None) -> None:
        self.config = config or RouterConfig()
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
        #: Keyframe requests that reached publishers (PLIs sent upstream).
        self.keyframe_requests_sent = 0
        #: The process reads its input more than ``overload_lag`` late (set
        #: by its timers): subscribers' NACKs are counted as shed, not answered
        #: (a relay's and an in-process track's still are), and
        #: keyframe requests are spaced wider (``sfu/keyframes.py``). A repair
        #: that late comes after the receiver's playout wanted it, and past
        #: saturation every loss becomes a NACK and every NACK more sends,
        #: which keeps the process saturated; receivers that lost a picture
        #: ask for a keyframe, one for all of them.
        self.lagging = False

    # ------------------------------------------------------------------ setup

    def add_producer(self, producer: Producer) -> None:
        if producer.id in self.producers:
            raise ValueError(f"producer {producer.id!r} exists")
        self.producers[producer.id] = producer

    def remove_producer(self, producer_id: str, now: float) -> None:
        """Forget a producer; its consumers stay, idle, until given another source."""
        producer = self.producers.pop(producer_id, None)
        if producer is None:
            return
        producer.closed = True
        for consumer in producer.consumers:
            self._leave_source(consumer, now)
        for consumer in list(producer.pending):
            producer._detach(consumer)

    def add_consumer(self, consumer: Consumer, source_id: str | None, now: float) -> None:
        if consumer.id in self.consumers:
            raise ValueError(f"consumer {consumer.id!r} exists")
        consumer.rtx_seq = consumer.initial_seq ^ 0x5A5A
        consumer.send_header = getattr(consumer.sink, "send_rtp_header", None)
        consumer.repair_credit = float(self.config.repair_burst)
        consumer.repair_mark = consumer.stats.packets
        self.consumers[consumer.id] = consumer
        if source_id is not None:
            self.set_source(consumer.id, source_id, now)

    def clear_source(self, consumer_id: str, now: float) -> None:
        """Leave a consumer idle (no source); its output continues when given one."""
        consumer = self.consumers[consumer_id]
        for other in self.producers.values():
            if consumer in other.pending:
                other.pending.remove(consumer)
        self._leave_source(consumer, now)

    def remove_consumer(self, consumer_id: str, now: float) -> None:
        """Stop a consumer and say goodbye to its subscriber (RTCP BYE, RFC 3550 §6.6)."""
        consumer = self.consumers.pop(consumer_id, None)
        if consumer is None:
            return
        self._leave_source(consumer, now)
        for producer in self.producers.values():
            if consumer in producer.pending:
                producer._detach(consumer)
        consumer.closed = True
        consumer.sink.send_rtcp(rtcp.build_bye([consumer.ssrc]))

    def set_source(self, consumer_id: str, producer_id: str, now: float) -> None:
        """Feed a consumer from another producer, starting at a keyframe.

        With a usable cached keyframe the switch happens at once (the cached
        group of pictures is replayed); otherwise the consumer keeps its
        current source until the new one's next keyframe, which is requested
        (throttled).
        """
        consumer = self.consumers[consumer_id]
        producer = self.producers[producer_id]
        if producer.kind != consumer.kind:
            raise ValueError("cannot feed an audio track from video or vice versa")
        if consumer.mime_type and consumer.mime_type.lower() != producer.codec.mime_type.lower():
            raise ValueError(
                f"cannot feed a {consumer.mime_type} track from {producer.codec.mime_type}"
            )
        for other in self.producers.values():
            if consumer in other.pending:
                other.pending.remove(consumer)
        if consumer.source is producer:
            return
        if not producer.codec.is_video:
            self._switch(consumer, producer, producer.cache.highest + 1, None, now)
            return
        if producer.cache.keyframe_usable(now, self.config.keyframe_max_age):
            self._replay(consumer, producer, now)
            return
        producer.pending.append(consumer)
        self.request_keyframe(producer_id, now)

    # ---------------------------------------------------------------- hot path

    def on_rtp(self, producer: Producer, data: bytes, now: float) -> None:
        """A decrypted RTP packet from a publisher: cache it and fan it out."""
        try:
            header = parse(data)
        except RtpError:
            producer.stats.malformed += 1
            return
        stats = producer.stats
        retransmission = False
        if header.payload_type != producer.payload_type:
            if (
                header.payload_type != producer.rtx_payload_type
                or header.payload_end - header.payload_offset < 2
            ):
                stats.malformed += 1
                return
            if producer.ssrc is None:  # RTX before any media: its SSRC is unknown yet
                stats.malformed += 1
                return
            data, header = _unwrap_rtx(data, header, producer.payload_type, producer.ssrc)
            retransmission = True
        if producer.ssrc is None:
            producer.ssrc = header.ssrc
            producer.reception = ReceptionStats(header.ssrc, producer.codec.clock_rate)
        elif header.ssrc != producer.ssrc:
            stats.malformed += 1
            return
        cache = producer.cache
        previous_highest = cache.highest
        ext_seq = producer.unwrapper.unwrap(header.sequence_number)
        keyframe_start = False
        if producer.codec.is_video and producer.codec.keyframe_start(
            data, header.payload_offset, header.payload_end
        ):
            keyframe_start = header.timestamp != producer._last_key_ts
            producer._last_key_ts = header.timestamp
        if not cache.put(ext_seq, data, now, keyframe_start):
            stats.duplicates += 1
            return
        stats.packets += 1
        stats.bytes += len(data)
        if retransmission:
            stats.retransmissions += 1
        elif producer.reception is not None:
            producer.reception.on_packet(ext_seq, header.timestamp, now)
            if producer.estimator is not None:
                self._estimate(producer, data, header, now)
        if ext_seq > previous_highest:
            producer.last_timestamp = header.timestamp
            producer.last_arrival = now
            missing = producer.nacks.on_packet(ext_seq, previous_highest, now, retransmission)
            if missing:
                self._nack_upstream(producer, missing)
        else:
            producer.nacks.on_packet(ext_seq, previous_highest, now, retransmission)
        if producer.audio_level_ext_id is not None:
            element = header.extensions.get(producer.audio_level_ext_id)
            if element is not None and element[1] >= 1:
                producer.audio_level = audio_level(data, element)
                producer.audio_level_time = now
        if keyframe_start:
            stats.keyframes += 1
            producer.replay_templates.clear()
            producer.keyframe_requests.keyframe_received()
            if producer.pending:
                for consumer in producer.pending:
                    self._switch(consumer, producer, ext_seq, header.timestamp, now)
                producer.pending.clear()
                # The switched consumers are in producer.groups now and get
                # this packet in the fan-out below.
        if not producer.paused:
            self._fan_out(
                producer, data, header, ext_seq, keyframe_start, ext_seq <= previous_highest
            )

    def _fan_out(
        self,
        producer: Producer,
        data: bytes,
        header: RtpHeader,
        ext_seq: int,
        keyframe_start: bool,
        late: bool,
    ) -> None:
        pack = FIXED_HEADER.pack
        ts = header.timestamp
        can_start = keyframe_start or not producer.codec.is_video
        size = len(data)
        for layout, group in producer.groups.items():
            b0, b1, tail = build_template(
                data, header, layout.payload_type, _extension_block(layout, data, header, producer)
            )
            for consumer in group:
                if not consumer.started:
                    if not can_start:
                        continue
                    self._start(consumer, producer, ext_seq, ts)
                elif late and ext_seq < consumer.start_seq:
                    continue  # from before this consumer's start: its number is taken
                seq = (ext_seq + consumer.seq_offset) & 0xFFFF
                out_ts = (ts + consumer.ts_offset) & _U32
                send_header = consumer.send_header
                if send_header is not None:
                    send_header(b0, b1, seq, out_ts, consumer.ssrc, tail)
                else:
                    consumer.sink.send_rtp(pack(b0, b1, seq, out_ts, consumer.ssrc) + tail)
                cstats = consumer.stats
                cstats.packets += 1
                cstats.bytes += size

    # ---------------------------------------------------------- source switch

    def _leave_source(self, consumer: Consumer, now: float) -> None:
        source = consumer.source
        if source is None:
            return
        if consumer.started:
            consumer.continuity = _Continuity(
                out_ext_seq=source.cache.highest + consumer.seq_offset,
                out_timestamp=(source.last_timestamp + consumer.ts_offset) & _U32,
                time=source.last_arrival,
                clock_rate=source.codec.clock_rate,
            )
        source._detach(consumer)
        consumer.source = None
        consumer.started = False

    def _switch(
        self,
        consumer: Consumer,
        producer: Producer,
        ext_seq: int,
        timestamp: int | None,
        now: float,
    ) -> None:
        """Move a consumer to ``producer``; it starts at ``ext_seq`` if given a timestamp."""
        self._leave_source(consumer, now)
        consumer.source = producer
        producer._attach(consumer)
        if timestamp is not None:
            self._start(consumer, producer, ext_seq, timestamp, now)

    def _start(
        self,
        consumer: Consumer,
        producer: Producer,
        ext_seq: int,
        timestamp: int,
        now: float | None = None,
    ) -> None:
        """Fix a consumer's offsets so that ``ext_seq``/``timestamp`` continue its output."""
        prev = consumer.continuity
        if prev is None:
            out_seq = consumer.initial_seq
            out_ts = consumer.initial_timestamp
        else:
            elapsed = (now if now is not None else producer.last_arrival) - prev.time
            out_seq = prev.out_ext_seq + 1
            out_ts = prev.out_timestamp + max(1, int(elapsed * prev.clock_rate))
        consumer.seq_offset = out_seq - ext_seq
        consumer.ts_offset = (out_ts - timestamp) & _U32
        consumer.start_seq = ext_seq
        consumer.started = True
        consumer.segments.append(
            _Segment(out_seq, producer, consumer.seq_offset, consumer.ts_offset)
        )
        del consumer.segments[:-_MAX_SEGMENTS]

    def _replay(self, consumer: Consumer, producer: Producer, now: float) -> None:
        """Start a consumer from the cached keyframe: send the GOP so far at once.

        The packets are rewritten the way the fan-out does it (one template
        per packet and layout, then a fixed header per copy, sent through the
        consumer's in-place path). The templates stay with the producer until
        its next keyframe: in a join storm every joiner after the first
        replays the same packets, and pays for the header only.
        """
        first = producer.cache.key_start
        templates = self._replay_templates(producer, consumer.layout)
        key = templates[0]
        assert key is not None  # keyframe_usable() checked it; it parsed when it came
        self._switch(consumer, producer, first, key[3], now)
        pack = FIXED_HEADER.pack
        send_header = consumer.send_header
        seq_offset, ts_offset, ssrc = consumer.seq_offset, consumer.ts_offset, consumer.ssrc
        cstats = consumer.stats
        for ext_seq, template in enumerate(templates, first):
            if template is None:
                continue
            b0, b1, tail, ts, size = template
            seq = (ext_seq + seq_offset) & 0xFFFF
            out_ts = (ts + ts_offset) & _U32
            if send_header is not None:
                send_header(b0, b1, seq, out_ts, ssrc, tail)
            else:
                consumer.sink.send_rtp(pack(b0, b1, seq, out_ts, ssrc) + tail)
            cstats.packets += 1
            cstats.bytes += size

    @staticmethod
    def _replay_templates(producer: Producer, layout: Layout) -> list[_Template | None]:
        """Templates for the cached keyframe and every packet since, for ``layout``.

        Indexed from the keyframe's first packet; extended to the newest
        packet on each call (keyframe_usable() vouched that none is missing).
        None marks a packet that does not parse (it is not sent).
        """
        cache = producer.cache
        templates = producer.replay_templates.setdefault(layout, [])
        for ext_seq in range(cache.key_start + len(templates), cache.highest + 1):
            data = cache.get(ext_seq)
            templates.append(None if data is None else _template(producer, layout, data))
        return templates

    @staticmethod
    def _rewrite_for(
        consumer: Consumer,
        producer: Producer,
        data: bytes,
        ext_seq: int,
        seq_offset: int,
        ts_offset: int,
    ) -> bytes | None:
        """One packet rewritten for one consumer, off the hot path (NACK answers)."""
        template = _template(producer, consumer.layout, data)
        if template is None:
            return None
        b0, b1, tail, ts, _ = template
        seq = (ext_seq + seq_offset) & 0xFFFF
        return FIXED_HEADER.pack(b0, b1, seq, (ts + ts_offset) & _U32, consumer.ssrc) + tail

    # ------------------------------------------------------------- feedback

    def request_keyframe(self, producer_id: str, now: float) -> bool:
        """Ask a video producer for a keyframe, throttled; True if a PLI went out now."""
        producer = self.producers.get(producer_id)
        if producer is None or not producer.codec.is_video or producer.ssrc is None:
            if producer is not None and producer.codec.is_video:
                producer.keyframe_requests.pending = True
            return False
        if producer.keyframe_requests.request(now, self.lagging):
            self._send_pli(producer)
            return True
        return False

    def _send_pli(self, producer: Producer) -> None:
        assert producer.ssrc is not None
        self.keyframe_requests_sent += 1
        producer.sink.send_rtcp(rtcp.build_pli(producer.rtcp_ssrc, producer.ssrc))

    @staticmethod
    def _estimate(producer: Producer, data: bytes, header: RtpHeader, now: float) -> None:
        """Feed the uplink estimator; send REMB (draft-alvestrand-rmcat-remb) when it updates."""
        assert producer.estimator is not None and producer.abs_send_time_ext_id is not None
        element = header.extensions.get(producer.abs_send_time_ext_id)
        if element is None or element[1] != 3:
            return
        pos = element[0]
        abs_send_time = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
        result = producer.estimator.add(
            int(now * 1000),
            abs_send_time,
            header.payload_end - header.payload_offset,
            header.ssrc,
        )
        if result is not None and producer.ssrc is not None:
            producer.remb_bitrate = min(result[0], producer.max_bitrate)
            producer.sink.send_rtcp(
                rtcp.build_remb(producer.rtcp_ssrc, producer.remb_bitrate, [producer.ssrc])
            )

    def _nack_upstream(self, producer: Producer, seqs: list[int]) -> None:
        if producer.ssrc is None:
            return
        producer.stats.nacks_sent += 1
        producer.sink.send_rtcp(
            rtcp.build_nack(producer.rtcp_ssrc, producer.ssrc, [s & 0xFFFF for s in seqs])
        )

    def on_subscriber_rtcp(
        self, consumer: Consumer, packet: rtcp.RtcpPacket, now: float, *, in_process: bool = False
    ) -> None:
        """Feedback from a subscriber about one of its tracks.

        ``in_process``: from a relay or an in-process track (the recorder),
        whose NACKs are answered even while the process lags (:attr:`lagging`):
        one answer serves a whole worker's subscribers, or keeps a recording whole.
        """
        consumer.last_rtcp = now
        if isinstance(packet, rtcp.Nack):
            consumer.stats.nacks += 1
            if self.lagging and not in_process:
                consumer.stats.repairs_shed += len(packet.lost)
            else:
                self._answer_nack(consumer, packet.lost, now)
        elif isinstance(packet, rtcp.Pli | rtcp.Fir):
            consumer.stats.keyframe_requests += 1
            if consumer.source is not None:
                self.request_keyframe(consumer.source.id, now)
        elif isinstance(packet, rtcp.ReceiverReport | rtcp.SenderReport):
            for block in packet.reports:
                if block.ssrc == consumer.ssrc and block.lsr and block.lsr == consumer.last_sr_lsr:
                    rtt = now - consumer.last_sr_time - block.dlsr / 65536
                    if rtt >= 0:
                        previous = consumer.rtt
                        consumer.rtt = rtt if previous is None else 0.8 * previous + 0.2 * rtt

    def _answer_nack(self, consumer: Consumer, lost: Sequence[int], now: float) -> None:
        """Resend what a subscriber's NACK lists, within its repair budget.

        Each resent packet costs ``copies`` from the budget (see
        :meth:`_repair_credit`); once it is spent the rest of the list is
        counted as shed without being looked at, so a flood of NACKs from a
        subscriber that lost most of its stream costs little beyond parsing it.
        """
        # A far subscriber gets two copies: a lost repair would cost it
        # another round trip, longer than its playout delay covers.
        copies = 2 if consumer.rtt is not None and consumer.rtt >= _FAR_RTT else 1
        credit = self._repair_credit(consumer)
        for index, out_seq in enumerate(lost):
            if credit < copies:
                consumer.stats.repairs_shed += len(lost) - index
                break
            if self._retransmit(consumer, out_seq, copies, now):
                credit -= copies
        consumer.repair_credit = credit

    def _repair_credit(self, consumer: Consumer) -> float:
        """The subscriber's repair budget now: a token bucket filled by forwarding.

        Each packet sent to the subscriber earns ``repair_ratio`` repairs, up
        to ``repair_burst`` (the bucket starts full). A subscriber on a bad
        link loses a few per cent and is repaired in full; one that loses
        most of its stream (its link is far below the feed, or the server is
        past saturation, where each loss becomes a NACK and each NACK a
        send) adds at most this share again instead of feeding the overload.
        Computed per NACK: the per-copy fan-out never touches it.
        """
        sent = consumer.stats.packets
        earned = (sent - consumer.repair_mark) * self.config.repair_ratio
        consumer.repair_mark = sent
        return min(float(self.config.repair_burst), consumer.repair_credit + earned)

    def _retransmit(self, consumer: Consumer, out_seq: int, copies: int, now: float) -> bool:
        """Resend one NACKed packet from the producer's cache (RTX when negotiated).

        True if it was sent (``copies`` times), False if it was repaired
        within the last round trip or is not in the cache.
        """
        last = consumer.resent.get(out_seq)
        if last is not None and now - last < max(consumer.rtt or 0.0, 0.005):
            return False  # RFC 4585 §3.5.4: one repair per round trip is enough
        highest = consumer.out_highest()
        if highest < 0:
            consumer.stats.nack_misses += 1
            return False
        out_ext = highest - ((highest - out_seq) & 0xFFFF)
        segment = None
        for candidate in reversed(consumer.segments):
            if candidate.out_start <= out_ext:
                segment = candidate
                break
        if segment is None:
            consumer.stats.nack_misses += 1
            return False
        src_ext = out_ext - segment.seq_offset
        producer = segment.producer
        data = producer.cache.get(src_ext)
        if data is None:
            consumer.stats.nack_misses += 1
            if producer is consumer.source and producer.cache.evicted(src_ext):
                # Too old to repair: only a keyframe gets the subscriber going
                # again. A packet still missing upstream is not: it is being
                # NACKed upstream and is forwarded when it comes.
                self.request_keyframe(producer.id, now)
            return False
        out = self._rewrite_for(
            consumer, producer, data, src_ext, segment.seq_offset, segment.ts_offset
        )
        if out is None:
            return False
        if len(consumer.resent) >= _MAX_RESENT:
            consumer.resent.clear()
        consumer.resent[out_seq] = now
        consumer.stats.retransmitted += 1
        for _ in range(copies):
            if consumer.rtx_payload_type is not None and consumer.rtx_ssrc is not None:
                consumer.sink.send_rtp(
                    wrap_rtx(
                        out, consumer.rtx_payload_type, consumer.rtx_seq & 0xFFFF, consumer.rtx_ssrc
                    )
                )
                consumer.rtx_seq += 1
            else:
                consumer.sink.send_rtp(out)
        return True

    def on_sender_report(self, producer: Producer, report: rtcp.SenderReport, now: float) -> None:
        """A publisher's SR: kept for lip-sync translation and for our RR's LSR/DLSR."""
        producer.sender_report = SenderReportInfo(report.ntp_timestamp, report.rtp_timestamp, now)
        if producer.reception is not None:
            producer.reception.on_sender_report(report.ntp_timestamp, now)

    # ---------------------------------------------------------------- timers

    def poll(self, now: float) -> None:
        """Periodic work (call every ~20 ms): NACK retries and deferred keyframe requests."""
        for producer in self.producers.values():
            if len(producer.nacks):
                retry, lost = producer.nacks.due(now)
                if retry:
                    self._nack_upstream(producer, retry)
                producer.stats.lost_unrecovered += len(lost)
            if not producer.codec.is_video or producer.ssrc is None:
                continue
            if producer.pending:
                # Consumers still wait for a keyframe: the first request or its
                # answer may have been lost, so ask again (throttled).
                self.request_keyframe(producer.id, now)
            elif producer.keyframe_requests.poll(now, self.lagging):
                self._send_pli(producer)

    def sender_report(self, consumer: Consumer, now: float) -> bytes | None:
        """An SR + SDES compound for a consumer (RFC 3550 §6.4.1, §6.5), or None if idle.

        The NTP↔RTP mapping is the publisher's last SR translated into the
        consumer's timestamp space and extrapolated to ``now``, so receivers
        keep audio and video of one publisher in sync. Without a publisher SR
        the SFU's own clock stands in.
        """
        source = consumer.source
        if source is None or not consumer.started:
            return None
        clock_rate = source.codec.clock_rate
        mapping = self.clock_mapping(consumer, now)
        if mapping is not None:
            ntp = rtcp.ntp_from_unix(mapping[0])
            rtp_ts = mapping[1]
        else:
            ntp = rtcp.ntp_from_unix(now)
            rtp_ts = (
                source.last_timestamp
                + int((now - source.last_arrival) * clock_rate)
                + consumer.ts_offset
            )
        consumer.last_sr_lsr = rtcp.ntp_middle32(ntp)
        consumer.last_sr_time = now
        return rtcp.build_sr(
            consumer.ssrc,
            ntp,
            rtp_ts & _U32,
            consumer.stats.packets & _U32,
            consumer.stats.bytes & _U32,
        ) + rtcp.build_sdes_cname(consumer.ssrc, consumer.cname)

    def clock_mapping(self, consumer: Consumer, now: float) -> tuple[float, int] | None:
        """The publisher's wall clock at ``now`` and the matching RTP time of ``consumer``.

        Taken from the source's last sender report (RFC 3550 §6.4.1), moved
        into the consumer's timestamp space and extrapolated to ``now``;
        None before the source sent one. The RTP time is not wrapped.
        """
        source = consumer.source
        if source is None or not consumer.started or source.sender_report is None:
            return None
        sr = source.sender_report
        elapsed = now - sr.arrival
        wall = rtcp.unix_from_ntp(sr.ntp_timestamp) + elapsed
        rtp_ts = sr.rtp_timestamp + int(elapsed * source.codec.clock_rate) + consumer.ts_offset
        return wall, rtp_ts

    def receiver_report(self, producer: Producer, now: float) -> bytes | None:
        """An RR for a publisher's stream (RFC 3550 §6.4.2), or None before any packet."""
        if producer.reception is None:
            return None
        block = producer.reception.report_block(now)
        if block is None:
            return None
        return rtcp.build_rr(producer.rtcp_ssrc, [block])

    def active_speaker(
        self, now: float, window: float = 1.0, among: Collection[str] | None = None
    ) -> Producer | None:
        """The audio producer with the loudest recent level (RFC 6464), if any spoke.

        ``among`` restricts the choice to these producer ids (one room's).
        """
        best: Producer | None = None
        best_level = 128
        producers = (
            self.producers.values()
            if among is None
            else [p for i in among if (p := self.producers.get(i)) is not None]
        )
        for producer in producers:
            level = producer.audio_level
            if level is None or now - producer.audio_level_time > window:
                continue
            if level[1] < best_level and level[1] < 127:
                best, best_level = producer, level[1]
        return best


def _unwrap_rtx(
    data: bytes, header: RtpHeader, payload_type: int, ssrc: int
) -> tuple[bytes, RtpHeader]:
    """Turn an RTX packet (RFC 4588 §4) back into the original packet."""
    pos = header.payload_offset
    osn = (data[pos] << 8) | data[pos + 1]
    b1 = (data[1] & 0x80) | payload_type
    original = (
        FIXED_HEADER.pack(data[0] & 0xDF, b1, osn, header.timestamp, ssrc)
        + data[12:pos]
        + data[pos + 2 : header.payload_end]
    )
    return original, parse(original)


def _template(producer: Producer, layout: Layout, data: bytes) -> _Template | None:
    """A cached packet of ``producer`` made ready for ``layout`` (None: it does not parse)."""
    try:
        header = parse(data)
    except RtpError:
        return None
    block = _extension_block(layout, data, header, producer)
    b0, b1, tail = build_template(data, header, layout.payload_type, block)
    return b0, b1, tail, header.timestamp, len(data)


def _extension_block(layout: Layout, data: bytes, header: RtpHeader, producer: Producer) -> bytes:
    """The header extensions a subscriber negotiated, filled from the source packet."""
    elements: list[tuple[int, bytes]] = []
    if layout.mid_ext_id is not None and layout.mid:
        elements.append((layout.mid_ext_id, layout.mid.encode()))
    for source_id, target_id in (
        (producer.audio_level_ext_id, layout.audio_level_ext_id),
        (producer.abs_send_time_ext_id, layout.abs_send_time_ext_id),
    ):
        if source_id is None or target_id is None:
            continue
        element = header.extensions.get(source_id)
        if element is not None:
            elements.append((target_id, data[element[0] : element[0] + element[1]]))
    return build_extension_block(elements)
