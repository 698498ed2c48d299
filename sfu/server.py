"""The SFU's command API: publish, subscribe, answer, set source, unsubscribe,
request keyframe, close, stats — addressed by ids.

Signaling drives this API; tests drive it directly. One :class:`Sfu` owns a
:class:`sfu.router.Router` (the sans-I/O core) and one aiortc peer
connection per publisher or subscriber:

* a *publisher* peer offers (``publish``): every audio/video m-section it
  sends becomes a producer with id ``"<peer id>:<mid>"``;
* a *subscriber* peer is offered to (``subscribe`` returns the SFU's offer,
  ``answer`` applies the subscriber's answer): every source asked for becomes
  a send-only m-section and a consumer with id ``"<peer id>:<mid>"``.

Timers: one task polls the router every ``poll_interval`` (NACK retries,
deferred keyframe requests) and every ``rtcp_interval`` sends sender
reports to subscribers, receiver reports to publishers, and reaps peers
that went silent for ``peer_timeout`` seconds or whose connection failed.
No timer or task exists per packet or per peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCRtpReceiver, RTCRtpSender, RTCSessionDescription
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpReceiveParameters,
    RTCRtpSendParameters,
)
from aiortc.sdp import candidate_from_sdp

from sfu import rtcp
from sfu.codecs import codec_info
from sfu.load import LoadMeter, MediaLoad, cpu_limit
from sfu.probe import ReceiveProbe
from sfu.router import (
    Consumer,
    ConsumerStats,
    Layout,
    Producer,
    ProducerStats,
    Router,
    RouterConfig,
    Sink,
)
from sfu.rtp import URI_ABS_SEND_TIME, URI_AUDIO_LEVEL, URI_MID, RtpError, parse
from sfu.transport import ForwardingPeerConnection, PeerSink
from sfu.udpmux import UdpMux

logger = logging.getLogger(__name__)

#: How often the shared sockets' receive delay is probed (``UdpMux.probe``).
PROBE_INTERVAL_S = 0.1


class SfuError(Exception):
    """A command that cannot be carried out; ``code`` is stable for clients."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class SfuConfig:
    """Media-plane settings (the ``[sfu]`` table of the config file)."""

    #: Addresses offered as ICE host candidates.
    candidate_addresses: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    #: Every peer connection of a process on one UDP port (``sfu.udpmux``);
    #: False: a socket per connection, on an ephemeral port (aiortc's way).
    udp_mux: bool = True
    #: The shared port (0: one the system picks). Worker ``i`` uses
    #: ``udp_port + 1 + i``.
    udp_port: int = 0
    #: Addresses written in the candidates in place of ``candidate_addresses``,
    #: one for one (a 1:1 NAT's public address; the private one is bound).
    #: Empty: the bound addresses. Needs ``udp_mux``.
    announced_addresses: list[str] = field(default_factory=list)
    router: RouterConfig = field(default_factory=RouterConfig)
    poll_interval: float = 0.02
    rtcp_interval: float = 1.0
    #: A peer that sent nothing (RTP, RTCP) for this long is closed.
    peer_timeout: float = 10.0
    #: Worker processes for subscribers (``sfu.workers``); 0: everything in
    #: one process. ``telebridge serve`` uses one per core when this is 0
    #: and ``--workers`` is not given.
    workers: int = 0


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """A producer or consumer as the command API names it."""

    id: str
    kind: str
    codec: str
    source: str | None = None


@dataclass(slots=True)
class Peer:
    id: str
    role: str  # "publisher" | "subscriber"
    pc: ForwardingPeerConnection
    sink: PeerSink
    created: float
    last_activity: float
    producers: dict[str, Producer] = field(default_factory=dict)  # by mid
    by_ssrc: dict[int, Producer] = field(default_factory=dict)
    mid_ext_id: int | None = None
    sources: dict[str, str | None] = field(default_factory=dict)  # subscriber: mid -> source
    consumers: dict[int, Consumer] = field(default_factory=dict)  # by SSRC
    unknown_ssrc: int = 0
    malformed_rtcp: int = 0
    closing: bool = False


