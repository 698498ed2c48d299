"""The private aiortc/aioice names sfu/transport.py depends on (aiortc==1.16.*).

If one of these fails after an upgrade, sfu/transport.py needs porting before
anything else: see sfu/README.md, "The aiortc hooks".
"""

from __future__ import annotations

import inspect

import aioice.ice
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

from sfu.transport import ForwardingPeerConnection, ForwardingReceiver, ForwardingSender


def test_peer_connection_factories_exist_and_are_used() -> None:
    source = inspect.getsource(RTCPeerConnection)
    for name in ("__createDtlsTransport", "__createTransceiver"):
        assert hasattr(RTCPeerConnection, f"_RTCPeerConnection{name}")
        assert f"self.{name}(" in source


def test_create_transceiver_is_what_the_forwarding_one_rebuilds() -> None:
    """ForwardingPeerConnection builds transceivers itself, as aiortc 1.16 does."""
    source = inspect.getsource(RTCPeerConnection._RTCPeerConnection__createTransceiver)  # type: ignore[attr-defined]
    for line in (
        "dtlsTransport = self.__transceivers[0].receiver.transport",
        "dtlsTransport = self.__sctp.transport",
        "dtlsTransport = self.__createDtlsTransport()",
        "transceiver.receiver._set_rtcp_ssrc(transceiver.sender._ssrc)",
        "transceiver.sender._stream_id = self.__stream_id",
        "transceiver._bundled = bundled",
        "self.__transceivers.append(transceiver)",
    ):
        assert line in source, line
    # The light receiver set-up is the audio one; the kind is a private name.
    receiver = inspect.getsource(RTCRtpReceiver.__init__)
    assert "self.__kind = kind" in receiver
    assert 'if kind == "audio":' in receiver


def test_transceiver_stores_sender_and_receiver_privately() -> None:
    source = inspect.getsource(RTCRtpTransceiver.__init__)
    assert "self.__sender = sender" in source
    assert "self.__receiver = receiver" in source


def test_dtls_transport_hooks() -> None:
    source = inspect.getsource(RTCDtlsTransport)
    assert "await self._handle_rtp_data(data, arrival_time_ms=arrival_time_ms)" in source
    assert "await self._handle_rtcp_data(data)" in source
    assert "self._tx_srtp = Session(tx_policy)" in source
    assert "tx_policy.allow_repeat_tx = True" in source  # cached packets can be resent


def test_sender_names_the_bench_pacer_uses() -> None:
    """bench/pacer.py: every RTP packet of a sender goes through ``transport._send_rtp``."""
    from aiortc.rtcrtpsender import RTCRtpSender

    sender = inspect.getsource(RTCRtpSender)
    assert sender.count("await self.transport._send_rtp(packet_bytes)") == 2  # frames, repairs
    assert "packet.extensions.abs_send_time = (" in sender
    assert "ssrc=self._rtx_ssrc," in sender
    assert inspect.iscoroutinefunction(RTCDtlsTransport._send_rtp)


def test_aioice_connection_hooks() -> None:
    connection = aioice.ice.Connection(ice_controlling=False)
    for name in ("_nominated", "_local_candidates_start", "_local_candidates_end", "_components"):
        assert hasattr(connection, name)
    assert callable(connection.get_component_candidates)
    assert "self.receiver.data_received(data" in inspect.getsource(aioice.ice.StunProtocol)


def test_certificate_names_the_process_certificate_uses() -> None:
    """sfu/certificate.py: aiortc's certificate list, context factory and fingerprints."""
    assert "self.__certificates = [RTCCertificate.generateCertificate()]" in inspect.getsource(
        RTCPeerConnection.__init__
    )
    dtls = inspect.getsource(RTCDtlsTransport)
    assert "self.__local_certificate._create_ssl_context(" in dtls
    assert "fingerprints=self.__local_certificate.getFingerprints()" in dtls


def test_aioice_names_the_shared_port_uses() -> None:
    """sfu/udpmux.py: a ufrag set before any SDP, protocols and candidates added by hand."""
    connection = aioice.ice.Connection(ice_controlling=False)
    assert connection.local_username == connection._local_username
    assert connection._protocols == [] and connection._local_candidates == []
    source = inspect.getsource(aioice.ice.Connection)
    assert "for protocol in self._protocols:\n            await protocol.close()" in source
    assert "local_username == self.local_username" in source  # checks are matched on it
    protocol = inspect.getsource(aioice.ice.StunProtocol)
    assert "self.transport.sendto(" in protocol and "self.transport.close()" in protocol
    assert "self.receiver.protocol_lost(self)" in protocol


async def test_forwarding_peer_connection_installs_inert_sender_and_receiver() -> None:
    pc = ForwardingPeerConnection(
        ["127.0.0.1"], lambda d: None, lambda d: None, lambda s, p: None, lambda r, p: None
    )
    try:
        transceiver = pc.addTransceiver("video", direction="sendonly")
        assert isinstance(transceiver.sender, ForwardingSender)
        assert isinstance(transceiver.receiver, ForwardingReceiver)
        # A video receiver, without aiortc's unused jitter buffer and estimator.
        receiver = transceiver.receiver
        assert receiver._RTCRtpReceiver__kind == "video"  # type: ignore[attr-defined]
        assert receiver._RTCRtpReceiver__remote_bitrate_estimator is None  # type: ignore[attr-defined]
        # max-bundle: a second transceiver shares the first one's DTLS transport.
        audio = pc.addTransceiver("audio", direction="sendonly")
        assert audio.receiver.transport is transceiver.receiver.transport
        assert audio.sender.transport is transceiver.receiver.transport
        assert pc.getTransceivers() == [transceiver, audio]
        assert audio.sender._ssrc != transceiver.sender._ssrc
        await pc.setLocalDescription(await pc.createOffer())
        candidates = [
            line for line in pc.localDescription.sdp.splitlines() if line.startswith("a=candidate")
        ]
        assert candidates and all(" 127.0.0.1 " in line for line in candidates)
    finally:
        await pc.close()


def test_aioice_consent_check_hooks() -> None:
    """patient_consent_checks replaces Connection.query_consent with a copy that retransmits."""
    connection = aioice.ice.Connection(ice_controlling=False)
    source = inspect.getsource(aioice.ice.Connection)
    assert "self._query_consent_task = asyncio.create_task(self.query_consent())" in source
    assert callable(connection.build_request)
    assert isinstance(aioice.ice.CONSENT_INTERVAL, int | float)
    assert isinstance(aioice.ice.CONSENT_FAILURES, int)
    request = inspect.signature(aioice.ice.StunProtocol.request)
    assert "retransmissions" in request.parameters and "integrity_key" in request.parameters
    # The loop we replace sends each check once (a 0.5 s deadline); if aioice
    # ever retransmits them itself, the hook can go.
    assert "retransmissions=0," in inspect.getsource(aioice.ice.Connection.query_consent)
