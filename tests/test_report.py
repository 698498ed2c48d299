"""bench/report.py: the one-line verdict and the self-contained HTML page of a bench run."""

from __future__ import annotations

import copy
import html
import random
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar

from browser import chromium

from bench.report import (
    DASH,
    describe_impairment,
    fmt_bitrate,
    page_title,
    render_html,
    verdict,
)
from bench.report import write_report as write_html

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
IMPAIRMENT = {"delay_ms": 150, "jitter_ms": 20, "loss_pct": 3, "burst": 4, "rate_bps": 2_000_000}


def _per_subscriber(rng: random.Random, first: int, count: int, impaired: bool) -> list[Any]:
    """Per-subscriber rows: clean ones at a few ms, impaired ones behind 150 ms ±20 ms."""
    rows = []
    for index in range(first, first + count):
        expected = 8400
        lost_first = rng.randint(220, 300) if impaired else rng.choice([0, 0, 0, 1, 2])
        lost = rng.choice([0, 0, 1, 2, 3]) if impaired else 0
        p50 = rng.uniform(151, 158) if impaired else rng.uniform(1.6, 2.6)
        p99 = rng.uniform(178, 196) if impaired else rng.lognormvariate(2.6, 0.35)
        rows.append(
            {
                "id": f"bench-{index}",
                "connect_ms": rng.uniform(45, 120) + (300 if impaired else 0),
                "first_frame_ms": rng.uniform(70, 150) + (310 if impaired else 0),
                "packets": expected - lost,
                "expected": expected,
                "lost_before_recovery": lost_first,
                "lost": lost,
                "recovered": lost_first - lost,
                "jitter_ms": rng.uniform(8, 12) if impaired else rng.uniform(0.3, 0.6),
                "bitrate_bps": rng.randint(2_370_000, 2_400_000),
                "latency_p50_ms": p50,
                "latency_p99_ms": p99,
                "freezes": 1 if impaired and index % 25 == 0 else 0,
                "freeze_s": 0.31 if impaired and index % 25 == 0 else 0.0,
            }
        )
    return rows


def _timeline(rng: random.Random, seconds: int = 36) -> list[Any]:
    """One sample a second: a 6 s ramp to 300 subscribers, then the measurement window."""
    samples = []
    for second in range(1, seconds + 1):
        subscribers = min(300, 50 * second)
        share = subscribers / 300
        samples.append(
            {
                "t": float(second),
                "subscribers": subscribers,
                "server_cpu_pct": 71.0 * share + rng.uniform(-2.5, 2.5) + (6 if second == 4 else 0),
                "bitrate_bps": rng.randint(2_360_000, 2_410_000) if second > 2 else 2_150_000,
                "loss_pct": rng.uniform(0, 0.08),
                "latency_p99_ms": rng.uniform(176, 192),
            }
        )
    return samples


