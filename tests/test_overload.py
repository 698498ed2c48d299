"""Overload protection's decisions (``sfu/load.py``, ``signaling/overload.py``) on a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfu.load import LAG_DECAY_PER_S, LoadMeter, MediaLoad, cpu_limit
from signaling.overload import CAP_GROW_S, CAP_HOLD_S, SHED_INTERVAL_S, OverloadGuard


def _load(
    name: str, lag: float, subscribers: int, cpu: float = 0.0, limit: float = 1.0
) -> MediaLoad:
    return MediaLoad(name, lag, cpu, frozenset(f"{name}-{i}" for i in range(subscribers)), limit)


def test_the_meter_keeps_a_sustained_lag_and_forgets_a_spike() -> None:
    meter = LoadMeter()
    now = 0.0
    meter.tick(now, 0.02)
    for _ in range(10):  # every 20 ms timer fires 300 ms late
        now += 0.32
        meter.tick(now, 0.02)
        assert meter.lag == pytest.approx(0.3)
    for _ in range(50):  # back on time for a second
        now += 0.02
        meter.tick(now, 0.02)
    assert meter.lag == pytest.approx(0.3 * LAG_DECAY_PER_S, rel=1e-6)
    assert meter.lag < 0.25


def test_the_meter_takes_the_cpu_share_between_samples() -> None:
    meter = LoadMeter()
    meter.sample_cpu(10.0, 5.0)
    assert meter.cpu == 0.0
    meter.sample_cpu(12.0, 6.5)
    assert meter.cpu == pytest.approx(0.75)


def test_a_lagging_process_sheds_its_newest_share_after_a_while_and_keeps_a_cap() -> None:
    guard = OverloadGuard(lag_limit=0.25, shed_after=2.0)
    calm, busy = _load("worker0", 0.01, 100), _load("worker1", 0.5, 300)
    assert guard.to_shed([calm, busy], 0.0) == {}
    assert guard.to_shed([calm, busy], 1.9) == {}
    # Two seconds over the limit: 5 % of its 300.
    assert guard.to_shed([calm, busy], 2.0) == {"worker1": 15}
    # It looks again a while later: no better, so it sheds again.
    still = _load("worker1", 0.45, 285)
    assert guard.to_shed([calm, still], 2.0 + SHED_INTERVAL_S - 0.1) == {}
    assert guard.to_shed([calm, still], 2.0 + SHED_INTERVAL_S) == {"worker1": 14}
    # A backlog that drains (lag down by a fifth since the last look) is left to drain.
    draining = _load("worker1", 0.35, 271)
    assert guard.to_shed([calm, draining], 2.0 + 2 * SHED_INTERVAL_S) == {}
    stuck = _load("worker1", 0.3, 271)
    assert guard.to_shed([calm, stuck], 2.0 + 3 * SHED_INTERVAL_S) == {"worker1": 13}
    # Newcomers go to the calm process; the other one is over the limit, then at its cap.
    now = 2.0 + 3 * SHED_INTERVAL_S
    assert guard.accepts(calm, now)
    assert not guard.accepts(still, now)
    recovered = _load("worker1", 0.05, 258)
    assert not guard.accepts(recovered, now + 1)
    assert guard.accepts(_load("worker1", 0.05, 257), now + 1)
    assert guard.accepts(recovered, now + CAP_HOLD_S)
    # Back under the limit, the overload clock restarts, and the first look sheds.
    assert guard.to_shed([recovered], now + 1) == {}
    again = _load("worker1", 0.3, 258)
    assert guard.to_shed([again], now + 10) == {}
    assert guard.to_shed([again], now + 12) == {"worker1": 12}


def test_a_lag_that_keeps_growing_sheds_the_excess_on_top() -> None:
    guard = OverloadGuard(lag_limit=0.25, shed_after=2.0)
    guard.to_shed([_load("main", 0.5, 300)], 0.0)
    assert guard.to_shed([_load("main", 0.5, 300)], 2.0) == {"main": 15}
    # 0.3 s more backlog in 3 s: the input is 10 % more than it handles.
    # 5 % + 0.1 / 1.1 of 285 = 40.
    now = 2.0 + SHED_INTERVAL_S
    assert guard.to_shed([_load("main", 0.8, 285)], now) == {"main": 40}
    # 1.2 s more in 3 s: a quarter at most.
    now += SHED_INTERVAL_S
    assert guard.to_shed([_load("main", 2.0, 245)], now) == {"main": 61}
    # Not growing (nor draining): the base share.
    now += SHED_INTERVAL_S
    assert guard.to_shed([_load("main", 1.9, 184)], now) == {"main": 9}


def test_a_small_process_sheds_one_and_a_guard_at_zero_never_sheds() -> None:
    guard = OverloadGuard(lag_limit=0.25, shed_after=1.0)
    small = _load("main", 1.0, 3)
    guard.to_shed([small], 0.0)
    assert guard.to_shed([small], 1.0) == {"main": 1}
    never = OverloadGuard(lag_limit=0.25, shed_after=0.0)
    for now in (0.0, 5.0, 50.0):
        assert never.to_shed([small], now) == {}
    assert not never.accepts(small, 50.0)  # still refused at the door
    off = OverloadGuard(lag_limit=0.0, shed_after=2.0)
    assert off.accepts(small, 0.0) and off.to_shed([small], 10.0) == {}


def test_a_held_cap_grows_back_while_the_process_has_room_and_not_at_its_cpu_limit() -> None:
    """After a storm's lag the cap comes back; a process at its CPU limit keeps it."""
    guard = OverloadGuard(lag_limit=0.25, shed_after=2.0)
    guard.to_shed([_load("main", 0.5, 300, cpu=0.9)], 0.0)
    assert guard.to_shed([_load("main", 0.5, 300, cpu=0.9)], 2.0) == {"main": 15}
    # Caught up, with room (half a core used of one), at its cap of 285.
    calm = _load("main", 0.05, 285, cpu=0.5)
    assert not guard.accepts(calm, 2.5)
    assert guard.to_shed([calm], 2.5) == {}
    assert guard.to_shed([calm], 2.5 + CAP_GROW_S - 0.1) == {}
    assert not guard.accepts(calm, 2.5 + CAP_GROW_S - 0.1)
    assert guard.to_shed([calm], 2.5 + CAP_GROW_S) == {}
    assert guard.accepts(calm, 2.5 + CAP_GROW_S)  # the cap is 285 + 14 now
    now = 2.5 + CAP_GROW_S
    # Below the grown cap nothing grows; filled up, it grows after more calm.
    assert guard.to_shed([_load("main", 0.05, 290, cpu=0.5)], now + CAP_GROW_S) == {}
    full = _load("main", 0.05, 299, cpu=0.5)
    assert not guard.accepts(full, now + CAP_GROW_S)
    guard.to_shed([full], now + CAP_GROW_S + 0.5)
    guard.to_shed([full], now + 2 * CAP_GROW_S + 0.5)
    assert guard.accepts(full, now + 2 * CAP_GROW_S + 0.5)
    # A lag over half the limit is not calm: no growth.
    again = OverloadGuard(lag_limit=0.25, shed_after=2.0)
    again.to_shed([_load("main", 0.5, 100)], 0.0)
    again.to_shed([_load("main", 0.5, 100)], 2.0)
    for step in range(20):
        again.to_shed([_load("main", 0.15, 95, cpu=0.5)], 2.5 + step)
    assert not again.accepts(_load("main", 0.15, 95, cpu=0.5), 22.5)


