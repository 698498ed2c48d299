"""The private aiortc/aioice names sfu/transport.py depends on (aiortc==1.16.*).

If one of these fails after an upgrade, sfu/transport.py needs porting before
anything else: see sfu/README.md, "The aiortc hooks".
"""

from __future__ import annotations

import inspect

import aioice.ice
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

from sfu.transport import ForwardingPeerConnection, ForwardingReceiver, ForwardingSender


def test_peer_connection_factories_exist_and_are_used() -> None:
    source = inspect.getsource(RTCPeerConnection)
    for name in ("__createDtlsTransport", "__createTransceiver"):
        assert hasattr(RTCPeerConnection, f"_RTCPeerConnection{name}")
        assert f"self.{name}(" in source


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


def test_aioice_connection_hooks() -> None:
    connection = aioice.ice.Connection(ice_controlling=False)
    for name in ("_nominated", "_local_candidates_start", "_local_candidates_end", "_components"):
        assert hasattr(connection, name)
    assert callable(connection.get_component_candidates)
    assert "self.receiver.data_received(data" in inspect.getsource(aioice.ice.StunProtocol)


async def test_forwarding_peer_connection_installs_inert_sender_and_receiver() -> None:
    pc = ForwardingPeerConnection(
        ["127.0.0.1"], lambda d: None, lambda d: None, lambda s, p: None, lambda r, p: None
    )
    try:
        transceiver = pc.addTransceiver("video", direction="sendonly")
        assert isinstance(transceiver.sender, ForwardingSender)
        assert isinstance(transceiver.receiver, ForwardingReceiver)
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
