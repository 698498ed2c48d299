"""Upstream loss recovery: which packets to NACK toward a publisher, and when.

A gap in an incoming stream is NACKed at once (RFC 4585 §6.2.1), then
retried about once per round trip up to ``max_retries`` times, while the
packet could still be useful (younger than ``max_age``). The round trip is
learnt from repairs (a retransmission's arrival minus the first NACK for
it); until one came, and never less, retries go every ``retry_interval``.
A sender ignores NACKs for a packet it resent less than an RTT ago, so on a
satellite uplink faster retries would all be spent before the first repair
could even arrive.
aiortc's own receiver NACKs once and never retries; on a lossy uplink the
retransmission itself is lost a few percent of the time, hence the retries.
Gaps larger than ``max_gap`` are a stream restart, not loss, and are not
NACKed.
"""

from __future__ import annotations


class NackTracker:
    """Missing extended sequence numbers of one stream and their retry state."""

    __slots__ = ("_missing", "max_age", "max_gap", "max_retries", "retry_interval", "rtt")

    def __init__(
        self,
        retry_interval: float = 0.1,
        max_retries: int = 5,
        max_age: float = 1.5,
        max_gap: int = 512,
    ) -> None:
        self.retry_interval = retry_interval
        self.max_retries = max_retries
        self.max_age = max_age
        self.max_gap = max_gap
        #: ext_seq -> [first detected, last NACKed, times NACKed]
        self._missing: dict[int, list[float]] = {}
        #: Smoothed round trip to the sender learnt from repairs (s), None before one.
        self.rtt: float | None = None

    def __len__(self) -> int:
        return len(self._missing)

    @property
    def interval(self) -> float:
        """Time between two NACKs of one packet: a round trip and some slack."""
        if self.rtt is None:
            return self.retry_interval
        return max(self.retry_interval, self.rtt + self.retry_interval / 2)

    def on_packet(
        self, ext_seq: int, previous_highest: int, now: float, repair: bool = False
    ) -> list[int]:
        """Record an arrival (``repair``: a retransmission); returns the packets to NACK now."""
        missing = self._missing
        if missing:
            state = missing.pop(ext_seq, None)
            if repair and state is not None:
                # Usually the answer to the first NACK (sent when the gap was seen).
                sample = now - state[0]
                self.rtt = sample if self.rtt is None else 0.875 * self.rtt + 0.125 * sample
        if previous_highest < 0 or ext_seq <= previous_highest + 1:
            return []
        gap = ext_seq - previous_highest - 1
        if gap > self.max_gap:
            return []
        fresh = list(range(previous_highest + 1, ext_seq))
        for seq in fresh:
            missing[seq] = [now, now, 1.0]
        return fresh

    def due(self, now: float) -> tuple[list[int], list[int]]:
        """Packets to NACK again now, and packets given up on (too old or retried out)."""
        retry: list[int] = []
        lost: list[int] = []
        interval = self.interval
        for seq, state in list(self._missing.items()):
            if now - state[0] > self.max_age or state[2] >= self.max_retries:
                if now - state[1] >= interval:
                    del self._missing[seq]
                    lost.append(seq)
            elif now - state[1] >= interval:
                state[1] = now
                state[2] += 1
                retry.append(seq)
        return retry, lost

    def clear(self) -> None:
        self._missing.clear()
