"""User-space emulation of an impaired network link (island / satellite path).

The kernel on the bench hosts has no ``netem``, so ``telebridge bench --impair``
puts a fraction of its subscribers behind this shim instead: every datagram an
impaired subscriber receives (``down``) or sends (``up``: RTCP, NACKs, STUN) is
passed through a :class:`LinkEmulator` that decides whether and when it arrives.
Retransmissions and RTCP therefore cross the same impaired path as the media.

What is emulated, per direction, in this order (as on a real access link: the
bottleneck queue sits in front of the lossy, long link):

1. **Rate cap with a tail-drop FIFO** (like ``netem rate`` / ``tbf``): a
   datagram of ``size`` bytes offered at ``now`` finishes serialization at
   ``max(now, link_free_at) + size * 8 / rate_bps``. It is dropped (counted in
   ``dropped_queue``) when the bytes not yet serialized, itself included, would
   exceed ``queue_bytes``. The default queue holds 100 ms at the rate, at least
   3,000 bytes (two full-size datagrams): see :data:`DEFAULT_QUEUE_S`. Sizes
   are UDP payload bytes (the IP/UDP header overhead is not counted).
2. **Random loss on the link** (like ``netem loss gemodel p r``): the simple
   Gilbert-Elliott model, a two-state Markov chain (Good: delivered, Bad: lost)
   whose stationary loss rate is ``loss`` and whose mean loss-burst length
   (run of consecutive losses) is ``burst``: ``r = P(Bad->Good) = 1/burst``,
   ``p = P(Good->Bad) = loss*r/(1-loss)``. Losses cannot be made less clustered
   than independent ones (whose mean run is ``1/(1-loss)``), so ``burst`` below
   that is raised to it; ``burst=1`` (the default) is therefore plain Bernoulli
   loss. A datagram lost on the link still used its serialization time.
3. **Propagation delay with jitter, never reordered.** Every delivered
   datagram gets a one-way delay uniformly distributed in
   ``[delay - jitter, delay + jitter]`` (lower end clamped at 0), but datagrams
   are delivered in the order they were sent, as on real point-to-point
   satellite and microwave links (``netem`` with a FIFO child qdisc behaves the
   same way). Independent per-datagram jitter cannot do both: holding a
   datagram behind a later-drawn earlier one (``max(computed, last)``, what
   netem+pfifo does) biases the delay upward, by ~3 ms at 100 datagrams/s and
   toward ``delay + jitter`` at video packet rates, which would misreport the
   configured link. The delay is instead a reflected random walk on that
   interval whose step between consecutive departures is uniform in
   ``[-gap, +gap]`` (``gap`` = time between their departures). Its kernel is
   symmetric, so the delay stays uniformly distributed over the interval with
   mean ``delay`` at any packet rate; consecutive deliveries can never swap
   (the walk never falls faster than time advances); sparse datagrams (RTCP,
   STUN) get effectively independent delays, dense ones (video) a delay that
   wanders across the interval, as queueing delay on a shared link does.

:class:`LinkEmulator` is sans-I/O (it reads no clock and schedules nothing: the
caller passes ``now`` and gets a delivery time back), so it is tested with plain
float clocks. :class:`ImpairedPath` is the asyncio adapter for one subscriber.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "DEFAULT_MAX_PENDING",
    "DEFAULT_QUEUE_S",
    "MIN_QUEUE_BYTES",
    "Direction",
    "ImpairedPath",
    "Impairment",
    "LinkEmulator",
    "parse_impairment",
]

DEFAULT_QUEUE_S = 0.100
"""Default rate-cap queue: this many seconds of data at the capped rate..."""
MIN_QUEUE_BYTES = 3_000
"""...but never fewer bytes than this (two full-size datagrams)."""
DEFAULT_MAX_PENDING = 10_000
"""Default bound on datagrams scheduled but not yet delivered, per direction."""

Direction = Literal["down", "up"]
"""``down``: toward the impaired subscriber; ``up``: from it toward the SFU."""


@dataclass(frozen=True)
class Impairment:
    """One direction's link impairment (both directions of a path use the same one).

    ``delay_s``/``jitter_s``: one-way delay and the half-width of its uniform
    variation, seconds. ``loss``: stationary loss rate, 0..1. ``burst``: mean
    loss-burst length in datagrams (Gilbert-Elliott; 1 = independent losses).
    ``rate_bps``: link rate cap in bits/s, or None for no cap. ``queue_bytes``:
    the cap's queue limit, or None for the default (see :attr:`queue_limit`);
    only meaningful with a rate cap.
    """

    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    burst: float = 1.0
    rate_bps: int | None = None
    queue_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("delay_s", "jitter_s", "loss", "burst"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"impairment {name} must be finite, got {value!r}")
            if value < 0:
                raise ValueError(f"impairment {name} must not be negative, got {value!r}")
        if self.loss > 1:
            raise ValueError(f"impairment loss must be at most 1 (100 %), got {self.loss!r}")
        if self.burst < 1:
            raise ValueError(f"impairment burst must be at least 1 datagram, got {self.burst!r}")
        if self.rate_bps is not None and self.rate_bps <= 0:
            raise ValueError(f"impairment rate_bps must be positive, got {self.rate_bps!r}")
        if self.queue_bytes is not None:
            if self.rate_bps is None:
                raise ValueError("impairment queue_bytes needs a rate cap (rate_bps)")
            if self.queue_bytes <= 0:
                raise ValueError(
                    f"impairment queue_bytes must be positive, got {self.queue_bytes!r}"
                )

    @property
    def queue_limit(self) -> int | None:
        """The rate cap's queue limit in bytes (explicit or default); None without a cap."""
        if self.rate_bps is None:
            return None
        if self.queue_bytes is not None:
            return self.queue_bytes
        return max(MIN_QUEUE_BYTES, round(self.rate_bps * DEFAULT_QUEUE_S / 8))

    def gilbert_elliott(self) -> tuple[float, float]:
        """The loss chain's ``(p, r)``: P(Good->Bad) and P(Bad->Good) per datagram.

        Stationary loss ``p/(p+r) = loss``; mean loss run ``1/r = max(burst, 1/(1-loss))``.
        """
        if self.loss <= 0:
            return 0.0, 1.0
        if self.loss >= 1:
            return 1.0, 0.0
        r = min(1.0 / self.burst, 1.0 - self.loss)
        return self.loss * r / (1.0 - self.loss), r

    def describe(self) -> dict[str, float | int | None]:
        """The report's ``impairment`` object (bench/SCHEMA.md)."""
        return {
            "delay_ms": round(self.delay_s * 1000, 6),
            "jitter_ms": round(self.jitter_s * 1000, 6),
            "loss_pct": round(self.loss * 100, 6),
            "burst": self.burst,
            "rate_bps": self.rate_bps,
        }


