"""`telebridge bench` end to end: a spawned server, real WebRTC subscribers, the report."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from signaling_client import running_server, token, wait_until

from bench.clientbench import feed_through, synthetic_feed
from bench.impair import parse_impairment
from bench.subscriber import Drain, LeanSubscriber, busy_backoff
from signaling.config import Config

ROOT = Path(__file__).resolve().parent.parent

SCHEMA_KEYS = {
    "subscribers_requested",
    "subscribers_connected",
    "duration_s",
    "bitrate_bps",
    "loss_pct",
    "loss_pct_before_recovery",
    "latency_ms",
    "first_frame_ms",
    "freezes",
    "keyframe_requests_to_publisher",
    "server",
    "client",
    "groups",
    "verdict",
}


def run_bench(tmp_path: Path, *args: str) -> dict[str, object]:
    out = tmp_path / "bench.json"
    html = tmp_path / "bench.html"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "signaling.cli",
            "bench",
            "--spawn",
            "--size",
            "320x240",
            "--bitrate",
            "400k",
            "--client-processes",
            "1",
            "--json",
            str(out),
            "--report",
            str(html),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report: dict[str, object] = json.loads(out.read_text())
    assert report["verdict"] in html.read_text()
    return report


def test_small_clean_run_reports_the_schema_and_no_loss(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "--subscribers", "10", "--duration", "4")
    assert set(report) >= SCHEMA_KEYS
    assert report["subscribers_requested"] == 10 and report["subscribers_connected"] == 10
    assert report["loss_pct"] == 0.0
    latency = report["latency_ms"]
    assert isinstance(latency, dict) and set(latency) == {"p50", "p95", "p99"}
    assert latency["p50"] is not None and 0 < latency["p50"] < 200
    server = report["server"]
    client = report["client"]
    assert isinstance(server, dict) and isinstance(client, dict)
    assert {"cpu_pct", "rss_mb", "us_per_packet"} <= set(server)
    assert server["packets_out"] > 0 and server["us_per_packet"] > 0
    # Shared pages counted once: at most the RSS sum, with the server's
    # workers (one per core by default) mapping the same libraries.
    assert server["memory_mb_idle"] > 0 and 0 < server["memory_mb"] <= server["rss_mb"]
    assert server["memory_mb_per_subscriber_marginal"] is not None
    assert server["ramp_cpu_s"] > 0 and server["cpu_ms_per_join"] > 0
    assert server["ramp_copies"] > 0
    assert 0 <= server["cpu_ms_per_join_net"] <= server["cpu_ms_per_join"]
    assert {"cpu_pct", "us_per_packet"} <= set(client)
    groups = report["groups"]
    assert isinstance(groups, dict) and groups["impaired"] is None
    clean = groups["clean"]
    assert clean["subscribers"] == 10
    for subscriber in clean["per_subscriber"]:
        assert subscriber["packets"] > 100, subscriber
        assert subscriber["lost"] == 0
        assert subscriber["first_frame_ms"] is not None
    assert str(report["verdict"]).startswith("10 subscribers at 400 kbit/s")
    pacing = report["presenter_pacing"]
    assert isinstance(pacing, dict) and pacing["multiplier"] == 2.5 and pacing["packets"] > 100


def test_impaired_subscribers_recover_and_clean_ones_lose_nothing(tmp_path: Path) -> None:
    report = run_bench(
        tmp_path,
        "--subscribers",
        "8",
        "--duration",
        "8",
        "--impair",
        "0.5:delay=150ms,jitter=10ms,loss=3%",
        # The server on sockets of its own per connection (the shared port is
        # what every other bench test uses).
        "--server-setting",
        "sfu.udp_mux=false",
    )
    assert report["server_settings"] == {"sfu": {"udp_mux": "false"}}
    groups = report["groups"]
    assert isinstance(groups, dict)
    impaired, clean = groups["impaired"], groups["clean"]
    assert impaired["subscribers"] == 4 and clean["subscribers"] == 4
    assert impaired["impairment"]["delay_ms"] == 150
    # The emulated link dropped packets and NACKs got most of them back.
    assert impaired["loss_pct_before_recovery"] > 1.0
    assert impaired["loss_pct"] < 0.5 * impaired["loss_pct_before_recovery"]
    assert impaired["loss_pct"] < 1.5
    # The links' own counters (since the joins) saw that loss.
    drops = impaired["link_drops"]
    assert drops["down"]["loss"] > 0
    assert drops["down"]["queue"] == 0  # no rate cap
    assert clean["link_drops"] is None
    assert all(s["link"] is None for s in clean["per_subscriber"])
    # The latency of the impaired group shows the link's delay; the clean
    # group is unaffected.
    assert impaired["latency_ms"]["p50"] > 140
    assert clean["loss_pct"] == 0.0
    assert clean["latency_ms"]["p50"] < 100


def test_mediarelay_baseline_runs_the_same_load_and_costs_more_per_subscriber(
    tmp_path: Path,
) -> None:
    report = run_bench(
        tmp_path,
        "--subscribers",
        "4",
        "--duration",
        "3",
        "--baseline",
        "mediarelay",
        "--baseline-subscribers",
        "2",
    )
    baseline = report["baseline"]
    assert isinstance(baseline, dict)
    assert baseline["subscribers_connected"] == 2
    assert baseline["measured_bitrate_bps"] > 0  # it really re-encoded and delivered
    # Decoding once and re-encoding per subscriber costs far more CPU per
    # subscriber than forwarding; the ratio is measured, not assumed.
    assert baseline["subscribers_per_core_ratio"] > 1


def test_microbench_measures_every_send_path() -> None:
    from bench.fanout import run_microbench

    result = run_microbench(subscribers=6, packets=30, repeats=1)
    assert set(result.us_per_copy) == {
        "full",
        "own_socket",
        "connected",
        "batched",
        "rewrite",
        "floor",
        "aiortc_serialize",
        "replay",
    }
    assert all(value > 0 for value in result.us_per_copy.values())


def test_impairment_option_parses() -> None:
    fraction, impairment = parse_impairment("25%:delay=300ms,jitter=20ms,loss=3%,burst=4,rate=2M")
    assert fraction == 0.25
    assert impairment.describe()["delay_ms"] == 300
    assert impairment.describe()["rate_bps"] == 2_000_000


def test_fast_path_counts_exactly_like_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The drain's fast path (in-order packets) and the general path agree on every figure."""
    feed = synthetic_feed(seconds=6.0, loss=0.04, reorder=0.02, duplicate=0.01, seed=7)
    start = feed[0].now
    # Nothing arrives for 300 ms: a freeze, and a gap of more than one frame.
    feed = [d for d in feed if not start + 2.0 <= d.now < start + 2.3]
    general, _ = feed_through("general", feed)
    slow_calls = 0
    receive_rtp = LeanSubscriber.receive_rtp

    def counting(self: LeanSubscriber, data: bytes, now: float, now24: int | None = None) -> None:
        nonlocal slow_calls
        slow_calls += 1
        receive_rtp(self, data, now, now24)

    monkeypatch.setattr(LeanSubscriber, "receive_rtp", counting)
    fast, _ = feed_through("on_datagram", feed)
    assert slow_calls < 0.15 * len(feed)  # the fast path took the in-order packets

    assert fast.result(6.0) == general.result(6.0)
    assert fast.stats == general.stats  # latency histogram and freeze time unrounded
    for a, b in zip(fast.stream_list, general.stream_list, strict=True):
        assert (a.reception.jitter, a.reception.received, a.reception.highest) == (
            b.reception.jitter,
            b.reception.received,
            b.reception.highest,
        )
        assert (a.first, a.last, a.holes, len(a.nacks)) == (b.first, b.last, b.holes, len(b.nacks))
    # The feed exercised what the fast path leaves to the general one.
    result = fast.result(6.0)
    assert result["lost_before_recovery"] > result["lost"] > 0
    assert result["recovered"] > 0 and result["freezes"] == 1
    assert sum(result["latency_histogram"].values()) > 1000  # one per video packet
    assert result["jitter_ms"] > 0


