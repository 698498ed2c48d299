"""Tests for bench.impair: the user-space link emulator behind ``bench --impair``.

The LinkEmulator is sans-I/O, so these drive it with plain float clocks; only
the last tests run the asyncio adapter on a real (short-lived) event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics

import pytest

from bench.impair import (
    DEFAULT_MAX_PENDING,
    MIN_QUEUE_BYTES,
    ImpairedPath,
    Impairment,
    LinkEmulator,
    parse_impairment,
)

# --- parsing -----------------------------------------------------------------


def test_parse_full_example() -> None:
    fraction, imp = parse_impairment("0.25:delay=150ms,jitter=20ms,loss=3%,burst=4,rate=2M")
    assert fraction == 0.25
    assert imp.delay_s == pytest.approx(0.150)
    assert imp.jitter_s == pytest.approx(0.020)
    assert imp.loss == pytest.approx(0.03)
    assert imp.burst == 4
    assert imp.rate_bps == 2_000_000
    assert imp.queue_bytes is None
    assert imp.queue_limit == 25_000  # default: 100 ms at 2 Mbit/s
    assert imp.describe() == {
        "delay_ms": 150.0,
        "jitter_ms": 20.0,
        "loss_pct": 3.0,
        "burst": 4.0,
        "rate_bps": 2_000_000,
    }


@pytest.mark.parametrize(
    ("text", "fraction", "expected"),
    [
        ("25%:delay=150", 0.25, Impairment(delay_s=0.150)),
        ("1:delay=0.2s", 1.0, Impairment(delay_s=0.2)),
        ("100%:loss=3", 1.0, Impairment(loss=0.03)),
        (".5: delay = 10ms , jitter=1.5ms ", 0.5, Impairment(delay_s=0.010, jitter_s=0.0015)),
        ("0.1:loss=100%", 0.1, Impairment(loss=1.0)),
        ("0.1:loss=0%,burst=1", 0.1, Impairment()),
        ("0.1:rate=512k", 0.1, Impairment(rate_bps=512_000)),
        ("0.1:rate=1.5Mbit", 0.1, Impairment(rate_bps=1_500_000)),
        ("0.1:rate=1G", 0.1, Impairment(rate_bps=1_000_000_000)),
        ("0.1:rate=64000", 0.1, Impairment(rate_bps=64_000)),
        ("0.1:rate=2M,queue=64KiB", 0.1, Impairment(rate_bps=2_000_000, queue_bytes=65_536)),
        ("0.1:rate=2M,queue=30000", 0.1, Impairment(rate_bps=2_000_000, queue_bytes=30_000)),
        ("0.1:DELAY=5MS", 0.1, Impairment(delay_s=0.005)),
    ],
)
def test_parse_valid(text: str, fraction: float, expected: Impairment) -> None:
    got_fraction, got = parse_impairment(text)
    assert got_fraction == pytest.approx(fraction)
    assert got.delay_s == pytest.approx(expected.delay_s)
    assert got.jitter_s == pytest.approx(expected.jitter_s)
    assert got.loss == pytest.approx(expected.loss)
    assert got.burst == expected.burst
    assert got.rate_bps == expected.rate_bps
    assert got.queue_bytes == expected.queue_bytes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "FRACTION:key=value"),
        ("delay=150ms", "FRACTION:key=value"),
        ("0:delay=1", "fraction must be in"),
        ("1.5:delay=1", "fraction must be in"),
        ("150%:delay=1", "fraction must be in"),
        ("-0.5:delay=1", "fraction must not be negative"),
        ("abc:delay=1", "not a number"),
        ("0.5:", "empty key=value"),
        ("0.5:delay=1,,loss=1", "empty key=value"),
        ("0.5:delay", "must be key=value"),
        ("0.5:delay=", "must be key=value"),
        ("0.5:latency=10ms", "unknown impairment key 'latency'"),
        ("0.5:delay=1,delay=2", "given twice"),
        ("0.5:delay=-5ms", "must not be negative"),
        ("0.5:jitter=-1", "must not be negative"),
        ("0.5:loss=-1%", "must not be negative"),
        ("0.5:delay=5min", "malformed"),
        ("0.5:delay=1e3", "malformed"),
        ("0.5:delay=nan", "malformed"),
        ("0.5:loss=101%", "at most 100"),
        ("0.5:loss=3%%", "malformed"),
        ("0.5:burst=0.5", "must be >= 1"),
        ("0.5:burst=4x", "malformed"),
        ("0.5:rate=0", "must be positive"),
        ("0.5:rate=2T", "malformed"),
        ("0.5:queue=1000", "needs rate="),
        ("0.5:rate=1M,queue=0", "must be positive"),
    ],
)
def test_parse_invalid(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_impairment(text)


def test_impairment_validates_direct_construction() -> None:
    with pytest.raises(ValueError, match="negative"):
        Impairment(delay_s=-1)
    with pytest.raises(ValueError, match="at most 1"):
        Impairment(loss=1.5)
    with pytest.raises(ValueError, match="burst"):
        Impairment(burst=0.5)
    with pytest.raises(ValueError, match="needs a rate cap"):
        Impairment(queue_bytes=1000)
    with pytest.raises(ValueError, match="finite"):
        Impairment(jitter_s=float("inf"))
    # The default queue never holds less than two full-size datagrams.
    assert Impairment(rate_bps=64_000).queue_limit == MIN_QUEUE_BYTES
    assert Impairment().queue_limit is None


def test_gilbert_elliott_parameters() -> None:
    p, r = Impairment(loss=0.03, burst=4).gilbert_elliott()
    assert r == pytest.approx(0.25)
    assert p / (p + r) == pytest.approx(0.03)
    # burst=1 is Bernoulli: P(loss) = loss whatever the previous datagram did.
    p, r = Impairment(loss=0.03).gilbert_elliott()
    assert p == pytest.approx(0.03)
    assert 1 - r == pytest.approx(0.03)
    # High loss rates stay feasible (p <= 1) for any burst.
    p, r = Impairment(loss=0.8, burst=1).gilbert_elliott()
    assert p == pytest.approx(0.8)
    assert 1 - r == pytest.approx(0.8)


# --- the sans-I/O emulator, on a fake clock ---------------------------------


def _emulator(spec: str, seed: int = 1) -> LinkEmulator:
    return LinkEmulator(parse_impairment("1:" + spec)[1], random.Random(seed))


def _delays(link: LinkEmulator, n: int, hz: float, size: int = 1200) -> list[tuple[float, float]]:
    """Offer ``n`` datagrams at ``hz``; (sent, delivered) for those not dropped."""
    out = []
    for i in range(n):
        now = i / hz
        when = link.offer(size, now)
        if when is not None:
            out.append((now, when))
    return out


def test_delay_and_jitter_at_100hz() -> None:
    link = _emulator("delay=150ms,jitter=20ms")
    pairs = _delays(link, 10_000, 100)
    assert len(pairs) == 10_000
    delays = [when - sent for sent, when in pairs]
    assert statistics.fmean(delays) == pytest.approx(0.150, abs=0.002)
    assert min(delays) >= 0.130 - 1e-9
    assert max(delays) <= 0.170 + 1e-9
    # Spread over the whole configured range, not collapsed to one value...
    assert statistics.pstdev(delays) == pytest.approx(0.040 / 12**0.5, rel=0.15)
    assert min(delays) < 0.133 and max(delays) > 0.167
    # ...and never reordered.
    deliveries = [when for _, when in pairs]
    assert all(b >= a for a, b in itertools.pairwise(deliveries))


@pytest.mark.parametrize(("hz", "n"), [(1, 5_000), (20, 20_000), (250, 50_000), (1000, 200_000)])
def test_delay_mean_holds_at_any_packet_rate(hz: int, n: int) -> None:
    # In-order delivery must not bias the delay toward delay+jitter at video
    # packet rates (what holding each datagram behind the previous one would
    # do: +3 ms at 100 Hz, about +15 ms at 1 kHz). Dense datagrams get a delay
    # that wanders slowly across the range, hence more of them at high rates.
    link = _emulator("delay=150ms,jitter=20ms", seed=hz)
    pairs = _delays(link, n, hz)
    delays = [when - sent for sent, when in pairs]
    assert statistics.fmean(delays) == pytest.approx(0.150, abs=0.003)
    assert min(delays) >= 0.130 - 1e-9
    assert max(delays) <= 0.170 + 1e-9
    deliveries = [when for _, when in pairs]
    assert all(b >= a for a, b in itertools.pairwise(deliveries))


def test_jitter_larger_than_delay_clamps_at_zero() -> None:
    link = _emulator("delay=5ms,jitter=20ms")
    delays = [when - sent for sent, when in _delays(link, 5_000, 50)]
    assert min(delays) >= 0
    assert max(delays) <= 0.025 + 1e-9


def test_no_impairment_is_transparent() -> None:
    link = _emulator("loss=0")
    assert [link.offer(100, t) for t in (0.0, 0.5, 0.5, 2.0)] == [0.0, 0.5, 0.5, 2.0]
    assert link.counters() == {
        "offered": 4,
        "dropped_loss": 0,
        "dropped_queue": 0,
        "delivered": 4,
    }


def _loss_pattern(spec: str, n: int, seed: int = 7) -> list[bool]:
    link = _emulator(spec, seed)
    lost = [link.offer(200, i * 0.01) is None for i in range(n)]
    assert link.dropped_loss == sum(lost)
    assert link.delivered == n - sum(lost)
    assert link.offered == n
    return lost


def _runs(lost: list[bool]) -> list[int]:
    runs, current = [], 0
    for is_lost in lost:
        if is_lost:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    if current:
        runs.append(current)
    return runs


def test_independent_loss_rate() -> None:
    lost = _loss_pattern("loss=3%", 100_000)
    assert sum(lost) / len(lost) == pytest.approx(0.03, abs=0.003)
    # Bernoulli: mean run of consecutive losses is 1/(1-loss).
    assert statistics.fmean(_runs(lost)) == pytest.approx(1 / 0.97, rel=0.05)


def test_bursty_loss_gilbert_elliott() -> None:
    lost = _loss_pattern("loss=3%,burst=4", 100_000)
    assert sum(lost) / len(lost) == pytest.approx(0.03, abs=0.003)
    assert statistics.fmean(_runs(lost)) == pytest.approx(4, rel=0.15)


def test_loss_extremes() -> None:
    assert not any(_loss_pattern("loss=0%", 1_000))
    assert all(_loss_pattern("loss=100%", 1_000))


def test_rate_cap_drops_excess_at_queue() -> None:
    link = _emulator("rate=2M")
    queue_limit = link.impairment.queue_limit
    assert queue_limit == 25_000
    size, offered_bps, seconds = 1200, 4_000_000, 10.0
    interval = size * 8 / offered_bps
    n = round(seconds / interval)
    deliveries = []
    for i in range(n):
        now = i * interval
        when = link.offer(size, now)
        assert link.backlog_bytes(now) <= queue_limit + 1e-6
        if when is not None:
            deliveries.append(when)
    # Throughput over the whole run, including draining the queue afterwards.
    throughput = len(deliveries) * size * 8 / deliveries[-1]
    assert throughput == pytest.approx(2_000_000, rel=0.03)
    # The excess (about half) was dropped at the queue, none by random loss.
    assert link.dropped_loss == 0
    assert link.dropped_queue == n - len(deliveries)
    assert link.dropped_queue / n == pytest.approx(0.5, abs=0.02)
    assert all(b >= a for a, b in itertools.pairwise(deliveries))
    # Queueing delay is bounded by the queue: at most queue_limit/rate + one datagram.
    assert deliveries[-1] - (n - 1) * interval <= (queue_limit + size) * 8 / 2_000_000 + 1e-9


def test_rate_cap_under_load_adds_only_serialization() -> None:
    link = _emulator("rate=2M")
    size = 1200
    serialization = size * 8 / 2_000_000  # 4.8 ms
    pairs = _delays(link, 1_000, 100, size)  # 0.96 Mbit/s offered
    assert len(pairs) == 1_000
    assert link.dropped_queue == 0
    for sent, when in pairs:
        assert when - sent == pytest.approx(serialization)


def test_rate_cap_with_delay_and_explicit_queue() -> None:
    link = _emulator("delay=100ms,rate=1M,queue=3000")
    # Three back-to-back 1,200-byte datagrams: the third exceeds 3,000 queued bytes.
    results = [link.offer(1200, 0.0) for _ in range(3)]
    assert results[0] == pytest.approx(0.0096 + 0.100)
    assert results[1] == pytest.approx(0.0192 + 0.100)
    assert results[2] is None
    assert link.dropped_queue == 1
    # Once the queue has drained, it accepts again.
    assert link.offer(1200, 0.0192) == pytest.approx(0.0192 + 0.0096 + 0.100)


def test_seeded_runs_are_reproducible() -> None:
    spec = "delay=150ms,jitter=20ms,loss=3%,burst=4,rate=2M"
    a = _delays(_emulator(spec, seed=42), 5_000, 300)
    b = _delays(_emulator(spec, seed=42), 5_000, 300)
    c = _delays(_emulator(spec, seed=43), 5_000, 300)
    assert a == b
    assert a != c


# --- the asyncio adapter -----------------------------------------------------


async def test_impaired_path_delivers_after_delay_in_order() -> None:
    loop = asyncio.get_running_loop()
    _, imp = parse_impairment("1:delay=100ms,jitter=10ms")
    path = ImpairedPath(imp, seed=5)
    received: dict[str, list[tuple[int, float, str]]] = {"down": [], "up": []}
    done = loop.create_future()
    total = 40

    def on_datagram(data: bytes, addr: str, direction: str, sent: float) -> None:
        received[direction].append((int(data), loop.time() - sent, addr))
        if sum(map(len, received.values())) == total and not done.done():
            done.set_result(None)

    sent = loop.time()
    for i in range(total // 2):
        # Many datagrams in the same instant: equal delivery times must keep order.
        assert path.deliver_later(on_datagram, b"%d" % i, "down", "sfu", "down", sent)
        assert path.deliver_later(on_datagram, b"%d" % i, "up", "peer", "up", sent)
    assert path.pending == total
    await asyncio.wait_for(done, 2.0)
    for direction, addr in (("down", "sfu"), ("up", "peer")):
        got = received[direction]
        assert [seq for seq, _, _ in got] == list(range(total // 2))
        assert all(a == addr for _, _, a in got)
        for _, elapsed, _ in got:
            assert 0.070 <= elapsed <= 0.130
    stats = path.stats()
    assert stats["down"]["delivered"] == stats["up"]["delivered"] == total // 2
    assert stats["down"]["pending"] == 0
    path.close()


async def test_impaired_path_close_cancels_pending() -> None:
    loop = asyncio.get_running_loop()
    path = ImpairedPath(Impairment(delay_s=0.020), seed=1)
    received: list[bytes] = []
    for i in range(5):
        assert path.deliver_later(received.append, bytes([i]), "down")
    assert path.pending == 5
    path.close()
    assert path.pending == 0
    assert path.closed
    assert not path.deliver_later(received.append, b"late", "up")
    # Wait past the delivery time: nothing may arrive.
    waiter = loop.create_future()
    loop.call_later(0.060, waiter.set_result, None)
    await waiter
    assert received == []


async def test_impaired_path_bounds_pending_and_drops() -> None:
    path = ImpairedPath(Impairment(delay_s=10.0), seed=1, max_pending=5)
    sink: list[bytes] = []
    accepted = [path.deliver_later(sink.append, b"x", "down") for _ in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    assert path.dropped_overflow == {"down": 3, "up": 0}
    assert path.stats()["down"]["offered"] == 5  # overflow never reaches the emulator
    assert path.deliver_later(sink.append, b"x", "up")
    with pytest.raises(ValueError, match="direction"):
        path.deliver_later(sink.append, b"x", "sideways")  # type: ignore[arg-type]
    path.close()
    assert DEFAULT_MAX_PENDING == 10_000


async def test_impaired_path_survives_failing_callback() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    path = ImpairedPath(Impairment(delay_s=0.005), seed=1)
    done = loop.create_future()

    def boom(data: bytes) -> None:
        raise RuntimeError("callback failed")

    path.deliver_later(boom, b"1", "up")
    path.deliver_later(done.set_result, b"2", "up")
    assert await asyncio.wait_for(done, 1.0) == b"2"
    assert len(errors) == 1
    assert isinstance(errors[0]["exception"], RuntimeError)
    path.close()