def sample_report(*, impaired: bool = True, find_max: bool = False) -> dict[str, Any]:
    """A realistic schema-1 report: 300 subscribers at 2.5 Mbit/s, 75 of them impaired."""
    rng = random.Random(20261123)
    clean_count = 225 if impaired else 300
    clean_rows = _per_subscriber(rng, 1, clean_count, impaired=False)
    groups: dict[str, Any] = {
        "clean": {
            "subscribers": clean_count,
            "impairment": None,
            "loss_pct": 0.0,
            "loss_pct_before_recovery": 0.01,
            "latency_ms": {"p50": 2.1, "p95": 6.8, "p99": 24.0},
            "first_frame_ms": {"p50": 96, "p95": 141},
            "freezes": 0,
            "freeze_s": 0.0,
            "bitrate_bps": 2_391_000,
            "per_subscriber": clean_rows,
        },
        "impaired": None,
    }
    if impaired:
        groups["impaired"] = {
            "subscribers": 75,
            "impairment": dict(IMPAIRMENT),
            "loss_pct": 0.02,
            "loss_pct_before_recovery": 3.1,
            "latency_ms": {"p50": 154.0, "p95": 178.0, "p99": 191.0},
            "first_frame_ms": {"p50": 412, "p95": 460},
            "freezes": 3,
            "freeze_s": 0.93,
            "bitrate_bps": 1_902_000,
            "per_subscriber": _per_subscriber(rng, clean_count + 1, 75, impaired=True),
        }
    report: dict[str, Any] = {
        "schema": 1,
        "started_at": "2026-11-23T11:40:00Z",
        "command": (
            "telebridge bench --spawn --subscribers 300 --bitrate 2.5M --duration 30 "
            "--impair 75:delay=150,jitter=20,loss=3,burst=4,rate=2M --slo loss=0.5,p99=250"
            " --json bench-300.json"
        ),
        "machine": {
            "cpus": 16,
            "cpu_model": "AMD EPYC 7R13 Processor",
            "python": "3.11.7",
            "platform": "Linux-6.1.0-27-cloud-amd64-x86_64-with-glibc2.36",
        },
        "server_url": "http://127.0.0.1:8080",
        "subscribers_requested": 300,
        "subscribers_connected": 300,
        "duration_s": 30.0,
        "bitrate_bps": 2_500_000,
        "measured_bitrate_bps": 2_294_000,
        "size": "1280x720",
        "fps": 30,
        "codec": "vp8",
        "loss_pct": 0.02,
        "loss_pct_before_recovery": 0.78,
        "latency_ms": {"p50": 2.4, "p95": 152.0, "p99": 18.0 if not impaired else 184.0},
        "first_frame_ms": {"p50": 104, "p95": 430},
        "connect_ms": {"p50": 71, "p95": 390},
        "jitter_ms": {"p50": 0.4, "p95": 10.6},
        "freezes": 3,
        "freeze_s": 0.93,
        "keyframe_requests_to_publisher": 2,
        "presenter_pacing": {
            "multiplier": 2.5,
            "packets": 9000,
            "delayed": 400,
            "longest_backlog_ms": 75.3,
        },
        "server": {
            "cpu_pct": 71.0,
            "rss_mb": 264.0,
            "rss_mb_per_subscriber": 0.62,
            "us_per_packet": 9.8,
            "packets_out": 2_241_000,
            "cpu_ms_per_join": 21.0,
            "cpu_ms_per_join_net": 9.5,
        },
        "client": {"cpu_pct": 188.0, "us_per_packet": 6.1, "processes": 4},
        "slo": {"loss_pct": 0.5, "p99_ms": 250, "held": True},
        "verdict": "(the bench's own; the page recomputes it)",
        "groups": groups,
        "timeline": _timeline(rng),
        "find_max": None,
    }
    if find_max:
        report["find_max"] = {
            "slo": {"loss_pct": 0.5, "p99_ms": 250},
            "steps": [
                {
                    "subscribers": 50,
                    "held": True,
                    "loss_pct": 0.0,
                    "p99_ms": 176,
                    "server_cpu_pct": 13,
                },
                {
                    "subscribers": 100,
                    "held": True,
                    "loss_pct": 0.01,
                    "p99_ms": 178,
                    "server_cpu_pct": 25,
                },
                {
                    "subscribers": 200,
                    "held": True,
                    "loss_pct": 0.01,
                    "p99_ms": 181,
                    "server_cpu_pct": 48,
                },
                {
                    "subscribers": 300,
                    "held": True,
                    "loss_pct": 0.02,
                    "p99_ms": 184,
                    "server_cpu_pct": 71,
                },
                {
                    "subscribers": 400,
                    "held": False,
                    "loss_pct": 0.9,
                    "p99_ms": 312,
                    "server_cpu_pct": 97,
                },
            ],
            "max_subscribers": 300,
        }
    return report


def clean_run() -> dict[str, Any]:
    """The brief's example run: no impairment, no SLO."""
    report = sample_report(impaired=False)
    del report["slo"]
    return report


class _Collector(HTMLParser):
    """Counts start tags and checks that every non-void tag is closed in order."""

    VOID: ClassVar[set[str]] = {
        "meta",
        "br",
        "line",
        "rect",
        "circle",
        "polyline",
        "polygon",
        "path",
        "img",
        "link",
    }

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.stack: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.attrs.extend(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.attrs.extend(attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-3:]}"
        self.stack.pop()


def parse(page: str) -> _Collector:
    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert parser.stack == [], f"unclosed tags {parser.stack}"
    return parser


# ---------------------------------------------------------------- verdicts


def test_verdict_normal_run() -> None:
    assert verdict(clean_run()) == (
        "300 subscribers at 2.5 Mbit/s: loss 0.02 %, p99 latency 18 ms, server CPU 71 % of 1 core"
    )


