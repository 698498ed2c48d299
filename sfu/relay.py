"""The relay: producers carried between SFU processes as plain RTP/RTCP over UDP.

A relay has two ends, each owned by one :class:`sfu.server.Sfu`:

* :class:`RelayOut` (the process where the publisher is) subscribes to a
  producer like any in-process track (``Sfu.attach_local``): the stream it
  sends starts at a keyframe, keeps continuous sequence numbers across
  source changes, and gets NACKs answered from the producer's cache and
  keyframe requests aggregated with everyone else's. Every
  ``rtcp_interval`` it sends an RFC 3550 sender report per stream, so the
  far end keeps lip-sync.
* :class:`RelayIn` (a worker process) turns each relayed stream into a
  producer of its own ``Sfu`` (``Sfu.add_relay_producer``). Subscribers
  there are served from that producer's cache: a lost relay packet is
  NACKed back (RFC 4585 generic NACK) and keyframe requests go back as
  PLIs, both on the same socket; receiver reports give the sending end the
  round-trip time.

The streams of one relay share one socket pair and are told apart by SSRC
(RFC 3550 §8); the control plane tells the receiving end which SSRC is
which producer and its codec (:class:`RelayStream`). Packets are plain
RTP (RFC 3550) with a fixed payload type per kind and two RFC 8285
one-byte header extensions kept from the publisher: the audio level
(RFC 6464) and abs-send-time. On loopback between the workers of one
machine nothing needs protecting; a relay between machines needs SRTP on
the same ends (not built yet).

Both ends read their socket from the event loop's reader callback in
batches until it would block: no task, no ``await`` per packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from sfu import rtcp
from sfu.probe import ReceiveProbe
from sfu.router import Layout, Producer

if TYPE_CHECKING:
    from sfu.server import Sfu

logger = logging.getLogger(__name__)

#: Payload types on the relay (both ends agree; nothing is negotiated).
RELAY_PAYLOAD_TYPES = {"video": 96, "audio": 111}
#: RFC 8285 one-byte extension ids on the relay.
RELAY_AUDIO_LEVEL_EXT = 1
RELAY_ABS_SEND_TIME_EXT = 2
#: Socket buffers of a relay end: a 1080p keyframe burst to a worker fits.
RELAY_BUFFER_BYTES = 4 * 1024 * 1024
_MAX_DATAGRAM = 2048
#: Datagrams read per readable callback before yielding to the loop.
_READ_BATCH = 256


def relay_layout(kind: str) -> Layout:
    """How the sending end writes a relayed stream (and the receiving end reads it)."""
    return Layout(
        payload_type=RELAY_PAYLOAD_TYPES[kind],
        mid=None,
        mid_ext_id=None,
        audio_level_ext_id=RELAY_AUDIO_LEVEL_EXT if kind == "audio" else None,
        abs_send_time_ext_id=RELAY_ABS_SEND_TIME_EXT,
    )


@dataclass(frozen=True, slots=True)
class RelayStream:
    """What the receiving end needs to know about one relayed producer."""

    producer_id: str
    kind: str
    ssrc: int
    codec: RTCRtpCodecParameters
    #: Where the sending end's socket is (feedback goes there).
    source: tuple[str, int]


class RelaySink:
    """Sends plaintext RTP/RTCP on a relay socket: one ``sendto``, no await, no queue."""

    def __init__(self, sock: socket.socket, address: tuple[str, int]) -> None:
        self._sock = sock
        self._address = address
        self.dropped = 0
        self.errors = 0

    def send_rtp(self, packet: bytes) -> None:
        try:
            self._sock.sendto(packet, self._address)
        except BlockingIOError:
            self.dropped += 1
        except OSError:
            self.errors += 1

    send_rtcp = send_rtp


def _bind(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, RELAY_BUFFER_BYTES)
    sock.bind((host, 0))
    return sock


class _Endpoint:
    """A non-blocking UDP socket whose datagrams are handed over in batches."""

    def __init__(self, host: str, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.sock = _bind(host)
        self._on_datagram = on_datagram
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)
        self.malformed = 0

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def _readable(self) -> None:
        recv = self.sock.recvfrom
        for _ in range(_READ_BATCH):
            try:
                data, address = recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ICMP port unreachable after the far end closed
            try:
                self._on_datagram(data, address)
            except Exception:  # one bad datagram must not stop the relay
                self.malformed += 1
                logger.exception("relay datagram from %s failed", address)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


class RelayOut:
    """The sending end of a relay from ``sfu`` to one :class:`RelayIn` at ``target``."""

    def __init__(self, sfu: Sfu, name: str, target: tuple[str, int]) -> None:
        self.sfu = sfu
        self.name = name
        self.endpoint = _Endpoint(target[0], self._on_datagram)
        self.sink = RelaySink(self.endpoint.sock, target)
        #: Relayed producer id -> consumer id on ``sfu``.
        self.consumers: dict[str, str] = {}
        self._by_ssrc: dict[int, str] = {}

    @property
    def address(self) -> tuple[str, int]:
        return self.endpoint.address

    def add(self, producer_id: str) -> RelayStream:
        """Open an (idle) stream for a producer; :meth:`start` starts sending.

        The far end must know the stream (``RelayIn.add``) before the first
        packets, the cached keyframe, arrive.
        """
        consumer_id = f"relay-{self.name}:{producer_id}"
        producer = self.sfu.router.producers.get(producer_id)
        codec = self.sfu.negotiated(producer_id)
        if producer is None or codec is None:
            from sfu.server import SfuError

            raise SfuError("unknown-track", f"no published track {producer_id!r}")
        self.sfu.attach_local(
            consumer_id,
            producer.kind,
            producer.codec.mime_type,
            self.sink,
            None,
            layout=relay_layout(producer.kind),
        )
        ssrc = self.sfu.router.consumers[consumer_id].ssrc
        self.consumers[producer_id] = consumer_id
        self._by_ssrc[ssrc] = consumer_id
        return RelayStream(producer_id, producer.kind, ssrc, codec, self.address)

    def start(self, producer_id: str) -> None:
        """Send a stream opened by :meth:`add`, from the cached keyframe when usable."""
        self.sfu.set_source(self.consumers[producer_id], producer_id)

    def remove(self, producer_id: str) -> None:
        """Stop relaying a producer (the far end is told by the control plane)."""
        consumer_id = self.consumers.pop(producer_id, None)
        if consumer_id is None:
            return
        consumer = self.sfu.router.consumers.get(consumer_id)
        if consumer is not None:
            self._by_ssrc.pop(consumer.ssrc, None)
            self.sfu.router.remove_consumer(consumer_id, self.sfu.now())

    def send_reports(self) -> None:
        """One sender report per relayed stream (call every ``rtcp_interval``)."""
        now = self.sfu.now()
        for consumer_id in self.consumers.values():
            consumer = self.sfu.router.consumers.get(consumer_id)
            report = self.sfu.router.sender_report(consumer, now) if consumer else None
            if report is not None:
                self.sink.send_rtcp(report)

    def _on_datagram(self, data: bytes, address: tuple[str, int]) -> None:
        if not rtcp.is_rtcp(data):
            self.endpoint.malformed += 1
            return
        result = rtcp.parse_compound(data)
        self.endpoint.malformed += result.malformed
        for packet in result.packets:
            for ssrc in rtcp.feedback_ssrcs(packet):
                consumer_id = self._by_ssrc.get(ssrc)
                if consumer_id is not None:
                    self.sfu.local_feedback(consumer_id, packet)

    def close(self) -> None:
        """Stop every stream and close the socket."""
        for producer_id in list(self.consumers):
            self.remove(producer_id)
        self.endpoint.close()


class RelayIn:
    """The receiving end of relays into ``sfu``: each stream becomes a producer there."""

    def __init__(self, sfu: Sfu, host: str = "127.0.0.1") -> None:
        self.sfu = sfu
        self.endpoint = _Endpoint(host, self._on_datagram)
        #: How late the relayed media is read (sent with the Sfu's own probes).
        self.receive_probe = ReceiveProbe(self.endpoint.sock, sfu.load.observe)
        sfu.input_probes.add(self.receive_probe)
        self._by_ssrc: dict[int, Producer] = {}
        self._streams: dict[str, RelayStream] = {}

    @property
    def address(self) -> tuple[str, int]:
        return self.endpoint.address

    def add(self, stream: RelayStream) -> None:
        """Accept a relayed stream as producer ``stream.producer_id`` of ``sfu``."""
        self.remove(stream.producer_id)
        producer = self.sfu.add_relay_producer(
            stream.producer_id,
            stream.kind,
            stream.codec,
            stream.ssrc,
            RelaySink(self.endpoint.sock, stream.source),
        )
        self._streams[stream.producer_id] = stream
        self._by_ssrc[stream.ssrc] = producer

    def remove(self, producer_id: str) -> None:
        """Forget a relayed stream: its producer closes, its consumers idle."""
        stream = self._streams.pop(producer_id, None)
        if stream is None:
            return
        self._by_ssrc.pop(stream.ssrc, None)
        self.sfu.remove_relay_producer(producer_id)

    def send_reports(self) -> None:
        """One receiver report per stream (gives the sending end its RTT)."""
        now = self.sfu.now()
        for producer in self._by_ssrc.values():
            report = self.sfu.router.receiver_report(producer, now)
            if report is not None:
                producer.sink.send_rtcp(report)

    def _on_datagram(self, data: bytes, address: tuple[str, int]) -> None:
        if len(data) < 12:
            if self.receive_probe.take(data, address) is None:
                self.endpoint.malformed += 1
            return
        if rtcp.is_rtcp(data):
            for packet in rtcp.parse_compound(data).packets:
                if isinstance(packet, rtcp.SenderReport):
                    producer = self._by_ssrc.get(packet.ssrc)
                    if producer is not None:
                        self.sfu.router.on_sender_report(producer, packet, self.sfu.now())
            return
        producer = self._by_ssrc.get(int.from_bytes(data[8:12], "big"))
        if producer is None:
            self.endpoint.malformed += 1
            return
        self.sfu.forward(producer, data, self.sfu.now())

    def close(self) -> None:
        for producer_id in list(self._streams):
            self.remove(producer_id)
        self.sfu.input_probes.discard(self.receive_probe)
        self.receive_probe.close()
        self.endpoint.close()
