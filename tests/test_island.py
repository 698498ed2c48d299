"""Island endpoints: freeze-free playback at long RTT and loss (issue 10).

Real Chromium pages on 127.0.0.1, with the island viewers' WebRTC traffic
impaired by the DevTools protocol (``Network.emulateNetworkConditions``:
latency added in each direction, loss in each direction; see
``shared/AIORTC_NOTES.md``). The browser client raises a track's playout
delay while losses are being repaired (``choosePlayoutDelay`` in
``signaling/static/client.js``, ``docs/island.md``); the SFU answers NACKs
from its cache. Also the server-side recovery policy, with the sans-I/O
router and byte vectors.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser import ARTIFACTS, chromium, wait_js
from playwright.async_api import BrowserContext, CDPSession, Page
from rtp_vectors import VP8_RTX_PT, rtx_of
from signaling_client import room_link, running_server
from test_core import RTCP_SSRC, Publisher, consumer, decode, small_config, video_producer

from sfu import rtcp
from sfu.nack import NackTracker
from sfu.router import Router, RouterConfig
from signaling.config import Config

# =====================================================================
# Server-side recovery (sans-I/O router, byte vectors, fake clock)
# =====================================================================


def test_nack_for_a_packet_aged_out_of_the_cache_asks_the_publisher_for_a_keyframe() -> None:
    router = Router(small_config())  # 64-packet video cache
    a, a_sink = video_producer(router, "A", 0xA0)
    c, c_sink = consumer("c", 0xC0, initial_seq=1000)
    router.add_consumer(c, "A", 0.0)
    pub = Publisher(router, a, 0xA0, seq=100, ts=0)
    pub.frame(0.0, key=True, packets=2)
    for i in range(40):  # 80 more packets: the first 16 are gone from the cache
        pub.frame(0.0625 + i / 32, packets=2)
    plis = len(a_sink.plis())
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, (1001,)), 2.0)
    assert c.stats.nack_misses == 1
    assert len(a_sink.plis()) == plis + 1
    # More misses inside the keyframe interval: still one PLI (throttled), and
    # the keyframe it brings satisfies the deferred request.
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, (1002, 1003)), 2.125)
    assert c.stats.nack_misses == 3
    assert len(a_sink.plis()) == plis + 1
    pub.frame(2.25, key=True, packets=2)
    # A packet still cached is simply resent, no keyframe.
    n = len(c_sink.rtp)
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, (1080,)), 3.0)
    assert len(c_sink.rtp) == n + 1 and decode(c_sink.rtp[-1]).seq == 1080
    router.poll(3.0)
    assert len(a_sink.plis()) == plis + 1


def test_nack_for_a_packet_still_missing_upstream_asks_no_keyframe() -> None:
    """Lost on the publisher's uplink: it is NACKed upstream and forwarded when repaired."""
    router = Router(small_config())
    a, a_sink = video_producer(router, "A", 0xA0, rtx_ssrc=0xA1)
    c, c_sink = consumer("c", 0xC0, initial_seq=1000)
    router.add_consumer(c, "A", 0.0)
    pub = Publisher(router, a, 0xA0, seq=100, ts=0)
    pub.frame(0.0, key=True, packets=2)
    hole = pub.frame(0.0625, packets=3, drop=(1,))[1]  # seq 103 lost upstream
    assert a_sink.nacks() == [rtcp.Nack(RTCP_SSRC, 0xA0, (103,))]
    plis = len(a_sink.plis())
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, (1003,)), 0.125)
    assert c.stats.nack_misses == 1
    router.poll(0.125)
    assert len(a_sink.plis()) == plis
    router.on_rtp(a, rtx_of(hole, VP8_RTX_PT, 1, 0xA1), 0.375)
    out = decode(c_sink.rtp[-1])
    assert out.seq == 1003 and out.payload == decode(hole).payload


