"""One-line verdict and a self-contained HTML page for a ``telebridge bench`` report.

The input is the JSON object described in ``bench/SCHEMA.md`` (schema 1). The
page needs nothing but a browser: inline CSS, inline SVG charts drawn by the
small helpers below, no JavaScript and no external assets, so that it can be
mailed or attached to a change ticket as one file. Every string taken from the
report is HTML-escaped; absent or ``null`` figures are shown as an en dash.

Usage: ``python -m bench.report bench.json bench.html``.
"""

from __future__ import annotations

import html
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
DASH = "\u2013"  # en dash: the figure is absent
# Used to judge "clean subscribers unaffected" when the run had no --slo.
DEFAULT_SLO = {"loss_pct": 0.5, "p99_ms": 150.0}

Obj = Mapping[str, Any]
Point = tuple[float, float]

# --------------------------------------------------------------------------
# Reading the report defensively
# --------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    """A finite number from the report, else None (bools and strings are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _obj(value: Any) -> Obj:
    """A JSON object from the report, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    """A JSON array from the report, else an empty one."""
    return list(value) if isinstance(value, list | tuple) else []


def _text(value: Any) -> str | None:
    """A non-empty string (numbers are stringified), else None."""
    if value is None or isinstance(value, Mapping | list):
        return None
    text = str(value).strip()
    return text or None


def _e(value: Any) -> str:
    """HTML-escape anything for text and attribute values."""
    return html.escape(str(value), quote=True)


# --------------------------------------------------------------------------
# Formatting numbers
# --------------------------------------------------------------------------


def _trim(value: float, digits: int) -> str:
    """``value`` with at most ``digits`` decimals, trailing zeros dropped."""
    text = f"{value:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _unit(text: str | None, unit: str) -> str:
    """``text`` followed by ``unit``, or the dash when the figure is absent."""
    return DASH if text is None else f"{text} {unit}".rstrip()


def fmt_bitrate(bps: Any) -> str:
    """A bitrate for people: "2.5 Mbit/s", "2.39 Mbit/s", "800 kbit/s"."""
    value = _num(bps)
    if value is None:
        return DASH
    if abs(value) >= 1e6:
        return f"{_trim(value / 1e6, 2)} Mbit/s"
    if abs(value) >= 1e3:
        return f"{_trim(value / 1e3, 0 if abs(value) >= 1e5 else 1)} kbit/s"
    return f"{value:.0f} bit/s"


def _ms(value: Any) -> str | None:
    """Milliseconds without the unit: "0.42", "7.9", "18", "1250"."""
    number = _num(value)
    if number is None:
        return None
    if abs(number) < 1:
        return f"{number:.2f}"
    if abs(number) < 10:
        return f"{number:.1f}"
    return f"{number:.0f}"


def fmt_ms(value: Any) -> str:
    """Milliseconds with the unit, or the dash."""
    return _unit(_ms(value), "ms")


def fmt_loss(value: Any) -> str:
    """A loss percentage as the verdict shows it: two decimals ("0.02 %")."""
    number = _num(value)
    return DASH if number is None else f"{number:.2f} %"


def fmt_cpu(value: Any) -> str:
    """A CPU percentage of one core, whole numbers ("71 %")."""
    number = _num(value)
    return DASH if number is None else f"{number:.0f} %"


def _plain(value: Any, digits: int = 2) -> str | None:
    """A number with at most ``digits`` decimals, or None."""
    number = _num(value)
    return None if number is None else _trim(number, digits)


def _count(value: Any) -> str | None:
    """A whole count with thousands separators ("840,000"), or None."""
    number = _num(value)
    return None if number is None else f"{round(number):,}"


def _subscribers(value: Any) -> str:
    """ "1 subscriber", "300 subscribers", or the dash and "subscribers"."""
    number = _num(value)
    if number is None:
        return f"{DASH} subscribers"
    return f"{round(number):,} subscriber{'' if round(number) == 1 else 's'}"


def _exceeds(value: float, limit: float, unit: str) -> str:
    """ "0.8 % > 0.5 %": enough decimals that the two numbers read differently."""
    for digits in range(2, 6):
        shown, bound = _trim(value, digits), _trim(limit, digits)
        if shown != bound:
            break
    return f"{shown} {unit} > {bound} {unit}"


def _started(report: Obj) -> str | None:
    """The start time as "2026-11-23 11:40 UTC", or the raw string when unparsable."""
    raw = _text(report.get("started_at"))
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        return raw
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


# --------------------------------------------------------------------------
# The verdict
# --------------------------------------------------------------------------


def _load_phrase(report: Obj) -> str:
    """ "300 subscribers at 2.5 Mbit/s" or "280 of 300 subscribers connected at ..."."""
    connected = _num(report.get("subscribers_connected"))
    requested = _num(report.get("subscribers_requested"))
    bitrate = fmt_bitrate(report.get("bitrate_bps"))
    if connected is not None and requested is not None and connected < requested:
        return f"{round(connected):,} of {_subscribers(requested)} connected at {bitrate}"
    return f"{_subscribers(connected if connected is not None else requested)} at {bitrate}"


def _figures_phrase(loss: Any, p99: Any, cpu: Any) -> str:
    """ "loss 0.02 %, p99 latency 18 ms, server CPU 71 % of 1 core"."""
    cpu_text = fmt_cpu(cpu)
    cpu_text = cpu_text if cpu_text == DASH else f"{cpu_text} of 1 core"
    return f"loss {fmt_loss(loss)}, p99 latency {fmt_ms(p99)}, server CPU {cpu_text}"


def _slo_limits(slo: Obj) -> tuple[float | None, float | None]:
    """The SLO's loss (%) and p99 (ms) limits."""
    return _num(slo.get("loss_pct")), _num(slo.get("p99_ms"))


def _slo_criteria(slo: Obj) -> str:
    """ "loss ≤ 0.5 %, p99 ≤ 150 ms" (only the limits the SLO sets)."""
    loss, p99 = _slo_limits(slo)
    parts = []
    if loss is not None:
        parts.append(f"loss ≤ {_trim(loss, 2)} %")
    if p99 is not None:
        parts.append(f"p99 ≤ {_ms(p99)} ms")
    return ", ".join(parts)


def _breaches(slo: Obj, loss: Any, p99: Any) -> list[str]:
    """Which SLO limits the figures exceed: ["loss 0.8 % > 0.5 %", ...]."""
    loss_limit, p99_limit = _slo_limits(slo)
    loss_value, p99_value = _num(loss), _num(p99)
    found = []
    if loss_value is not None and loss_limit is not None and loss_value > loss_limit:
        found.append(f"loss {_exceeds(loss_value, loss_limit, '%')}")
    if p99_value is not None and p99_limit is not None and p99_value > p99_limit:
        found.append(f"p99 {_exceeds(p99_value, p99_limit, 'ms')}")
    return found


def _slo_held(report: Obj, slo: Obj) -> bool | None:
    """The run's SLO outcome: the report's ``held`` when given, else judged here."""
    held = slo.get("held")
    if isinstance(held, bool):
        return held
    latency = _obj(report.get("latency_ms"))
    if _breaches(slo, report.get("loss_pct"), latency.get("p99")):
        return False
    known = _num(report.get("loss_pct")) is not None and _num(latency.get("p99")) is not None
    return True if known else None