_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_KEYS = ("delay", "jitter", "loss", "burst", "rate", "queue")
_TIME_UNITS = {"": 1e-3, "ms": 1e-3, "s": 1.0}
_RATE_UNITS = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}
_SIZE_UNITS = {
    "": 1, "b": 1, "k": 1_000, "kb": 1_000, "kib": 1_024,
    "m": 1_000_000, "mb": 1_000_000, "mib": 1_048_576,
}  # fmt: skip


def _number(key: str, text: str, pattern: str) -> tuple[float, str]:
    """Match ``text`` as a non-negative number and a unit suffix; ``(value, unit)``."""
    text = text.strip()
    if text.startswith("-"):
        raise ValueError(f"impairment {key}= must not be negative, got {text!r}")
    match = re.fullmatch(_NUMBER + r"\s*" + pattern, text, flags=re.IGNORECASE)
    if match is None:
        raise ValueError(f"impairment {key}= has a malformed value {text!r}")
    return float(match.group(1)), (match.group(2) or "").lower()


def parse_impairment(text: str) -> tuple[float, Impairment]:
    """Parse ``FRACTION:key=value,...`` into (fraction of subscribers, impairment).

    ``FRACTION`` is in (0, 1] or a percentage (``25%``). Keys: ``delay`` and
    ``jitter`` (``150ms``, ``0.15s``; a plain number is milliseconds), ``loss``
    (percent: ``3%`` or ``3``), ``burst`` (mean loss-burst length in datagrams,
    >= 1), ``rate`` (bits/s with optional ``k``/``M``/``G`` and optional
    ``bit``/``bps`` suffix: ``2M``, ``512kbit``), ``queue`` (bytes, optional
    ``k``/``kB``/``KiB``/``M``/``MB``/``MiB``; needs ``rate``; default 100 ms at
    the rate, at least 3,000 bytes). Example:
    ``0.25:delay=150ms,jitter=20ms,loss=3%,burst=4,rate=2M``.

    Raises ``ValueError`` naming the problem for unknown or repeated keys,
    negative or out-of-range values and malformed text.
    """
    head, sep, spec = text.partition(":")
    if not sep:
        raise ValueError(
            f"impairment {text!r} must look like FRACTION:key=value,... "
            "(e.g. 0.25:delay=150ms,jitter=20ms,loss=3%)"
        )
    head = head.strip()
    if head.startswith("-"):
        raise ValueError(f"impairment fraction must not be negative, got {head!r}")
    match = re.fullmatch(_NUMBER + r"\s*(%?)", head)
    if match is None:
        raise ValueError(f"impairment fraction {head!r} is not a number or percentage")
    fraction = float(match.group(1)) / (100 if match.group(2) else 1)
    if not 0 < fraction <= 1:
        raise ValueError(f"impairment fraction must be in (0, 1] (or 0-100 %), got {head!r}")

    values: dict[str, str] = {}
    for item in spec.split(","):
        if not item.strip():
            raise ValueError(f"impairment {text!r} has an empty key=value item")
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or not value.strip():
            raise ValueError(f"impairment item {item.strip()!r} must be key=value")
        if key not in _KEYS:
            raise ValueError(f"unknown impairment key {key!r} (expected one of {', '.join(_KEYS)})")
        if key in values:
            raise ValueError(f"impairment key {key!r} given twice")
        values[key] = value

    delay_s = jitter_s = loss = 0.0
    burst = 1.0
    rate_bps: int | None = None
    queue_bytes: int | None = None
    if "delay" in values:
        number, unit = _number("delay", values["delay"], r"(ms|s)?")
        delay_s = number * _TIME_UNITS[unit]
    if "jitter" in values:
        number, unit = _number("jitter", values["jitter"], r"(ms|s)?")
        jitter_s = number * _TIME_UNITS[unit]
    if "loss" in values:
        number, _ = _number("loss", values["loss"], r"(%)?")
        if number > 100:
            raise ValueError(f"impairment loss= must be at most 100 %, got {values['loss']!r}")
        loss = number / 100
    if "burst" in values:
        burst, _ = _number("burst", values["burst"], r"()")
        if burst < 1:
            raise ValueError(
                f"impairment burst= (mean loss-burst length) must be >= 1, got {values['burst']!r}"
            )
    if "rate" in values:
        number, unit = _number("rate", values["rate"], r"([kmg])?(?:bit|bps|bit/s)?")
        rate_bps = round(number * _RATE_UNITS[unit])
        if rate_bps <= 0:
            raise ValueError(f"impairment rate= must be positive, got {values['rate']!r}")
    if "queue" in values:
        if rate_bps is None:
            raise ValueError("impairment queue= needs rate= (it is the rate cap's queue)")
        number, unit = _number("queue", values["queue"], r"(b|k|kb|kib|m|mb|mib)?")
        queue_bytes = round(number * _SIZE_UNITS[unit])
        if queue_bytes <= 0:
            raise ValueError(f"impairment queue= must be positive, got {values['queue']!r}")
    impairment = Impairment(delay_s, jitter_s, loss, burst, rate_bps, queue_bytes)
    return fraction, impairment


