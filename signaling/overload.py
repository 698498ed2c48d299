"""Overload protection for receivers: refuse newcomers, shed the newest.

Each media process (the one process, or each worker) forwards on one event
loop, and past its capacity every subscriber on it is late, not just the
last one to join (``sfu/load.py``). :class:`OverloadGuard` decides, from
each process's :class:`~sfu.load.MediaLoad`:

* **admission**: a new receiver is refused (``server-busy``; clients retry
  with backoff) when no media process takes newcomers. A process does not
  while its loop lags more than ``overload_lag_ms``, nor while it holds the
  cap it learned when it last shed (below);
* **shedding**: a process that has lagged more than ``overload_lag_ms``
  for ``shed_after_s`` sheds its newest receivers, :data:`SHED_FRACTION`
  of them (at least one). It looks again every :data:`SHED_INTERVAL_S`
  while it still lags, and sheds again unless its lag fell by a fifth
  since the last look: a backlog that drains needs time, not fewer
  receivers. A lag that kept growing means the last shedding was too
  little: the backlog grows by the input's excess over what the process
  handles (0.3 s more in 3 s: 10 % too much input), and that excess's
  share of the input is shed on top, up to :data:`MAX_SHED_FRACTION`.
  With 5 % per look, a server held to 30 % of a core let its lag climb
  to 2 s and more, once to 5.5 s, losing its presenter
  (``docs/benchmarks.md``, "Shedding that keeps up, and room again").
  The count it kept becomes its cap for :data:`CAP_HOLD_S`, so those it
  shed are not readmitted straight into the same overload. Publishers,
  presenters and moderators are never shed (``Server`` picks whom);
* **recovery**: a process held at its cap that has room again (its lag
  under half the limit and its CPU under :data:`CALM_CPU` of what it may
  use, for :data:`CAP_GROW_S`) raises the cap by :data:`SHED_FRACTION`, and
  again after each further :data:`CAP_GROW_S` of calm. A join storm on a
  busy machine can lag a process past the limit by itself, and the lag
  ends with the joins: the cap it then learned would otherwise turn
  newcomers away for a minute while the process idles. A process that is
  at the limit of its CPU (a small server past its capacity) keeps its cap
  for the whole hold. The CPU is what tells the two apart: their lags
  after shedding look alike (``docs/benchmarks.md``, "Storms with and
  without a saturated box").

It is sans-I/O: the caller passes the loads and the time, and carries out
the decisions.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from sfu.load import MediaLoad

logger = logging.getLogger(__name__)

#: Share of an overloaded process's receivers shed at once (at least one)...
SHED_FRACTION = 0.05
#: ...plus the input's excess over what it handles, when its lag kept growing,
#: up to this share at one look.
MAX_SHED_FRACTION = 0.25
#: Seconds between two looks at a lagging process (its lag reading is a
#: decaying maximum: about 2 s from 1 s to 0.25 s once it has caught up).
SHED_INTERVAL_S = 3.0
#: A lag that fell below this share of the last look's means the backlog drains.
DRAINING = 0.8
#: Seconds a process keeps the cap it learned when it shed.
CAP_HOLD_S = 60.0
#: Seconds of calm before a held cap grows (by SHED_FRACTION), and between growths.
CAP_GROW_S = 3.0
#: Calm: the lag under this share of the limit...
CALM_LAG = 0.5
#: ...and the CPU under this share of what the process may use.
CALM_CPU = 0.8


@dataclass(slots=True)
class _ProcessState:
    #: When its lag went over the limit (None: it is under).
    over_since: float | None = None
    #: The last look at it while it lagged, and its lag then (0: none in this overload).
    last_look: float = -math.inf
    lag_at_look: float = 0.0
    #: Subscribers it may hold until ``cap_until``.
    cap: int = 0
    cap_until: float = -math.inf
    #: Since when it has been calm at its cap (None: it is not), and when the cap last grew.
    calm_since: float | None = None
    grown_at: float = -math.inf


@dataclass(slots=True)
class OverloadGuard:
    """Admission and shedding decisions for the media processes of one node."""

    #: Lag (seconds) past which a process is overloaded; 0: never.
    lag_limit: float
    #: Seconds of overload before a process sheds; 0: never shed.
    shed_after: float
    #: Receivers shed since start.
    shed_total: int = 0
    _processes: dict[str, _ProcessState] = field(default_factory=dict)

    def accepts(self, load: MediaLoad, now: float) -> bool:
        """Whether the process takes a newcomer now."""
        if self.lag_limit and load.lag > self.lag_limit:
            return False
        state = self._processes.get(load.name)
        return state is None or now >= state.cap_until or len(load.subscribers) < state.cap

    def refusal(self, loads: list[MediaLoad], now: float) -> str | None:
        """Why a new receiver is refused now (no process takes it), or None."""
        if not loads or any(self.accepts(load, now) for load in loads):
            return None
        worst = max(loads, key=lambda load: load.lag)
        if self.lag_limit and worst.lag > self.lag_limit:
            return f"this server is overloaded (media {worst.lag * 1000:.0f} ms late)"
        return "this server holds as many receivers as it could forward to lately"

    def to_shed(self, loads: list[MediaLoad], now: float) -> dict[str, int]:
        """How many receivers each process sheds now (processes absent: none).

        Call it a few times a second; it remembers when each process went
        over the limit and its last look, and sets and raises the caps.
        """
        plan: dict[str, int] = {}
        for load in loads:
            state = self._processes.setdefault(load.name, _ProcessState())
            if now < state.cap_until:
                self._grow_cap(state, load, now)
            if not self.lag_limit or load.lag <= self.lag_limit:
                state.over_since, state.lag_at_look = None, 0.0
                continue
            if state.over_since is None:
                state.over_since = now
            if (
                not self.shed_after
                or now - state.over_since < self.shed_after
                or now - state.last_look < SHED_INTERVAL_S
            ):
                continue
            draining = load.lag < state.lag_at_look * DRAINING
            # Backlog added per second since the last look of this overload
            # (none at its first): the input outran the process by that share.
            excess = 0.0
            if state.lag_at_look:
                excess = max(0.0, load.lag - state.lag_at_look) / (now - state.last_look)
            state.last_look, state.lag_at_look = now, load.lag
            if draining or not load.subscribers:
                continue
            share = min(MAX_SHED_FRACTION, SHED_FRACTION + excess / (1 + excess))
            count = max(1, math.floor(len(load.subscribers) * share))
            plan[load.name] = count
            state.cap = len(load.subscribers) - count
            state.cap_until = now + CAP_HOLD_S
            state.calm_since, state.grown_at = None, now
        return plan

    def _grow_cap(self, state: _ProcessState, load: MediaLoad, now: float) -> None:
        """Raise a held cap while its process, at that cap, has room again."""
        calm = load.lag <= self.lag_limit * CALM_LAG and load.cpu < load.cpu_limit * CALM_CPU
        if not calm or len(load.subscribers) < state.cap:
            state.calm_since = None
            return
        if state.calm_since is None:
            state.calm_since = now
        if now - max(state.calm_since, state.grown_at) >= CAP_GROW_S:
            state.cap += max(1, math.floor(state.cap * SHED_FRACTION))
            state.grown_at = now
            logger.info(
                "%s has room again (input %.0f ms late, CPU %.0f %% of a core where it may "
                "use %.0f %%): it takes up to %d receivers",
                load.name,
                load.lag * 1000,
                load.cpu * 100,
                load.cpu_limit * 100,
                state.cap,
            )

    def shed(self, count: int) -> None:
        """Count receivers actually shed (the caller may find fewer to shed than planned)."""
        self.shed_total += count
