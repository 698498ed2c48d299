"""``telebridge bench``: an honest capacity verdict for ops.

One run: (optionally) spawn a server, publish the synthetic feed (encoded
once, `bench.feed`), ramp up N lightweight subscribers spread over client
processes (`bench.subscriber`), measure for ``duration`` seconds, and write
the JSON report (`bench/SCHEMA.md`) and the HTML report (`bench.report`).
The server's CPU and memory come from ``/proc`` (the server process and its
children); its forwarded packet count from its ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import json
import logging
import multiprocessing
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from bench.clients import LoopbackPeerConnection
from bench.feed import EncodedLoopTrack, encode_loop
from bench.impair import Impairment
from bench.pacer import PACE_MULTIPLIER, Pacer, pace_video
from bench.presenter import ProtocolClientError, publish_once
from bench.subscriber import LATENCY_BIN_S, LATENCY_BINS, Drain, LeanSubscriber
from bench.synthetic import StereoPattern, ToneAudioTrack
from signaling.tokens import issue_token

logger = logging.getLogger(__name__)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class BenchOptions:
    """What one bench run does (the command-line options)."""

    subscribers: int
    url: str | None = None
    spawn: bool = False
    bitrate: int = 2_500_000
    width: int = 1280
    height: int = 720
    fps: int = 30
    codec: str = "vp8"
    duration: float = 20.0
    ramp: float = 50.0
    impair_fraction: float = 0.0
    impairment: Impairment | None = None
    client_processes: int = 2
    slo_loss_pct: float | None = None
    slo_p99_ms: float | None = None
    secret: str = ""
    room: str = "bench"
    command: str = ""
    #: Spawn aiortc's MediaRelay comparison server (bench/baseline.py) instead.
    mediarelay: bool = False
    #: The spawned server records the room (``serve --record``) into this directory.
    record_dir: str | None = None
    #: The presenter sends the side-by-side 3D test card (and says ``stereo: "sbs"``).
    stereo: bool = False
    #: Pin the spawned server to these CPUs and the bench itself (presenter and
    #: client processes) to the others: "the largest N on one core" (Linux).
    server_cpus: list[int] | None = None
    #: ``serve --workers`` for the spawned server (None: serve's default, one per core).
    server_workers: int | None = None
    #: Settings for the spawned server's config file: ``{"sfu": {"udp_mux": "false"}}``
    #: (values are TOML literals).
    server_settings: dict[str, dict[str, str]] = field(default_factory=dict)
    #: The presenter paces its video like a browser (``bench/pacer.py``); False: aiortc's bursts.
    pacing: bool = True


# ------------------------------------------------------------------ server


class SpawnedServer:
    """``telebridge serve`` in a child process on a free loopback port."""

    def __init__(
        self,
        secret: str,
        mediarelay: bool = False,
        record_dir: str | None = None,
        workers: int | None = None,
        settings: dict[str, dict[str, str]] | None = None,
    ) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = {**os.environ, "TELEBRIDGE_SECRET": secret}
        config = Path(os.environ.get("TMPDIR", "/tmp")) / f"telebridge-bench-{self.port}.toml"
        # Bench clients hammer the signaling socket at ramp-up: raise the limits.
        limits = {"rate_limit": "1000.0", "rate_burst": "1000", "max_participants": "100000"}
        tables: dict[str, dict[str, str]] = {"signaling": limits}
        for table, values in (settings or {}).items():
            tables.setdefault(table, {}).update(values)
        config.write_text(
            "".join(
                f"[{table}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
                for table, values in tables.items()
            )
        )
        self.config = config
        # The server's log goes to a file: an unread pipe would fill up and
        # block the server mid-run.
        self.log_path = config.with_suffix(".log")
        self.log = self.log_path.open("wb")
        if mediarelay:
            command = ["-m", "bench.baseline", "--port", str(self.port)]
        else:
            command = [
                "-m",
                "signaling.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--config",
                str(config),
            ]
            if record_dir is not None:
                command += ["--record", "--recordings", record_dir]
            if workers is not None:
                command += ["--workers", str(workers)]
        self.process = subprocess.Popen(
            [sys.executable, *command],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"the spawned server exited at start-up (log: {self.log_path})"
                    )
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"{self.url}/healthz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError("the spawned server did not become ready")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.config.unlink(missing_ok=True)
        self.log.close()


def pin_apart(server_pid: int, server_cpus: list[int]) -> list[int]:
    """Pin the server (every thread of it and of its worker processes) to
    ``server_cpus`` and this process (and the clients it starts afterwards,
    which inherit it) to the other CPUs; returns those."""
    available = sorted(os.sched_getaffinity(0) | set(server_cpus))
    rest = [cpu for cpu in available if cpu not in server_cpus]
    if not rest:
        raise ValueError("--server-cpus leaves no CPU for the bench itself")
    for pid in process_tree(server_pid):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that just ended
                os.sched_setaffinity(int(task.name), server_cpus)
    os.sched_setaffinity(0, rest)
    return rest


def _stat_fields(pid: int | str) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (field 3 on, proc(5)), or None if gone."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live children (a server's media workers), from /proc."""
    found = [pid]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pid:
            continue
        fields = _stat_fields(entry.name)
        if fields is not None and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live children, from /proc."""
    cpu = 0.0
    for member in process_tree(pid):
        fields = _stat_fields(member)
        if fields is not None:
            cpu += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return cpu


def process_tree_memory(pid: int) -> tuple[float, float | None]:
    """(RSS MiB, memory MiB or None) of a process and its live children, from /proc.

    RSS summed over the tree counts the libraries every worker maps once per
    process. The second figure counts them once: each process's private
    pages (``Private_Clean`` + ``Private_Dirty`` in ``smaps_rollup``, Linux
    4.14+) plus the largest shared set of any one of them (the processes
    run the same Python, aiortc and PyAV, spawned, not forked). Unlike PSS
    it does not shrink when other programs (the bench's own clients) map
    the same libraries. None where ``smaps_rollup`` cannot be read.
    """
    rss = 0.0
    private = 0.0
    shared = 0.0
    readable = True
    for member in process_tree(pid):
        fields = _stat_fields(member)
        if fields is None:
            continue  # exited meanwhile
        rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
        try:
            rollup = (Path("/proc") / str(member) / "smaps_rollup").read_text()
        except OSError:
            readable = False
            continue
        kib = {
            name: int(value.split()[0])
            for name, _, value in (line.partition(":") for line in rollup.splitlines()[1:])
            if value.strip()
        }
        private += (kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)) / 1024
        shared = max(shared, (kib.get("Shared_Clean", 0) + kib.get("Shared_Dirty", 0)) / 1024)
    return rss, (private + shared) if readable else None


async def server_counters(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The server's Prometheus counters (telebridge_*)."""
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("telebridge_"):
            name, value = line.split()[:2]
            values[name] = float(value)
    return values


async def _server_lag_ms(http: aiohttp.ClientSession, url: str) -> float | None:
    """How late the server's most lagging media process reads its input (ms; None: unknown).

    From ``telebridge_media_loop_lag_seconds`` (``sfu/load.py``), asked with a
    short timeout: an overloaded one-process server answers late.
    """
    try:
        async with asyncio.timeout(0.5):
            counters = await server_counters(http, url)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
        return None
    lags = [v for k, v in counters.items() if k.startswith("telebridge_media_loop_lag_seconds")]
    return round(max(lags) * 1000, 1) if lags else None


# --------------------------------------------------------------- presenter


class Presenter:
    """The synthetic presenter: the pre-encoded feed and a tone, over the real protocol."""

    def __init__(self, options: BenchOptions) -> None:
        self.options = options
        loop_frames = 4 * options.fps
        draw = StereoPattern(options.width, options.height).draw if options.stereo else None
        self.frames = encode_loop(
            options.codec,
            options.width,
            options.height,
            options.fps,
            options.bitrate,
            loop_frames,
            draw,
        )
        self.track: EncodedLoopTrack | None = None
        self.pc: LoopbackPeerConnection | None = None
        self.pacer: Pacer | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Future[None] | None = None

    async def start(self, http: aiohttp.ClientSession, url: str, token: str) -> None:
        self.ws = await http.ws_connect(f"{url}/ws", heartbeat=20)
        self.track = EncodedLoopTrack(self.frames, self.options.fps)
        try:
            self.pc = await publish_once(
                self.ws,
                token,
                [self.track, ToneAudioTrack()],
                self.options.codec,
                "sbs" if self.options.stereo else "mono",
            )
        except ProtocolClientError as exc:
            raise RuntimeError(f"the bench presenter was refused: {exc}") from exc
        # A keyframe request restarts the encoded loop at its keyframe.
        self.track.attach(self.pc)
        if self.options.pacing:
            self.pacer = pace_video(self.pc, self.track, self.options.bitrate)
        # Keep reading the socket: aiohttp handles the heartbeat's pongs only
        # while someone reads, and closes an unread socket after ~20 s.
        self._reader = asyncio.ensure_future(self._read(self.ws))

    @staticmethod
    async def _read(ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT and '"error"' in message.data:
                logger.warning("bench presenter: %s", message.data)

    @property
    def keyframe_requests(self) -> int:
        return self.track.keyframe_requests if self.track else 0

    async def stop(self) -> None:
        if self.pc is not None:
            await self.pc.close()
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


# ------------------------------------------------------------ client worker


@dataclass
class SubscriberPlan:
    name: str
    token: str
    start_after: float
    impairment: Impairment | None
    seed: int


def client_worker(url: str, plans: list[SubscriberPlan], pipe: Connection) -> None:
    """Entry point of a client process: run its subscribers, answer the parent's commands."""
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_client_main(url, plans, pipe))


async def _client_main(url: str, plans: list[SubscriberPlan], pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    drain = Drain()
    subscribers: list[LeanSubscriber] = []
    window = {"start": 0.0, "cpu": 0.0, "packets": 0}
    # Every subscriber holds its signaling WebSocket open: no pool limit (aiohttp's
    # default of 100 connections per session silently capped a client process at
    # 100 subscribers; the others waited for a free connection forever).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        started = time.monotonic()

        async def ramp() -> None:
            for plan in plans:
                delay = started + plan.start_after - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                subscriber = LeanSubscriber(
                    plan.name, url, plan.token, http, drain, plan.impairment, plan.seed
                )
                subscribers.append(subscriber)
                await subscriber.start()

        ramp_task = asyncio.ensure_future(ramp())
        while True:
            ready = await loop.run_in_executor(None, pipe.poll, 0.5)
            if not ready:
                continue
            command = pipe.recv()
            if command == "progress":
                pipe.send(
                    {
                        "started": len(subscribers),
                        "connected": sum(1 for s in subscribers if s.connected_at is not None),
                        "receiving": sum(1 for s in subscribers if s.stats.packets > 0),
                        "packets": sum(s.stats.packets for s in subscribers),
                        "bytes": sum(s.stats.bytes for s in subscribers),
                        "errors": [s.error for s in subscribers if s.error][:3],
                    }
                )
            elif command == "window":
                _freeze_heap()
                for subscriber in subscribers:
                    subscriber.reset_window()
                window = {
                    "start": time.monotonic(),
                    "cpu": time.process_time(),
                    "packets": drain.packets,
                }
                pipe.send("ok")
            elif command == "collect":
                elapsed = time.monotonic() - window["start"]
                pipe.send(
                    {
                        "results": [s.result(elapsed) for s in subscribers],
                        "cpu_s": time.process_time() - window["cpu"],
                        "packets": drain.packets - int(window["packets"]),
                        "elapsed_s": elapsed,
                    }
                )
            elif command == "stop":
                ramp_task.cancel()
                await asyncio.gather(*(s.close() for s in subscribers), return_exceptions=True)
                pipe.send("stopped")
                return


# ---------------------------------------------------------------- one run


def _percentiles_ms(histogram: np.ndarray, quantiles: tuple[float, ...]) -> dict[str, float | None]:
    total = int(histogram.sum())
    names = {0.5: "p50", 0.95: "p95", 0.99: "p99"}
    if total == 0:
        return {names[q]: None for q in quantiles}
    cumulative = np.cumsum(histogram)
    return {
        names[q]: round(
            (int(np.searchsorted(cumulative, q * total)) + 0.5) * LATENCY_BIN_S * 1000, 2
        )
        for q in quantiles
    }


def _freeze_heap() -> None:
    """Keep the load generator's garbage collector off what the ramp built.

    Once every subscriber is in, their aiortc objects live until the run
    ends. Without this, a full collection of a client process walks all of
    them (90-180 ms seen at 150 subscribers per process); during the
    window that stalls the process's subscribers, or the presenter, and the
    bench would report the stall as the server's latency or a freeze.
    ``gc.freeze`` moves them out of the collector's generations
    (collections then walk only what is allocated afterwards); the process
    ends with the run, so nothing frozen needs collecting.
    """
    gc.freeze()


def _pacing(presenter: Presenter | None) -> dict[str, Any] | None:
    """How the presenter paced its video over the whole run (None: not paced)."""
    if presenter is None or presenter.pacer is None:
        return None
    pacer = presenter.pacer
    return {
        "multiplier": PACE_MULTIPLIER,
        "packets": pacer.packets,
        "delayed": pacer.delayed,
        "longest_backlog_ms": round(1000 * pacer.longest_backlog_s, 1),
    }


def _pacing_line(pacing: dict[str, Any] | None) -> str:
    if pacing is None:
        return "off: each frame in one burst"
    return (
        f"{pacing['multiplier']}x the bitrate; {pacing['packets']} video packets, "
        f"longest backlog {pacing['longest_backlog_ms']} ms"
    )


def _quantiles(values: list[float], quantiles: tuple[float, ...]) -> dict[str, float | None]:
    names = {0.5: "p50", 0.95: "p95", 0.99: "p99"}
    if not values:
        return {names[q]: None for q in quantiles}
    return {names[q]: round(float(np.quantile(values, q)), 1) for q in quantiles}


def summarize_group(results: list[dict[str, Any]], impairment: Impairment | None) -> dict[str, Any]:
    """The GROUP object of the schema for these subscribers' results."""
    expected = sum(r["expected"] for r in results)
    histogram = np.zeros(LATENCY_BINS, dtype=np.int64)
    for result in results:
        for index, count in result["latency_histogram"].items():
            histogram[index] += count
    per_subscriber = [{k: v for k, v in r.items() if k != "latency_histogram"} for r in results]
    return {
        "subscribers": len(results),
        "impairment": impairment.describe() if impairment else None,
        "loss_pct": round(100 * sum(r["lost"] for r in results) / expected, 3)
        if expected
        else None,
        "loss_pct_before_recovery": (
            round(100 * sum(r["lost_before_recovery"] for r in results) / expected, 3)
            if expected
            else None
        ),
        "latency_ms": _percentiles_ms(histogram, (0.5, 0.95, 0.99)),
        "first_frame_ms": _quantiles(
            [r["first_frame_ms"] for r in results if r["first_frame_ms"] is not None], (0.5, 0.95)
        ),
        "freezes": sum(r["freezes"] for r in results),
        "freeze_s": round(sum(r["freeze_s"] for r in results), 3),
        "bitrate_bps": int(np.mean([r["bitrate_bps"] for r in results])) if results else 0,
        "link_drops": _link_drops(results) if impairment else None,
        "per_subscriber": per_subscriber,
    }


def _link_drops(results: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Datagrams the emulated links dropped since the joins, per direction: at the
    rate cap's full queue, and as random loss (the impaired group's sum)."""
    drops = {direction: {"queue": 0, "loss": 0} for direction in ("down", "up")}
    for result in results:
        for direction, counters in (result.get("link") or {}).items():
            drops[direction]["queue"] += counters["dropped_queue"]
            drops[direction]["loss"] += counters["dropped_loss"]
    return drops


def _kept(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Loss, latency and freezes of the subscribers the server did not shed (None: it shed none)."""
    if not any(r.get("shed") for r in results):
        return None
    kept = summarize_group([r for r in results if not r.get("shed")], None)
    return {k: kept[k] for k in ("subscribers", "loss_pct", "latency_ms", "freezes", "freeze_s")}


async def run_once(options: BenchOptions) -> dict[str, Any]:
    """One bench run at ``options.subscribers``; returns the report dict."""
    if not options.secret:
        raise ValueError("the token secret is needed (TELEBRIDGE_SECRET)")
    spawned: SpawnedServer | None = None
    url = options.url
    own_cpus = os.sched_getaffinity(0)
    client_cpus: list[int] | None = None
    if options.spawn:
        spawned = SpawnedServer(
            options.secret,
            options.mediarelay,
            options.record_dir,
            options.server_workers,
            options.server_settings,
        )
        url = spawned.url
        if options.server_cpus:
            client_cpus = pin_apart(spawned.process.pid, options.server_cpus)
    assert url is not None
    started_at = datetime.datetime.now(datetime.UTC)
    room = f"{options.room}-{secrets.token_hex(3)}"
    ctx = multiprocessing.get_context("spawn")
    workers: list[tuple[Any, Connection]] = []
    presenter: Presenter | None = None
    try:
        if spawned is not None:
            await spawned.wait_ready()
        presenter = Presenter(options)
        async with aiohttp.ClientSession() as http:
            token = issue_token(options.secret, room, "presenter", "Bench presenter", 7200)
            await presenter.start(http, url, token)
            # The server with its publisher and no subscriber: the fixed cost.
            _, idle_memory = process_tree_memory(spawned.process.pid) if spawned else (0.0, None)
            ramp_cpu_start = process_tree_cpu(spawned.process.pid) if spawned else 0.0
            impaired = round(options.subscribers * options.impair_fraction)
            plans = [
                SubscriberPlan(
                    name=f"bench-{i}",
                    token=issue_token(options.secret, room, "viewer", f"bench-{i}", 7200),
                    start_after=i / options.ramp,
                    impairment=options.impairment if i < impaired else None,
                    seed=i,
                )
                for i in range(options.subscribers)
            ]
            processes = max(1, min(options.client_processes, options.subscribers))
            for index in range(processes):
                parent, child = ctx.Pipe()
                share = plans[index::processes]
                process = ctx.Process(target=client_worker, args=(url, share, child), daemon=True)
                process.start()
                workers.append((process, parent))

            def ask(command: str) -> list[Any]:
                for _, pipe in workers:
                    pipe.send(command)
                return [pipe.recv() for _, pipe in workers]

            # Ramp up: wait for every subscriber to receive media (bounded).
            deadline = time.monotonic() + options.subscribers / options.ramp + 30
            progress: list[Any] = []
            while time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                progress = await asyncio.to_thread(ask, "progress")
                receiving = sum(p["receiving"] for p in progress)
                _log(
                    f"ramp: {sum(p['connected'] for p in progress)} connected, "
                    f"{receiving}/{options.subscribers} receiving",
                )
                if receiving >= options.subscribers:
                    break
            ramp_cpu = (process_tree_cpu(spawned.process.pid) if spawned else 0.0) - ramp_cpu_start
            # The copies forwarded over the ramp, as the subscribers counted
            # them at the same moment (the server's own counter lags by up to a
            # second when workers forward: it sums their periodic snapshots).
            ramp_copies = sum(p["packets"] for p in progress)
            await asyncio.sleep(1.0)

            server_pid = spawned.process.pid if spawned else None
            _freeze_heap()  # the presenter's process
            await asyncio.to_thread(ask, "window")
            counters_start = await server_counters(http, url)
            cpu_start = process_tree_cpu(server_pid) if server_pid else 0.0
            wall_start = time.monotonic()
            timeline: list[dict[str, Any]] = []
            last_cpu, last_wall, last_bytes = cpu_start, wall_start, 0
            while time.monotonic() - wall_start < options.duration:
                await asyncio.sleep(1.0)
                progress = await asyncio.to_thread(ask, "progress")
                now = time.monotonic()
                cpu = process_tree_cpu(server_pid) if server_pid else 0.0
                received = sum(p["bytes"] for p in progress)
                sample = {
                    "t": round(now - wall_start, 1),
                    "subscribers": sum(p["receiving"] for p in progress),
                    "server_cpu_pct": round(100 * (cpu - last_cpu) / (now - last_wall), 1)
                    if server_pid
                    else None,
                    "bitrate_bps": int(
                        (received - last_bytes)
                        * 8
                        / (now - last_wall)
                        / max(1, options.subscribers)
                    ),
                }
                sample["server_lag_ms"] = await _server_lag_ms(http, url)
                timeline.append(sample)
                last_cpu, last_wall, last_bytes = cpu, now, received
                _log(
                    f"t={sample['t']:5.1f}s receiving {sample['subscribers']} "
                    f"server CPU {sample['server_cpu_pct']} % "
                    f"bitrate/sub {sample['bitrate_bps'] / 1e6:.2f} Mbit/s "
                    f"server lag {sample['server_lag_ms']} ms",
                )
            collected = await asyncio.to_thread(ask, "collect")
            wall = time.monotonic() - wall_start
            counters_end = await server_counters(http, url)
            cpu_end = process_tree_cpu(server_pid) if server_pid else 0.0
            rss, memory = process_tree_memory(server_pid) if server_pid else (0.0, None)
            await asyncio.to_thread(ask, "stop")
    finally:
        for process, _ in workers:
            process.join(timeout=15)
            if process.is_alive():
                process.kill()
        if presenter is not None:
            await presenter.stop()
        if spawned is not None:
            spawned.stop()
        os.sched_setaffinity(0, own_cpus)

    results = [r for c in collected for r in c["results"]]
    clean = [r for r in results if not r["impaired"]]
    impaired_results = [r for r in results if r["impaired"]]
    groups = {
        "clean": summarize_group(clean, None),
        "impaired": summarize_group(impaired_results, options.impairment)
        if impaired_results
        else None,
    }
    overall = summarize_group(results, None)
    connected = sum(1 for r in results if r["packets"] > 0)
    packets_out = counters_end.get("telebridge_packets_out_total", 0) - counters_start.get(
        "telebridge_packets_out_total", 0
    )
    server_cpu = cpu_end - cpu_start

    def counted(name: str) -> int:
        """A server counter's increase over the measured window."""
        return int(counters_end.get(name, 0) - counters_start.get(name, 0))

    client_cpu = sum(c["cpu_s"] for c in collected)
    client_packets = sum(c["packets"] for c in collected)
    report: dict[str, Any] = {
        "schema": 1,
        "started_at": started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": options.command,
        "recording": options.record_dir is not None,
        "server_cpus": options.server_cpus,
        "server_workers": options.server_workers,
        "server_settings": options.server_settings,
        "client_cpus": client_cpus,
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "server_url": url,
        "subscribers_requested": options.subscribers,
        "subscribers_connected": connected,
        "duration_s": round(wall, 1),
        "bitrate_bps": options.bitrate,
        "measured_bitrate_bps": overall["bitrate_bps"],
        "size": f"{options.width}x{options.height}",
        "fps": options.fps,
        "codec": options.codec,
        "loss_pct": overall["loss_pct"],
        "loss_pct_before_recovery": overall["loss_pct_before_recovery"],
        "latency_ms": overall["latency_ms"],
        "first_frame_ms": overall["first_frame_ms"],
        "offer_ms": _quantiles(
            [r["offer_ms"] for r in results if r.get("offer_ms") is not None], (0.5, 0.95)
        ),
        "connect_ms": _quantiles(
            [r["connect_ms"] for r in results if r["connect_ms"] is not None], (0.5, 0.95)
        ),
        "jitter_ms": _quantiles(
            [r["jitter_ms"] for r in results if r["jitter_ms"] is not None], (0.5, 0.95)
        ),
        "freezes": overall["freezes"],
        "freeze_s": overall["freeze_s"],
        "keyframe_requests_to_publisher": presenter.keyframe_requests if presenter else 0,
        "presenter_pacing": _pacing(presenter),
        "busy_refusals": sum(r.get("busy_refusals", 0) for r in results),
        "subscribers_shed": sum(1 for r in results if r.get("shed")),
        "kept": _kept(results),
        "server": {
            "cpu_pct": round(100 * server_cpu / wall, 1) if server_pid else None,
            "rss_mb": round(rss, 1) if server_pid else None,
            "rss_mb_per_subscriber": round(rss / max(1, connected), 3) if server_pid else None,
            "memory_mb": round(memory, 1) if memory is not None else None,
            "memory_mb_per_subscriber": round(memory / max(1, connected), 3)
            if memory is not None
            else None,
            "memory_mb_idle": round(idle_memory, 1) if idle_memory is not None else None,
            "memory_mb_per_subscriber_marginal": round(
                (memory - idle_memory) / max(1, connected), 3
            )
            if memory is not None and idle_memory is not None
            else None,
            "us_per_packet": round(server_cpu * 1e6 / packets_out, 2)
            if server_pid and packets_out
            else None,
            "packets_out": int(packets_out),
            # Joining: CPU from the presenter's publication to the end of the
            # ramp (forwarding to those already in included: measure join
            # cost at a low bitrate), per subscriber receiving by then.
            "ramp_cpu_s": round(ramp_cpu, 2) if server_pid else None,
            "cpu_ms_per_join": round(1000 * ramp_cpu / connected, 2)
            if server_pid and connected
            else None,
            # The same less the ramp's forwarding, its copies costed at the
            # window's µs per copy: an estimate of what joining itself costs.
            "ramp_copies": int(ramp_copies),
            "cpu_ms_per_join_net": round(
                1000 * max(0.0, ramp_cpu - ramp_copies * server_cpu / packets_out) / connected, 2
            )
            if server_pid and connected and packets_out
            else None,
            "retransmissions": counted("telebridge_retransmissions_total"),
            "repairs_shed": counted("telebridge_repairs_shed_total"),
            "send_dropped": counted("telebridge_send_dropped_total"),
        },
        "client": {
            "cpu_pct": round(100 * client_cpu / wall, 1),
            "us_per_packet": round(client_cpu * 1e6 / client_packets, 2)
            if client_packets
            else None,
            "processes": len(collected),
            "socket_drops": sum(r.get("socket_drops", 0) for r in results),
        },
        "groups": groups,
        "timeline": timeline,
        "find_max": None,
        "errors": sorted({r["error"] for r in results if r["error"]})[:5],
    }
    if options.slo_loss_pct is not None or options.slo_p99_ms is not None:
        report["slo"] = slo_verdict(report, options)
    return report


def slo_verdict(report: dict[str, Any], options: BenchOptions) -> dict[str, Any]:
    """Whether the run held the SLO: everyone connected, loss and p99 latency within bounds."""
    loss = report["loss_pct"] if report["loss_pct"] is not None else 100.0
    p99 = report["latency_ms"]["p99"]
    held = report["subscribers_connected"] == report["subscribers_requested"]
    if options.slo_loss_pct is not None:
        held = held and loss <= options.slo_loss_pct
    if options.slo_p99_ms is not None:
        held = held and p99 is not None and p99 <= options.slo_p99_ms
    return {"loss_pct": options.slo_loss_pct, "p99_ms": options.slo_p99_ms, "held": held}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _log(text: str) -> None:
    """Progress for the operator watching the run."""
    print(text, flush=True)


# ------------------------------------------------------------- the command


async def find_max(options: BenchOptions, limit: int) -> dict[str, Any]:
    """Grow the load by half each step until the SLO breaks; report the largest that held."""
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    count = options.subscribers
    while count <= limit:
        step_options = BenchOptions(**{**options.__dict__, "subscribers": count})
        _log(f"find-max: {count} subscribers")
        report = await run_once(step_options)
        slo = report["slo"]
        steps.append(
            {
                "subscribers": count,
                "held": slo["held"],
                "loss_pct": report["loss_pct"],
                "p99_ms": report["latency_ms"]["p99"],
                "server_cpu_pct": report["server"]["cpu_pct"],
            }
        )
        if not slo["held"]:
            break
        best = report
        count = max(count + 1, int(count * 1.5))
    final = best if best is not None else report
    final["find_max"] = {
        "slo": {"loss_pct": options.slo_loss_pct, "p99_ms": options.slo_p99_ms},
        "steps": steps,
        "max_subscribers": best["subscribers_requested"] if best else 0,
    }
    return final


def _drops_line(drops: int) -> str:
    if not drops:
        return "0"
    return f"{drops} datagrams (the bench fell behind: that much of the loss is its own)"


def _shed_line(report: dict[str, Any]) -> str:
    kept = report.get("kept")
    if not kept:
        return str(report.get("subscribers_shed", 0))
    latency = "/".join(str(v) for v in kept["latency_ms"].values())
    return (
        f"{report['subscribers_shed']}; the {kept['subscribers']} kept: loss {kept['loss_pct']} %, "
        f"latency p50/p95/p99 {latency} ms, {kept['freezes']} freezes"
    )


def summary_table(report: dict[str, Any]) -> str:
    """A plain-text summary for the terminal."""
    server, client = report["server"], report["client"]
    rows = [
        ("subscribers", f"{report['subscribers_connected']} of {report['subscribers_requested']}"),
        (
            "feed",
            f"{report['codec']} {report['size']}@{report['fps']} "
            f"{report['bitrate_bps'] / 1e6:.1f} Mbit/s (received "
            f"{report['measured_bitrate_bps'] / 1e6:.2f})",
        ),
        (
            "loss after / before NACK",
            f"{report['loss_pct']} % / {report['loss_pct_before_recovery']} %",
        ),
        ("latency p50/p95/p99 ms", "/".join(str(v) for v in report["latency_ms"].values())),
        ("offer p50/p95 ms", "/".join(str(v) for v in report["offer_ms"].values())),
        ("connect p50/p95 ms", "/".join(str(v) for v in report["connect_ms"].values())),
        ("first frame p50/p95 ms", "/".join(str(v) for v in report["first_frame_ms"].values())),
        ("freezes", f"{report['freezes']} ({report['freeze_s']} s)"),
        ("keyframe requests to publisher", str(report["keyframe_requests_to_publisher"])),
        ("presenter pacing", _pacing_line(report.get("presenter_pacing"))),
        ("joins refused (server-busy, retried)", str(report["busy_refusals"])),
        ("subscribers shed by the server (overload)", _shed_line(report)),
        (
            "server CPU",
            f"{server['cpu_pct']} % of one core, {server['us_per_packet']} µs/packet copy",
        ),
        (
            "server memory",
            f"RSS {server['rss_mb']} MiB ({server['rss_mb_per_subscriber']} MiB/subscriber); "
            f"shared counted once {server['memory_mb']} MiB "
            f"({server['memory_mb_per_subscriber']} MiB/subscriber, "
            f"idle {server['memory_mb_idle']} MiB, "
            f"{server['memory_mb_per_subscriber_marginal']} MiB per added subscriber)",
        ),
        (
            "server CPU joining",
            f"{server['ramp_cpu_s']} s over the ramp, {server['cpu_ms_per_join']} ms per join "
            f"({server['cpu_ms_per_join_net']} without the ramp's forwarding)",
        ),
        (
            "server repairs",
            f"{server['retransmissions']} resent, {server['repairs_shed']} over budget, "
            f"{server['send_dropped']} dropped on send",
        ),
        (
            "client CPU",
            f"{client['cpu_pct']} % ({client['us_per_packet']} µs/packet, "
            f"{client['processes']} processes)",
        ),
        ("load generator's socket drops", _drops_line(client.get("socket_drops", 0))),
    ]
    impaired = report["groups"].get("impaired")
    if impaired:
        clean = report["groups"]["clean"]
        rows.append(
            ("clean group loss / p99", f"{clean['loss_pct']} % / {clean['latency_ms']['p99']} ms")
        )
        rows.append(
            (
                "impaired loss after/before",
                f"{impaired['loss_pct']} % / "
                f"{impaired['loss_pct_before_recovery']} %, freezes {impaired['freezes']}",
            )
        )
        drops = impaired.get("link_drops")
        if drops:
            rows.append(
                (
                    "impaired links dropped (since join)",
                    f"down {drops['down']['queue']:,} at the rate cap + "
                    f"{drops['down']['loss']:,} lost, up {drops['up']['queue']:,} + "
                    f"{drops['up']['loss']:,}",
                )
            )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


async def baseline_comparison(
    options: BenchOptions, report: dict[str, Any], subscribers: int
) -> dict[str, Any]:
    """The same load through aiortc's MediaRelay, with ``subscribers`` subscribers.

    MediaRelay re-encodes per subscriber, so it melts long before
    Telebridge: the comparison is server CPU per subscriber at each one's
    own load, measured the same way in the same command.
    """
    _log(f"baseline: aiortc MediaRelay with {subscribers} subscribers")
    relay_options = BenchOptions(
        **{
            **options.__dict__,
            "subscribers": subscribers,
            "mediarelay": True,
            "impair_fraction": 0.0,
            "impairment": None,
        }
    )
    relay = await run_once(relay_options)

    def per_subscriber(run: dict[str, Any]) -> float | None:
        cpu = run["server"]["cpu_pct"]
        connected = run["subscribers_connected"]
        return round(cpu / connected, 3) if cpu is not None and connected else None

    ours, theirs = per_subscriber(report), per_subscriber(relay)
    return {
        "system": "aiortc MediaRelay (decode once, re-encode per subscriber)",
        "subscribers_requested": relay["subscribers_requested"],
        "subscribers_connected": relay["subscribers_connected"],
        "measured_bitrate_bps": relay["measured_bitrate_bps"],
        "loss_pct": relay["loss_pct"],
        "latency_ms": relay["latency_ms"],
        "server": relay["server"],
        "server_cpu_pct_per_subscriber": theirs,
        "telebridge_cpu_pct_per_subscriber": ours,
        "subscribers_per_core_ratio": round(theirs / ours, 1) if ours and theirs else None,
    }


async def bench_command(
    options: BenchOptions,
    json_path: str | None,
    report_path: str | None,
    find_max_limit: int | None,
    baseline_subscribers: int | None = None,
) -> int:
    """Run the bench (or a find-max series), optionally the baseline, and write outputs."""
    from bench.report import verdict, write_report

    if find_max_limit is not None:
        report = await find_max(options, find_max_limit)
    else:
        report = await run_once(options)
    if baseline_subscribers is not None:
        report["baseline"] = await baseline_comparison(options, report, baseline_subscribers)
    report["verdict"] = verdict(report)
    print(summary_table(report))
    baseline = report.get("baseline")
    if baseline:
        print(
            f"  baseline (MediaRelay)           {baseline['subscribers_connected']} subscribers: "
            f"server CPU {baseline['server']['cpu_pct']} % "
            f"({baseline['server_cpu_pct_per_subscriber']} % per subscriber vs "
            f"{baseline['telebridge_cpu_pct_per_subscriber']} % for Telebridge: "
            f"{baseline['subscribers_per_core_ratio']}x the subscribers per core)"
        )
    print(report["verdict"])
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2, default=_json_default))
    if report_path:
        write_report(report, report_path)
    return 0 if report["subscribers_connected"] else 1


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"cannot serialise {type(value)}")