def _slo_phrase(report: Obj, slo: Obj) -> str:
    """ "within SLO" or "SLO broken (loss 0.8 % > 0.5 %)"."""
    held = _slo_held(report, slo)
    if held is None:
        return "SLO not judged (figures missing)"
    if held:
        return "within SLO"
    reasons = _breaches(slo, report.get("loss_pct"), _obj(report.get("latency_ms")).get("p99"))
    connected = _num(report.get("subscribers_connected"))
    requested = _num(report.get("subscribers_requested"))
    if not reasons and connected is not None and requested is not None and connected < requested:
        reasons.append(f"{round(requested - connected):,} subscribers did not connect")
    return f"SLO broken ({', '.join(reasons)})" if reasons else "SLO broken"


def _steps(find_max: Obj) -> list[Obj]:
    """The find-max steps that name a subscriber count, smallest first."""
    steps = [_obj(step) for step in _list(find_max.get("steps"))]
    steps = [step for step in steps if _num(step.get("subscribers")) is not None]
    return sorted(steps, key=lambda step: _num(step.get("subscribers")) or 0.0)


def _find_max_slo(report: Obj, find_max: Obj) -> Obj:
    """The SLO the search used (its own, else the run's)."""
    return _obj(find_max.get("slo")) or _obj(report.get("slo"))


def _largest_held(find_max: Obj) -> float | None:
    """``max_subscribers``, else the largest step that held."""
    largest = _num(find_max.get("max_subscribers"))
    if largest is not None and largest > 0:
        return largest
    held = [_num(s.get("subscribers")) for s in _steps(find_max) if s.get("held") is True]
    return max((n for n in held if n is not None), default=None)


def _step_for(find_max: Obj, subscribers: float) -> Obj:
    """The step that measured ``subscribers``, or an empty object."""
    for step in _steps(find_max):
        if _num(step.get("subscribers")) == subscribers:
            return step
    return {}


def _first_broken(find_max: Obj, above: float) -> Obj:
    """The smallest step above ``above`` subscribers that broke the SLO."""
    for step in _steps(find_max):
        count = _num(step.get("subscribers")) or 0.0
        if count > above and step.get("held") is False:
            return step
    return {}


def _broke_phrase(step: Obj, slo: Obj) -> str:
    """ "300 subscribers broke it (loss 0.8 % > 0.5 %)"."""
    reasons = _breaches(slo, step.get("loss_pct"), step.get("p99_ms"))
    tail = f" ({', '.join(reasons)})" if reasons else ""
    return f"{_subscribers(step.get('subscribers'))} broke it{tail}"


def _find_max_verdict(report: Obj, find_max: Obj) -> str:
    """ "Largest load within SLO (loss ≤ 0.5 %, p99 ≤ 150 ms): 250 subscribers at ..."."""
    slo = _find_max_slo(report, find_max)
    criteria = _slo_criteria(slo)
    within = f"within SLO ({criteria})" if criteria else "within SLO"
    bitrate = fmt_bitrate(report.get("bitrate_bps"))
    largest = _largest_held(find_max)
    if largest is None:
        smallest = next(iter(_steps(find_max)), {})
        tail = f": {_broke_phrase(smallest, slo)}" if smallest else ""
        return f"No load {within} at {bitrate}{tail}"
    step = _step_for(find_max, largest)
    if not step and _num(report.get("subscribers_requested")) == largest:
        latency = _obj(report.get("latency_ms"))
        server = _obj(report.get("server"))
        step = {
            "loss_pct": report.get("loss_pct"),
            "p99_ms": latency.get("p99"),
            "server_cpu_pct": server.get("cpu_pct"),
        }
    figures = _figures_phrase(step.get("loss_pct"), step.get("p99_ms"), step.get("server_cpu_pct"))
    text = f"Largest load {within}: {_subscribers(largest)} at {bitrate}; {figures}"
    broken = _first_broken(find_max, largest)
    return f"{text}; {_broke_phrase(broken, slo)}" if broken else text


def verdict(report: dict[str, Any]) -> str:
    """The one-line verdict of a bench report.

    "300 subscribers at 2.5 Mbit/s: loss 0.02 %, p99 latency 18 ms, server CPU
    71 % of 1 core", with "280 of 300 subscribers connected" when some failed,
    "— within SLO" or "— SLO broken (...)" when the run had an SLO, and led by
    "Largest load within SLO (...)" for a ``--find-max`` run.
    """
    run = _obj(report)
    find_max = _obj(run.get("find_max"))
    if find_max:
        return _find_max_verdict(run, find_max)
    latency = _obj(run.get("latency_ms"))
    server = _obj(run.get("server"))
    text = (
        f"{_load_phrase(run)}: "
        f"{_figures_phrase(run.get('loss_pct'), latency.get('p99'), server.get('cpu_pct'))}"
    )
    slo = run.get("slo")
    if isinstance(slo, Mapping):
        text += f" — {_slo_phrase(run, slo)}"
    return text


def _tone(report: Obj) -> str:
    """CSS tone of the verdict: ok, bad, warn (partial connect) or neutral."""
    find_max = _obj(report.get("find_max"))
    if find_max:
        return "ok" if _largest_held(find_max) is not None else "bad"
    slo = report.get("slo")
    if isinstance(slo, Mapping):
        held = _slo_held(report, slo)
        if held is not None:
            return "ok" if held else "bad"
    connected = _num(report.get("subscribers_connected"))
    requested = _num(report.get("subscribers_requested"))
    if connected is not None and requested is not None and connected < requested:
        return "warn"
    return "neutral"


# --------------------------------------------------------------------------
# SVG charts
# --------------------------------------------------------------------------

PALETTE = {
    "clean": "#2563eb",
    "impaired": "#d97706",
    "cpu": "#7c3aed",
    "bitrate": "#0f766e",
    "held": "#16a34a",
    "broke": "#dc2626",
    "limit": "#b91c1c",
    "grid": "#e5e7eb",
    "axis": "#94a3b8",
    "ink": "#475569",
}


# Width of one character of chart text (13 px), to keep labels inside the chart.
TEXT_WIDTH = 7.5


@dataclass(frozen=True)
class Axis:
    """A numeric axis: its domain, tick values and whether it is logarithmic."""

    lo: float
    hi: float
    ticks: tuple[float, ...]
    log: bool = False

    def frac(self, value: float) -> float:
        """Where ``value`` falls on the axis, 0 at ``lo`` and 1 at ``hi``."""
        if self.log:
            lo, hi = math.log10(self.lo), math.log10(self.hi)
            value = math.log10(max(value, self.lo))
        else:
            lo, hi = self.lo, self.hi
        return 0.5 if hi == lo else (value - lo) / (hi - lo)


