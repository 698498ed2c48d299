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
It also takes the process's CPU share of one core, and what it may use
(:func:`cpu_limit`: one core, less under a CFS quota). Signaling uses the
lag (``signaling/overload.py``) to refuse newcomers and shed the newest
receivers of an overloaded process, and the CPU against its limit to tell
when a process that shed has room again; ``/metrics`` shows both per
process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: What is left of a lag reading after one second (0.9 per 0.1 s).
LAG_DECAY_PER_S = 0.9**10


@dataclass(slots=True)
class LoadMeter:
    """Lag (seconds, decaying maximum) and CPU share of one media process."""

    lag: float = 0.0
    #: CPU time over wall time between the last two samples (1.0: one core busy).
    cpu: float = 0.0
    #: The CPU share the process may use (:func:`cpu_limit`), as last read.
    cpu_limit: float = 1.0
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
    #: The CPU share it may use (1.0: a core; less under a quota).
    cpu_limit: float = 1.0


def cpu_limit(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> float:
    """The CPU share this process may use: one core (an event loop is one
    thread), or less when its cgroup has a CFS bandwidth quota.

    The quota is the tightest of the process's cgroup and its ancestors:
    cgroup v1's ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` (-1: none),
    else cgroup v2's ``cpu.max`` ("max 100000": none; "30000 100000": 0.3).
    A container limited to a fraction of a core (``docker run --cpus``,
    Kubernetes CPU limits) reads as that fraction. Unreadable files count
    as no quota. Worker processes that share one quota each read all of
    it, which they get only while the others idle.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return 1.0
    limit = math.inf
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if "cpu" in controllers.split(","):  # v1, e.g. "4:cpu,cpuacct:/docker/ab12"
            for mount in (root / controllers, root / "cpu"):
                if mount.is_dir():
                    limit = min(limit, _tightest(mount, path, _v1_quota))
                    break
        elif not controllers:  # v2: "0::/system.slice/telebridge.service"
            limit = min(limit, _tightest(root, path, _v2_quota))
    return min(1.0, limit)


def _tightest(mount: Path, path: str, read: Callable[[Path], float | None]) -> float:
    """The smallest quota ``read`` finds in the cgroup ``path`` under ``mount`` or an ancestor."""
    parts = [part for part in path.split("/") if part]
    limit = math.inf
    for n in range(len(parts), -1, -1):
        try:
            quota = read(mount.joinpath(*parts[:n]))
        except (OSError, ValueError):
            continue
        if quota is not None:
            limit = min(limit, quota)
    return limit


def _v1_quota(level: Path) -> float | None:
    """``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``; None for -1 (no quota)."""
    quota = int((level / "cpu.cfs_quota_us").read_text())
    period = int((level / "cpu.cfs_period_us").read_text())
    return quota / period if quota > 0 and period > 0 else None


def _v2_quota(level: Path) -> float | None:
    """``cpu.max`` as a share of a core; None for "max" (no quota)."""
    quota, period = (level / "cpu.max").read_text().split()
    return int(quota) / int(period) if quota != "max" and int(period) > 0 else None