class _Arrivals(LeanSubscriber):
    """A subscriber that keeps the time the drain gives each datagram."""

    def __init__(self) -> None:
        super().__init__("arrivals", "", "", cast(Any, None), Drain(interval=3600))
        self.times: list[float] = []

    def on_datagram(self, data: bytes, now: float, now24: int | None = None) -> None:
        self.times.append(now)


@contextlib.contextmanager
def _drained(rcvbuf: int | None = None) -> Iterator[tuple[_Arrivals, socket.socket]]:
    """A subscriber on a loopback socket taken by a drain, and a socket to send it datagrams."""
    subscriber = _Arrivals()
    subscriber.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if rcvbuf is not None:
            subscriber.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        subscriber.sock.bind(("127.0.0.1", 0))
        subscriber.sock.setblocking(False)
        subscriber.drain.add(subscriber)
        yield subscriber, sender
    finally:
        subscriber.drain.discard(subscriber)
        if subscriber.drain._task is not None:
            subscriber.drain._task.cancel()
        subscriber.sock.close()
        sender.close()


def _await_arrival_stamps(subscriber: _Arrivals, sender: socket.socket) -> None:
    """Wait until the kernel stamps datagrams when they arrive.

    The first socket to ask for timestamps turns them on by deferred work
    (``net_enable_timestamp`` in net/core/dev.c); until that work has run,
    a datagram is stamped when it is read, that is with the batch's time.
    """
    for _ in range(100):
        sender.sendto(bytes(10), subscriber.sock.getsockname())
        time.sleep(0.02)
        batch = time.time()
        subscriber.drain._drain(batch, 0)
        stamped = subscriber.times[:]
        subscriber.times.clear()
        if stamped and stamped[-1] < batch - 0.01:
            return
    raise AssertionError("the kernel never stamped a datagram on arrival")