@pytest.mark.parametrize("rtx", [True, False])
def test_far_subscriber_gets_each_repair_twice_at_most_once_per_rtt(rtx: bool) -> None:
    router = Router(small_config())
    a, _ = video_producer(router, "A", 0xA0)
    far, far_sink = consumer("far", 0xF0, initial_seq=1000, rtx=rtx)
    near, near_sink = consumer("near", 0xE0, initial_seq=2000, rtx=rtx)
    router.add_consumer(far, "A", 0.0)
    router.add_consumer(near, "A", 0.0)
    pub = Publisher(router, a, 0xA0, seq=100, ts=0)
    pub.frame(0.0, key=True, packets=2)
    pub.frame(0.0625, packets=2)
    far.rtt, near.rtt = 0.5, 0.0625
    original = decode(far_sink.rtp[2])
    n_far, n_near = len(far_sink.rtp), len(near_sink.rtp)
    router.on_subscriber_rtcp(far, rtcp.Nack(0x5EED, far.ssrc, (1002,)), 1.0)
    router.on_subscriber_rtcp(near, rtcp.Nack(0x5EED, near.ssrc, (2002,)), 1.0)
    copies = [decode(p) for p in far_sink.rtp[n_far:]]
    assert len(copies) == 2 and len(near_sink.rtp) == n_near + 1
    assert far.stats.retransmitted == 1
    if rtx:
        assert [c.ssrc for c in copies] == [far.rtx_ssrc] * 2
        assert copies[1].seq == (copies[0].seq + 1) & 0xFFFF
        assert all(c.payload[2:] == original.payload for c in copies)
    else:
        assert copies == [original, original]
    # The receiver NACKs again before the repair could have reached it: ignored.
    router.on_subscriber_rtcp(far, rtcp.Nack(0x5EED, far.ssrc, (1002,)), 1.25)
    assert len(far_sink.rtp) == n_far + 2
    # A round trip later the repair must have been lost: answered again.
    router.on_subscriber_rtcp(far, rtcp.Nack(0x5EED, far.ssrc, (1002,)), 1.5)
    assert len(far_sink.rtp) == n_far + 4
    assert far.stats.retransmitted == 2


def test_upstream_nack_retries_follow_the_publishers_round_trip() -> None:
    router = Router(small_config())  # retry interval 0.125 s
    a, a_sink = video_producer(router, "A", 0xA0, rtx_ssrc=0xA1)
    pub = Publisher(router, a, 0xA0, seq=100, ts=0)
    pub.frame(0.0, key=True, packets=2)
    hole = pub.frame(0.0625, packets=3, drop=(1,))[1]
    assert a.nacks.rtt is None
    router.poll(0.1875)  # the round trip is unknown: retry after the interval
    assert len(a_sink.nacks()) == 2
    router.on_rtp(a, rtx_of(hole, VP8_RTX_PT, 1, 0xA1), 0.6875)  # 625 ms after the NACK
    assert a.nacks.rtt == pytest.approx(0.625)
    assert a.nacks.interval == pytest.approx(0.6875)
    # The next loss is retried once per round trip, not every 125 ms.
    pub.frame(1.0, packets=3, drop=(1,))
    router.poll(1.5)
    assert len(a_sink.nacks()) == 3
    router.poll(1.6875)
    assert len(a_sink.nacks()) == 4


def test_nack_tracker_learns_only_from_repairs() -> None:
    tracker = NackTracker(retry_interval=0.125)
    assert tracker.on_packet(10, 8, 0.0) == [9]
    tracker.on_packet(9, 10, 0.0078125)  # merely reordered: not a round trip
    assert tracker.rtt is None
    assert tracker.on_packet(13, 10, 1.0) == [11, 12]
    tracker.on_packet(11, 13, 1.5, repair=True)
    tracker.on_packet(12, 13, 1.75, repair=True)
    assert tracker.rtt == pytest.approx(0.5 * 0.875 + 0.75 * 0.125)