def test_verdict_partial_connect() -> None:
    report = clean_run()
    report["subscribers_connected"] = 280
    assert verdict(report).startswith(
        "280 of 300 subscribers connected at 2.5 Mbit/s: loss 0.02 %, p99 latency 18 ms"
    )


def test_verdict_slo_held_and_broken() -> None:
    report = sample_report()
    assert verdict(report) == (
        "300 subscribers at 2.5 Mbit/s: loss 0.02 %, p99 latency 184 ms, "
        "server CPU 71 % of 1 core — within SLO"
    )
    report["loss_pct"] = 0.8
    report["slo"] = {"loss_pct": 0.5, "p99_ms": 250, "held": False}
    assert verdict(report).endswith("— SLO broken (loss 0.8 % > 0.5 %)")
    report["latency_ms"]["p99"] = 310.0
    assert verdict(report).endswith("— SLO broken (loss 0.8 % > 0.5 %, p99 310 ms > 250 ms)")


def test_verdict_slo_without_held_is_judged_and_partial_connect_explains_a_break() -> None:
    report = sample_report()
    report["slo"] = {"loss_pct": 0.5, "p99_ms": 150}
    assert verdict(report).endswith("— SLO broken (p99 184 ms > 150 ms)")
    report["slo"] = {"loss_pct": 0.5, "p99_ms": 250, "held": False}
    report["subscribers_connected"] = 290
    assert verdict(report).endswith("— SLO broken (10 subscribers did not connect)")


def test_verdict_find_max() -> None:
    report = sample_report(find_max=True)
    assert verdict(report) == (
        "Largest load within SLO (loss ≤ 0.5 %, p99 ≤ 250 ms): 300 subscribers at 2.5 Mbit/s; "
        "loss 0.02 %, p99 latency 184 ms, server CPU 71 % of 1 core; "
        "400 subscribers broke it (loss 0.9 % > 0.5 %, p99 312 ms > 250 ms)"
    )


def test_verdict_find_max_brief_example_and_nothing_held() -> None:
    report = clean_run()
    report["find_max"] = {
        "slo": {"loss_pct": 0.5, "p99_ms": 150},
        "steps": [
            {"subscribers": 300, "held": False, "loss_pct": 0.8, "p99_ms": 90},
            {"subscribers": 250, "held": True, "loss_pct": 0.1, "p99_ms": 40, "server_cpu_pct": 60},
        ],
        "max_subscribers": 250,
    }
    assert verdict(report).startswith(
        "Largest load within SLO (loss ≤ 0.5 %, p99 ≤ 150 ms): 250 subscribers at 2.5 Mbit/s; "
        "loss 0.10 %, p99 latency 40 ms, server CPU 60 % of 1 core; 300 subscribers broke it"
    )
    report["find_max"]["steps"][1]["held"] = False
    report["find_max"]["max_subscribers"] = None
    assert verdict(report) == (
        "No load within SLO (loss ≤ 0.5 %, p99 ≤ 150 ms) at 2.5 Mbit/s: 250 subscribers broke it"
    )


def test_verdict_survives_missing_figures() -> None:
    d = DASH
    assert verdict({}) == f"{d} subscribers at {d}: loss {d}, p99 latency {d}, server CPU {d}"
    text = verdict({"schema": 1, "subscribers_requested": 10, "slo": {"loss_pct": 1}})
    assert text.startswith(f"10 subscribers at {d}") and "SLO not judged" in text


def test_bitrate_and_impairment_in_words() -> None:
    assert fmt_bitrate(2_500_000) == "2.5 Mbit/s"
    assert fmt_bitrate(800_000) == "800 kbit/s"
    assert fmt_bitrate(2_391_000) == "2.39 Mbit/s"
    assert fmt_bitrate(64_500) == "64.5 kbit/s"
    assert fmt_bitrate(None) == DASH
    assert describe_impairment(IMPAIRMENT) == (
        "150 ms each way ±20 ms, 3 % loss (bursts of 4), 2 Mbit/s cap"
    )
    assert describe_impairment({"loss_pct": 1, "burst": 1}) == "1 % loss"
    assert describe_impairment(None) == "none"


# ---------------------------------------------------------------- the page