def test_a_process_at_its_cpu_quota_keeps_its_cap_for_the_hold() -> None:
    guard = OverloadGuard(lag_limit=0.25, shed_after=2.0)
    guard.to_shed([_load("main", 0.5, 100, cpu=0.3, limit=0.3)], 0.0)
    assert guard.to_shed([_load("main", 0.5, 100, cpu=0.3, limit=0.3)], 2.0) == {"main": 5}
    # Input on time, but 28 % of a core used of the 30 % it may use.
    held = _load("main", 0.02, 95, cpu=0.28, limit=0.3)
    for step in range(50):
        assert guard.to_shed([held], 2.5 + step) == {}
    assert not guard.accepts(held, 52.5)
    assert guard.accepts(held, 2.0 + CAP_HOLD_S)


def _cgroup(tmp_path: Path, own: str, files: dict[str, str]) -> tuple[Path, Path]:
    tmp_path.mkdir()
    proc = tmp_path / "cgroup"
    proc.write_text(own)
    root = tmp_path / "fs"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return proc, root


def test_cpu_limit_reads_the_tightest_quota_of_a_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    # cgroup v1, the quota on the parent (docker --cpus 0.5 style), none on the leaf.
    proc, root = _cgroup(
        tmp_path / "v1",
        "4:memory:/x\n3:cpu,cpuacct:/docker/ab12\n0::/\n",
        {
            "cpu,cpuacct/docker/cpu.cfs_quota_us": "50000\n",
            "cpu,cpuacct/docker/cpu.cfs_period_us": "100000\n",
            "cpu,cpuacct/docker/ab12/cpu.cfs_quota_us": "-1\n",
            "cpu,cpuacct/docker/ab12/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cpu_limit(proc, root) == pytest.approx(0.5)
    # cgroup v2: "max" on the leaf, 0.3 of a core above it.
    proc, root = _cgroup(
        tmp_path / "v2",
        "0::/system.slice/telebridge.service\n",
        {
            "system.slice/cpu.max": "30000 100000\n",
            "system.slice/telebridge.service/cpu.max": "max 100000\n",
        },
    )
    assert cpu_limit(proc, root) == pytest.approx(0.3)
    # Four cores of quota: an event loop still uses one.
    proc, root = _cgroup(tmp_path / "wide", "0::/\n", {"cpu.max": "400000 100000\n"})
    assert cpu_limit(proc, root) == 1.0
    # No quota anywhere (a line that is not "id:controllers:path" is skipped), or nothing readable.
    proc, root = _cgroup(tmp_path / "none", "garbage\n1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n"})
    assert cpu_limit(proc, root) == 1.0
    assert cpu_limit(tmp_path / "missing", tmp_path) == 1.0


def test_newcomers_are_refused_only_when_no_process_takes_them() -> None:
    guard = OverloadGuard(lag_limit=0.25, shed_after=2.0)
    assert guard.refusal([], 0.0) is None
    assert guard.refusal([_load("worker0", 0.5, 10), _load("worker1", 0.1, 10)], 0.0) is None
    reason = guard.refusal([_load("worker0", 0.5, 10), _load("worker1", 0.3, 10)], 0.0)
    assert reason is not None and "500 ms late" in reason