def test_default_cache_holds_two_700ms_round_trips_and_a_receivers_patience() -> None:
    """At the highest publisher bitrate a NACKed packet must still be cached when a far
    receiver (700 ms RTT) asks again after a lost repair: two round trips, plus about
    1 s during which Chromium keeps NACKing one packet (10 tries)."""
    config = RouterConfig()
    packet_bits = 1200 * 8  # a full video packet
    seconds = config.video_cache_packets * packet_bits / config.max_publisher_bitrate
    assert seconds >= 2 * 0.7 + 1.0


# =====================================================================
# The playout-delay rule and the quality words (in Chromium)
# =====================================================================

RULE_CASES_JS = """async () => {
  const m = await import("/static/client.js");
  const step = (prev, s) => m.choosePlayoutDelay(prev, {
    now: 0, rtt: null, jitter: null, lost: 0, nacks: 0, retransmitted: 0, ...s });
  const lossy = { lost: 2, nacks: 3, retransmitted: 2 };
  const quiet = step(null, { rtt: 0.001 });
  const island = step(quiet, { rtt: 0.3, ...lossy });
  const lateOnce = step(quiet, { rtt: 0.001, freezes: 1, frozen: 0.4 });
  const lateTwice = step(lateOnce, { now: 1000, rtt: 0.001, freezes: 2, frozen: 0.7 });
  return {
    clean: step(quiet, { rtt: 0.001, ...lossy }).targetMs,
    island: island.targetMs,
    jittery: step(island, { rtt: 0.3, jitter: 0.08, ...lossy }).targetMs,
    shorter: step(island, { now: 1000, rtt: 0.2, ...lossy }).targetMs,
    capped: step(island, { rtt: 1.2, ...lossy }).targetMs,
    unknown: step(quiet, { ...lossy }).targetMs,
    held: step(island, { now: 2999, rtt: 0.3 }).targetMs,
    released: step(island, { now: 3000, rtt: 0.3 }).targetMs,
    presumed: step(null, { rtt: 0.3 }).targetMs,
    notPresumed: step(null, {}).targetMs,
    quiet: step(quiet, { rtt: 0.3 }).targetMs,
    lateOnce: lateOnce.targetMs,
    lateTwice: lateTwice.targetMs,
    lateHeld: step(lateTwice, { now: 30999, rtt: 0.001 }).targetMs,
    lateReleased: step(lateTwice, { now: 31000, rtt: 0.001 }).targetMs,
    words: m.assessQuality({ connection: "connected", rtt: 0.3, loss: 0.03, jitter: 0.001,
      fps: 20, packets: 60, delay: 0.5, recovered: 1 }).text,
    sendersWords: m.assessQuality({ connection: "connected", rtt: 0.001, loss: 0, jitter: 0.001,
      fps: 20, packets: 60, delay: 0.6, recovered: null }).text,
    unrepaired: m.assessQuality({ connection: "connected", rtt: 0.3, loss: 0.03, jitter: 0.001,
      fps: 20, packets: 60, delay: 0.5, recovered: 0.5 }).text,
    numbers: m.describeQualityNumbers({ rtt: 0.3, loss: 0.03, delay: 0.5, recovered: 0.97 }),
  };
}"""


async def test_playout_delay_rule_and_quality_words(tmp_path: Path) -> None:
    async with running_server(Config()) as (base, _server), chromium(tmp_path / "p") as context:
        page = await context.new_page()
        await page.goto(f"{base}/room/rule")
        result = await page.evaluate(RULE_CASES_JS)
    assert result == {
        "clean": None,  # a short link repairs within the browser's own buffer
        "island": 500,  # RTT + 200 ms
        "jittery": 620,  # RTT + 4 x jitter
        "shorter": 500,  # within a hold the target does not shrink
        "capped": 1000,
        "unknown": 500,  # 300 ms assumed
        "held": 500,
        "released": None,
        "presumed": 500,  # a new track on a known long link starts covered
        "notPresumed": None,
        "quiet": None,
        "lateOnce": None,  # one freeze: a busy CPU, perhaps
        "lateTwice": 550,  # mean freeze 350 ms + 200 ms
        "lateHeld": 550,
        "lateReleased": None,
        "words": "link weak: picture delayed 0.5 s to stay smooth",
        "sendersWords": "sender's link weak: picture delayed 0.6 s to stay smooth",
        "unrepaired": "link weak: some picture loss",
        "numbers": "round trip 300 ms · packet loss 3.0 % · 97 % of lost video packets "
        "recovered · picture delayed 500 ms",
    }


