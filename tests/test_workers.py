"""Relays and worker processes: real aiortc peers, real UDP relays, real processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import signal
import time

import pytest
import uvloop
from signaling_client import wait_until

from bench.clients import Subscriber, publish
from bench.synthetic import PatternVideoTrack, ToneAudioTrack
from sfu.relay import RelayIn, RelayOut, RelaySink
from sfu.router import RouterConfig
from sfu.server import Sfu, SfuConfig
from sfu.workers import Channel, ClusterSfu

WIDTH, HEIGHT = 320, 240


def config() -> SfuConfig:
    return SfuConfig(candidate_addresses=["127.0.0.1"], router=RouterConfig())


class LossySink(RelaySink):
    """A relay sink dropping a seeded fraction of the RTP it sends (not RTCP)."""

    def __init__(self, inner: RelaySink, rate: float) -> None:
        self.inner = inner
        self.rate = rate
        self.rng = random.Random(3)
        self.lost = 0

    def send_rtp(self, packet: bytes) -> None:
        if self.rng.random() < self.rate:
            self.lost += 1
            return
        self.inner.send_rtp(packet)

    def send_rtcp(self, packet: bytes) -> None:
        self.inner.send_rtcp(packet)


async def test_relay_between_two_sfus_repairs_losses_and_keeps_lip_sync_reports() -> None:
    """A stream relayed from one Sfu to another over loopback UDP, 3 % lost on the way."""
    async with Sfu(config()) as hub, Sfu(config()) as edge:
        relay_in = RelayIn(edge)
        relay_out = RelayOut(hub, "edge", relay_in.address)
        lossy = LossySink(relay_out.sink, 0.03)
        relay_out.sink = lossy
        pub, producers = await publish(hub, "pub", [PatternVideoTrack(WIDTH, HEIGHT)])
        video = producers[0].id
        sub = Subscriber(edge, "sub")
        try:
            relay_in.add(relay_out.add(video))
            relay_out.start(video)
            await sub.connect([video])
            for _ in range(8):  # reports as the cluster's timers send them
                await asyncio.sleep(0.25)
                relay_out.send_reports()
                await asyncio.sleep(0.25)
                relay_in.send_reports()
            track = sub.track("video")
            assert (track.width, track.height) == (WIDTH, HEIGHT)
            assert lossy.lost > 3
            edge_producer = edge.router.producers[video]
            # The edge NACKed the relay losses and the hub answered from its cache.
            assert edge_producer.stats.nacks_sent > 0
            assert edge_producer.stats.lost_unrecovered == 0
            relay_consumer = hub.router.consumers[relay_out.consumers[video]]
            assert relay_consumer.stats.retransmitted >= lossy.lost - 2
            # Sender reports crossed the relay (lip-sync), receiver reports came back (RTT).
            assert edge_producer.sender_report is not None
            assert relay_consumer.rtt is not None and relay_consumer.rtt < 0.5
            hub_frames = edge_producer.stats.keyframes
            assert hub_frames >= 1
            assert track.frames >= 50, track.frames
            # Only the hub asks the publisher for keyframes.
            assert edge.router.keyframe_requests_sent <= 1
        finally:
            await sub.close()
            await pub.close()
            relay_out.close()
            relay_in.close()


async def test_cluster_spreads_subscribers_over_worker_processes() -> None:
    async with ClusterSfu(config(), workers=2) as sfu:
        pids = {w.process.pid for w in sfu.workers}
        assert len(pids) == 2 and os.getpid() not in pids
        pub, producers = await publish(
            sfu, "pub", [PatternVideoTrack(WIDTH, HEIGHT), ToneAudioTrack()]
        )
        subs = [Subscriber(sfu, f"s{i}") for i in range(6)]
        try:
            await asyncio.gather(*(s.connect([p.id for p in producers]) for s in subs))
            assert await wait_until(
                lambda: all(
                    s.track("video").frames >= 30 and s.track("audio").frames >= 50 for s in subs
                ),
                timeout=20,
            ), [(s.track("video").frames, s.track("audio").frames) for s in subs]
            # No subscriber is in the main process; three on each worker.
            assert sfu.peer_counts() == {"publisher": 1, "subscriber": 6}
            assert [len(w.peers) for w in sfu.workers] == [3, 3]
            assert not any(p.role == "subscriber" for p in sfu.peers.values())
            # One relay per (worker, producer); keyframe requests stay aggregated.
            assert sorted(len(w.relay.consumers) for w in sfu.workers if w.relay) == [2, 2]
            assert sfu.router.keyframe_requests_sent <= 2
            # The workers' forwarding shows in the merged figures.
            await asyncio.sleep(1.5)  # one snapshot interval
            stats = sfu.stats()
            assert stats["subscribers"] == 6 and stats["relays"] == 4
            assert len([c for c in stats["consumers"] if c["started"]]) == 12
            totals = sfu.totals()
            video_in = next(p for p in stats["producers"] if p["kind"] == "video")["packets"]
            assert totals["out_packets"] >= 6 * video_in * 0.5
            # Each worker reports its load; a worker that takes no newcomers gets none.
            loads = sfu.media_loads()
            assert [(load.name, len(load.subscribers)) for load in loads] == [
                ("worker0", 3),
                ("worker1", 3),
            ]
            assert await wait_until(
                lambda: all(0 < load.cpu < 2 and load.lag < 1 for load in sfu.media_loads()), 5
            ), sfu.media_loads()
            sfu.accepts = lambda load: load.name != "worker0"
            subs.append(Subscriber(sfu, "s6"))
            await subs[-1].connect([p.id for p in producers])
            assert [len(w.peers) for w in sfu.workers] == [3, 4]
        finally:
            for s in subs:
                await s.close()
            await pub.close()


async def test_a_relay_closes_when_no_subscriber_on_its_worker_takes_it() -> None:
    """Relays follow use: closed when the last consumer there lets go, reopened on demand."""
    async with ClusterSfu(config(), workers=2) as sfu:
        pub, producers = await publish(
            sfu, "pub", [PatternVideoTrack(WIDTH, HEIGHT), ToneAudioTrack()]
        )
        video, audio = (p.id for p in producers)
        first, second = Subscriber(sfu, "s0"), Subscriber(sfu, "s1")
        later = Subscriber(sfu, "s2")
        w0, w1 = sfu.workers

        def relayed(worker: object) -> set[str]:
            relay = getattr(worker, "relay", None)
            return set(relay.consumers) if relay is not None else set()

        try:
            await first.connect([video, audio])
            await second.connect([video, audio])
            assert (w0.peers, w1.peers) == ({"s0"}, {"s1"})
            assert relayed(w0) == relayed(w1) == {video, audio}
            assert await wait_until(lambda: second.track("video").frames >= 10, 15)
            # The only subscriber on worker 1 leaves (signaling closes its peer):
            # both of its relays close, in the main process and in the worker.
            await second.close()
            await sfu.close("s1")
            assert relayed(w1) == set() and relayed(w0) == {video, audio}
            relay_consumers = {
                c for w in sfu.workers if w.relay for c in w.relay.consumers.values()
            }
            assert set(sfu.router.consumers) >= relay_consumers
            assert len(relay_consumers) == 2
            await w1.refresh()
            assert {p["id"] for p in w1.stats["producers"]} == set()
            # A consumer that lets go of its source closes that relay only.
            video_slot = next(c.id for c in first.consumers if c.source == video)
            frames = first.track("video").frames
            sfu.set_source(video_slot, None)
            assert relayed(w0) == {audio}
            sfu.set_source(video_slot, video)  # and takes it again: reopened
            assert relayed(w0) == {video, audio}
            assert await wait_until(lambda: first.track("video").frames >= frames + 15, 15)
            # A new subscriber on worker 1 reopens its relays and plays.
            await later.connect([video, audio])
            assert w1.peers == {"s2"} and relayed(w1) == {video, audio}
            assert await wait_until(
                lambda: later.track("video").frames >= 15 and later.track("audio").frames >= 25,
                20,
            )
        finally:
            for sub in (first, second, later):
                await sub.close()
            await pub.close()


async def test_a_dead_worker_loses_only_its_subscribers_and_is_replaced() -> None:
    async with ClusterSfu(config(), workers=2) as sfu:
        lost: list[list[str]] = []
        sfu.on_peers_lost = lost.append
        pub, producers = await publish(sfu, "pub", [PatternVideoTrack(WIDTH, HEIGHT)])
        sources = [producers[0].id]
        subs = [Subscriber(sfu, f"s{i}") for i in range(4)]
        late: Subscriber | None = None
        try:
            await asyncio.gather(*(s.connect(sources) for s in subs))
            assert await wait_until(lambda: all(s.track("video").frames >= 20 for s in subs), 20)
            victim = sfu.workers[0]
            victims = sorted(victim.peers)
            survivors = [s for s in subs if s.id not in victims]
            assert len(victims) == 2 and len(survivors) == 2
            before = {s.id: s.track("video").frames for s in survivors}
            killed_at = time.monotonic()
            assert victim.process.pid is not None
            os.kill(victim.process.pid, signal.SIGKILL)
            assert await wait_until(lambda: bool(lost), 10)
            assert lost == [victims]
            # The other worker's subscribers never noticed.
            await asyncio.sleep(2)
            for s in survivors:
                track = s.track("video")
                assert track.frames >= before[s.id] + 40, (before[s.id], track.frames)
                assert track.longest_gap(since=killed_at) < 0.5
            # A replacement worker takes new subscribers.
            assert await wait_until(lambda: all(w.alive for w in sfu.workers), 20)
            assert sfu.workers[0] is not victim
            assert sfu.peer_counts()["subscriber"] == 2
            late = Subscriber(sfu, "late")
            await late.connect(sources)
            assert late.id in sfu.workers[0].peers
            assert await wait_until(lambda: late.track("video").frames >= 20, 20)
        finally:
            for s in [*subs, *([late] if late else [])]:
                await s.close()
            await pub.close()


def test_channel_carries_large_messages_on_uvloop() -> None:
    """The worker pipe under uvloop (which makes watched descriptors non-blocking):
    replies far larger than a socket buffer arrive whole, and a closed end is seen."""

    async def main() -> None:
        a, b = multiprocessing.Pipe()
        left, right = await Channel.open(a), await Channel.open(b)
        big = {"consumers": [{"id": f"c{i}", "pad": "x" * 100} for i in range(5000)]}
        for _ in range(3):
            left.send(big)
        for _ in range(3):
            assert await right.recv() == big
        left.close()
        with pytest.raises(asyncio.IncompleteReadError):
            await right.recv()
        right.close()

    uvloop.run(main())