def _nice_step(span: float, count: int) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) for ``span``."""
    raw = span / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= factor * power * 1.0001:
            return factor * power
    return 10 * power


def linear_axis(
    values: Iterable[float],
    *,
    zero: bool = True,
    floor_hi: float = 0.0,
    ticks: int = 5,
    tight: bool = False,
) -> Axis:
    """A linear axis with round ticks covering ``values`` (and 0 when ``zero``).

    The domain is widened to whole ticks, or, when ``tight`` (time axes), ends
    at the data with the ticks inside it.
    """
    data = [v for v in values if math.isfinite(v)]
    lo = min([*data, 0.0] if zero else data or [0.0])
    hi = max([*data, floor_hi] if data else [floor_hi, 1.0])
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    step = _nice_step(hi - lo, ticks)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    if tight:
        first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    else:
        lo, hi = first * step, last * step
    return Axis(lo, hi, tuple(i * step for i in range(first, last + 1)))


def log_axis(values: Iterable[float]) -> Axis:
    """A base-10 axis over the positive ``values`` with 1-2-5 ticks."""
    data = [v for v in values if math.isfinite(v) and v > 0] or [1.0, 10.0]
    lo_exp, hi_exp = math.floor(math.log10(min(data))), math.ceil(math.log10(max(data)))
    hi_exp = max(hi_exp, lo_exp + 1)
    mantissas = (1, 2, 5) if hi_exp - lo_exp <= 3 else (1,)
    ticks = [m * 10.0**e for e in range(lo_exp, hi_exp + 1) for m in mantissas]
    lo = max(t for t in ticks if t <= min(data) * 1.0001)
    hi = min(t for t in ticks if t >= max(data) * 0.9999)
    if hi <= lo:
        hi = lo * 10
    return Axis(lo, hi, tuple(t for t in ticks if lo <= t <= hi), log=True)


def _tick_label(value: float, axis: Axis) -> str:
    """A tick value with as few decimals as the tick spacing needs."""
    if axis.log or len(axis.ticks) < 2:
        return _trim(value, 3)
    step = abs(axis.ticks[1] - axis.ticks[0])
    digits = next((d for d in range(7) if abs(round(step, d) - step) < 1e-9 * step), 6)
    return f"{value:,.{digits}f}"


@dataclass(frozen=True)
class Limit:
    """A reference value drawn as a dashed line on a chart."""

    value: float
    text: str
    colour: str = PALETTE["limit"]


@dataclass(frozen=True)
class Plot:
    """A chart's canvas: pixel size, inner margins and the two axes."""

    x: Axis
    y: Axis
    width: int = 500
    height: int = 250
    left: int = 52
    right: int = 16
    top: int = 34
    bottom: int = 46

    def px(self, value: float) -> float:
        """Pixel x of a data x."""
        return self.left + self.x.frac(value) * (self.width - self.left - self.right)

    def py(self, value: float) -> float:
        """Pixel y of a data y (0 at the bottom)."""
        return self.top + (1 - self.y.frac(value)) * (self.height - self.top - self.bottom)

    @property
    def base(self) -> float:
        """Pixel y of the x axis."""
        return float(self.height - self.bottom)


def _f(value: float) -> str:
    """A coordinate for SVG attributes."""
    return _trim(value, 1)


def _svg(plot: Plot, label: str, body: Iterable[str]) -> str:
    """The outer ``<svg>`` element, with an accessible label."""
    return (
        f'<svg class="chart" viewBox="0 0 {plot.width} {plot.height}" width="{plot.width}" '
        f'height="{plot.height}" role="img" aria-label="{_e(label)}">'
        f"<title>{_e(label)}</title>{''.join(body)}</svg>"
    )


def _label(
    x: float, y: float, text: str, anchor: str = "middle", cls: str = "", colour: str = ""
) -> str:
    """An SVG text element (escaped), optionally with a CSS class or its own colour."""
    klass = f' class="{cls}"' if cls else ""
    style = f' style="fill: {colour}"' if colour else ""
    return f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}"{klass}{style}>{_e(text)}</text>'


def _y_frame(plot: Plot, y_title: str) -> list[str]:
    """Horizontal grid lines, y tick labels and the y axis title."""
    parts = []
    for tick in plot.y.ticks:
        y = plot.py(tick)
        parts.append(
            f'<line x1="{plot.left}" x2="{plot.width - plot.right}" y1="{_f(y)}" '
            f'y2="{_f(y)}" stroke="{PALETTE["grid"]}"/>'
        )
        parts.append(_label(plot.left - 8, y + 4, _tick_label(tick, plot.y), "end"))
    parts.append(_label(plot.left - 8, plot.top - 14, y_title, "start", "axis-title"))
    return parts


def _x_frame(plot: Plot, x_title: str, labels: bool = True) -> list[str]:
    """The x axis line, its ticks and tick labels, and its title."""
    parts = [
        f'<line x1="{plot.left}" x2="{plot.width - plot.right}" y1="{_f(plot.base)}" '
        f'y2="{_f(plot.base)}" stroke="{PALETTE["axis"]}"/>'
    ]
    if labels:
        for tick in plot.x.ticks:
            x = plot.px(tick)
            parts.append(
                f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{_f(plot.base)}" '
                f'y2="{_f(plot.base + 5)}" stroke="{PALETTE["axis"]}"/>'
            )
            parts.append(_label(x, plot.base + 18, _tick_label(tick, plot.x)))
    middle = (plot.left + plot.width - plot.right) / 2
    parts.append(_label(middle, plot.height - 6, x_title, cls="axis-title"))
    return parts


def _legend(
    plot: Plot, entries: Sequence[tuple[str, str]], dashed: Limit | None = None
) -> list[str]:
    """Coloured swatches and names (and a dashed limit), right-aligned above the plot."""
    parts, x, y = [], float(plot.width - plot.right), plot.top - 24
    if dashed:
        x -= TEXT_WIDTH * len(dashed.text) + 30
        parts.append(
            f'<line x1="{_f(x)}" x2="{_f(x + 20)}" y1="{y + 6}" y2="{y + 6}" '
            f'stroke="{dashed.colour}" stroke-width="1.5" stroke-dasharray="5 3"/>'
        )
        parts.append(_label(x + 25, y + 10, dashed.text, "start"))
    for name, colour in reversed(entries):
        x -= TEXT_WIDTH * len(name) + 26
        parts.append(f'<rect x="{_f(x)}" y="{y}" width="12" height="12" rx="2" fill="{colour}"/>')
        parts.append(_label(x + 17, y + 10, name, "start"))
    return parts


def _h_limit(plot: Plot, value: float, text: str, colour: str) -> list[str]:
    """A dashed horizontal reference line with its label."""
    y = plot.py(value)
    return [
        f'<line x1="{plot.left}" x2="{plot.width - plot.right}" y1="{_f(y)}" y2="{_f(y)}" '
        f'stroke="{colour}" stroke-width="1.5" stroke-dasharray="6 4"/>',
        _label(plot.width - plot.right - 4, y - 6, text, "end", "limit-label", colour),
    ]


def _v_limit(plot: Plot, value: float, text: str, colour: str) -> list[str]:
    """A dashed vertical reference line with its label (right of it when the label fits)."""
    x = plot.px(value)
    fits = x + 5 + TEXT_WIDTH * len(text) <= plot.width
    return [
        f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{plot.top}" y2="{_f(plot.base)}" '
        f'stroke="{colour}" stroke-width="1.5" stroke-dasharray="6 4"/>',
        _label(
            x + 5 if fits else x - 5,
            plot.top + 12,
            text,
            "start" if fits else "end",
            "limit-label",
            colour,
        ),
    ]


