"""bench.sendmmsg: batches arrive intact and in order, drops and errors are counted.

Every test runs twice: through ``sendmmsg(2)`` (where the platform has it)
and through the per-datagram ``sendto`` fallback.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterator

import pytest

from bench import sendmmsg
from bench.sendmmsg import BatchSender

MODES = [pytest.param(True, id="sendmmsg"), pytest.param(False, id="sendto")]


def _datagrams(count: int, size: int = 100) -> list[bytes]:
    return [bytes([i & 0xFF]) * size + i.to_bytes(4, "big") for i in range(count)]


def _receive_all(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    received = []
    with contextlib.suppress(BlockingIOError):
        while True:
            received.append(sock.recv(70000))
    return received


@pytest.fixture
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    receiver.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setblocking(False)
    with receiver, sender:
        yield sender, receiver


def test_uses_sendmmsg_where_available(udp_pair: tuple[socket.socket, socket.socket]) -> None:
    sender, _ = udp_pair
    assert BatchSender(sender).uses_sendmmsg is sendmmsg.AVAILABLE
    assert not BatchSender(sender, use_sendmmsg=False).uses_sendmmsg


@pytest.mark.parametrize("use_sendmmsg", MODES)
def test_batch_arrives_intact_in_order(
    udp_pair: tuple[socket.socket, socket.socket], use_sendmmsg: bool
) -> None:
    sender, receiver = udp_pair
    batch = BatchSender(sender, capacity=4, use_sendmmsg=use_sendmmsg)
    datagrams = _datagrams(11)  # three calls of at most 4
    assert batch.send(datagrams, receiver.getsockname()) == 11
    assert batch.send([], receiver.getsockname()) == 0
    assert _receive_all(receiver) == datagrams
    assert batch.errors == 0


@pytest.mark.parametrize("use_sendmmsg", MODES)
def test_destination_changes_between_batches(use_sendmmsg: bool) -> None:
    receivers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender, receivers[0], receivers[1]:
        for receiver in receivers:
            receiver.bind(("127.0.0.1", 0))
        batch = BatchSender(sender, use_sendmmsg=use_sendmmsg)
        assert batch.send([b"a", b"b"], receivers[0].getsockname()) == 2
        assert batch.send([b"c"], receivers[1].getsockname()) == 1
        assert batch.send([b"d"], receivers[0].getsockname()) == 1
        assert _receive_all(receivers[0]) == [b"a", b"b", b"d"]
        assert _receive_all(receivers[1]) == [b"c"]


@pytest.mark.parametrize("use_sendmmsg", MODES)
def test_ipv6_and_connected_sockets(use_sendmmsg: bool) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with receiver, sender:
        try:
            receiver.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback")
        datagrams = _datagrams(5)
        batch = BatchSender(sender, use_sendmmsg=use_sendmmsg)
        assert batch.send(datagrams, receiver.getsockname()) == 5
        assert _receive_all(receiver) == datagrams
        sender.connect(receiver.getsockname())
        connected = BatchSender(sender, use_sendmmsg=use_sendmmsg)
        assert connected.send(datagrams[:2], None) == 2
        assert _receive_all(receiver) == datagrams[:2]


@pytest.mark.parametrize("use_sendmmsg", MODES)
def test_full_buffer_ends_the_batch(use_sendmmsg: bool) -> None:
    # A Unix datagram socket's receive queue fills up (a UDP datagram on
    # loopback leaves the send buffer at once), so the sender gets EAGAIN.
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with left, right:
        left.setblocking(False)
        batch = BatchSender(left, capacity=16, use_sendmmsg=use_sendmmsg)
        datagrams = _datagrams(5000)
        sent = batch.send(datagrams, None)
        assert 0 < sent < len(datagrams)
        assert batch.errors == 0
        assert _receive_all(right) == datagrams[:sent]
        # Once drained, the next batch goes out whole.
        assert batch.send(datagrams[:3], None) == 3
        assert _receive_all(right) == datagrams[:3]


@pytest.mark.parametrize("use_sendmmsg", MODES)
def test_a_failing_datagram_is_skipped_and_counted(
    udp_pair: tuple[socket.socket, socket.socket], use_sendmmsg: bool
) -> None:
    sender, receiver = udp_pair
    batch = BatchSender(sender, capacity=4, use_sendmmsg=use_sendmmsg)
    too_big = bytes(70000)  # over the UDP maximum: EMSGSIZE
    datagrams = [b"first", too_big, b"third", too_big, b"fifth", b"sixth"]
    assert batch.send(datagrams, receiver.getsockname()) == 4
    assert batch.errors == 2
    assert _receive_all(receiver) == [b"first", b"third", b"fifth", b"sixth"]


def test_sockaddr_layouts() -> None:
    assert sendmmsg.sockaddr(socket.AF_INET, ("10.1.2.3", 5004)) == struct.pack(
        "=H", socket.AF_INET
    ) + bytes([0x13, 0x8C, 10, 1, 2, 3]) + bytes(8)
    packed = sendmmsg.sockaddr(socket.AF_INET6, ("2001:db8::1", 5004, 0, 7))
    assert len(packed) == 28
    assert packed[2:4] == bytes([0x13, 0x8C])
    assert packed[8:24] == socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert struct.unpack("=I", packed[24:])[0] == 7
    with pytest.raises(ValueError):
        sendmmsg.sockaddr(socket.AF_UNIX, ("x", 1))
    with pytest.raises(ValueError):
        BatchSender(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), capacity=0)