async def test_the_drain_times_datagrams_by_their_arrival_not_by_its_batch() -> None:
    with _drained() as (subscriber, sender):
        _await_arrival_stamps(subscriber, sender)
        sent = time.time()
        sender.sendto(bytes(100), subscriber.sock.getsockname())
        sender.sendto(bytes(100), subscriber.sock.getsockname())
        time.sleep(0.3)  # the load generator comes round late (its batches never come)
        batch = time.time()
        subscriber.drain._drain(batch, 0)
        assert len(subscriber.times) == 2
        # The kernel's receive time (SO_TIMESTAMPNS), not the batch's clock.
        assert all(sent - 0.01 <= t < batch - 0.2 for t in subscriber.times), (
            sent,
            batch,
            subscriber.times,
        )


async def test_the_drain_counts_what_a_full_socket_dropped() -> None:
    """A subscriber socket that overflows reports its drops (SO_RXQ_OVFL) with the next datagram."""
    with _drained(rcvbuf=4096) as (subscriber, sender):
        address = subscriber.sock.getsockname()
        for _ in range(100):
            sender.sendto(bytes(1000), address)
        subscriber.drain._drain(time.time(), 0)
        queued = len(subscriber.times)
        assert 0 < queued < 100
        sender.sendto(bytes(1000), address)  # queued after the drops: it carries their count
        subscriber.drain._drain(time.time(), 0)
        assert len(subscriber.times) == queued + 1
        assert subscriber.socket_drops == 100 - queued
        subscriber.reset_window()
        assert subscriber.result(1.0)["socket_drops"] == 0


def test_busy_backoff_doubles_to_ten_seconds_with_jitter() -> None:
    rng = random.Random(3)
    for attempt, nominal in [(0, 0.5), (1, 1.0), (3, 4.0), (5, 10.0), (40, 10.0)]:
        delays = [busy_backoff(attempt, rng) for _ in range(200)]
        assert min(delays) >= 0.8 * nominal and max(delays) <= min(10.0, 1.2 * nominal)
        assert max(delays) - min(delays) > 0.1 * nominal  # jittered, not in lockstep


async def test_a_refused_bench_subscriber_retries_and_gets_in() -> None:
    """Like the browser client, a bench subscriber turned away as busy joins again later."""
    config = Config()
    config.signaling.max_receivers = 1
    async with running_server(config) as (base, srv), aiohttp.ClientSession() as http:
        drain = Drain()
        first, second = (
            LeanSubscriber(name, base, token("r", "viewer", name, subject=name), http, drain)
            for name in ("first", "second")
        )
        try:
            await first.start()
            assert await wait_until(lambda: srv.receivers() == 1, 5)
            await second.start()
            assert await wait_until(lambda: second.busy_refusals >= 1, 5)
            first_attempt = second.join_sent
            await first.close()

            def second_is_in() -> bool:
                room = srv.rooms.get("r")
                return room is not None and [m.name for m in room.members.values()] == ["second"]

            assert await wait_until(second_is_in, 15)
            assert second.join_sent == first_attempt  # times count from the first try
        finally:
            await first.close()
            await second.close()