# =====================================================================
# Real Chromium viewers behind emulated island links
# =====================================================================

# The main video's inbound-rtp counters, its receiver's jitterBufferTarget
# and the quality indicator, or null before the main video exists.
MAIN_VIDEO_STATS_JS = """async () => {
  const session = window.telebridge.session;
  const pc = session.subscribePc;
  const main = session.offerTracks.find((t) => t.slot === "main" && t.kind === "video");
  if (!pc || !main) return null;
  const transceiver = pc.getTransceivers().find((t) => String(t.mid) === String(main.mid));
  if (!transceiver) return null;
  let v = null;
  (await transceiver.receiver.getStats()).forEach((s) => { if (s.type === "inbound-rtp") v = s; });
  if (!v) return null;
  return {
    frames: v.framesDecoded || 0,
    freezes: v.freezeCount || 0,
    frozen: v.totalFreezesDuration || 0,
    jbDelay: v.jitterBufferDelay || 0,
    jbEmitted: v.jitterBufferEmittedCount || 0,
    lost: v.packetsLost || 0,
    received: v.packetsReceived || 0,
    plis: v.pliCount || 0,
    keyframes: v.keyFramesDecoded || 0,
    nacks: v.nackCount || 0,
    retransmitted: v.retransmittedPacketsReceived || 0,
    target: transceiver.receiver.jitterBufferTarget,
    quality: window.telebridge.quality.text,
    numbers: window.telebridge.quality.title,
  };
}"""


@dataclass
class Viewer:
    """A viewer page and the DevTools session that impairs its traffic."""

    name: str
    page: Page
    cdp: CDPSession
    start: dict[str, Any] | None = None

    async def impair(self, latency_ms: float, loss_pct: float) -> None:
        """Add ``latency_ms`` each way and ``loss_pct`` loss each way (0, 0: a clean link)."""
        await self.cdp.send(
            "Network.emulateNetworkConditions",
            {
                "offline": False,
                "latency": latency_ms,
                "downloadThroughput": -1,
                "uploadThroughput": -1,
                "packetLoss": loss_pct,
            },
        )

    async def stats(self) -> dict[str, Any]:
        value = await self.page.evaluate(MAIN_VIDEO_STATS_JS)
        assert value is not None, f"{self.name}: no main video"
        return dict(value)


async def open_viewer(
    context: BrowserContext, name: str, link: str, latency_ms: float, loss_pct: float
) -> Viewer:
    """A viewer page whose link is impaired before it connects (CDP only affects
    peer connections created while emulation is on; 0.1 ms arms a clean one)."""
    page = await context.new_page()
    cdp = await context.new_cdp_session(page)
    await cdp.send("Network.enable")
    viewer = Viewer(name, page, cdp)
    await viewer.impair(max(latency_ms, 0.1), loss_pct)
    await page.goto(link)
    return viewer


def summary(start: dict[str, Any], end: dict[str, Any]) -> dict[str, float]:
    """What happened to one viewer's main video between two stats snapshots."""
    emitted = end["jbEmitted"] - start["jbEmitted"]
    lost = end["lost"] - start["lost"]
    return {
        "frames": end["frames"] - start["frames"],
        "frozen_s": round(end["frozen"] - start["frozen"], 3),
        "freezes": end["freezes"] - start["freezes"],
        "jitter_buffer_ms": round(1000 * (end["jbDelay"] - start["jbDelay"]) / emitted, 1)
        if emitted
        else float("nan"),
        "lost": lost,
        "retransmitted": end["retransmitted"] - start["retransmitted"],
        "received": end["received"] - start["received"],
        "plis": end["plis"] - start["plis"],
        "keyframes": end["keyframes"] - start["keyframes"],
    }


