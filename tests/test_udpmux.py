"""One UDP port for every connection (sfu/udpmux.py) and its send batch (sfu/sendbatch.py).

Real aioice connections and real sockets on 127.0.0.1: ICE checks, data and
forwarded SRTP copies cross the shared port and reach the right party.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

import pytest
from aioice import stun
from aioice.candidate import Candidate
from aioice.ice import Connection
from pylibsrtp import Policy, Session
from signaling_client import wait_until

from sfu.probe import ReceiveProbe
from sfu.sendbatch import _FFI, SendBatch, socket_address
from sfu.srtp import InPlaceProtector
from sfu.transport import restrict_host_candidates
from sfu.udpmux import MuxedProtocol, UdpMux, binding_request_ufrag

HEADER = struct.Struct("!BBHII")


def binding_request(username: str | None, message_class: stun.Class = stun.Class.REQUEST) -> bytes:
    message = stun.Message(message_method=stun.Method.BINDING, message_class=message_class)
    if username is not None:
        message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1234
    message.add_message_integrity(b"x" * 22)
    message.add_fingerprint()
    return bytes(message)


def test_binding_request_ufrag_is_the_receivers_half_of_username() -> None:
    assert binding_request_ufrag(binding_request("ServerUfrag16chr:abcd")) == "ServerUfrag16chr"
    # Not a Binding request, or no usable USERNAME: nothing to route by.
    assert binding_request_ufrag(binding_request("abcd:efgh", stun.Class.RESPONSE)) is None
    assert binding_request_ufrag(binding_request(None)) is None
    assert binding_request_ufrag(binding_request("no-colon")) is None
    assert binding_request_ufrag(HEADER.pack(0x80, 96, 1, 2, 3) + bytes(100)) is None  # RTP
    assert binding_request_ufrag(b"") is None
    whole = binding_request("abcd:efgh")
    for cut in (1, 19, 20, 27, len(whole) - 1):  # truncated anywhere
        assert binding_request_ufrag(whole[:cut]) is None
    # A USERNAME longer than the message, and one that is not UTF-8.
    lying = bytearray(whole)
    struct.pack_into("!H", lying, 22, 4000)
    assert binding_request_ufrag(bytes(lying)) is None
    raw = (
        struct.pack("!HHI", 1, 8, 0x2112A442)
        + bytes(12)
        + struct.pack("!HH", 6, 3)
        + b"\xff:\xfe\0"
    )
    assert binding_request_ufrag(raw) is None


async def connected_pair(
    mux: UdpMux, nat: dict[str, str] | None = None
) -> tuple[Connection, Connection]:
    """A connection on the shared port (controlled, as the SFU's answering side) and a client.

    ``nat`` maps the addresses the server announces to those the client
    reaches them at, as a 1:1 NAT in front of the server would.
    """
    server = Connection(ice_controlling=False)
    mux.prepare(server)
    client = Connection(ice_controlling=True)
    restrict_host_candidates(client, ["127.0.0.1"])
    await asyncio.gather(server.gather_candidates(), client.gather_candidates())
    server.remote_username, server.remote_password = client.local_username, client.local_password
    client.remote_username, client.remote_password = server.local_username, server.local_password
    for a, b in ((server, client), (client, server)):
        for candidate in a.local_candidates:
            if a is server and nat:
                candidate = Candidate.from_sdp(
                    candidate.to_sdp().replace(candidate.host, nat[candidate.host])
                )
            await b.add_remote_candidate(candidate)
        await b.add_remote_candidate(None)
    await asyncio.wait_for(asyncio.gather(server.connect(), client.connect()), 10)
    return server, client


async def test_connections_share_one_port_and_each_gets_its_own_data() -> None:
    mux = UdpMux(["127.0.0.1"])
    pairs = [await connected_pair(mux) for _ in range(4)]
    try:
        port = mux.sockets[0].address[1]
        ufrags = {server.local_username for server, _ in pairs}
        assert len(ufrags) == 4 and all(len(u) == 16 for u in ufrags)
        for server, _ in pairs:
            assert [c.port for c in server.local_candidates] == [port]
            assert isinstance(server._nominated[1].protocol, MuxedProtocol)
        # Every client's data reaches its own connection, and back.
        for i, (_, client) in enumerate(pairs):
            await client.send(b"up %d" % i)
        for i, (server, _) in enumerate(pairs):
            assert await asyncio.wait_for(server.recv(), 5) == b"up %d" % i
            await server.send(b"down %d" % i)
        for i, (_, client) in enumerate(pairs):
            assert await asyncio.wait_for(client.recv(), 5) == b"down %d" % i
        assert mux.counts() == {
            "connections": 4,
            "addresses": 4,
            "unrouted": 0,
            "failed": 0,
        }

        # Strangers: garbage, a check naming no connection, a datagram that
        # raises in its connection. None disturbs the others or the socket.
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind(("127.0.0.1", 0))
        for junk in (os.urandom(200), b"\x00\x01", binding_request("NobodyHasThisOne:x")):
            stranger.sendto(junk, ("127.0.0.1", port))
        victim = pairs[0][0]

        def fail(data: bytes, component: int) -> None:
            raise RuntimeError("a connection's own fault")

        victim.data_received = fail  # type: ignore[method-assign]
        await pairs[0][1].send(b"raises")
        await asyncio.sleep(0.3)
        counts = mux.counts()
        assert counts["unrouted"] == 3 and counts["failed"] == 1
        await pairs[1][1].send(b"still here")
        assert await asyncio.wait_for(pairs[1][0].recv(), 5) == b"still here"
        stranger.close()

        # A closed connection's ufrag and addresses route nowhere.
        server, client = pairs.pop(0)
        await server.close()
        assert mux.counts()["connections"] == 3 and mux.counts()["addresses"] == 3
        await client.send(b"to nobody")
        await asyncio.sleep(0.2)
        assert mux.counts()["unrouted"] == 4
        await client.close()
    finally:
        for server, client in pairs:
            await server.close()
            await client.close()
        await mux.close()


def outbound(key: bytes) -> Session:
    profile = Policy.SRTP_PROFILE_AEAD_AES_128_GCM
    return Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))


class Sink:
    def __init__(self) -> None:
        self.dropped = 0
        self.errors = 0


async def test_send_batch_sends_what_session_protect_gives_to_each_address() -> None:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sender.setblocking(False)
    receivers = []
    for _ in range(3):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(2)
        receivers.append(receiver)
    keys = [os.urandom(28) for _ in receivers]
    fast = [InPlaceProtector(outbound(k)) for k in keys]
    public = [outbound(k) for k in keys]
    names = [socket_address(r.getsockname(), socket.AF_INET) for r in receivers]
    batch = SendBatch(sender, asyncio.get_running_loop().call_soon, capacity=4)
    sink = Sink()
    expected: list[list[bytes]] = [[] for _ in receivers]
    try:
        for seq in range(3):  # 9 copies: two full batches sent at once, one by the loop
            for i in range(3):
                tail = bytes([seq, i]) + os.urandom(300 + 100 * i)
                args = (0x80, 96, 1000 + seq, 90000 * seq, 0xCAFE0000 + i)
                assert batch.add(fast[i].context, *args, tail, *names[i], sink)
                expected[i].append(public[i].protect(HEADER.pack(*args) + tail))
        assert batch.batches == 2 and batch.datagrams == 8
        await asyncio.sleep(0)
        assert batch.batches == 3 and batch.datagrams == 9
        for receiver, packets in zip(receivers, expected, strict=True):
            assert [receiver.recv(2000) for _ in packets] == packets
        assert sink.dropped == sink.errors == 0

        # An address the kernel refuses costs that copy only, counted as an error.
        refused = socket_address(("127.0.0.1", 0), socket.AF_INET)
        assert batch.add(fast[0].context, 0x80, 96, 5, 5, 1, b"a" * 50, *refused, sink)
        assert batch.add(fast[1].context, 0x80, 96, 5, 5, 2, b"b" * 50, *names[1], sink)
        batch.flush()
        assert sink.errors == 1
        assert receivers[1].recv(2000) == public[1].protect(
            HEADER.pack(0x80, 96, 5, 5, 2) + b"b" * 50
        )
        # Too long to protect in a slot: refused before the kernel sees it.
        assert not batch.add(fast[2].context, 0x80, 96, 6, 6, 3, bytes(1400), *names[2], sink)
    finally:
        batch.close()
        sender.close()
        for receiver in receivers:
            receiver.close()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_socket_address_is_the_c_layout(family: int) -> None:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    name, length = socket_address((host, 40000), family)
    assert length == (16 if family == socket.AF_INET else 28)
    raw = _FFI.buffer(name, length)[:]
    assert struct.unpack("=H", raw[:2])[0] == family
    assert struct.unpack("!H", raw[2:4])[0] == 40000
    packed = socket.inet_pton(family, host)
    assert packed in raw


async def test_an_address_that_cannot_be_bound_is_skipped_and_none_is_an_error() -> None:
    # 192.0.2.1 (TEST-NET-1, RFC 5737) is no address of this machine: bind fails.
    mux = UdpMux(["192.0.2.1", "127.0.0.1"])
    await mux.open()
    try:
        assert [s.address[0] for s in mux.sockets] == ["127.0.0.1"]
    finally:
        await mux.close()
    with pytest.raises(OSError):
        await UdpMux(["192.0.2.1"]).open()
    # A configured port that is taken fails at start, not at the first join.
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(OSError):
            await UdpMux(["127.0.0.1"], taken.getsockname()[1]).open()
    finally:
        taken.close()


async def test_announced_address_is_in_the_candidate_and_checks_reach_the_bound_one() -> None:
    # Behind a 1:1 NAT the public address (here TEST-NET-1's 192.0.2.7) is not on
    # any interface: the server binds 127.0.0.1 and announces 192.0.2.7.
    mux = UdpMux(["127.0.0.1"], announced=["192.0.2.7"])
    server, client = await connected_pair(mux, nat={"192.0.2.7": "127.0.0.1"})
    try:
        port = mux.sockets[0].address[1]
        assert [(c.host, c.port) for c in server.local_candidates] == [("192.0.2.7", port)]
        await client.send(b"through the NAT")
        assert await asyncio.wait_for(server.recv(), 5) == b"through the NAT"
    finally:
        await server.close()
        await client.close()
        await mux.close()
    with pytest.raises(ValueError):
        UdpMux(["127.0.0.1"], announced=["192.0.2.7", "192.0.2.8"])


async def test_a_probe_measures_how_late_the_socket_is_read() -> None:
    """Probes wait in the receive queue behind what came before them."""
    delays: list[float] = []
    mux = UdpMux(["127.0.0.1", "::1"], on_delay=delays.append)
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        await mux.open()
        for probe in mux.probes():
            probe.send()
        await asyncio.sleep(0.1)
        assert len(delays) == len(mux.sockets) == 2
        assert all(0 <= d < 0.1 for d in delays), delays
        assert mux.counts()["unrouted"] == 0  # probes are not counted there
        # Datagrams from nobody, then a probe; the process is busy for 0.5 s
        # before it reads them.
        delays.clear()
        for _ in range(50):
            flood.sendto(bytes(200), mux.sockets[0].address)
        mux.probes()[0].send()
        time.sleep(0.5)
        assert await wait_until(lambda: bool(delays), 5)
        assert 0.5 <= delays[0] < 2, delays
        assert mux.counts()["unrouted"] == 50
    finally:
        flood.close()
        await mux.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_probe_knows_its_datagrams_by_source_whatever_the_address_tuple(host: str) -> None:
    """recvfrom gives IPv6 sources as 4-tuples (the relay's socket): still a probe."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    watched = socket.socket(family, socket.SOCK_DGRAM)
    stranger = socket.socket(family, socket.SOCK_DGRAM)
    watched.bind((host, 0))
    delays: list[float] = []
    probe = ReceiveProbe(watched, delays.append)
    try:
        probe.send()
        stranger.sendto(bytes(9), watched.getsockname())
        received = [watched.recvfrom(100) for _ in range(2)]
        taken = [probe.take(data, addr) for data, addr in received]
        assert sorted(t is None for t in taken) == [False, True]  # the stranger's is not
        assert len(delays) == 1 and 0 <= delays[0] < 1
    finally:
        probe.close()
        watched.close()
        stranger.close()


def test_a_probe_not_read_back_counts_as_lateness_even_if_the_kernel_dropped_it() -> None:
    """A full socket drops probes too: the oldest unread one bounds the lag from below."""
    watched = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    watched.bind(("127.0.0.1", 0))
    probe = ReceiveProbe(watched, lambda delay: None)
    try:
        assert probe.unread_for(time.monotonic()) == 0.0
        probe.send()
        probe.send()
        time.sleep(0.2)
        assert probe.unread_for(time.monotonic()) >= 0.2
        watched.recvfrom(100)  # the first is lost (as if the kernel had dropped it)
        data, addr = watched.recvfrom(100)
        assert probe.take(data, addr) is not None
        assert probe.unread_for(time.monotonic()) == 0.0
    finally:
        probe.close()
        watched.close()