def _polyline(plot: Plot, points: Sequence[Point], colour: str, area: bool = False) -> list[str]:
    """One data series as a line (optionally with a faint area below it)."""
    coords = " ".join(f"{_f(plot.px(x))},{_f(plot.py(y))}" for x, y in points)
    parts = []
    if area and len(points) > 1:
        first, last = plot.px(points[0][0]), plot.px(points[-1][0])
        parts.append(
            f'<polygon points="{_f(first)},{_f(plot.base)} {coords} {_f(last)},'
            f'{_f(plot.base)}" fill="{colour}" fill-opacity="0.08"/>'
        )
    if len(points) == 1:
        x, y = points[0]
        parts.append(f'<circle cx="{_f(plot.px(x))}" cy="{_f(plot.py(y))}" r="3" fill="{colour}"/>')
    else:
        parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{colour}" '
            f'stroke-width="2" stroke-linejoin="round"/>'
        )
    return parts


def line_chart(
    label: str,
    points: Sequence[Point],
    *,
    colour: str,
    x_title: str,
    y_title: str,
    limit: Limit | None = None,
    floor_hi: float = 0.0,
) -> str:
    """A line chart of one series over time, with axes, ticks and labels."""
    ys = [y for _, y in points] + ([limit.value] if limit else [])
    plot = Plot(
        x=linear_axis([x for x, _ in points], tight=True), y=linear_axis(ys, floor_hi=floor_hi)
    )
    body = [*_y_frame(plot, y_title), *_x_frame(plot, x_title)]
    if limit:
        body += _h_limit(plot, limit.value, limit.text, limit.colour)
    body += _polyline(plot, points, colour, area=True)
    return _svg(plot, label, body)


def _cdf_points(values: Sequence[float]) -> list[Point]:
    """The steps of an empirical CDF (y in %), for a step-shaped polyline."""
    ordered, points = sorted(values), []
    for index, value in enumerate(ordered):
        points.append((value, 100.0 * index / len(ordered)))
        points.append((value, 100.0 * (index + 1) / len(ordered)))
    return points


def cdf_chart(
    label: str, series: Mapping[str, Sequence[float]], *, x_title: str, limit: Limit | None = None
) -> str:
    """Empirical CDFs of several groups on one chart (log x when values spread widely)."""
    values = [v for data in series.values() for v in data] + ([limit.value] if limit else [])
    positive = [v for v in values if v > 0]
    wide = bool(positive) and len(positive) == len(values) and max(positive) / min(positive) > 20
    x_axis = log_axis(values) if wide else linear_axis(values)
    plot = Plot(
        x=x_axis,
        y=Axis(0.0, 100.0, (0.0, 25.0, 50.0, 75.0, 100.0)),
        width=1000,
        height=290,
        left=60,
    )
    title = f"{x_title}, log scale" if wide else x_title
    body = [*_y_frame(plot, "% of subscribers at or below"), *_x_frame(plot, title)]
    if limit:
        body += _v_limit(plot, limit.value, limit.text, limit.colour)
    for name, data in series.items():
        body += _polyline(plot, _cdf_points(data), PALETTE.get(name, PALETTE["ink"]))
    body += _legend(plot, [(name, PALETTE.get(name, PALETTE["ink"])) for name in series])
    return _svg(plot, label, body)


@dataclass(frozen=True)
class Bar:
    """One bar: its category label, value (None when absent) and whether it held."""

    category: str
    value: float | None
    held: bool | None


def bar_chart(
    label: str,
    bars: Sequence[Bar],
    *,
    x_title: str,
    y_title: str,
    value_text: Callable[[float], str],
    limit: Limit | None = None,
) -> str:
    """Vertical bars per category, green when the step held and red when it broke."""
    ys = [b.value for b in bars if b.value is not None] + ([limit.value] if limit else [])
    plot = Plot(x=Axis(0.0, float(len(bars)), ()), y=linear_axis(ys))
    body = [*_y_frame(plot, y_title), *_x_frame(plot, x_title, labels=False)]
    slot = (plot.width - plot.left - plot.right) / max(len(bars), 1)
    for index, bar in enumerate(bars):
        centre = plot.left + slot * (index + 0.5)
        body += _bar(plot, bar, centre, min(slot * 0.6, 60.0), value_text)
    if limit:
        y = _f(plot.py(limit.value))
        body.append(
            f'<line x1="{plot.left}" x2="{plot.width - plot.right}" y1="{y}" y2="{y}" '
            f'stroke="{limit.colour}" stroke-width="1.5" stroke-dasharray="6 4"/>'
        )
    body += _legend(plot, [("held", PALETTE["held"]), ("broke", PALETTE["broke"])], limit)
    return _svg(plot, label, body)


def _bar(
    plot: Plot, bar: Bar, centre: float, width: float, value_text: Callable[[float], str]
) -> list[str]:
    """One bar with its value above it and its category below the axis."""
    colour = PALETTE["axis"] if bar.held is None else PALETTE["held" if bar.held else "broke"]
    parts = [_label(centre, plot.base + 18, bar.category)]
    if bar.value is None:
        return [*parts, _label(centre, plot.base - 6, DASH)]
    top = plot.py(max(bar.value, plot.y.lo))
    parts.append(
        f'<rect x="{_f(centre - width / 2)}" y="{_f(top)}" width="{_f(width)}" '
        f'height="{_f(max(plot.base - top, 0.0))}" rx="2" fill="{colour}"/>'
    )
    parts.append(_label(centre, top - 5, value_text(bar.value), cls="bar-value"))
    return parts


# --------------------------------------------------------------------------
# Page sections
# --------------------------------------------------------------------------


def _percentiles(obj: Any, keys: Sequence[str]) -> str:
    """ "2.1 / 4.0 / 18 ms" for the named percentiles of a ``{"p50": ..}`` object."""
    values = [_ms(_obj(obj).get(key)) for key in keys]
    if all(v is None for v in values):
        return DASH
    return " / ".join(v or DASH for v in values) + " ms"


def _freezes(obj: Obj) -> str:
    """ "3 (1.2 s in all)" or "0"."""
    count = _count(obj.get("freezes"))
    seconds = _plain(obj.get("freeze_s"), 1)
    if count is None:
        return DASH
    return f"{count} ({seconds} s in all)" if seconds and count != "0" else count


def _video_format(report: Obj) -> str:
    """ "VP8, 1280x720, 30 fps"."""
    codec = _text(report.get("codec"))
    fps = _plain(report.get("fps"), 2)
    parts = [
        codec.upper() if codec else None,
        _text(report.get("size")),
        f"{fps} fps" if fps else None,
    ]
    return ", ".join(p for p in parts if p) or DASH


def _measured_bitrate(report: Obj) -> str:
    """ "2.5 Mbit/s / 2.39 Mbit/s (96 %)"."""
    requested, measured = _num(report.get("bitrate_bps")), _num(report.get("measured_bitrate_bps"))
    text = f"{fmt_bitrate(requested)} / {fmt_bitrate(measured)}"
    if requested and measured is not None:
        text += f" ({measured / requested * 100:.0f} %)"
    return text


def _connected(report: Obj) -> str:
    """ "300 / 300" subscribers requested / connected."""
    requested = _count(report.get("subscribers_requested")) or DASH
    connected = _count(report.get("subscribers_connected")) or DASH
    return f"{requested} / {connected}"


Rows = list[tuple[str, str]]