PLAY_SECONDS = 60.0
LIFT_WITHIN = 10.0


@pytest.mark.timeout(240)
async def test_island_viewers_play_without_freezes_and_clean_viewer_stays_fast(
    tmp_path: Path,
) -> None:
    """Presenter, clean viewer and two island viewers (150 ms/3 %, 300 ms/5 %) for 60 s;
    then the 150 ms viewer's link recovers and its playout delay comes back down."""
    async with running_server(Config()) as (base, _server):
        room = "island"

        def link(role: str, name: str) -> str:
            return room_link(base, room, role, name)

        async with chromium(tmp_path / "profile") as context:
            presenter = await context.new_page()
            await presenter.goto(link("presenter", "Central hospital"))
            await wait_js(presenter, "() => window.telebridge.state", lambda s: s == "joined")
            viewers = [
                await open_viewer(context, "clean", link("viewer", "District"), 0, 0),
                await open_viewer(context, "island150", link("viewer", "Island A"), 150, 3),
                await open_viewer(context, "island300", link("viewer", "Island B"), 300, 5),
            ]
            for viewer in viewers:
                await wait_js(viewer.page, MAIN_VIDEO_STATS_JS, lambda s: s and s["frames"] > 0)
            # The window starts when every viewer shows its first frame.
            for viewer in viewers:
                viewer.start = await viewer.stats()
            started = time.monotonic()
            timeline: dict[str, list[int]] = {v.name: [] for v in viewers}
            while time.monotonic() - started < PLAY_SECONDS:
                await asyncio.sleep(5.0)
                for viewer in viewers:
                    timeline[viewer.name].append((await viewer.stats())["frames"])
            results_timeline = timeline
            ends = [await viewer.stats() for viewer in viewers]
            elapsed = time.monotonic() - started
            results: dict[str, Any] = {"seconds": round(elapsed, 1), "timeline": results_timeline}
            for viewer, end in zip(viewers, ends, strict=True):
                assert viewer.start is not None
                results[viewer.name] = {
                    **summary(viewer.start, end),
                    "target_ms": end["target"],
                    "quality": end["quality"],
                    "numbers": end["numbers"],
                }

            # The 150 ms island's link recovers: its playout delay comes down.
            island = viewers[1]
            await island.impair(0.1, 0)
            lifted = time.monotonic()
            previous = await island.stats()
            recovered_after = None
            while time.monotonic() - lifted < LIFT_WITHIN + 5:
                await asyncio.sleep(1.0)
                current = await island.stats()
                window = summary(previous, current)
                previous = current
                if current["target"] is None and window["jitter_buffer_ms"] < 100:
                    recovered_after = round(time.monotonic() - lifted, 1)
                    break
            results["lift"] = {
                "recovered_after_s": recovered_after,
                "quality": previous["quality"],
            }
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "island.json").write_text(json.dumps(results, indent=2))
            print(json.dumps(results, indent=2))

    clean, near, far = results["clean"], results["island150"], results["island300"]
    scale = 60.0 / elapsed
    # The islands' long playout delays stay theirs: the clean viewer's jitter
    # buffer is Chromium's own on a loopback link, 26-116 ms across runs on
    # the 2-vCPU box (it follows CPU contention), against ~480 ms at 150 ms.
    assert clean["jitter_buffer_ms"] < 150, results
    assert clean["jitter_buffer_ms"] < near["jitter_buffer_ms"] / 3, results
    assert near["frozen_s"] * scale <= 1.0, results
    assert near["frames"] >= 0.98 * clean["frames"], results
    assert far["frozen_s"] * scale <= 3.0, results
    assert near["retransmitted"] > 0 and far["retransmitted"] > 0, results
    assert "delayed" in near["quality"] and "smooth" in near["quality"], results
    assert recovered_after is not None and recovered_after <= LIFT_WITHIN, results


