"""The fan-out's send: SRTP-protect each copy in place, then one ``sendmmsg(2)`` for all.

On the shared socket of :mod:`sfu.udpmux`, every subscriber's copy of a
packet leaves through the same file descriptor, so the copies of one
fan-out can go to the kernel in one system call. Linux's
``sendmmsg(2)`` (since 3.0, glibc 2.14) takes an array of ``struct
mmsghdr`` (``sendmsg(2)``'s ``struct msghdr`` plus the length sent), each
with its own destination (``msg_name``, a ``sockaddr_in``/``sockaddr_in6``
of ``ip(7)``/``ipv6(7)``), and returns how many it accepted.

:class:`SendBatch` owns ``capacity`` slots of 1,500 bytes. A copy is
written into the next slot (the 12-byte fixed header of RFC 3550 §5.1, then
the rest of the packet), protected there with the subscriber's libsrtp
context (RFC 3711; RFC 7714 for AES-GCM, as :mod:`sfu.srtp` does), and its
``msghdr`` points at the slot and at the subscriber's address, built once
when the subscriber's sink is attached. The slots go out together when the
fan-out of the packet is over (``Sfu.forward`` flushes), else when the
event loop next runs its ready callbacks, or at once when they are all
used. Python pays one C call per batch instead of one ``sendto`` (with its
argument parsing and GIL hand-off) per copy; the kernel saves the system
call entry per datagram.

A full socket buffer (``EAGAIN``/``ENOBUFS``) drops the rest of the batch,
counted on each copy's sink as ``dropped``; a datagram the kernel refuses
for its own sake (an unreachable address) is counted in the sink's
``errors`` and the batch goes on after it.

``sendmmsg`` is Linux's; where the C library has none,
:meth:`SendBatch.for_socket` returns None and sinks send each copy with
``sendto``.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol

import cffi
from pylibsrtp._binding import ffi as srtp_ffi
from pylibsrtp._binding import lib as srtp_lib

_FFI = cffi.FFI()
# Linux's layouts (glibc and musl agree on them; size_t fields on 64-bit).
_FFI.cdef(
    """
    struct iovec { void *iov_base; size_t iov_len; };
    struct msghdr {
        void *msg_name; uint32_t msg_namelen;
        struct iovec *msg_iov; size_t msg_iovlen;
        void *msg_control; size_t msg_controllen;
        int msg_flags;
    };
    struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
    int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags);
    """
)


def _load_sendmmsg() -> Any:
    try:
        libc: Any = _FFI.dlopen(None)  # the C library's symbols, as declared above
        return libc.sendmmsg
    except (OSError, AttributeError):
        return None


_SENDMMSG = _load_sendmmsg()

#: ``sendmmsg(2)`` flag: never block, whatever the socket's mode.
_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0x40)
_FULL = {errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS}

_FIXED_HEADER = struct.Struct("!BBHII")
#: Bytes per slot, and room libsrtp needs after the payload (as sfu/srtp.py).
_SLOT_BYTES = 1500
_TRAILER = 144
#: Slots per batch: a tick's fan-out of one packet to this many subscribers
#: goes out in one call (more are sent in several).
CAPACITY = 256


class Counted(Protocol):
    """What a batch counts its failures on: the copy's sink."""

    dropped: int
    errors: int


def socket_address(addr: tuple[Any, ...], family: int) -> tuple[Any, int]:
    """``addr`` as a C ``sockaddr_in``/``sockaddr_in6`` (``ip(7)``, ``ipv6(7)``) and its length."""
    host, port = addr[0], addr[1]
    if family == socket.AF_INET:
        packed = (
            struct.pack("=H", socket.AF_INET)
            + struct.pack("!H", port)
            + socket.inet_aton(host)
            + bytes(8)
        )
    else:
        scope = addr[3] if len(addr) > 3 else 0
        packed = (
            struct.pack("=H", socket.AF_INET6)
            + struct.pack("!HI", port, 0)
            + socket.inet_pton(socket.AF_INET6, host)
            + struct.pack("=I", scope)
        )
    return _FFI.new("char[]", packed), len(packed)