def _load_rows(report: Obj) -> Rows:
    """The summary's load rows."""
    return [
        ("Subscribers requested / connected", _connected(report)),
        ("Measurement window", _unit(_plain(report.get("duration_s"), 1), "s")),
        ("Video bitrate requested / measured", _measured_bitrate(report)),
        ("Codec, size, frame rate", _video_format(report)),
        ("Presenter's video pacing", _pacing(report)),
    ]


def _pacing(report: Obj) -> str:
    """How the presenter sent its video: paced like a browser, or in bursts."""
    if "presenter_pacing" not in report:
        return DASH  # a report from before the bench paced
    pacing = _obj(report.get("presenter_pacing"))
    if not pacing:
        return "none: each frame in one burst"
    backlog = _unit(_plain(pacing.get("longest_backlog_ms"), 1), "ms")
    multiplier = _plain(pacing.get("multiplier"), 1) or DASH
    return f"{multiplier}x the bitrate, longest backlog {backlog}"


def _join_cpu(server: Obj) -> str:
    """CPU per join over the ramp, and the estimate without the ramp's forwarding."""
    gross = _unit(_plain(server.get("cpu_ms_per_join"), 1), "ms")
    net = _plain(server.get("cpu_ms_per_join_net"), 1)
    return gross if net is None or gross == DASH else f"{gross} ({net} ms without forwarding)"


def _delivery_rows(report: Obj) -> Rows:
    """The summary's delivery rows (what subscribers got)."""
    return [
        (
            "Loss before / after NACK recovery",
            f"{fmt_loss(report.get('loss_pct_before_recovery'))}"
            f" / {fmt_loss(report.get('loss_pct'))}",
        ),
        ("Latency p50 / p95 / p99", _percentiles(report.get("latency_ms"), ("p50", "p95", "p99"))),
        ("First frame p50 / p95", _percentiles(report.get("first_frame_ms"), ("p50", "p95"))),
        ("Offer p50 / p95", _percentiles(report.get("offer_ms"), ("p50", "p95"))),
        ("Connect p50 / p95", _percentiles(report.get("connect_ms"), ("p50", "p95"))),
        ("Jitter p50 / p95", _percentiles(report.get("jitter_ms"), ("p50", "p95"))),
        ("Freezes (gaps > 200 ms)", _freezes(report)),
        (
            "Keyframe requests to the publisher",
            _count(report.get("keyframe_requests_to_publisher")) or DASH,
        ),
    ]


def _server_rows(report: Obj) -> Rows:
    """The summary's server rows."""
    server = _obj(report.get("server"))
    cpu = fmt_cpu(server.get("cpu_pct"))
    rss = _unit(_plain(server.get("rss_mb"), 1), "MiB")
    per = _unit(_plain(server.get("rss_mb_per_subscriber"), 2), "MiB")
    memory = _unit(_plain(server.get("memory_mb"), 1), "MiB")
    memory_per = _unit(_plain(server.get("memory_mb_per_subscriber"), 2), "MiB")
    marginal = _unit(_plain(server.get("memory_mb_per_subscriber_marginal"), 2), "MiB")
    return [
        ("CPU", cpu if cpu == DASH else f"{cpu} of one core"),
        ("CPU per forwarded packet copy", _unit(_plain(server.get("us_per_packet"), 1), "µs")),
        ("Packets forwarded", _count(server.get("packets_out")) or DASH),
        ("CPU per join (over the ramp)", _join_cpu(server)),
        ("Packets resent (NACK answers)", _count(server.get("retransmissions")) or DASH),
        ("NACKs over the repair budget", _count(server.get("repairs_shed")) or DASH),
        ("Resident memory (RSS, summed)", rss if per == DASH else f"{rss} ({per} per subscriber)"),
        (
            "Memory, shared libraries counted once",
            memory
            if memory_per == DASH
            else f"{memory} ({memory_per} per subscriber, {marginal} per added one)",
        ),
    ]


def _client_rows(report: Obj) -> Rows:
    """The summary's load-generator rows."""
    client = _obj(report.get("client"))
    cpu = fmt_cpu(client.get("cpu_pct"))
    processes = _count(client.get("processes"))
    if cpu != DASH:
        cpu = f"{cpu} of one core" + (f" across {processes} processes" if processes else "")
    return [
        ("CPU", cpu),
        ("CPU per received packet", _unit(_plain(client.get("us_per_packet"), 1), "µs")),
    ]