class Sfu:
    """The media plane of one process."""

    def __init__(self, config: SfuConfig | None = None, clock: Callable[[], float] = time.time):
        self.config = config or SfuConfig()
        self.router = Router(self.config.router)
        self.peers: dict[str, Peer] = {}
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        #: Counts of closed producers and consumers (see :meth:`totals`).
        self._retired: dict[str, int] = {}
        #: How late this process handles its input, and its CPU share.
        self.load = LoadMeter()
        #: Receive-delay probes of input sockets other than the shared port's
        #: (relays into this process, ``sfu/relay.py``); sent with those.
        self.input_probes: set[ReceiveProbe] = set()
        #: The negotiated codec of each producer, to offer it to subscribers.
        self._negotiated: dict[str, RTCRtpCodecParameters] = {}
        #: The shared UDP port's sockets (None: a socket per connection).
        self.mux = (
            UdpMux(
                self.config.candidate_addresses,
                self.config.udp_port,
                self.config.announced_addresses,
                on_delay=self.load.observe,
            )
            if self.config.udp_mux
            else None
        )

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind the shared UDP port (``OSError`` if it cannot be) and start the timers."""
        if self.mux is not None:
            await self.mux.open()
        if self._task is None:
            self.load.sample_cpu(time.monotonic(), time.process_time())
            self.load.cpu_limit = cpu_limit()
            self._task = asyncio.get_running_loop().create_task(self._run_timers())

    async def stop(self) -> None:
        for peer_id in list(self.peers):
            await self.close(peer_id)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self.mux is not None:
            await self.mux.close()

    async def __aenter__(self) -> Sfu:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --------------------------------------------------------------- commands

    async def publish(self, peer_id: str, offer_sdp: str) -> tuple[str, list[TrackInfo]]:
        """Accept a publisher's offer; returns the SFU's answer and the new producers."""
        peer = self._new_peer(peer_id, "publisher")
        try:
            await peer.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            answer = await peer.pc.createAnswer()
            await peer.pc.setLocalDescription(answer)
        except SfuError:
            await self.close(peer_id)
            raise
        except Exception as exc:
            await self.close(peer_id)
            raise SfuError("invalid-sdp", f"cannot negotiate the offer: {exc}") from exc
        now = self._clock()
        tracks: list[TrackInfo] = []
        for transceiver in peer.pc.getTransceivers():
            if transceiver.currentDirection not in ("recvonly", "sendrecv"):
                continue
            producer = self._make_producer(peer, transceiver)
            if producer is None:
                continue
            self.router.add_producer(producer)
            self._negotiated[producer.id] = transceiver._codecs[0]
            peer.producers[str(transceiver.mid)] = producer
            tracks.append(TrackInfo(producer.id, producer.kind, producer.codec.mime_type))
        peer.last_activity = now
        if not tracks:
            await self.close(peer_id)
            raise SfuError("no-media", "the offer sends no audio or video the SFU can forward")
        return peer.pc.localDescription.sdp, tracks

    async def subscribe(self, peer_id: str, sources: list[str]) -> tuple[str, list[TrackInfo]]:
        """Create a subscriber with one send-only track per source; returns the SFU's offer."""
        producers = [self._producer(source) for source in sources]
        if not producers:
            raise SfuError("no-media", "nothing to subscribe to")
        peer = self._new_peer(peer_id, "subscriber")
        tracks: list[TrackInfo] = []
        for producer in producers:
            self._add_transceiver(peer, producer)
            tracks.append(TrackInfo("", producer.kind, producer.codec.mime_type, producer.id))
        offer = await peer.pc.createOffer()
        await peer.pc.setLocalDescription(offer)
        named: list[TrackInfo] = []
        for transceiver, track in zip(peer.pc.getTransceivers(), tracks, strict=True):
            peer.sources[str(transceiver.mid)] = track.source
            named.append(
                TrackInfo(f"{peer_id}:{transceiver.mid}", track.kind, track.codec, track.source)
            )
        return peer.pc.localDescription.sdp, named

    async def add_sources(self, peer_id: str, sources: list[str]) -> tuple[str, list[TrackInfo]]:
        """Add tracks to an existing subscriber (renegotiation); returns a new offer.

        The returned tracks are the added ones; the subscriber answers with
        :meth:`answer` as for the first offer.
        """
        peer = self._peer(peer_id)
        if peer.role != "subscriber":
            raise SfuError("wrong-state", "only subscribers receive tracks")
        if peer.pc.signalingState != "stable":
            raise SfuError("wrong-state", "an offer to this subscriber awaits its answer")
        producers = [self._producer(source) for source in sources]
        if not producers:
            raise SfuError("no-media", "nothing to subscribe to")
        added = [self._add_transceiver(peer, producer) for producer in producers]
        await peer.pc.setLocalDescription(await peer.pc.createOffer())
        tracks = []
        for transceiver, producer in zip(added, producers, strict=True):
            peer.sources[str(transceiver.mid)] = producer.id
            tracks.append(
                TrackInfo(
                    f"{peer_id}:{transceiver.mid}",
                    producer.kind,
                    producer.codec.mime_type,
                    producer.id,
                )
            )
        return peer.pc.localDescription.sdp, tracks

    async def add_ice_candidate(self, peer_id: str, candidate: dict[str, Any] | None) -> None:
        """Add a trickled remote ICE candidate (``RTCIceCandidate.toJSON()``); None ends them."""
        peer = self._peer(peer_id)
        if candidate is None:
            await peer.pc.addIceCandidate(None)
            return
        try:
            line = str(candidate["candidate"])
            if line.startswith("candidate:"):
                line = line[len("candidate:") :]
            if not line:
                return  # an empty candidate also means end of candidates
            ice = candidate_from_sdp(line)
            ice.sdpMid = candidate.get("sdpMid")
            ice.sdpMLineIndex = candidate.get("sdpMLineIndex")
            await peer.pc.addIceCandidate(ice)
        except (KeyError, ValueError, TypeError, IndexError, AssertionError) as exc:
            # aiortc's candidate parser asserts on short lines: still the sender's error.
            raise SfuError("invalid-candidate", f"cannot use the ICE candidate: {exc!r}") from exc

    def set_paused(self, producer_id: str, paused: bool) -> None:
        """Stop (or resume) forwarding a producer, e.g. when a moderator mutes it."""
        self._producer(producer_id).paused = paused

    async def answer(self, peer_id: str, answer_sdp: str) -> None:
        """Apply a subscriber's answer to the SFU's offer."""
        peer = self._peer(peer_id)
        if peer.role != "subscriber":
            raise SfuError("wrong-state", "only subscribers answer")
        try:
            await peer.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))
        except Exception as exc:
            raise SfuError("invalid-sdp", f"cannot apply the answer: {exc}") from exc

    def set_source(self, consumer_id: str, producer_id: str | None) -> None:
        """Feed a subscribed track from another producer (switching at a keyframe), or idle it.

        Works before the track is connected too: the consumer then starts
        with this source.
        """
        if producer_id is not None:
            self._producer(producer_id)
        if consumer_id not in self.router.consumers:
            peer_id, _, mid = consumer_id.rpartition(":")
            peer = self.peers.get(peer_id)
            if peer is None or mid not in peer.sources:
                raise SfuError("unknown-track", f"no subscribed track {consumer_id!r}")
            peer.sources[mid] = producer_id
            return
        try:
            if producer_id is None:
                self.router.clear_source(consumer_id, self._clock())
            else:
                self.router.set_source(consumer_id, producer_id, self._clock())
        except ValueError as exc:
            raise SfuError("kind-mismatch", str(exc)) from exc

    def unsubscribe(self, consumer_id: str) -> None:
        """Stop forwarding to one subscribed track (its subscriber gets an RTCP BYE)."""
        consumer = self.router.consumers.get(consumer_id)
        if consumer is None:
            raise SfuError("unknown-track", f"no subscribed track {consumer_id!r}")
        self._retire(consumer.stats)
        self.router.remove_consumer(consumer_id, self._clock())
        peer = self.peers.get(consumer_id.rsplit(":", 1)[0])
        if peer is not None:
            peer.consumers.pop(consumer.ssrc, None)
            if consumer.rtx_ssrc is not None:
                peer.consumers.pop(consumer.rtx_ssrc, None)

    def request_keyframe(self, producer_id: str) -> bool:
        """Ask a publisher for a keyframe (throttled); True if a PLI went out now."""
        self._producer(producer_id)
        return self.router.request_keyframe(producer_id, self._clock())

    def attach_local(
        self,
        consumer_id: str,
        kind: str,
        mime_type: str,
        sink: Sink,
        source: str | None,
        layout: Layout | None = None,
    ) -> None:
        """An in-process subscriber track (the recorder, a relay): plaintext RTP to ``sink``.

        It behaves like a remote subscriber's track (keyframe starts, source
        switches, NACKs through :meth:`local_feedback`) minus the transport;
        :meth:`unsubscribe` removes it. ``source`` may be None (idle).
        ``layout`` sets the payload type and header extensions written
        (default: none, payload type 0 for video and 1 for audio).
        """
        if consumer_id in self.router.consumers:
            raise SfuError("peer-exists", f"track {consumer_id!r} exists")
        info = codec_info(mime_type)
        if info is None or ("video" if info.is_video else "audio") != kind:
            raise SfuError("codec-unsupported", f"cannot record {kind} as {mime_type}")
        if source is not None:
            self._producer(source)
        consumer = Consumer(
            id=consumer_id,
            kind=kind,
            ssrc=random.randrange(1, 1 << 32),
            sink=sink,
            layout=layout
            or Layout(
                payload_type=0 if info.is_video else 1,
                mid=None,
                mid_ext_id=None,
                audio_level_ext_id=None,
                abs_send_time_ext_id=None,
            ),
            initial_seq=random.randrange(0x8000),
            initial_timestamp=random.randrange(1 << 32),
            mime_type=mime_type,
        )
        now = self._clock()
        consumer.last_rtcp = now
        try:
            self.router.add_consumer(consumer, source, now)
        except ValueError as exc:
            self.router.consumers.pop(consumer_id, None)
            raise SfuError("kind-mismatch", str(exc)) from exc

    def add_relay_producer(
        self, producer_id: str, kind: str, codec: RTCRtpCodecParameters, ssrc: int, sink: Sink
    ) -> Producer:
        """A producer fed by a relay (``sfu.relay.RelayIn``), not by a publisher peer.

        Its packets use the relay's payload type and header extensions;
        subscribers are offered ``codec`` (the publisher's negotiated one).
        Upstream NACKs, PLIs and receiver reports go to ``sink``.
        """
        from sfu.relay import relay_layout

        info = codec_info(codec.mimeType)
        if info is None or ("video" if info.is_video else "audio") != kind:
            raise SfuError("codec-unsupported", f"cannot relay {kind} as {codec.mimeType}")
        if producer_id in self.router.producers:
            raise SfuError("peer-exists", f"track {producer_id!r} exists")
        layout = relay_layout(kind)  # what the sending end writes
        producer = Producer(
            producer_id=producer_id,
            codec=info,
            payload_type=layout.payload_type,
            ssrc=ssrc,
            sink=sink,
            rtcp_ssrc=random.randrange(1, 1 << 32),
            config=self.router.config,
            audio_level_ext_id=layout.audio_level_ext_id,
            abs_send_time_ext_id=layout.abs_send_time_ext_id,
        )
        self.router.add_producer(producer)
        self._negotiated[producer_id] = codec
        return producer

    def remove_relay_producer(self, producer_id: str) -> None:
        """Close a relayed producer: its consumers idle until given another source."""
        producer = self.router.producers.get(producer_id)
        if producer is None:
            return
        self._retire(producer.stats)
        self.router.remove_producer(producer_id, self._clock())
        self._negotiated.pop(producer_id, None)

    def negotiated(self, producer_id: str) -> RTCRtpCodecParameters | None:
        """The codec a producer's publisher negotiated (what subscribers are offered)."""
        return self._negotiated.get(producer_id)

    def now(self) -> float:
        """The SFU's clock (what every router entry point is given)."""
        return self._clock()

    def local_feedback(self, consumer_id: str, packet: rtcp.RtcpPacket) -> None:
        """NACK/PLI from an in-process track or a relay, handled like a subscriber's RTCP."""
        consumer = self.router.consumers.get(consumer_id)
        if consumer is not None:
            self.router.on_subscriber_rtcp(consumer, packet, self._clock(), in_process=True)

    def clock_mapping(self, consumer_id: str) -> tuple[str, float, int] | None:
        """(source producer id, publisher wall time now, matching RTP time) of a track.

        From the source's last sender report; None when idle or before one.
        """
        consumer = self.router.consumers.get(consumer_id)
        if consumer is None or consumer.source is None:
            return None
        mapping = self.router.clock_mapping(consumer, self._clock())
        if mapping is None:
            return None
        return consumer.source.id, mapping[0], mapping[1]

    def track_source(self, consumer_id: str) -> str | None:
        """The producer feeding a track now (None when idle or unknown)."""
        consumer = self.router.consumers.get(consumer_id)
        return consumer.source.id if consumer is not None and consumer.source else None

    async def close(self, peer_id: str) -> None:
        """Close a peer: its producers stop (consumers idle), its consumers say BYE."""
        peer = self.peers.pop(peer_id, None)
        if peer is None:
            return
        peer.closing = True
        self._retired["send_dropped"] = self._retired.get("send_dropped", 0) + peer.sink.dropped
        self._retired["malformed_rtcp"] = (
            self._retired.get("malformed_rtcp", 0) + peer.malformed_rtcp
        )
        now = self._clock()
        for producer in peer.producers.values():
            self._retire(producer.stats)
            self.router.remove_producer(producer.id, now)
            self._negotiated.pop(producer.id, None)
        for consumer in {id(c): c for c in peer.consumers.values()}.values():
            if consumer.id in self.router.consumers:
                self._retire(consumer.stats)
                self.router.remove_consumer(consumer.id, now)
        peer.sink.close()
        await peer.pc.close()

    def peer_counts(self) -> dict[str, int]:
        """Peer connections by role (``publisher``, ``subscriber``)."""
        counts = {"publisher": 0, "subscriber": 0}
        for peer in self.peers.values():
            counts[peer.role] += 1
        return counts

    def _probes(self) -> list[ReceiveProbe]:
        """Every receive-delay probe of this process's input sockets."""
        return [*(self.mux.probes() if self.mux is not None else ()), *self.input_probes]

    def media_loads(self) -> list[MediaLoad]:
        """The media processes (here: this one), their load and their subscribers."""
        subscribers = frozenset(p.id for p in self.peers.values() if p.role == "subscriber")
        return [MediaLoad("main", self.load.lag, self.load.cpu, subscribers, self.load.cpu_limit)]

    def active_speaker(
        self, window: float = 1.0, among: Collection[str] | None = None
    ) -> str | None:
        """The producer id of the loudest recent audio track (RFC 6464 levels).

        ``among`` restricts the choice to these producers (one room's).
        """
        producer = self.router.active_speaker(self._clock(), window, among)
        return producer.id if producer is not None else None

    def _retire(self, stats: ProducerStats | ConsumerStats) -> None:
        """Keep a closing producer's or consumer's counts in the running totals."""
        prefix = "in_" if isinstance(stats, ProducerStats) else "out_"
        for name in stats.__slots__:
            key = prefix + name
            self._retired[key] = self._retired.get(key, 0) + getattr(stats, name)

    def totals(self) -> dict[str, int]:
        """Monotonic counters since start (live and closed producers/consumers).

        Keys: ``in_<ProducerStats field>`` and ``out_<ConsumerStats field>``,
        plus ``keyframe_requests_sent``, ``send_dropped``, ``malformed_rtcp``
        and ``udp_unrouted`` (datagrams on the shared port from nobody known).
        """
        totals = dict(self._retired)
        for producer in self.router.producers.values():
            for name in producer.stats.__slots__:
                totals["in_" + name] = totals.get("in_" + name, 0) + getattr(producer.stats, name)
        for consumer in self.router.consumers.values():
            for name in consumer.stats.__slots__:
                key = "out_" + name
                totals[key] = totals.get(key, 0) + getattr(consumer.stats, name)
        totals["keyframe_requests_sent"] = self.router.keyframe_requests_sent
        totals["send_dropped"] = self._retired.get("send_dropped", 0) + sum(
            p.sink.dropped for p in self.peers.values()
        )
        totals["malformed_rtcp"] = self._retired.get("malformed_rtcp", 0) + sum(
            p.malformed_rtcp for p in self.peers.values()
        )
        totals["udp_unrouted"] = self.mux.counts()["unrouted"] if self.mux is not None else 0
        return totals

    def stats(self) -> dict[str, Any]:
        """Counters of every peer, producer and consumer (for metrics and tests)."""
        now = self._clock()
        producers = []
        for p in self.router.producers.values():
            level = p.audio_level if p.audio_level and now - p.audio_level_time < 1 else None
            producers.append(
                {
                    "id": p.id,
                    "kind": p.kind,
                    "codec": p.codec.mime_type,
                    "consumers": len(p.consumers),
                    "audio_level_dbov": -level[1] if level else None,
                    "keyframe_requests": p.keyframe_requests.sent,
                    **_asdict(p.stats),
                }
            )
        consumers = [
            {
                "id": c.id,
                "kind": c.kind,
                "source": c.source.id if c.source else None,
                "started": c.started,
                "rtt_ms": round(c.rtt * 1000, 1) if c.rtt is not None else None,
                **_asdict(c.stats),
            }
            for c in self.router.consumers.values()
        ]
        return {
            "publishers": sum(1 for p in self.peers.values() if p.role == "publisher"),
            "subscribers": sum(1 for p in self.peers.values() if p.role == "subscriber"),
            "keyframe_requests_sent": self.router.keyframe_requests_sent,
            "send_dropped": sum(p.sink.dropped for p in self.peers.values()),
            "send_errors": sum(p.sink.errors for p in self.peers.values()),
            "unknown_ssrc": sum(p.unknown_ssrc for p in self.peers.values()),
            "malformed_rtcp": sum(p.malformed_rtcp for p in self.peers.values()),
            "loop_lag_ms": round(self.load.lag * 1000, 1),
            "cpu": round(self.load.cpu, 3),
            "cpu_limit": round(self.load.cpu_limit, 3),
            "producers": producers,
            "consumers": consumers,
        }

    # --------------------------------------------------------------- peers

    def _producer(self, producer_id: str) -> Producer:
        producer = self.router.producers.get(producer_id)
        if producer is None:
            raise SfuError("unknown-track", f"no published track {producer_id!r}")
        return producer

    def _add_transceiver(self, peer: Peer, producer: Producer) -> Any:
        """A send-only m-section offering exactly the producer's codec (and RTX)."""
        transceiver = peer.pc.addTransceiver(producer.kind, direction="sendonly")
        transceiver.setCodecPreferences(_codec_preferences(producer, self._negotiated[producer.id]))
        # One MediaStream (msid) per publisher, so receivers lip-sync its tracks.
        transceiver.sender._stream_id = producer.id.rsplit(":", 1)[0]
        return transceiver

    def _peer(self, peer_id: str) -> Peer:
        peer = self.peers.get(peer_id)
        if peer is None:
            raise SfuError("unknown-peer", f"no peer {peer_id!r}")
        return peer

    def _new_peer(self, peer_id: str, role: str) -> Peer:
        if peer_id in self.peers:
            raise SfuError("peer-exists", f"peer {peer_id!r} exists")
        if ":" in peer_id:
            raise SfuError("invalid-id", "peer ids cannot contain ':'")
        holder: list[Peer] = []

        def on_rtp(data: bytes) -> None:
            self._on_rtp(holder[0], data)

        def on_rtcp(data: bytes) -> None:
            self._on_rtcp(holder[0], data)

        def on_sender_ready(sender: RTCRtpSender, params: RTCRtpSendParameters) -> None:
            self._on_sender_ready(holder[0], sender, params)

        def on_receiver_ready(receiver: RTCRtpReceiver, params: RTCRtpReceiveParameters) -> None:
            self._on_receiver_ready(holder[0], params)

        pc = ForwardingPeerConnection(
            self.config.candidate_addresses,
            on_rtp,
            on_rtcp,
            on_sender_ready,
            on_receiver_ready,
            self.mux,
        )
        now = self._clock()
        # The SFU offers (and so controls ICE) on subscriber connections only.
        sink = PeerSink(pc, connect=role == "subscriber")
        peer = Peer(peer_id, role, pc, sink, now, now)
        holder.append(peer)
        self.peers[peer_id] = peer

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                peer.sink.bind()
            elif pc.connectionState in ("failed", "closed") and not peer.closing:
                logger.info("peer %s connection %s: closing", peer.id, pc.connectionState)
                self._close_later(peer.id)

        return peer

    def _close_later(self, peer_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self.close(peer_id))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _make_producer(self, peer: Peer, transceiver: Any) -> Producer | None:
        codecs: list[RTCRtpCodecParameters] = transceiver._codecs
        if not codecs:
            return None
        primary = codecs[0]
        info = codec_info(primary.mimeType)
        if info is None or primary.payloadType is None:
            return None
        ext_ids = {e.uri: e.id for e in transceiver._headerExtensions}
        peer.mid_ext_id = ext_ids.get(URI_MID)
        return Producer(
            producer_id=f"{peer.id}:{transceiver.mid}",
            codec=info,
            payload_type=primary.payloadType,
            ssrc=None,
            sink=peer.sink,
            rtcp_ssrc=transceiver.sender._ssrc,
            config=self.router.config,
            rtx_payload_type=_rtx_payload_type(codecs, primary.payloadType),
            audio_level_ext_id=ext_ids.get(URI_AUDIO_LEVEL),
            abs_send_time_ext_id=ext_ids.get(URI_ABS_SEND_TIME),
            estimator=RemoteBitrateEstimator() if info.is_video else None,
        )

    def _on_receiver_ready(self, peer: Peer, params: RTCRtpReceiveParameters) -> None:
        peer.sink.bind()
        producer = peer.producers.get(params.muxId)
        if producer is None:
            return
        for encoding in params.encodings:
            if encoding.ssrc:
                peer.by_ssrc[encoding.ssrc] = producer
            if encoding.rtx and encoding.rtx.ssrc:
                peer.by_ssrc[encoding.rtx.ssrc] = producer

    def _on_sender_ready(
        self, peer: Peer, sender: RTCRtpSender, params: RTCRtpSendParameters
    ) -> None:
        peer.sink.bind()
        if peer.closing or not params.codecs:
            return
        mid = params.muxId
        source = peer.sources.get(mid)
        ext_ids = {e.uri: e.id for e in params.headerExtensions}
        primary = params.codecs[0]
        if primary.payloadType is None:
            return
        rtx_pt = _rtx_payload_type(params.codecs, primary.payloadType)
        consumer = Consumer(
            id=f"{peer.id}:{mid}",
            kind=sender.kind,
            ssrc=sender._ssrc,
            sink=peer.sink,
            layout=Layout(
                payload_type=primary.payloadType,
                mid=mid,
                mid_ext_id=ext_ids.get(URI_MID),
                audio_level_ext_id=ext_ids.get(URI_AUDIO_LEVEL),
                abs_send_time_ext_id=ext_ids.get(URI_ABS_SEND_TIME),
            ),
            initial_seq=random.randrange(0x8000),
            initial_timestamp=random.randrange(1 << 32),
            rtx_payload_type=rtx_pt,
            rtx_ssrc=sender._rtx_ssrc if rtx_pt is not None else None,
            cname=params.rtcp.cname or "telebridge",
            mime_type=primary.mimeType,
        )
        now = self._clock()
        consumer.last_rtcp = now
        peer.consumers[consumer.ssrc] = consumer
        if consumer.rtx_ssrc is not None:
            peer.consumers[consumer.rtx_ssrc] = consumer
        live_source = source if source in self.router.producers else None
        self.router.add_consumer(consumer, live_source, now)

    # ------------------------------------------------------------ data path

    def _on_rtp(self, peer: Peer, data: bytes) -> None:
        now = self._clock()
        peer.last_activity = now
        if len(data) < 12:
            peer.unknown_ssrc += 1
            return
        producer = peer.by_ssrc.get(int.from_bytes(data[8:12], "big"))
        if producer is None:
            producer = self._learn_ssrc(peer, data)
            if producer is None:
                peer.unknown_ssrc += 1
                return
        self.forward(producer, data, now)

    def forward(self, producer: Producer, data: bytes, now: float) -> None:
        """A publisher's RTP packet into the router; its copies leave at once.

        On the shared port the fan-out's copies wait in the port's send batch;
        they are sent here, one ``sendmmsg`` for the whole fan-out, rather
        than at the end of the event loop's tick.
        """
        self.router.on_rtp(producer, data, now)
        if self.mux is not None:
            self.mux.flush()

    def _learn_ssrc(self, peer: Peer, data: bytes) -> Producer | None:
        """Route a new SSRC by its MID header extension, else by a unique payload type."""
        if peer.role != "publisher":
            return None
        try:
            header = parse(data)
        except RtpError:
            return None
        producer: Producer | None = None
        if peer.mid_ext_id is not None and peer.mid_ext_id in header.extensions:
            pos, length = header.extensions[peer.mid_ext_id]
            producer = peer.producers.get(data[pos : pos + length].decode("ascii", "replace"))
        if producer is None:
            matches = [
                p
                for p in peer.producers.values()
                if header.payload_type in (p.payload_type, p.rtx_payload_type)
            ]
            producer = matches[0] if len(matches) == 1 else None
        if producer is not None:
            peer.by_ssrc[header.ssrc] = producer
        return producer

    def _on_rtcp(self, peer: Peer, data: bytes) -> None:
        now = self._clock()
        peer.last_activity = now
        result = rtcp.parse_compound(data)
        peer.malformed_rtcp += result.malformed
        router = self.router
        for packet in result.packets:
            if isinstance(packet, rtcp.SenderReport):
                producer = peer.by_ssrc.get(packet.ssrc)
                if producer is not None:
                    router.on_sender_report(producer, packet, now)
            # Each consumer once per packet (its media and RTX SSRCs map to it).
            seen: set[int] = set()
            for ssrc in rtcp.feedback_ssrcs(packet):
                consumer = peer.consumers.get(ssrc)
                if consumer is not None and id(consumer) not in seen:
                    seen.add(id(consumer))
                    router.on_subscriber_rtcp(consumer, packet, now)

    # ---------------------------------------------------------------- timers

    async def _run_timers(self) -> None:
        next_rtcp = self._clock() + self.config.rtcp_interval
        next_probe = 0.0
        while True:
            await asyncio.sleep(self.config.poll_interval)
            monotonic = time.monotonic()
            self.load.tick(monotonic, self.config.poll_interval)
            overload_lag = self.config.router.overload_lag
            self.router.lagging = bool(overload_lag) and self.load.lag > overload_lag
            if monotonic >= next_probe:
                next_probe = monotonic + PROBE_INTERVAL_S
                for probe in self._probes():
                    # A probe out for that long: the input is at least that late.
                    self.load.observe(probe.unread_for(monotonic))
                    probe.send()
            now = self._clock()
            try:
                self.router.poll(now)
                if now >= next_rtcp:
                    # RFC 3550 §6.3.5: randomize the interval (0.5 to 1.5 times).
                    next_rtcp = now + self.config.rtcp_interval * (0.5 + random.random())
                    self._send_reports(now)
                    self._reap(now)
                    self.load.sample_cpu(time.monotonic(), time.process_time())
                    self.load.cpu_limit = cpu_limit()
            except Exception:  # a bug here must not stop every peer's timers
                logger.exception("SFU timer failed")

    def _send_reports(self, now: float) -> None:
        for peer in self.peers.values():
            peer.sink.bind()
            if peer.role == "subscriber":
                for consumer in {id(c): c for c in peer.consumers.values()}.values():
                    report = self.router.sender_report(consumer, now)
                    if report is not None:
                        peer.sink.send_rtcp(report)
            else:
                for producer in peer.producers.values():
                    report = self.router.receiver_report(producer, now)
                    if report is not None:
                        peer.sink.send_rtcp(report)

    def _reap(self, now: float) -> None:
        """Close the peers silent for ``peer_timeout``, judged on what was read.

        What waits unread in this process's sockets is not silence: while
        the process reads its input late (overload) the timeout grows by
        that lag, or an overloaded node would close its publishers too.
        """
        timeout = self.config.peer_timeout + self.load.lag
        for peer in list(self.peers.values()):
            if peer.closing or now - peer.last_activity <= timeout:
                continue
            if peer.pc.connectionState in ("new", "connecting") and now - peer.created <= timeout:
                continue
            logger.info("peer %s silent for %.1f s: closing", peer.id, now - peer.last_activity)
            self._close_later(peer.id)