class LinkEmulator:
    """One direction of an impaired link, sans-I/O (see the module docstring).

    Call :meth:`offer` for each datagram with a non-decreasing ``now`` (any
    clock, seconds); it returns the delivery time on that clock, or None when
    the datagram is dropped. Delivery times are non-decreasing (in order).
    Counters: ``offered = dropped_queue + dropped_loss + delivered``, where
    ``delivered`` counts datagrams given a delivery time.
    """

    def __init__(self, impairment: Impairment, rng: random.Random) -> None:
        self.impairment = impairment
        self._rng = rng
        self._p, self._r = impairment.gilbert_elliott()
        self._rate = impairment.rate_bps
        self._queue_limit = impairment.queue_limit
        self._low = max(0.0, impairment.delay_s - impairment.jitter_s)
        self._high = impairment.delay_s + impairment.jitter_s
        # Previous datagram's loss state, drawn from the stationary distribution
        # so that the very first datagram is lost with probability ``loss``.
        self._bad = impairment.loss > 0 and rng.random() < impairment.loss
        self._link_free_at = -math.inf
        self._last_departure: float | None = None
        self._walk = self._low
        self._last_delivery = -math.inf
        self.offered = 0
        self.dropped_loss = 0
        self.dropped_queue = 0
        self.delivered = 0

    def backlog_bytes(self, now: float) -> float:
        """Bytes queued at the rate cap and not yet serialized at ``now`` (0 without a cap)."""
        if self._rate is None:
            return 0.0
        return max(0.0, self._link_free_at - now) * self._rate / 8

    def counters(self) -> dict[str, int]:
        return {
            "offered": self.offered,
            "dropped_loss": self.dropped_loss,
            "dropped_queue": self.dropped_queue,
            "delivered": self.delivered,
        }

    def offer(self, size: int, now: float) -> float | None:
        """Delivery time of a ``size``-byte datagram sent at ``now``, or None if dropped."""
        self.offered += 1
        departure = now
        if self._rate is not None:
            assert self._queue_limit is not None
            if self.backlog_bytes(now) + size > self._queue_limit:
                self.dropped_queue += 1
                return None
            departure = max(now, self._link_free_at) + size * 8 / self._rate
            self._link_free_at = departure

        if self._lost():
            self.dropped_loss += 1
            return None

        delivery = max(departure + self._delay(departure), self._last_delivery)
        self._last_delivery = delivery
        self.delivered += 1
        return delivery

    def _lost(self) -> bool:
        """Advance the Gilbert-Elliott chain by one datagram; True if it is lost."""
        if self._p <= 0:
            return False
        u = self._rng.random()
        self._bad = u >= self._r if self._bad else u < self._p
        return self._bad

    def _delay(self, departure: float) -> float:
        """Next value of the in-order delay walk (uniform on [low, high])."""
        width = self._high - self._low
        if width <= 0:
            return self._low
        last = self._last_departure
        self._last_departure = departure
        if last is None:
            self._walk = self._low + width * self._rng.random()
            return self._walk
        gap = max(0.0, departure - last)
        # Step uniform in [-gap, +gap], folded (reflected) back into [low, high].
        offset = (self._walk - self._low + gap * (2 * self._rng.random() - 1)) % (2 * width)
        if offset > width:
            offset = 2 * width - offset
        self._walk = self._low + offset
        return self._walk


