"""How busy a media process is: how late it handles its input, and its CPU share.

A media process forwards on one event loop. Past its capacity it falls
behind: the publishers' packets queue in the socket, and every
subscriber's picture is late (on the 2-core bench host the fall is
abrupt: 300 subscribers on one core held p99 34 ms, 350 went to seconds;
``docs/benchmarks.md``). The loop's timers can still run on time while
that happens, because the loop reads a bounded number of datagrams per
turn, so :class:`LoadMeter` takes two readings: how late the SFU's poll
timer fires, and how long a probe datagram the process sends each of its
input sockets every 0.1 s waits before it is read, or has been out unread
(``sfu/probe.py``). Its ``lag`` is the larger, kept as a decaying maximum
so that a sustained overload reads high while one slow callback fades
within a second or two.
It also takes the process's CPU share of one core. Signaling uses the lag
(``signaling/overload.py``) to refuse newcomers and shed the newest
receivers of an overloaded process; ``/metrics`` shows both per process.
"""

from __future__ import annotations

from dataclasses import dataclass

#: What is left of a lag reading after one second (0.9 per 0.1 s).
LAG_DECAY_PER_S = 0.9**10


@dataclass(slots=True)
class LoadMeter:
    """Lag (seconds, decaying maximum) and CPU share of one media process."""

    lag: float = 0.0
    #: CPU time over wall time between the last two samples (1.0: one core busy).
    cpu: float = 0.0
    _last_tick: float | None = None
    _cpu_mark: tuple[float, float] | None = None

    def tick(self, now: float, interval: float) -> None:
        """A timer that slept ``interval`` since the previous tick fired at ``now`` (monotonic)."""
        if self._last_tick is not None:
            elapsed = max(0.0, now - self._last_tick)
            late = max(0.0, elapsed - interval)
            self.lag = max(late, self.lag * LAG_DECAY_PER_S**elapsed)
        self._last_tick = now

    def observe(self, delay: float) -> None:
        """A probe datagram waited ``delay`` seconds before the process read it."""
        self.lag = max(self.lag, delay)

    def sample_cpu(self, now: float, cpu_time: float) -> None:
        """Take the CPU share since the previous sample (``time.process_time`` at ``now``)."""
        if self._cpu_mark is not None:
            wall = now - self._cpu_mark[0]
            if wall > 0:
                self.cpu = max(0.0, cpu_time - self._cpu_mark[1]) / wall
        self._cpu_mark = (now, cpu_time)


@dataclass(frozen=True, slots=True)
class MediaLoad:
    """One media process as admission and shedding see it."""

    #: ``main`` (everything in one process) or the worker's name.
    name: str
    lag: float
    cpu: float
    #: The subscriber peers it serves.
    subscribers: frozenset[str]