class SendBatch:
    """Protected copies waiting for one ``sendmmsg(2)`` on one socket (see the module)."""

    __slots__ = (
        "_buffer",
        "_count",
        "_fd",
        "_headers",
        "_iovecs",
        "_length",
        "_messages",
        "_names",
        "_pointers",
        "_schedule",
        "_scheduled",
        "_sinks",
        "_sock",
        "_vectors",
        "_views",
        "batches",
        "capacity",
        "datagrams",
    )

    def __init__(
        self,
        sock: socket.socket,
        schedule: Callable[[Callable[[], None]], object],
        capacity: int = CAPACITY,
    ) -> None:
        """``schedule(callback)`` runs ``callback`` once the current tick is over
        (an event loop's ``call_soon``)."""
        self._sock = sock  # the descriptor must outlive the batch
        self._fd = sock.fileno()
        self._schedule = schedule
        self.capacity = capacity
        self._buffer = srtp_ffi.new("char[]", capacity * _SLOT_BYTES)
        base = int(srtp_ffi.cast("uintptr_t", self._buffer))
        view = memoryview(srtp_ffi.buffer(self._buffer))
        self._messages = _FFI.new("struct mmsghdr[]", capacity)
        # Items of a cffi array do not keep it alive: the batch holds both.
        self._iovecs = vectors = _FFI.new("struct iovec[]", capacity)
        self._vectors = [vectors[i] for i in range(capacity)]
        self._headers = [self._messages[i].msg_hdr for i in range(capacity)]
        for i in range(capacity):
            self._vectors[i].iov_base = _FFI.cast("void *", base + i * _SLOT_BYTES)
            self._headers[i].msg_iov = vectors + i
            self._headers[i].msg_iovlen = 1
        self._views = [view[i * _SLOT_BYTES : (i + 1) * _SLOT_BYTES] for i in range(capacity)]
        self._pointers = [self._buffer + i * _SLOT_BYTES for i in range(capacity)]
        self._sinks: list[Counted | None] = [None] * capacity
        #: Each slot's destination, held until sent (the sink may let go of it).
        self._names: list[Any] = [None] * capacity
        self._length = srtp_ffi.new("int *")
        self._count = 0
        self._scheduled = False
        #: System calls made, and datagrams the kernel accepted.
        self.batches = 0
        self.datagrams = 0

    @classmethod
    def for_socket(cls, sock: socket.socket) -> SendBatch | None:
        """A batch for ``sock`` on the running loop, or None where there is no ``sendmmsg``."""
        if _SENDMMSG is None:
            return None
        return cls(sock, asyncio.get_running_loop().call_soon)

    def add(
        self,
        context: Any,
        b0: int,
        b1: int,
        seq: int,
        timestamp: int,
        ssrc: int,
        tail: bytes,
        name: Any,
        name_length: int,
        sink: Counted,
    ) -> bool:
        """Protect one copy into the next slot, bound for ``name``; False if it cannot be.

        ``context`` is the subscriber's libsrtp context
        (:class:`sfu.srtp.InPlaceProtector` checks it); ``name`` and
        ``name_length`` come from :func:`socket_address`.
        """
        size = 12 + len(tail)
        if size > _SLOT_BYTES - _TRAILER:
            return False
        n = self._count
        view = self._views[n]
        _FIXED_HEADER.pack_into(view, 0, b0, b1, seq, timestamp, ssrc)
        view[12:size] = tail
        length = self._length
        length[0] = size
        if srtp_lib.srtp_protect(context, self._pointers[n], length):
            return False
        header = self._headers[n]
        header.msg_name = name
        header.msg_namelen = name_length
        self._vectors[n].iov_len = length[0]
        self._sinks[n] = sink
        self._names[n] = name
        self._count = n + 1
        if n + 1 == self.capacity:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._schedule(self._flush_soon)
        return True

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def close(self) -> None:
        """Send what waits, then nothing more (the socket is about to close)."""
        self.flush()
        self._fd = -1

    def flush(self) -> None:
        """Send every waiting copy now (see the module for what a failure costs)."""
        count = self._count
        if not count:
            return
        self._count = 0
        sent = 0
        while sent < count:
            result = _SENDMMSG(self._fd, self._messages + sent, count - sent, _MSG_DONTWAIT)
            self.batches += 1
            if result > 0:
                sent += result
                self.datagrams += result
                continue
            error = _FFI.errno
            if error == errno.EINTR:
                continue
            if error in _FULL:
                for sink in self._sinks[sent:count]:
                    if sink is not None:
                        sink.dropped += 1
                break
            sink = self._sinks[sent]
            if sink is not None:
                sink.errors += 1
            sent += 1