def _kv_table(title: str, rows: Rows) -> str:
    """A titled two-column table of figures."""
    body = "".join(f'<tr><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in rows)
    return (
        f'<div class="card"><h3>{_e(title)}</h3><table class="kv">'
        f"<tbody>{body}</tbody></table></div>"
    )


def _summary_section(report: Obj) -> str:
    """The summary tables: load, delivery, server, client."""
    return (
        '<section><h2>Summary</h2><div class="grid2"><div class="stack">'
        + _kv_table("Load", _load_rows(report))
        + _kv_table("Delivery to subscribers", _delivery_rows(report))
        + '</div><div class="stack">'
        + _kv_table("Server", _server_rows(report))
        + _kv_table("Load generator (clients)", _client_rows(report))
        + "</div></div></section>"
    )


def _tile(name: str, value: str, note: str = "") -> str:
    """One key figure."""
    extra = f'<div class="note">{_e(note)}</div>' if note else ""
    return (
        f'<div class="tile"><div class="name">{_e(name)}</div>'
        f'<div class="value">{_e(value)}</div>{extra}</div>'
    )


def _tiles(report: Obj) -> str:
    """The headline figures as a row of tiles."""
    latency = _obj(report.get("latency_ms"))
    requested = _count(report.get("subscribers_requested"))
    return (
        '<div class="tiles">'
        + "".join(
            [
                _tile(
                    "Subscribers connected",
                    _count(report.get("subscribers_connected")) or DASH,
                    f"of {requested} requested" if requested else "",
                ),
                _tile(
                    "Received bitrate",
                    fmt_bitrate(report.get("measured_bitrate_bps")),
                    f"{fmt_bitrate(report.get('bitrate_bps'))} sent",
                ),
                _tile(
                    "Loss after recovery",
                    fmt_loss(report.get("loss_pct")),
                    f"{fmt_loss(report.get('loss_pct_before_recovery'))} before NACK",
                ),
                _tile(
                    "p99 latency", fmt_ms(latency.get("p99")), f"p50 {fmt_ms(latency.get('p50'))}"
                ),
                _tile(
                    "Server CPU", fmt_cpu(_obj(report.get("server")).get("cpu_pct")), "of one core"
                ),
            ]
        )
        + "</div>"
    )


def describe_impairment(impairment: Any) -> str:
    """An impairment in words: "150 ms each way ±20 ms, 3 % loss (bursts of 4), 2 Mbit/s cap"."""
    imp = _obj(impairment)
    delay, jitter = _num(imp.get("delay_ms")), _num(imp.get("jitter_ms"))
    loss, burst, rate = _num(imp.get("loss_pct")), _num(imp.get("burst")), _num(imp.get("rate_bps"))
    parts = []
    if delay:
        parts.append(f"{_ms(delay)} ms each way" + (f" ±{_ms(jitter)} ms" if jitter else ""))
    elif jitter:
        parts.append(f"±{_ms(jitter)} ms jitter")
    if loss:
        parts.append(
            f"{_trim(loss, 2)} % loss"
            + (f" (bursts of {burst:.0f})" if burst and burst > 1 else "")
        )
    if rate:
        parts.append(f"{fmt_bitrate(rate)} cap")
    return ", ".join(parts) or "none"


def _group_stat(group: Obj, key: str) -> list[float]:
    """One per-subscriber figure of a group, the present ones."""
    values = (_num(_obj(s).get(key)) for s in _list(group.get("per_subscriber")))
    return [v for v in values if v is not None]


def _spread(values: Sequence[float]) -> str:
    """ "median 18 / worst 31 ms" of per-subscriber values."""
    if not values:
        return DASH
    ordered = sorted(values)
    return f"median {_ms(ordered[len(ordered) // 2])} / worst {_ms(ordered[-1])} ms"


def _group_rows(group: Obj) -> list[str]:
    """A group's figures, in the order of ``GROUP_ROWS``."""
    return [
        _count(group.get("subscribers")) or DASH,
        describe_impairment(group.get("impairment")),
        fmt_loss(group.get("loss_pct_before_recovery")),
        fmt_loss(group.get("loss_pct")),
        _percentiles(group.get("latency_ms"), ("p50", "p95", "p99")),
        _spread(_group_stat(group, "latency_p99_ms")),
        _percentiles(group.get("first_frame_ms"), ("p50", "p95")),
        _freezes(group),
        fmt_bitrate(group.get("bitrate_bps")),
    ]


GROUP_ROWS = [
    "Subscribers",
    "Network impairment",
    "Loss before NACK recovery",
    "Loss after NACK recovery",
    "Latency p50 / p95 / p99",
    "Per-subscriber p99 latency",
    "First frame p50 / p95",
    "Freezes (gaps > 200 ms)",
    "Received bitrate",
]


def _report_slo(report: Obj) -> Obj:
    """The SLO the run was judged against (run's, else the find-max search's)."""
    return _obj(report.get("slo")) or _obj(_obj(report.get("find_max")).get("slo"))


def _clean_unaffected(clean: Obj, slo: Obj) -> bool | None:
    """Clean group within the SLO limits (or the defaults) with no freezes; None if unknown."""
    loss_limit, p99_limit = _slo_limits(slo)
    loss_limit = DEFAULT_SLO["loss_pct"] if loss_limit is None else loss_limit
    p99_limit = DEFAULT_SLO["p99_ms"] if p99_limit is None else p99_limit
    loss = _num(clean.get("loss_pct"))
    p99 = _num(_obj(clean.get("latency_ms")).get("p99"))
    freezes = _num(clean.get("freezes"))
    if loss is None or p99 is None:
        return None
    return loss <= loss_limit and p99 <= p99_limit and not freezes


def _clean_callout(report: Obj, clean: Obj, impaired: Obj) -> str:
    """The highlight: are clean subscribers unaffected by the impaired group?"""
    slo = _report_slo(report)
    limits = _slo_criteria(slo) or _slo_criteria(DEFAULT_SLO)
    outcome = _clean_unaffected(clean, slo)
    head = {
        True: "Clean subscribers unaffected by the impaired group",
        False: "Clean subscribers affected while the impaired group ran",
        None: "Clean subscribers: not enough figures to judge",
    }[outcome]
    tone = {True: "ok", False: "bad", None: "neutral"}[outcome]
    latency = _obj(clean.get("latency_ms"))
    detail = (
        f"{_subscribers(clean.get('subscribers'))}: loss {fmt_loss(clean.get('loss_pct'))}, "
        f"p99 latency {fmt_ms(latency.get('p99'))}, freezes {_freezes(clean)}; "
        f"alongside {_subscribers(impaired.get('subscribers'))} behind "
        f"{describe_impairment(impaired.get('impairment'))}. Judged against {limits}"
        f"{'' if _slo_criteria(slo) else ' (default limits; the run set no SLO)'}."
    )
    mark = {"ok": "✓", "bad": "✗"}.get(tone, "•")
    return (
        f'<div class="callout {tone}"><span class="mark">{mark}</span><div><strong>'
        f"{_e(head)}</strong><br>{_e(detail)}</div></div>"
    )


def _group_body(columns: Sequence[tuple[str, Obj]], tint_clean: bool) -> str:
    """The comparison rows: one per figure, one cell per group (clean tinted when unaffected)."""
    cells = [
        (_group_rows(group), "ok" if name == "clean" and tint_clean else "")
        for name, group in columns
    ]
    return "".join(
        f'<tr><th scope="row">{_e(label)}</th>'
        + "".join(f'<td class="{tint}">{_e(values[i])}</td>' for values, tint in cells)
        + "</tr>"
        for i, label in enumerate(GROUP_ROWS)
    )


def _groups_section(report: Obj) -> str:
    """Clean vs impaired subscribers, side by side."""
    groups = _obj(report.get("groups"))
    clean, impaired = _obj(groups.get("clean")), _obj(groups.get("impaired"))
    if not clean and not impaired:
        return (
            "<section><h2>Clean vs impaired subscribers</h2>"
            '<p class="empty">No per-group figures in this report.</p></section>'
        )
    columns = [(name, group) for name, group in (("clean", clean), ("impaired", impaired)) if group]
    head = "".join(
        f'<th scope="col" class="{name}"><span class="dot {name}"></span>{name.capitalize()}</th>'
        for name, _ in columns
    )
    unaffected = bool(impaired) and _clean_unaffected(clean, _report_slo(report)) is True
    body = _group_body(columns, tint_clean=unaffected)
    callout = (
        _clean_callout(report, clean, impaired)
        if clean and impaired
        else '<p class="note">No impaired group in this run (no <code>--impair</code>).</p>'
    )
    return (
        "<section><h2>Clean vs impaired subscribers</h2>"
        + callout
        + f'<div class="card"><table class="groups"><thead><tr><th></th>{head}</tr>'
        f"</thead><tbody>{body}</tbody></table></div></section>"
    )


def _timeline_points(report: Obj, key: str, scale: float = 1.0) -> list[Point]:
    """``(t, value)`` pairs of one timeline field, the samples that have both."""
    points = []
    for sample in _list(report.get("timeline")):
        t, value = _num(_obj(sample).get("t")), _num(_obj(sample).get(key))
        if t is not None and value is not None:
            points.append((t, value * scale))
    return sorted(points)


def _figure(title: str, chart: str | None, note: str = "", empty: str = "") -> str:
    """A chart card with its caption, or a placeholder when there is no data."""
    content = chart if chart else f'<p class="empty">{_e(empty or "No data in this report.")}</p>'
    caption = f'<p class="caption">{_e(note)}</p>' if note else ""
    return f'<figure class="card"><h3>{_e(title)}</h3>{content}{caption}</figure>'


def _cpu_figure(report: Obj) -> str:
    """Server CPU over time."""
    points = _timeline_points(report, "server_cpu_pct")
    chart = (
        line_chart(
            "Server CPU over time",
            points,
            colour=PALETTE["cpu"],
            x_title="time since start (s)",
            y_title="% of one core",
            floor_hi=10.0,
        )
        if points
        else None
    )
    return _figure(
        "Server CPU",
        chart,
        "All server processes; 100 % is one core busy.",
        "No timeline samples in this report.",
    )


def _bitrate_figure(report: Obj) -> str:
    """Mean received bitrate per subscriber over time, against the requested one."""
    requested = _num(report.get("bitrate_bps"))
    samples = [v for _, v in _timeline_points(report, "bitrate_bps")] + [requested or 0.0]
    mega = max(samples) >= 1e6
    scale, unit = (1e-6, "Mbit/s") if mega else (1e-3, "kbit/s")
    points = _timeline_points(report, "bitrate_bps", scale)
    limit = (
        Limit(requested * scale, f"requested {fmt_bitrate(requested)}", "#64748b")
        if requested
        else None
    )
    chart = (
        line_chart(
            "Received bitrate over time",
            points,
            colour=PALETTE["bitrate"],
            x_title="time since start (s)",
            y_title=f"{unit} per subscriber",
            limit=limit,
        )
        if points
        else None
    )
    return _figure(
        "Received video bitrate",
        chart,
        "Mean over subscribers, one sample a second.",
        "No timeline samples in this report.",
    )


def _latency_figure(report: Obj) -> str:
    """CDF of per-subscriber p99 latency, one curve per group."""
    groups = _obj(report.get("groups"))
    series = {
        name: _group_stat(_obj(groups.get(name)), "latency_p99_ms")
        for name in ("clean", "impaired")
    }
    series = {name: values for name, values in series.items() if values}
    p99_limit = _slo_limits(_report_slo(report))[1]
    limit = Limit(p99_limit, f"SLO {_ms(p99_limit)} ms") if p99_limit is not None else None
    chart = (
        cdf_chart("Per-subscriber p99 latency", series, x_title="p99 latency (ms)", limit=limit)
        if series
        else None
    )
    return _figure(
        "Per-subscriber p99 latency (CDF)",
        chart,
        "Each subscriber's own p99, presenter send to subscriber receive.",
        "No per-subscriber figures in this report.",
    )


def _charts_section(report: Obj) -> str:
    """Timeline and latency distribution charts."""
    return (
        '<section><h2>Over time and across subscribers</h2><div class="grid2">'
        + _cpu_figure(report)
        + _bitrate_figure(report)
        + "</div>"
        + _latency_figure(report)
        + "</section>"
    )


def _step_bars(steps: Sequence[Obj], key: str) -> list[Bar]:
    """One bar per find-max step for the figure ``key``."""
    return [
        Bar(
            _count(s.get("subscribers")) or DASH,
            _num(s.get(key)),
            s.get("held") if isinstance(s.get("held"), bool) else None,
        )
        for s in steps
    ]


def _find_max_table(steps: Sequence[Obj]) -> str:
    """The find-max steps as a table."""
    rows = "".join(
        f"<tr><td>{_e(_count(s.get('subscribers')) or DASH)}</td>"
        f"<td>{_e(fmt_loss(s.get('loss_pct')))}</td><td>{_e(fmt_ms(s.get('p99_ms')))}</td>"
        f"<td>{_e(fmt_cpu(s.get('server_cpu_pct')))}</td>"
        f"<td>{_held_badge(s.get('held'))}</td></tr>"
        for s in steps
    )
    return (
        '<table class="steps"><thead><tr><th>Subscribers</th><th>Loss</th><th>p99</th>'
        f"<th>Server CPU</th><th>SLO</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _held_badge(held: Any) -> str:
    """ "held" / "broke" badge."""
    if held is True:
        return '<span class="badge ok">held</span>'
    if held is False:
        return '<span class="badge bad">broke</span>'
    return DASH


def _baseline_section(report: Obj) -> str:
    """``--baseline mediarelay``: the same feed through aiortc's MediaRelay, side by side."""
    baseline = _obj(report.get("baseline"))
    if not baseline:
        return ""
    server = _obj(baseline.get("server"))
    ratio = _num(baseline.get("subscribers_per_core_ratio"))
    rows: Rows = [
        ("System", _text(baseline.get("system")) or DASH),
        (
            "Subscribers connected",
            f"{_count(baseline.get('subscribers_connected')) or DASH} of "
            f"{_count(baseline.get('subscribers_requested')) or DASH}",
        ),
        ("Received bitrate", fmt_bitrate(baseline.get("measured_bitrate_bps"))),
        ("Server CPU", _unit(_plain(server.get("cpu_pct"), 1), "% of one core")),
        (
            "Server CPU per subscriber",
            _unit(_plain(baseline.get("server_cpu_pct_per_subscriber"), 2), "%"),
        ),
        (
            "Telebridge CPU per subscriber (this run)",
            _unit(_plain(baseline.get("telebridge_cpu_pct_per_subscriber"), 3), "%"),
        ),
        (
            "Subscribers per core, Telebridge vs baseline",
            f"{_trim(ratio, 1)}x" if ratio is not None else DASH,
        ),
    ]
    return (
        "<section><h2>Baseline: aiortc MediaRelay</h2>"
        + _kv_table("Same presenter, decoded once and re-encoded per subscriber", rows)
        + "</section>"
    )


def _find_max_section(report: Obj) -> str:
    """The --find-max search: one bar per step, loss and p99, held or broke."""
    find_max = _obj(report.get("find_max"))
    steps = _steps(find_max)
    if not steps:
        return ""
    loss_limit, p99_limit = _slo_limits(_find_max_slo(report, find_max))
    loss_chart = bar_chart(
        "Loss per find-max step",
        _step_bars(steps, "loss_pct"),
        x_title="subscribers",
        y_title="loss after recovery (%)",
        value_text=lambda v: f"{_trim(v, 2)} %",
        limit=Limit(loss_limit, f"SLO {_trim(loss_limit, 2)} %")
        if loss_limit is not None
        else None,
    )
    p99_chart = bar_chart(
        "p99 latency per find-max step",
        _step_bars(steps, "p99_ms"),
        x_title="subscribers",
        y_title="p99 latency (ms)",
        value_text=lambda v: f"{_ms(v)} ms",
        limit=Limit(p99_limit, f"SLO {_ms(p99_limit)} ms") if p99_limit is not None else None,
    )
    largest = _largest_held(find_max)
    note = (
        f"Largest load that held: {_subscribers(largest)}."
        if largest is not None
        else "No step held the SLO."
    )
    requested = _num(report.get("subscribers_requested"))
    if requested is not None:
        note += f" The figures above are from the run with {_subscribers(requested)} requested."
    return (
        '<section><h2>Find-max search</h2><div class="grid2">'
        + _figure("Loss after recovery per step", loss_chart)
        + _figure("p99 latency per step", p99_chart)
        + f'</div><div class="card">{_find_max_table(steps)}'
        f'<p class="caption">{_e(note)}</p></div></section>'
    )


def _machine(report: Obj) -> str:
    """ "2 CPUs · Intel Xeon @ 2.80GHz · Python 3.11.7 · Linux-…"."""
    machine = _obj(report.get("machine"))
    cpus = _count(machine.get("cpus"))
    python = _text(machine.get("python"))
    parts = [
        f"{cpus} CPU{'' if cpus == '1' else 's'}" if cpus else None,
        _text(machine.get("cpu_model")),
        f"Python {python}" if python else None,
        _text(machine.get("platform")),
    ]
    return " · ".join(p for p in parts if p) or DASH


def _provenance_section(report: Obj) -> str:
    """How the figures were produced: machine, server and command."""
    command = _text(report.get("command")) or DASH
    server = _text(report.get("server_url")) or DASH
    return (
        '<section><h2>How this was measured</h2><div class="card"><dl class="prov">'
        f"<dt>Machine</dt><dd>{_e(_machine(report))}</dd>"
        f"<dt>Server</dt><dd><code>{_e(server)}</code></dd>"
        f"<dt>Started</dt><dd>{_e(_text(report.get('started_at')) or DASH)}</dd>"
        f"<dt>Command</dt><dd><pre><code>{_e(command)}</code></pre></dd>"
        "</dl></div></section>"
    )


def _footer(report: Obj) -> str:
    """Schema version and start time."""
    schema = report.get("schema")
    version = _text(schema) or DASH
    warning = ""
    if _num(schema) not in (None, float(SCHEMA_VERSION)):
        warning = f" (this page was written for schema {SCHEMA_VERSION})"
    return (
        f"<footer>telebridge bench report · schema version {_e(version)}{_e(warning)} · "
        f"started {_e(_text(report.get('started_at')) or DASH)}</footer>"
    )


def page_title(report: dict[str, Any]) -> str:
    """The page's ``<title>``: "Telebridge load bench, 2026-11-23 11:40 UTC"."""
    started = _started(_obj(report))
    return f"Telebridge load bench, {started}" if started else "Telebridge load bench"


def _header(report: Obj) -> str:
    """The eyebrow, the verdict in large type, and the headline tiles."""
    started = _started(report)
    eyebrow = "Telebridge load bench" + (f" · {started}" if started else "")
    return (
        f'<header><div class="eyebrow">{_e(eyebrow)}</div>'
        f'<h1 class="verdict {_tone(report)}">{_e(verdict(dict(report)))}</h1>'
        f"</header>{_tiles(report)}"
    )


CSS = """
:root { --ink: #0f172a; --muted: #64748b; --line: #e2e8f0; --bg: #f1f5f9; --card: #fff;
  --ok: #15803d; --ok-bg: #f0fdf4; --bad: #b91c1c; --bad-bg: #fef2f2; --warn: #b45309;
  --warn-bg: #fffbeb; --neutral: #334155; --neutral-bg: #fff; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  "Liberation Sans", "DejaVu Sans", sans-serif; font-variant-numeric: tabular-nums; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 28px 16px; }
.eyebrow { text-transform: uppercase; letter-spacing: .08em; font-size: 12px;
  font-weight: 700; color: var(--muted); }
h1.verdict { font-size: 27px; line-height: 1.3; font-weight: 700; margin: 8px 0 0;
  padding: 18px 22px; border-radius: 10px; border: 1px solid var(--line);
  border-left: 7px solid var(--neutral); background: var(--neutral-bg); }
h1.verdict.ok { border-left-color: var(--ok); background: var(--ok-bg); }
h1.verdict.bad { border-left-color: var(--bad); background: var(--bad-bg); }
h1.verdict.warn { border-left-color: var(--warn); background: var(--warn-bg); }
h2 { font-size: 19px; margin: 0 0 12px; }
h3 { font-size: 14px; margin: 0 0 8px; color: var(--neutral); text-transform: uppercase;
  letter-spacing: .04em; }
section { margin-top: 30px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 16px 18px; margin: 0; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; margin-bottom: 16px; }
.stack { display: flex; flex-direction: column; gap: 16px; }
.tiles { display: grid; grid-template-columns: repeat(5, 1fr); gap: 12px; margin-top: 16px; }
.tile { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 12px 16px; }
.tile .name { font-size: 12px; color: var(--muted); font-weight: 600; }
.tile .value { font-size: 25px; font-weight: 700; line-height: 1.25; margin-top: 2px; }
.tile .note { font-size: 12px; color: var(--muted); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
tbody tr:last-child th, tbody tr:last-child td { border-bottom: 0; }
table.kv th { font-weight: 500; color: var(--neutral); width: 52%; }
table.kv td { font-weight: 600; }
table.groups th[scope=row] { font-weight: 500; color: var(--neutral); width: 28%; }
table.groups thead th { font-size: 14px; border-bottom: 2px solid var(--line); }
table.groups td { width: 36%; }
table.groups td.ok { background: var(--ok-bg); }
table.steps td, table.steps th { text-align: right; }
table.steps td:first-child, table.steps th:first-child { text-align: left; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%;
  margin-right: 7px; }
.dot.clean { background: #2563eb; } .dot.impaired { background: #d97706; }
.callout { display: flex; gap: 12px; align-items: flex-start; padding: 12px 16px;
  border-radius: 10px; margin-bottom: 12px; border: 1px solid var(--line); }
.callout .mark { font-size: 20px; font-weight: 700; line-height: 1.2; }
.callout.ok { background: var(--ok-bg); border-color: #bbf7d0; }
.callout.ok .mark, .callout.ok strong { color: var(--ok); }
.callout.bad { background: var(--bad-bg); border-color: #fecaca; }
.callout.bad .mark, .callout.bad strong { color: var(--bad); }
.callout.neutral { background: var(--card); }
.badge { display: inline-block; padding: 0 8px; border-radius: 999px; font-size: 12px;
  font-weight: 700; }
.badge.ok { background: #dcfce7; color: var(--ok); }
.badge.bad { background: #fee2e2; color: var(--bad); }
svg.chart { display: block; width: 100%; height: auto; }
svg.chart text { font-size: 13px; fill: #475569; font-family: inherit; }
svg.chart text.axis-title { fill: #334155; font-weight: 600; }
svg.chart text.limit-label { font-weight: 600; }
svg.chart text.bar-value { fill: #0f172a; font-weight: 600; }
.caption, .note, .empty { font-size: 13px; color: var(--muted); margin: 8px 0 0; }
.empty { padding: 24px 0; text-align: center; }
dl.prov { display: grid; grid-template-columns: 110px 1fr; gap: 6px 16px; margin: 0; }
dl.prov dt { color: var(--muted); font-weight: 600; }
dl.prov dd { margin: 0; overflow-wrap: anywhere; }
pre { margin: 0; white-space: pre-wrap; word-break: break-all; background: #f8fafc;
  border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; font-size: 13px; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px; }
footer { max-width: 1180px; margin: 8px auto 24px; padding: 12px 28px 0; font-size: 12px;
  color: var(--muted); border-top: 1px solid var(--line); }
@media (max-width: 900px) {
  .grid2 { grid-template-columns: 1fr; } .tiles { grid-template-columns: repeat(2, 1fr); }
}
@media print { body { background: #fff; } .card, .tile { break-inside: avoid; } }
"""


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page for a bench report (no scripts, no external assets)."""
    run = _obj(report)
    sections = [
        _header(run),
        _summary_section(run),
        _groups_section(run),
        _charts_section(run),
        _find_max_section(run),
        _baseline_section(run),
        _provenance_section(run),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(page_title(dict(run)))}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(sections)}</main>{_footer(run)}</body></html>\n"
    )


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """Write ``render_html(report)`` to ``path`` (UTF-8), creating its folder."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_html(report), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.report REPORT.json OUT.html``: write the page, print the verdict."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m bench.report REPORT.json OUT.html", file=sys.stderr)
        return 2
    report = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    write_report(report, args[1])
    print(verdict(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
