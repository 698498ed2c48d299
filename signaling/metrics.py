"""``/metrics`` in the Prometheus text format (prometheus-client), per application.

A collector reads the live state at scrape time: rooms, participants,
publishers, subscribers, the SFU's monotonic totals (packets and bytes
in and out, NACKs, retransmissions, keyframe requests, losses, drops), and
each media process's load (loop lag, CPU share) with the receivers shed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from signaling.app import Server

#: (metric name, help, key in Sfu.totals())
COUNTERS = (
    ("telebridge_packets_in", "RTP packets received from publishers", "in_packets"),
    ("telebridge_bytes_in", "RTP bytes received from publishers", "in_bytes"),
    ("telebridge_packets_out", "RTP packet copies forwarded to subscribers", "out_packets"),
    ("telebridge_bytes_out", "RTP bytes forwarded to subscribers", "out_bytes"),
    ("telebridge_nacks_received", "NACK packets received from subscribers", "out_nacks"),
    (
        "telebridge_retransmissions",
        "packets resent to subscribers from the cache",
        "out_retransmitted",
    ),
    ("telebridge_nack_misses", "NACKed packets no longer in the cache", "out_nack_misses"),
    (
        "telebridge_repairs_shed",
        "NACKed packets not resent: the subscriber's repair budget was spent, or overload",
        "out_repairs_shed",
    ),
    ("telebridge_nacks_sent", "NACK packets sent to publishers", "in_nacks_sent"),
    (
        "telebridge_keyframe_requests",
        "keyframe requests (PLI) sent to publishers",
        "keyframe_requests_sent",
    ),
    ("telebridge_packets_lost", "publisher packets lost and not recovered", "in_lost_unrecovered"),
    ("telebridge_send_dropped", "packet copies dropped on a full socket buffer", "send_dropped"),
    ("telebridge_malformed_rtp", "malformed RTP packets from publishers", "in_malformed"),
    ("telebridge_malformed_rtcp", "malformed RTCP packets", "malformed_rtcp"),
    (
        "telebridge_udp_unrouted",
        "datagrams on the shared media port from no known connection (dropped)",
        "udp_unrouted",
    ),
)


class TelebridgeCollector(Collector):
    """Reads one server's state at scrape time."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        members = [m for room in server.rooms.values() for m in room.members.values()]
        peers = server.sfu.peer_counts()
        gauges = (
            ("telebridge_rooms", "rooms on this node", len(server.rooms)),
            ("telebridge_participants", "participants connected to this node", len(members)),
            (
                "telebridge_publishers",
                "publishing peer connections",
                peers["publisher"],
            ),
            (
                "telebridge_subscribers",
                "subscribing peer connections",
                peers["subscriber"],
            ),
        )
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(name, documentation, value=value)
        totals = server.sfu.totals()
        for name, documentation, key in COUNTERS:
            yield CounterMetricFamily(name, documentation, value=totals.get(key, 0))
        yield CounterMetricFamily(
            "telebridge_receivers_shed",
            "receivers told to come back later because their media process was overloaded",
            value=server.overload.shed_total,
        )
        lag = GaugeMetricFamily(
            "telebridge_media_loop_lag_seconds",
            "how late each media process reads its input (probe datagrams' wait, or its "
            "timers' lateness; decaying maximum)",
            labels=["process"],
        )
        cpu = GaugeMetricFamily(
            "telebridge_media_cpu_ratio",
            "CPU share of one core used by each media process (last second or so)",
            labels=["process"],
        )
        limit = GaugeMetricFamily(
            "telebridge_media_cpu_limit_ratio",
            "CPU share of one core each media process may use (1: a core; less under a quota)",
            labels=["process"],
        )
        own = server.sfu.load
        loads = {
            load.name: (load.lag, load.cpu, load.cpu_limit) for load in server.sfu.media_loads()
        }
        # With workers, the main process (publishers, relays) serves no viewer
        # but is shown too: when it lags, everyone does.
        loads.setdefault("main", (own.lag, own.cpu, own.cpu_limit))
        for name, (lag_s, cpu_share, cpu_limit) in loads.items():
            lag.add_metric([name], lag_s)
            cpu.add_metric([name], cpu_share)
            limit.add_metric([name], cpu_limit)
        yield lag
        yield cpu
        yield limit


def add_metrics_route(app: web.Application, key: web.AppKey[Server]) -> None:
    """Mount ``GET /metrics`` with a registry of this application's own."""
    registry = CollectorRegistry(auto_describe=False)
    collector_added = False

    async def metrics(request: web.Request) -> web.Response:
        nonlocal collector_added
        if not collector_added:
            registry.register(TelebridgeCollector(request.app[key]))
            collector_added = True
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app.router.add_get("/metrics", metrics)