# The longest wait between two frames of the main video since the last reset
# (polled every 20 ms in the page), in ms.
GAP_TRACKER_JS = """() => {
  const video = window.telebridge.mainVideo;
  const gaps = { frames: -1, at: performance.now(), max: 0 };
  window.islandGaps = gaps;
  setInterval(() => {
    const frames = video.getVideoPlaybackQuality().totalVideoFrames;
    const now = performance.now();
    if (frames !== gaps.frames) {
      gaps.max = Math.max(gaps.max, now - gaps.at);
      gaps.frames = frames;
      gaps.at = now;
    }
  }, 20);
}"""

UPLINK_SETTLE = 6.0
UPLINK_SECONDS = 24.0


@pytest.mark.timeout(150)
async def test_island_participant_with_the_floor_reaches_clean_viewers(tmp_path: Path) -> None:
    """A participant behind 150 ms/3 % gets the floor: its uplink losses are NACKed
    upstream and repaired, and clean viewers see no freeze longer than 0.5 s.

    The previous main feed stays on until the participant's camera is on
    the air (Room.on_air), and the participant's reported link RTT sizes the
    viewers' playout delay from its first frame (choosePlayoutDelay). The
    first ``UPLINK_SETTLE`` seconds hold the handover itself (the last frame
    of the old source to the first of the new, 420-520 ms measured): that
    gap is reported, not asserted; the 0.5 s bound holds after it.
    """
    async with running_server(Config()) as (base, server):
        room = "uplink"

        def link(role: str, name: str) -> str:
            return room_link(base, room, role, name)

        async with chromium(tmp_path / "profile") as context:
            presenter = await context.new_page()
            await presenter.goto(link("presenter", "Central hospital"))
            await wait_js(presenter, "() => window.telebridge.state", lambda s: s == "joined")
            island = await open_viewer(context, "island", link("participant", "Island"), 150, 3)
            clean = await open_viewer(context, "clean", link("viewer", "District"), 0, 0)
            await wait_js(clean.page, MAIN_VIDEO_STATS_JS, lambda s: s and s["frames"] > 0)
            island_id = await wait_js(
                island.page, "() => window.telebridge.self && window.telebridge.self.id", bool
            )
            await server.rooms[room].set_floor(island_id)
            await wait_js(clean.page, "() => window.telebridge.mainFeed", lambda f: f == island_id)
            await wait_js(clean.page, MAIN_VIDEO_STATS_JS, lambda s: s["frames"] > 0)
            await clean.page.evaluate(GAP_TRACKER_JS)
            switched = await clean.stats()
            await asyncio.sleep(UPLINK_SETTLE)
            settling_gap_ms = await clean.page.evaluate("() => window.islandGaps.max")
            await clean.page.evaluate("() => { window.islandGaps.max = 0; }")
            start = previous = await clean.stats()
            timeline = []
            for _ in range(int(UPLINK_SECONDS / 2)):
                await asyncio.sleep(2.0)
                current = await clean.stats()
                window = summary(previous, current)
                timeline.append([window["frozen_s"], window["jitter_buffer_ms"], current["target"]])
                previous = current
            end = current
            max_gap_ms = await clean.page.evaluate("() => window.islandGaps.max")
            producers = server.sfu.stats()["producers"]
    upstream = next(p for p in producers if p["kind"] == "video" and island_id in p["id"])
    results = {
        "settling": {**summary(switched, start), "max_gap_ms": round(settling_gap_ms)},
        **summary(start, end),
        "max_gap_ms": round(max_gap_ms),
        "target_ms": end["target"],
        "quality": end["quality"],
        "upstream_nacks": upstream["nacks_sent"],
        "upstream_repaired": upstream["retransmissions"],
        "upstream_unrecovered": upstream["lost_unrecovered"],
        "timeline (frozen s, jitter buffer ms, target ms per 2 s)": timeline,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "island-uplink.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    assert upstream["retransmissions"] > 0, results
    assert max_gap_ms <= 500, results
    assert results["frames"] >= 0.95 * 20 * UPLINK_SECONDS, results
