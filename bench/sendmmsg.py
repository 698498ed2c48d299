"""Several UDP datagrams in one system call: ``sendmmsg(2)`` through ctypes.

Linux's ``sendmmsg(2)`` (since 3.0, glibc 2.14) hands the kernel an array of
``struct mmsghdr`` (a ``struct msghdr`` of ``sendmsg(2)`` plus the length
sent) and returns how many of them it accepted. Python's ``socket`` module
has ``sendmsg`` but no ``sendmmsg``; :class:`BatchSender` calls the C library
directly, with every ctypes structure allocated once:

* one ``struct iovec`` (``readv(2)``) per message pointing straight at the
  ``bytes`` object's buffer (a ``c_char_p`` slot: no copy, no per-message
  ctypes object);
* one ``msghdr`` per message whose ``msg_name`` is a ``struct sockaddr_in``
  or ``sockaddr_in6`` (``ip(7)``, ``ipv6(7)``) built once per destination, or
  NULL on a connected socket (``udp(7)``).

Where ``sendmmsg`` is missing (not Linux), the same call sends each datagram
with ``sendto(2)``. Either way a full socket buffer (``EAGAIN``) ends the
batch: the datagrams from there on are not sent, and the caller counts them
as drops, as it counts ``sendto``'s ``BlockingIOError``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any

#: A destination as ``socket.sendto`` takes it: ``(host, port)`` for IPv4,
#: ``(host, port[, flowinfo, scope_id])`` for IPv6.
Address = tuple[Any, ...]

#: ``int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned vlen, int flags)``.
SendmmsgFunction = Callable[[int, int, int, int], int]

#: ``sendmmsg(2)`` flag: never block, whatever the socket's mode.
MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0x40)


class _Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),  # socklen_t
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint))


def _load_sendmmsg() -> SendmmsgFunction | None:
    """The C library's ``sendmmsg``, or None where the platform has none.

    Linux only: the ``sockaddr`` layouts below are Linux's (BSDs have
    ``sendmmsg`` too, with an ``sa_len`` byte first).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.sendmmsg
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    function.restype = ctypes.c_int
    loaded: SendmmsgFunction = function
    return loaded


_SENDMMSG = _load_sendmmsg()

#: Whether :class:`BatchSender` uses ``sendmmsg(2)`` on this platform.
AVAILABLE = _SENDMMSG is not None


def sockaddr(family: int, address: Address) -> bytes:
    """Linux's ``struct sockaddr_in`` (``ip(7)``) or ``sockaddr_in6`` (``ipv6(7)``).

    ``address`` is resolved numerically (no DNS), as ``sendto`` would for an
    address literal; an IPv6 ``%scope`` suffix becomes ``sin6_scope_id``.
    """
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"unsupported address family {family}")
    host, port = address[0], address[1]
    info = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST)
    resolved: tuple[Any, ...] = info[0][4]
    if family == socket.AF_INET:
        return struct.pack(
            "=HH4s8x", family, socket.htons(resolved[1]), socket.inet_pton(family, resolved[0])
        )
    flowinfo = address[2] if len(address) > 2 else resolved[2]
    scope_id = address[3] if len(address) > 3 else resolved[3]
    return struct.pack(
        "=HHI16sI",
        family,
        socket.htons(resolved[1]),
        socket.htonl(flowinfo),
        socket.inet_pton(family, resolved[0].split("%")[0]),
        scope_id,
    )


