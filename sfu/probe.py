"""Receive-delay probes: how long datagrams wait in a socket before this process reads them.

An event loop reads a bounded number of datagrams per turn, so when media
comes faster than a process forwards it the backlog grows in the socket's
receive queue (the shared sockets ask for 4 MiB: seconds of a feed) while
the loop's timers still run on time. A :class:`ReceiveProbe` sends the
socket it watches a small datagram stamped with ``time.monotonic()`` from
a socket of the same process; the datagram waits in the queue behind the
media, and when the owner reads it back the difference is the delay every
packet had at that moment. A probe not read back yet bounds the delay from
below (:meth:`ReceiveProbe.unread_for`); that is what shows a full socket
buffer, where the kernel drops the probes with the media. ``sfu/load.py``
keeps the reading; signaling sheds receivers on it
(``signaling/overload.py``).

A probe is 9 octets: a marker octet 0xFF (not 0-3, so never taken for
STUN, RFC 7983 §7; under RTP's 12-octet header, RFC 3550 §5.1) and the
send time as a big-endian double.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_PROBE = struct.Struct("!Bd")
_MARK = 0xFF
#: Probes remembered as unread (a minute at one every 0.1 s).
_UNREAD_LIMIT = 600

Address = tuple[Any, ...]


class ReceiveProbe:
    """Probes for the bound socket ``watched``, from a socket of this process.

    Its owner hands every datagram that its routing does not know to :meth:`take`.
    """

    def __init__(self, watched: socket.socket, on_delay: Callable[[float], None]) -> None:
        self.on_delay = on_delay
        #: Send times of the probes not read back yet (bounded: a minute's worth).
        self._unread: deque[float] = deque(maxlen=_UNREAD_LIMIT)
        #: The probe's own address (datagrams from it are probes); None: no probe.
        self.source: Address | None = None
        target = watched.getsockname()
        host, port, *rest = target
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if host in ("0.0.0.0", "::"):
            host, rest = ("::1" if family == socket.AF_INET6 else "127.0.0.1"), []
        self._sock: socket.socket | None = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            self._sock.connect((host, port, *rest))
            self.source = tuple(self._sock.getsockname()[:2])
        except OSError as exc:
            self.close()
            logger.warning("no receive-delay probe for %s: %s", target, exc)

    def send(self) -> None:
        """Send one probe (a full buffer skips it: the next comes soon)."""
        if self._sock is not None:
            now = time.monotonic()
            with contextlib.suppress(OSError):
                self._sock.send(_PROBE.pack(_MARK, now))
                self._unread.append(now)

    def unread_for(self, now: float) -> float:
        """How long the oldest probe sent and not read back has been out (0: none).

        The input is at least that late: a probe still queued, or one the
        kernel dropped because the socket's buffer was full (the worst
        overload, which the delays of the probes read back cannot show).
        """
        return now - self._unread[0] if self._unread else 0.0

    def take(self, data: bytes, addr: Address) -> float | None:
        """The delay of ``data`` if it is one of this probe's datagrams (reported), else None."""
        if len(data) != _PROBE.size or data[0] != _MARK or tuple(addr[:2]) != self.source:
            return None
        sent = _PROBE.unpack(data)[1]
        unread = self._unread
        while unread and unread[0] <= sent:  # read in order: older ones were dropped
            unread.popleft()
        delay: float = max(0.0, time.monotonic() - sent)
        self.on_delay(delay)
        return delay

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