@dataclass(slots=True)
class _Scheduled:
    when: float
    callback: Callable[..., object]
    data: bytes
    args: tuple[object, ...]


class ImpairedPath:
    """Both directions of one impaired subscriber's datagram path, on an asyncio loop.

    ``deliver_later(callback, data, direction, *args)`` runs the datagram
    through that direction's :class:`LinkEmulator` (clock: ``loop.time()``) and
    calls ``callback(data, *args)`` at its delivery time, or never if dropped.
    Deliveries of a direction happen in order. Nothing blocks and no task is
    created: each direction keeps a FIFO of scheduled datagrams and one
    ``loop.call_at`` handle for its head (ties in asyncio's timer heap are not
    ordered, so one handle per datagram could reorder equal times). At most
    ``max_pending`` datagrams per direction wait; more are dropped and counted
    in ``dropped_overflow`` (before reaching the emulator). Memory is bounded
    by that and, with a rate cap, by the queue limit.

    ``seed`` makes the loss and delay draws reproducible (None: fresh entropy).
    """

    def __init__(
        self,
        impairment: Impairment,
        *,
        seed: int | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be positive, got {max_pending!r}")
        self.impairment = impairment
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self.max_pending = max_pending
        master = random.Random(seed)
        self.down = LinkEmulator(impairment, random.Random(master.getrandbits(64)))
        self.up = LinkEmulator(impairment, random.Random(master.getrandbits(64)))
        self._emulators: dict[Direction, LinkEmulator] = {"down": self.down, "up": self.up}
        self._queues: dict[Direction, deque[_Scheduled]] = {"down": deque(), "up": deque()}
        self._timers: dict[Direction, asyncio.TimerHandle | None] = {"down": None, "up": None}
        self.dropped_overflow: dict[Direction, int] = {"down": 0, "up": 0}
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        """Datagrams scheduled and not yet delivered, both directions."""
        return sum(len(queue) for queue in self._queues.values())

    def deliver_later(
        self,
        callback: Callable[..., object],
        data: bytes,
        direction: Direction,
        *args: object,
    ) -> bool:
        """Schedule ``callback(data, *args)`` after the emulated link; False if dropped."""
        if direction not in self._queues:
            raise ValueError(f"direction must be 'down' or 'up', got {direction!r}")
        if self._closed:
            return False
        queue = self._queues[direction]
        if len(queue) >= self.max_pending:
            self.dropped_overflow[direction] += 1
            return False
        when = self._emulators[direction].offer(len(data), self._loop.time())
        if when is None:
            return False
        queue.append(_Scheduled(when, callback, data, args))
        if self._timers[direction] is None:
            self._arm(direction)
        return True

    def close(self) -> None:
        """Cancel every pending delivery; later ``deliver_later`` calls drop silently."""
        self._closed = True
        for direction, timer in self._timers.items():
            if timer is not None:
                timer.cancel()
            self._timers[direction] = None
        for queue in self._queues.values():
            queue.clear()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per-direction counters: the emulator's plus ``dropped_overflow`` and ``pending``."""
        return {
            direction: {
                **emulator.counters(),
                "dropped_overflow": self.dropped_overflow[direction],
                "pending": len(self._queues[direction]),
            }
            for direction, emulator in self._emulators.items()
        }

    def _arm(self, direction: Direction) -> None:
        head = self._queues[direction][0]
        self._timers[direction] = self._loop.call_at(head.when, self._fire, direction, head.when)

    def _fire(self, direction: Direction, armed_for: float) -> None:
        self._timers[direction] = None
        queue = self._queues[direction]
        limit = max(armed_for, self._loop.time())
        while queue and queue[0].when <= limit and not self._closed:
            item = queue.popleft()
            try:
                item.callback(item.data, *item.args)
            except Exception as exc:  # one bad callback must not stall the path
                message = f"impaired {direction} delivery callback failed"
                self._loop.call_exception_handler({"message": message, "exception": exc})
        if queue and self._timers[direction] is None and not self._closed:
            self._arm(direction)


def impair_ice_connection(connection: Any, path: ImpairedPath) -> dict[int, Any]:
    """Put every datagram of an aioice ``Connection``, both ways, behind ``path``.

    Each of its STUN protocols' ``datagram_received`` (down) and its
    transport's ``sendto`` (up) is shadowed by an instance attribute that
    goes through the emulated link. Returns the original receive callbacks
    by ``id(protocol)``, for a reader that bypasses asyncio's.
    """
    originals: dict[int, Any] = {}
    for protocol in connection._protocols:
        receive = protocol.datagram_received
        originals[id(protocol)] = receive
        transport = protocol.transport
        send = transport.sendto

        def impaired_receive(data: bytes, addr: Any, receive: Any = receive) -> None:
            path.deliver_later(receive, data, "down", addr)

        def impaired_send(data: bytes, addr: Any = None, send: Any = send) -> None:
            path.deliver_later(send, data, "up", addr)

        setattr(protocol, "datagram_received", impaired_receive)  # noqa: B010
        setattr(transport, "sendto", impaired_send)  # noqa: B010
    return originals
