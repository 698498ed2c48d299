"""Overload protection's decisions (``sfu/load.py``, ``signaling/overload.py``) on a fake clock."""

from __future__ import annotations

import pytest

from sfu.load import LAG_DECAY_PER_S, LoadMeter, MediaLoad
from signaling.overload import CAP_HOLD_S, SHED_INTERVAL_S, OverloadGuard


def _load(name: str, lag: float, subscribers: int) -> MediaLoad:
    return MediaLoad(name, lag, 0.0, frozenset(f"{name}-{i}" for i in range(subscribers)))


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


def test_newcomers_are_refused_only_when_no_process_takes_them() -> None:
    guard = OverloadGuard(lag_limit=0.25, shed_after=2.0)
    assert guard.refusal([], 0.0) is None
    assert guard.refusal([_load("worker0", 0.5, 10), _load("worker1", 0.1, 10)], 0.0) is None
    reason = guard.refusal([_load("worker0", 0.5, 10), _load("worker1", 0.3, 10)], 0.0)
    assert reason is not None and "500 ms late" in reason