def test_page_is_self_contained_and_well_formed() -> None:
    for report in (sample_report(), sample_report(find_max=True), clean_run()):
        page = render_html(report)
        assert html.escape(verdict(report)) in page
        for forbidden in ("<link", "<script", '<img src="http', "@import", "url("):
            assert forbidden not in page
        parsed = parse(page)
        for name, value in parsed.attrs:
            if name in ("src", "href"):
                assert not re.match(r"\s*(https?:)?//", value or ""), (name, value)
        assert parsed.tags["svg"] >= 2 and page.count("<svg") >= 2
        assert parsed.tags.get("polyline", 0) >= 2 and parsed.tags["table"] >= 4
        assert "<title>Telebridge load bench, 2026-11-23 11:40 UTC</title>" in page


def test_page_shows_groups_charts_and_provenance() -> None:
    page = render_html(sample_report(find_max=True))
    assert "150 ms each way ±20 ms, 3 % loss (bursts of 4), 2 Mbit/s cap" in page
    assert "Clean subscribers unaffected by the impaired group" in page
    assert "Find-max search" in page and page.count("<svg") == 5
    assert "broke</span>" in page and "AMD EPYC 7R13 Processor" in page
    assert "schema version 1" in page and "2026-11-23T11:40:00Z" in page
    assert "µs" in page and "0.62 MiB per subscriber" in page
    assert "2.5x the bitrate, longest backlog 75.3 ms" in page
    assert "21 ms (9.5 ms without forwarding)" in page
    report = sample_report()
    report["presenter_pacing"] = None
    assert "none: each frame in one burst" in render_html(report)


def test_clean_group_affected_is_flagged() -> None:
    report = sample_report()
    report["groups"]["clean"]["latency_ms"]["p99"] = 400.0
    page = render_html(report)
    assert "Clean subscribers affected while the impaired group ran" in page


def test_strings_from_the_report_are_escaped() -> None:
    report = sample_report(find_max=True)
    report["command"] = 'telebridge bench <script>alert("x")</script> & "more"'
    report["machine"]["cpu_model"] = "<img src=x onerror=alert(1)>"
    report["codec"] = "<b>vp8</b>"
    report["started_at"] = "<script>"
    page = render_html(report)
    assert "<script" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;more&quot;" in page
    parse(page)


def test_missing_and_null_fields_do_not_crash() -> None:
    report = sample_report()
    report["groups"]["impaired"] = None
    report["timeline"] = []
    report["find_max"] = None
    page = render_html(report)
    assert "No impaired group in this run" in page and "No timeline samples" in page
    parse(page)

    bare: dict[str, Any] = {"schema": 1}
    for key in ("groups", "timeline", "server", "client", "machine", "latency_ms", "slo"):
        bare[key] = None
    page = render_html(bare)
    assert page.count(DASH) > 20 and "No per-group figures" in page
    parse(page)
    assert "<svg" not in render_html({})

    odd = copy.deepcopy(sample_report(find_max=True))
    odd["timeline"] = [
        {"t": 1.0, "server_cpu_pct": None},
        {"t": 2.0, "server_cpu_pct": 50},
        "junk",
        {"bitrate_bps": 1},
    ]
    odd["groups"]["clean"]["per_subscriber"] = [{"latency_p99_ms": 0.0}, {}]
    odd["find_max"]["steps"].append({"subscribers": 500})
    odd["machine"] = {"cpus": "two"}
    odd["schema"] = 2
    page = render_html(odd)
    assert "written for schema 1" in page
    parse(page)


def test_write_report(tmp_path: Path) -> None:
    target = tmp_path / "out" / "bench.html"
    write_html(sample_report(), target)
    assert target.read_text(encoding="utf-8") == render_html(sample_report())


# ---------------------------------------------------------------- real Chromium


async def test_report_renders_in_chromium_and_screenshot(tmp_path: Path) -> None:
    """Open the written page in Debian's Chromium; keep its screenshot as a test artifact."""
    report = sample_report(find_max=True)
    target = tmp_path / "bench.html"
    write_html(report, target)
    async with chromium(tmp_path / "profile") as browser:
        page = await browser.new_page()
        failed: list[str] = []
        page.on("requestfailed", lambda request: failed.append(request.url))
        await page.goto(target.as_uri())
        assert await page.evaluate("document.title") == page_title(report)
        boxes = await page.evaluate(
            "Array.from(document.querySelectorAll('svg')).map(s => {"
            " const r = s.getBoundingClientRect(); return [r.width, r.height]; })"
        )
        assert len(boxes) == 5 and all(w > 200 and h > 80 for w, h in boxes), boxes
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, "the page scrolls sideways at 1280 px"
        assert failed == []
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "bench-report.png"), full_page=True)
