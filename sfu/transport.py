"""The thin I/O adapter on aiortc: ICE, DTLS and SRTP from aiortc, RTP/RTCP from us.

aiortc 1.16 has no public raw-RTP API, so this module uses its private hooks
(pinned by ``aiortc==1.16.*``; ``tests/test_aiortc_hooks.py`` fails when
one moves). A :class:`ForwardingPeerConnection` is an ``RTCPeerConnection``
whose

* DTLS transports hand decrypted RTP/RTCP straight to callbacks
  (``_handle_rtp_data``/``_handle_rtcp_data`` overridden): no ``RtpPacket``
  parse, no jitter buffer, no decoder thread;
* RTP senders and receivers start no encoder, RTP loop, RTCP loop or decoder
  (``send``/``receive`` only report the negotiated parameters);
* ICE gatherers offer host candidates on the configured addresses only:
  on the process's shared UDP port (:mod:`sfu.udpmux`), or on a socket of
  their own (aiortc's way, ``[sfu] udp_mux = false``);
* ICE consent checks wait for answers long enough for satellite links;
* DTLS uses the process's one certificate (:mod:`sfu.certificate`).

:class:`PeerSink` is the fast send path: SRTP protect with the DTLS
transport's session, synchronously, and out on the shared socket in one
``sendmmsg`` per fan-out (:mod:`sfu.sendbatch`), or with one ``send`` on a
duplicate of the connection's own socket; a full socket buffer drops the
packet (and counts it) instead of queueing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Callable, Sequence
from typing import Any

import pylibsrtp
from aioice import ice, stun
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpReceiveParameters, RTCRtpSendParameters

from sfu.certificate import process_certificate
from sfu.sendbatch import SendBatch, socket_address
from sfu.srtp import InPlaceProtector
from sfu.udpmux import MuxedProtocol, UdpMux

logger = logging.getLogger(__name__)

RtpCallback = Callable[[bytes], None]
SenderReady = Callable[[RTCRtpSender, RTCRtpSendParameters], None]
ReceiverReady = Callable[[RTCRtpReceiver, RTCRtpReceiveParameters], None]

#: Socket send buffer asked for each peer socket: room for a replayed
#: group of pictures (about one second of a 4 Mbit/s feed) without drops.
SEND_BUFFER_BYTES = 1 << 20


class ForwardingDtlsTransport(RTCDtlsTransport):
    """DTLS transport whose decrypted RTP and RTCP go to plain callbacks."""

    _on_rtp: RtpCallback
    _on_rtcp: RtpCallback

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        self._on_rtp(data)

    async def _handle_rtcp_data(self, data: bytes) -> None:
        self._on_rtcp(data)


class ForwardingSender(RTCRtpSender):
    """An RTP sender that sends nothing by itself: the SFU writes its packets."""

    _on_ready: SenderReady | None = None
    _forwarding_started = False

    async def send(self, parameters: RTCRtpSendParameters) -> None:
        if self._forwarding_started:
            return
        self._forwarding_started = True
        if self._on_ready is not None:
            self._on_ready(self, parameters)

    async def stop(self) -> None:
        self._on_ready = None


class ForwardingReceiver(RTCRtpReceiver):
    """An RTP receiver with no decoder thread, jitter buffer or RTCP loop."""

    _on_ready: ReceiverReady | None = None
    _forwarding_started = False

    def __init__(self, kind: str, transport: RTCDtlsTransport) -> None:
        # aiortc's audio set-up is its light one (a 16-slot jitter buffer, no
        # NACK generator, no bandwidth estimator); a video one builds a
        # 512-slot jitter buffer and a 1,000-bucket rate counter, never used
        # here. The kind is then set to the real one.
        super().__init__("audio", transport)
        self._RTCRtpReceiver__kind = kind

    async def receive(self, parameters: RTCRtpReceiveParameters) -> None:
        if self._forwarding_started:
            return
        self._forwarding_started = True
        if self._on_ready is not None:
            self._on_ready(self, parameters)

    async def stop(self) -> None:
        self._on_ready = None

    def _handle_disconnect(self) -> None:
        pass


class ForwardingPeerConnection(RTCPeerConnection):
    """An ``RTCPeerConnection`` whose media is handled by the SFU, not by aiortc."""

    def __init__(
        self,
        addresses: Sequence[str],
        on_rtp: RtpCallback,
        on_rtcp: RtpCallback,
        on_sender_ready: SenderReady,
        on_receiver_ready: ReceiverReady,
        mux: UdpMux | None = None,
    ) -> None:
        self._addresses = list(addresses)
        self._mux = mux
        self._on_rtp = on_rtp
        self._on_rtcp = on_rtcp
        self._on_sender_ready = on_sender_ready
        self._on_receiver_ready = on_receiver_ready
        super().__init__(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        # The process's certificate, its SSL context and fingerprints made once
        # (sfu/certificate.py), in place of the one aiortc made for this connection.
        self._RTCPeerConnection__certificates = [process_certificate()]

    def _RTCPeerConnection__createDtlsTransport(self) -> RTCDtlsTransport:
        dtls: RTCDtlsTransport = super()._RTCPeerConnection__createDtlsTransport()  # type: ignore[misc]
        dtls.__class__ = ForwardingDtlsTransport
        assert isinstance(dtls, ForwardingDtlsTransport)
        dtls._on_rtp = self._on_rtp
        dtls._on_rtcp = self._on_rtcp
        connection = dtls.transport.iceGatherer._connection
        if self._mux is not None:
            self._mux.prepare(connection)
        else:
            restrict_host_candidates(connection, self._addresses)
        drop_empty_datagrams(connection)
        patient_consent_checks(connection)
        return dtls

    def _RTCPeerConnection__createTransceiver(
        self, direction: str, kind: str, sender_track: Any = None
    ) -> RTCRtpTransceiver:
        """aiortc's, with the forwarding sender and receiver built in place of aiortc's.

        Building aiortc's own first and replacing them cost ~15 % of the
        server's CPU per join in a join storm (each video receiver's unused
        jitter buffer and rate counter, built twice). Bundling as aiortc does
        under ``max-bundle``: every transceiver shares the first one's DTLS
        transport (or the SCTP one's).
        """
        transceivers: list[RTCRtpTransceiver] = self._RTCPeerConnection__transceivers  # type: ignore[attr-defined]
        sctp = self._RTCPeerConnection__sctp  # type: ignore[attr-defined]
        if transceivers:
            dtls, bundled = transceivers[0].receiver.transport, True
        elif sctp is not None:
            dtls, bundled = sctp.transport, True
        else:
            dtls, bundled = self._RTCPeerConnection__createDtlsTransport(), False
        sender = ForwardingSender(sender_track or kind, dtls)
        sender._stream_id = self._RTCPeerConnection__stream_id  # type: ignore[attr-defined]
        sender._on_ready = self._on_sender_ready
        receiver = ForwardingReceiver(kind, dtls)
        receiver._set_rtcp_ssrc(sender._ssrc)
        receiver._on_ready = self._on_receiver_ready
        transceiver = RTCRtpTransceiver(
            direction=direction, kind=kind, sender=sender, receiver=receiver
        )
        transceiver._bundled = bundled
        transceivers.append(transceiver)
        return transceiver


def restrict_host_candidates(connection: Any, addresses: list[str]) -> None:
    """Make one aioice connection gather host candidates on ``addresses`` only.

    aioice gathers on every interface except loopback; a server names the
    addresses its clients can reach (``[sfu] candidate_addresses``).
    """

    async def gather_candidates() -> None:
        if connection._local_candidates_start:
            return
        connection._local_candidates_start = True
        for component in sorted(connection._components):
            connection._local_candidates += await connection.get_component_candidates(
                component=component, addresses=addresses
            )
        connection._local_candidates_end = True

    connection.gather_candidates = gather_candidates


def drop_empty_datagrams(connection: Any) -> None:
    """Discard zero-length datagrams before aiortc's DTLS transport sees them.

    aiortc 1.16 reads ``data[0]`` of every datagram: an empty UDP datagram
    from anyone who knows the port raises ``IndexError`` there and ends the
    whole peer connection. Nothing legitimate is ever empty (RFC 7983 §7
    demultiplexes on the first byte).
    """
    deliver = connection.data_received

    def data_received(data: bytes, component: int) -> None:
        if data:
            deliver(data, component)

    connection.data_received = data_received


#: STUN retransmissions of one consent check: answers within 0.5 + 1 + 2 s count.
CONSENT_RETRANSMISSIONS = 2


def patient_consent_checks(connection: Any) -> None:
    """Make one aioice connection's consent checks (RFC 7675) survive long round trips.

    aioice 0.13 sends each check once and counts it failed when no answer
    came within 0.5 s (its first STUN retransmission timeout), then closes
    the connection after six failures in a row. On a satellite link (island
    stations: 600-700 ms RTT) every check fails and the SFU drops the peer
    after about 30 s. This is aioice's loop with the check retransmitted
    (RFC 8489 §6.2.1) so late answers count.
    """

    async def query_consent() -> None:
        assert connection.remote_password is not None
        failures = 0
        while True:
            await asyncio.sleep(ice.CONSENT_INTERVAL * random.uniform(0.8, 1.2))
            for pair in connection._nominated.values():
                request = connection.build_request(pair, nominate=False)
                try:
                    await pair.protocol.request(
                        request,
                        pair.remote_addr,
                        integrity_key=connection.remote_password.encode("utf8"),
                        retransmissions=CONSENT_RETRANSMISSIONS,
                    )
                    failures = 0
                except stun.TransactionError:
                    failures += 1
                if failures >= ice.CONSENT_FAILURES:
                    logger.info("ICE consent to send expired")
                    connection._query_consent_task = None
                    await connection.close()
                    return

    connection.query_consent = query_consent


class SrtpSink:
    """Protects and sends RTP/RTCP synchronously: the SFU's per-copy fast path.

    One SRTP protect (RFC 3711) and one ``send``/``sendto`` per packet, no
    await, no queue: a full socket buffer drops the packet and counts it in
    ``dropped``, any other failure counts in ``errors``. Until attached it
    drops everything.
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._addr: tuple[str, int] = ("", 0)
        self._connected = False
        self._protect: Callable[[bytes], bytes] | None = None
        self._protect_rtcp: Callable[[bytes], bytes] | None = None
        self._session: pylibsrtp.Session | None = None
        self._in_place: InPlaceProtector | None = None
        self._owned = True
        self._batch: SendBatch | None = None
        self._name: Any = None
        self._name_length = 0
        self.dropped = 0
        self.errors = 0

    def attach(
        self,
        session: pylibsrtp.Session,
        sock: socket.socket,
        addr: tuple[str, int],
        *,
        connected: bool = False,
        batch: SendBatch | None = None,
        owned: bool = True,
    ) -> None:
        """Send through ``session`` (an outbound SRTP session) on ``sock`` to ``addr``.

        ``connected``: ``sock`` is connected to ``addr`` (``connect(2)``), so
        the packets go out with ``send(2)`` and the kernel keeps the route
        it looked up once instead of one lookup per datagram.
        ``batch``: forwarded copies wait in it for one ``sendmmsg(2)`` per
        fan-out (``sock`` is then a shared socket). ``owned``: :meth:`close`
        closes ``sock`` (not a shared one).
        """
        if session is not self._session:
            self._session = session
            self._in_place = InPlaceProtector(session)
        self._protect = session.protect
        self._protect_rtcp = session.protect_rtcp
        if batch is not None and (self._name is None or addr != self._addr):
            self._name, self._name_length = socket_address(addr, sock.family)
        self._sock = sock
        self._owned = owned
        self._addr = addr
        self._connected = connected
        self._batch = batch

    def send_rtp(self, packet: bytes) -> None:
        protect = self._protect
        sock = self._sock
        if protect is None or sock is None:
            self.dropped += 1
            return
        try:
            if self._connected:
                sock.send(protect(packet))
            else:
                sock.sendto(protect(packet), self._addr)
        except BlockingIOError:
            self.dropped += 1
        except (OSError, pylibsrtp.Error):
            self.errors += 1

    def send_rtp_header(
        self, b0: int, b1: int, seq: int, timestamp: int, ssrc: int, tail: bytes
    ) -> None:
        """Send a rewritten packet given as header fields and the rest (the fan-out's path).

        Protected in place (:class:`sfu.srtp.InPlaceProtector`, or a slot of
        the shared socket's :class:`sfu.sendbatch.SendBatch`): no
        intermediate ``bytes`` for the plaintext or the ciphertext.
        """
        in_place = self._in_place
        sock = self._sock
        if in_place is None or sock is None or self._protect is None:
            self.dropped += 1
            return
        batch = self._batch
        if batch is not None:
            context, name, length = in_place.context, self._name, self._name_length
            if not batch.add(context, b0, b1, seq, timestamp, ssrc, tail, name, length, self):
                self.errors += 1
            return
        packet = in_place.protect(b0, b1, seq, timestamp, ssrc, tail)
        if packet is None:
            self.errors += 1
            return
        try:
            if self._connected:
                sock.send(packet)
            else:
                sock.sendto(packet, self._addr)
        except BlockingIOError:
            self.dropped += 1
        except OSError:
            self.errors += 1

    def send_rtcp(self, packet: bytes) -> None:
        protect = self._protect_rtcp
        sock = self._sock
        if protect is None or sock is None:
            self.dropped += 1
            return
        try:
            if self._connected:
                sock.send(protect(packet))
            else:
                sock.sendto(protect(packet), self._addr)
        except BlockingIOError:
            self.dropped += 1
        except (OSError, pylibsrtp.Error):
            self.errors += 1

    def close(self) -> None:
        if self._sock is not None and self._owned:
            self._sock.close()
        self._sock = None
        self._protect = self._protect_rtcp = None
        self._session = self._in_place = None
        self._connected = False
        self._batch = None


class PeerSink(SrtpSink):
    """An :class:`SrtpSink` bound to an aiortc peer connection's DTLS/ICE state.

    On a shared port (:mod:`sfu.udpmux`) it sends on the shared socket to the
    nominated pair's remote address, forwarded copies through the socket's
    send batch. On a socket of the connection's own, with ``connect`` (the
    SFU's subscriber connections) the nominated pair's socket is connected to
    the remote address once ICE has chosen it, which saves the kernel a route
    lookup per forwarded copy (~2 µs of ~20 at 200 subscribers on the
    development box, ``docs/benchmarks.md``). The socket
    then also takes datagrams from that address only, which is right only
    where this side is the controlling ICE agent (the offerer, RFC 8445
    §6.1.1): the pair cannot change under it. A publisher's connection, where
    the browser controls and may nominate another pair, is left unconnected.
    """

    def __init__(self, pc: ForwardingPeerConnection, *, connect: bool = False) -> None:
        super().__init__()
        self._pc = pc
        self._sock_source = -1
        self._connect = connect
        self._connected_to: tuple[str, int] | None = None

    def bind(self) -> bool:
        """Attach to the connected DTLS transport's SRTP session and selected pair.

        Called when DTLS is up and again periodically (the selected pair can
        change); returns False while not connected.
        """
        transceivers = self._pc.getTransceivers()
        if not transceivers:
            return False
        dtls = transceivers[0].receiver.transport
        if dtls.state != "connected" or dtls._tx_srtp is None:
            return False
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            return False
        if isinstance(pair.protocol, MuxedProtocol):
            mux = pair.protocol.mux
            if mux.sock is None:
                return False
            self.attach(dtls._tx_srtp, mux.sock, pair.remote_addr, batch=mux.batch, owned=False)
            return True
        transport_sock = pair.protocol.transport.get_extra_info("socket")
        if transport_sock is None:
            return False
        fileno = transport_sock.fileno()
        sock = self._sock
        if sock is None or not self._owned or self._sock_source != fileno:
            self.close()
            # A duplicate of aioice's socket: a plain non-blocking socket whose
            # sendto skips asyncio's transport (and its unbounded buffer).
            sock = socket.socket(fileno=os.dup(fileno))
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            self._sock_source = fileno
            self._connected_to = None
        remote = pair.remote_addr
        if self._connect and self._connected_to != remote:
            try:
                sock.connect(remote)
                self._connected_to = remote
            except OSError as exc:  # keep sending with sendto
                logger.warning("cannot connect the media socket to %s: %s", remote, exc)
                self._connected_to = None
        self.attach(dtls._tx_srtp, sock, remote, connected=self._connected_to == remote)
        return True
