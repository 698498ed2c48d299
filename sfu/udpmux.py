"""One UDP port for every peer connection of a process: a shared ICE host candidate.

aioice binds an ephemeral UDP socket per peer connection, so a hospital's
firewall would have to open the whole ephemeral range toward the bridge, and
a node with 1,000 endpoints holds 1,000 sockets. :class:`UdpMux` binds one
socket per candidate address on one port (``[sfu] udp_port``; each worker
process has its own, see ``sfu/workers.py``) and gives every peer
connection of the process a host candidate on it. Datagrams are
demultiplexed as follows (the scheme of single-port SFUs such as mediasoup's
WebRtcServer or Pion's UDPMux):

* a STUN Binding request (RFC 7983 §7: first octet 0-3; RFC 8489 §5) names
  the connection in its USERNAME, ``<receiver's ufrag>:<sender's ufrag>``
  (RFC 8445 §7.2.2): it goes to the connection whose local ufrag is the first
  part, and its source address becomes that connection's;
* everything else (STUN responses, DTLS, SRTP/SRTCP, RFC 7983) goes by source
  address: one that sent the connection a check, or that the connection sent
  a check to.

Each connection gets a 16-character ufrag (aioice's are 4: 24 bits, which
collide among a thousand connections about once in thirty), unique on this
process's sockets.

A connection sees an ordinary aioice ``StunProtocol`` whose transport writes
to the shared socket; the SFU's fan-out writes there too, through a
:class:`sfu.sendbatch.SendBatch` (one ``sendmmsg(2)`` per packet for all
its subscribers).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import string
import struct
from collections.abc import Callable, Sequence
from typing import Any, cast

from aioice import ice
from aioice.candidate import Candidate, candidate_foundation, candidate_priority

from sfu.probe import ReceiveProbe
from sfu.sendbatch import SendBatch

logger = logging.getLogger(__name__)

Address = tuple[Any, ...]

#: Receive and send buffers asked for each shared socket: every subscriber's
#: RTCP and every publisher's media arrive on it, and a fan-out of one video
#: packet to 1,000 subscribers is 1.2 MB in flight. Linux caps the request
#: at ``net.core.rmem_max``/``wmem_max``; a warning is logged when it does.
SOCKET_BUFFER_BYTES = 4 << 20

#: STUN (RFC 8489 §5): the magic cookie at octets 4-7, and the Binding request type.
_MAGIC_COOKIE = 0x2112A442
_BINDING_REQUEST = 0x0001
_USERNAME = 0x0006
_STUN_HEADER = struct.Struct("!HHI")
_ATTRIBUTE = struct.Struct("!HH")

_UFRAG_LENGTH = 16
_UFRAG_ALPHABET = string.ascii_letters + string.digits


def binding_request_ufrag(data: bytes) -> str | None:
    """The receiver's ufrag named by a STUN Binding request, or None if ``data`` is not one.

    RFC 8489 §5 (header: type, length, magic cookie, transaction id; then
    type-length-value attributes padded to 4 octets, §14) and §14.3
    (USERNAME); RFC 8445 §7.2.2 (``RFRAG:LFRAG``, the receiver's first).
    """
    if len(data) < 20 or data[0] > 3:
        return None
    kind, length, cookie = _STUN_HEADER.unpack_from(data)
    if kind != _BINDING_REQUEST or cookie != _MAGIC_COOKIE or 20 + length > len(data):
        return None
    offset, end = 20, 20 + length
    while offset + 4 <= end:
        attribute, size = _ATTRIBUTE.unpack_from(data, offset)
        offset += 4
        if attribute == _USERNAME:
            if offset + size > end:
                return None
            try:
                username = data[offset : offset + size].decode("utf-8")
            except UnicodeDecodeError:
                return None
            ufrag, colon, _ = username.partition(":")
            return ufrag if colon else None
        offset += (size + 3) & ~3
    return None


class _MuxTransport(asyncio.DatagramTransport):
    """A connection's view of the shared socket: sends go out on it, close detaches."""

    def __init__(self, socket_: MuxSocket, protocol: MuxedProtocol) -> None:
        super().__init__(extra={"sockname": socket_.address, "socket": None})
        self._socket = socket_
        self._protocol = protocol
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing or addr is None:
            return
        self._socket.claim((addr[0], addr[1]), self._protocol, replace=False)
        self._socket.sendto(data, addr)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._socket.detach(self._protocol)
        asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


class MuxedProtocol(ice.StunProtocol):
    """aioice's per-candidate protocol, on a :class:`MuxSocket` instead of its own socket."""

    def __init__(self, connection: Any, socket_: MuxSocket, ufrag: str) -> None:
        super().__init__(connection)
        self.mux = socket_
        #: The connection's local ufrag, its key on the socket.
        self.ufrag = ufrag
        #: Remote addresses routed to this protocol (see :meth:`MuxSocket.claim`).
        self.addresses: set[Address] = set()
        self.connection_made(_MuxTransport(socket_, self))


class MuxSocket(asyncio.DatagramProtocol):
    """One bound UDP socket shared by the connections' host candidates on one address."""

    def __init__(
        self, announced: str | None = None, on_delay: Callable[[float], None] | None = None
    ) -> None:
        #: The address written in candidates, if not the bound one (1:1 NAT).
        self.announced = announced
        self.transport: asyncio.DatagramTransport | None = None
        self.sock: socket.socket | None = None
        self.address: Address = ("", 0)
        self.batch: SendBatch | None = None
        self._by_ufrag: dict[str, MuxedProtocol] = {}
        self._by_address: dict[Address, MuxedProtocol] = {}
        #: Datagrams from an address no connection knows (or naming no known ufrag).
        self.unrouted = 0
        #: Exceptions raised by a connection's handling of a datagram.
        self.failed = 0
        #: Given how long each receive-delay probe waited before this process
        #: read it (seconds); None: no probe.
        self.on_delay = on_delay
        #: Measures how late this process reads the socket (``sfu/probe.py``).
        self.receive_probe: ReceiveProbe | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        # asyncio hands out a restricted view of its socket; sinks send on a
        # plain duplicate (non-blocking, like the original).
        shared = transport.get_extra_info("socket")
        self.sock = socket.socket(fileno=os.dup(shared.fileno()))
        self.sock.setblocking(False)
        self.address = transport.get_extra_info("sockname")
        if self.on_delay is not None:
            self.receive_probe = ReceiveProbe(self.sock, self.on_delay)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        addr = (addr[0], addr[1])
        ufrag = binding_request_ufrag(data) if data and data[0] < 4 else None
        if ufrag is not None:
            protocol = self._by_ufrag.get(ufrag)
            if protocol is not None:
                self.claim(addr, protocol, replace=True)
        else:
            protocol = self._by_address.get(addr)
        if protocol is None:
            if self.receive_probe is None or self.receive_probe.take(data, addr) is None:
                self.unrouted += 1
            return
        try:
            protocol.datagram_received(data, addr)
        except Exception:  # one connection's fault must not close the shared socket
            self.failed += 1
            logger.exception("datagram from %s failed in %r", addr, protocol.receiver)

    def close(self) -> None:
        if self.receive_probe is not None:
            self.receive_probe.close()
            self.receive_probe = None
        if self.batch is not None:
            self.batch.close()
        if self.transport is not None:
            self.transport.close()
        if self.sock is not None:
            self.sock.close()

    def error_received(self, exc: Exception) -> None:
        logger.debug("shared UDP socket %s: %s", self.address, exc)

    def sendto(self, data: Any, addr: Address) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def attach(self, connection: Any, ufrag: str) -> MuxedProtocol | None:
        """A protocol (with its host candidate) for ``connection``, known here by ``ufrag``."""
        if ufrag in self._by_ufrag:
            logger.error("ufrag %s is taken on %s", ufrag, self.address)
            return None
        protocol = MuxedProtocol(connection, self, ufrag)
        host, port = self.announced or self.address[0], self.address[1]
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", host),
            component=1,
            transport="udp",
            priority=candidate_priority(1, "host"),
            host=host,
            port=port,
            type="host",
        )
        self._by_ufrag[ufrag] = protocol
        return protocol

    def detach(self, protocol: MuxedProtocol) -> None:
        """Forget ``protocol``: its ufrag and addresses route nowhere from now on."""
        if self._by_ufrag.get(protocol.ufrag) is protocol:
            del self._by_ufrag[protocol.ufrag]
        for addr in protocol.addresses:
            if self._by_address.get(addr) is protocol:
                del self._by_address[addr]
        protocol.addresses.clear()

    def claim(self, addr: Address, protocol: MuxedProtocol, *, replace: bool) -> None:
        """Route datagrams from ``addr`` to ``protocol`` (taking it from another if ``replace``)."""
        owner = self._by_address.get(addr)
        if owner is protocol or (owner is not None and not replace):
            return
        if owner is not None:
            owner.addresses.discard(addr)
        self._by_address[addr] = protocol
        protocol.addresses.add(addr)

    def counts(self) -> dict[str, int]:
        return {
            "connections": len(self._by_ufrag),
            "addresses": len(self._by_address),
            "unrouted": self.unrouted,
            "failed": self.failed,
        }