class BatchSender:
    """Sends batches of datagrams to one destination on one UDP socket.

    ``send(datagrams, address)`` sends them in order with one ``sendmmsg``
    call per ``capacity`` datagrams (``address`` None on a connected
    socket) and returns how many the kernel accepted, counted from the
    first. It stops at a full socket buffer (``EAGAIN``); any other error
    skips the datagram it hit and counts it in :attr:`errors` (``sendto``
    semantics per datagram). So of a batch of ``n``,
    ``n - sent - (errors added)`` were dropped.

    The socket stays the caller's: the sender keeps its file descriptor
    number, so it must not outlive the socket. ``use_sendmmsg=False`` (or
    a platform without it) sends with ``sendto`` instead.
    """

    def __init__(
        self, sock: socket.socket, capacity: int = 64, *, use_sendmmsg: bool = True
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self._sock = sock
        self._fd = sock.fileno()
        self._capacity = capacity
        self._sendmmsg = _SENDMMSG if use_sendmmsg else None
        self._address: Address | None = None
        self._name: ctypes.Array[ctypes.c_char] | None = None
        self.errors = 0
        self._blocked = False
        # Typed views over the preallocated arrays: one integer or pointer
        # store per field per message, no ctypes object per message. The
        # ``c_char_p`` view keeps the last batch's bytes referenced until
        # the next batch overwrites them.
        self._iovecs = (_Iovec * capacity)()
        self._msgs = (_Mmsghdr * capacity)()
        pointer_size = ctypes.sizeof(ctypes.c_void_p)
        iov_stride = ctypes.sizeof(_Iovec) // pointer_size
        self._iov_stride = iov_stride
        self._iov_base = (ctypes.c_char_p * (capacity * iov_stride)).from_buffer(self._iovecs)
        self._iov_len = (ctypes.c_size_t * (capacity * iov_stride)).from_buffer(self._iovecs)
        self._msg_size = ctypes.sizeof(_Mmsghdr)
        self._msgs_address = ctypes.addressof(self._msgs)
        iov_address = ctypes.addressof(self._iovecs)
        for i in range(capacity):
            header = self._msgs[i].msg_hdr
            header.msg_iov = iov_address + i * ctypes.sizeof(_Iovec)
            header.msg_iovlen = 1

    @property
    def uses_sendmmsg(self) -> bool:
        """Whether batches go out through ``sendmmsg(2)`` (else ``sendto``)."""
        return self._sendmmsg is not None

    def _set_destination(self, address: Address | None) -> None:
        """Point every message's ``msg_name`` at ``address`` (NULL when None)."""
        if address is None:
            name, length = None, 0
        else:
            raw = sockaddr(self._sock.family, address)
            self._name = ctypes.create_string_buffer(raw, len(raw))
            name, length = ctypes.addressof(self._name), len(raw)
        for i in range(self._capacity):
            header = self._msgs[i].msg_hdr
            header.msg_name = name
            header.msg_namelen = length
        self._address = address

    def send(self, datagrams: Sequence[bytes], address: Address | None) -> int:
        """Send ``datagrams`` in order to ``address``; return how many were sent."""
        function = self._sendmmsg
        if function is None:
            return self._send_each(datagrams, address)
        if address != self._address:
            self._set_destination(address)
        capacity = self._capacity
        total = len(datagrams)
        if not total:
            return 0
        if total <= capacity:  # the common case: one call, no slicing
            return self._send_chunk(function, datagrams, total)
        sent = 0
        for start in range(0, total, capacity):
            chunk = datagrams[start : start + capacity]
            done = self._send_chunk(function, chunk, len(chunk))
            sent += done
            if done < len(chunk) and self._blocked:
                break
        return sent

    def _send_chunk(
        self, function: SendmmsgFunction, datagrams: Sequence[bytes], count: int
    ) -> int:
        """One ``sendmmsg`` of at most ``capacity`` datagrams, retried past errors."""
        bases = self._iov_base
        lengths = self._iov_len
        stride = self._iov_stride
        slot = 0
        for data in datagrams:
            bases[slot] = data
            lengths[slot + 1] = len(data)
            slot += stride
        result = function(self._fd, self._msgs_address, count, MSG_DONTWAIT)
        if result == count:
            return count
        # A partial send or an error. sendmmsg(2), BUGS: an error after the
        # first message is lost, and a retry from the first unsent message
        # reports it; so retry from there until EAGAIN or the end.
        self._blocked = False
        done = sent = 0
        while True:
            if result > 0:
                done += result
                sent += result
            else:
                code = ctypes.get_errno()
                if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                    self._blocked = True
                    return sent
                if code != errno.EINTR:
                    self.errors += 1  # this datagram failed: skip it, send the rest
                    done += 1
            if done >= count:
                return sent
            result = function(
                self._fd, self._msgs_address + done * self._msg_size, count - done, MSG_DONTWAIT
            )

    def _send_each(self, datagrams: Sequence[bytes], address: Address | None) -> int:
        """The fallback: one ``sendto(2)`` (or ``send(2)``) per datagram."""
        sock = self._sock
        sent = 0
        for data in datagrams:
            try:
                if address is None:
                    sock.send(data)
                else:
                    sock.sendto(data, address)
            except BlockingIOError:
                break
            except OSError:
                self.errors += 1
                continue
            sent += 1
        return sent