def _rtx_payload_type(codecs: list[RTCRtpCodecParameters], payload_type: int) -> int | None:
    """The RTX payload type (RFC 4588 §8.6, ``apt``) paired with ``payload_type``."""
    for codec in codecs:
        if (
            codec.mimeType.lower().endswith("/rtx")
            and codec.parameters.get("apt") == payload_type
            and codec.payloadType is not None
        ):
            return codec.payloadType
    return None


def _codec_preferences(producer: Producer, negotiated: RTCRtpCodecParameters) -> list[Any]:
    """aiortc capabilities matching the producer's codec (and RTX for video).

    Only codecs aiortc can negotiate are forwarded: VP8, H.264 constrained
    baseline / baseline with packetization-mode 1, and Opus.
    """
    capabilities = RTCRtpSender.getCapabilities(producer.kind).codecs
    chosen = [
        c
        for c in capabilities
        if not c.mimeType.lower().endswith("/rtx")
        and is_codec_compatible(
            RTCRtpCodecParameters(c.mimeType, c.clockRate, c.channels, parameters=c.parameters),
            negotiated,
        )
    ][:1]
    if not chosen:
        raise SfuError("codec-unsupported", f"cannot offer {producer.codec.mime_type}")
    if producer.codec.is_video:
        chosen += [c for c in capabilities if c.mimeType.lower().endswith("/rtx")]
    return chosen


def _asdict(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}