class UdpMux:
    """The shared sockets of one process: one per candidate address, all on one port.

    ``port`` 0 lets the system pick one (the same for every address when it
    can). ``announced``, when given, holds the address to write in the
    candidates for each of ``addresses`` (behind a 1:1 NAT the public one,
    which is not on any interface; ICE checks arrive at the bound one).
    Opened by :meth:`open` (or the first connection's gathering), closed by
    :meth:`close`.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        port: int = 0,
        announced: Sequence[str] = (),
        on_delay: Callable[[float], None] | None = None,
    ) -> None:
        if announced and len(announced) != len(addresses):
            raise ValueError("one announced address per bound address")
        self.addresses = list(addresses)
        self.announced: list[str | None] = list(announced) or [None] * len(self.addresses)
        self.port = port
        #: Given each probe's receive delay (see :meth:`probe`).
        self.on_delay = on_delay
        self.sockets: list[MuxSocket] = []
        self._opening: asyncio.Lock | None = None
        self._ufrags: set[str] = set()

    def prepare(self, connection: Any) -> None:
        """Give an aioice connection a unique ufrag and gather its candidates here.

        Called before any SDP is written (the ufrag goes in it).
        """
        ufrag = self._new_ufrag()
        connection._local_username = ufrag

        async def gather_candidates() -> None:
            if connection._local_candidates_start:
                return
            connection._local_candidates_start = True
            await self.open()
            for mux_socket in self.sockets:
                protocol = mux_socket.attach(connection, ufrag)
                if protocol is not None:
                    connection._protocols.append(protocol)
                    connection._local_candidates.append(protocol.local_candidate)
            connection._local_candidates_end = True

        original_close = connection.close

        async def close() -> None:
            self._ufrags.discard(ufrag)
            await original_close()

        connection.gather_candidates = gather_candidates
        connection.close = close

    def _new_ufrag(self) -> str:
        while True:
            ufrag = "".join(secrets.choice(_UFRAG_ALPHABET) for _ in range(_UFRAG_LENGTH))
            if ufrag not in self._ufrags:
                self._ufrags.add(ufrag)
                return ufrag

    async def open(self) -> None:
        """Bind the sockets (once): an address that cannot be bound is logged and
        skipped, ``OSError`` if none can be."""
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self.sockets:
                return
            loop = asyncio.get_running_loop()
            port = self.port
            for address, announced in zip(self.addresses, self.announced, strict=True):
                # With no port configured, the first socket's port is tried for
                # the others, then any.
                tries = [port] if self.port or port == 0 else [port, 0]
                mux_socket = None
                for attempt, candidate_port in enumerate(tries, 1):
                    try:
                        _, mux_socket = await loop.create_datagram_endpoint(
                            functools.partial(MuxSocket, announced, self.on_delay),
                            local_addr=(address, candidate_port),
                        )
                        break
                    except OSError as exc:
                        level = logging.ERROR if attempt == len(tries) else logging.WARNING
                        logger.log(
                            level, "cannot bind UDP %s port %d: %s", address, candidate_port, exc
                        )
                if mux_socket is None:
                    continue
                _tune(mux_socket)
                self.sockets.append(mux_socket)
                if port == 0:  # the others on the same port, if free
                    port = mux_socket.address[1]
                logger.info(
                    "media on UDP %s port %d%s",
                    mux_socket.address[0],
                    mux_socket.address[1],
                    f" (announced as {announced})" if announced else "",
                )
            if not self.sockets:
                raise OSError(f"no UDP port {self.port} on any of {self.addresses}")

    def probes(self) -> list[ReceiveProbe]:
        """Each socket's receive-delay probe."""
        return [s.receive_probe for s in self.sockets if s.receive_probe is not None]

    def flush(self) -> None:
        """Send what waits in the sockets' send batches now."""
        for mux_socket in self.sockets:
            if mux_socket.batch is not None:
                mux_socket.batch.flush()

    async def close(self) -> None:
        for mux_socket in self.sockets:
            mux_socket.close()
        self.sockets = []

    def counts(self) -> dict[str, int]:
        """Connections, routed addresses and unroutable datagrams, all sockets together."""
        total = {"connections": 0, "addresses": 0, "unrouted": 0, "failed": 0}
        for mux_socket in self.sockets:
            for key, value in mux_socket.counts().items():
                total[key] += value
        return total


def _tune(mux_socket: MuxSocket) -> None:
    """Large socket buffers (warning when the system caps them) and the send batch."""
    sock = mux_socket.sock
    if sock is None:
        return
    for option, name in ((socket.SO_RCVBUF, "rmem_max"), (socket.SO_SNDBUF, "wmem_max")):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        granted = sock.getsockopt(socket.SOL_SOCKET, option) // 2  # Linux reports double
        if granted < SOCKET_BUFFER_BYTES:
            logger.warning(
                "UDP socket buffer is %d KiB; raise net.core.%s to %d for many subscribers",
                granted // 1024,
                name,
                SOCKET_BUFFER_BYTES,
            )
    mux_socket.batch = SendBatch.for_socket(sock)
