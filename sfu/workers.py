"""Worker processes: subscribers spread over cores, fed by relays from the main process.

:class:`ClusterSfu` is an :class:`sfu.server.Sfu` with the same command API.
Publishers (and in-process tracks such as the recorder's) stay in the main
process; every subscriber is placed on one of N worker processes (the one
with the fewest peers), each with its own event loop, ``Sfu`` and peer
connections. A producer reaches a worker through a relay
(:mod:`sfu.relay`, plain RTP over loopback UDP) opened the first time a
subscriber there needs it and closed when no subscriber there takes it any
more (the main process counts which consumer takes which producer on each
worker) or when the producer goes; the worker
serves its subscribers from its own cache, so NACKs and keyframe starts
behave as in one process, and its keyframe requests are aggregated with
everyone else's in the main process.

Commands for a worker's peers go over a pipe (in order for each peer); the calls that are
synchronous in ``Sfu`` (``set_source``, ``unsubscribe``) are sent without
waiting and their errors are logged. ``stats`` and ``totals`` merge the
main process's figures with each worker's last snapshot (taken every
``rtcp_interval``).

A worker that dies is noticed through its process sentinel: its peers are
forgotten, ``on_peers_lost`` is called with their ids (signaling tells
those subscribers to reconnect), a replacement worker starts, and nothing
else is disturbed: publishers and the other workers' subscribers keep
flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import multiprocessing
import os
import pickle
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

from sfu.load import MediaLoad
from sfu.relay import RelayIn, RelayOut
from sfu.server import Sfu, SfuConfig, SfuError, TrackInfo

logger = logging.getLogger(__name__)

#: Longest wait for a worker to start or to answer a command.
WORKER_TIMEOUT = 30.0
#: ``Sfu`` methods a worker runs as they arrive (they do not await).
_IMMEDIATE_COMMANDS = frozenset({"set_source", "unsubscribe", "stats", "totals"})
#: ``Sfu`` coroutines a worker runs in order per peer (the first argument).
_PEER_COMMANDS = frozenset({"subscribe", "add_sources", "answer", "add_ice_candidate", "close"})


# ------------------------------------------------------------------ the pipe


class Channel:
    """Messages (pickles, 4-byte length prefix) over a Unix socket, on asyncio streams.

    Made from one end of a ``multiprocessing`` pipe (a socket pair): the
    pipe's own blocking ``recv`` cannot share an event loop (uvloop makes
    watched descriptors non-blocking). ``send`` never blocks: the stream
    buffers, and the other end reads continuously.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, conn: Connection) -> Channel:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        conn.close()
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 24)
        return cls(reader, writer)

    def send(self, message: Any) -> None:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        self._writer.write(_LENGTH.pack(len(data)) + data)

    async def recv(self) -> Any:
        """The next message; ``asyncio.IncompleteReadError`` when the other end is gone."""
        (length,) = _LENGTH.unpack(await self._reader.readexactly(_LENGTH.size))
        return pickle.loads(await self._reader.readexactly(length))

    def close(self) -> None:
        self._writer.close()


_LENGTH = struct.Struct("!I")


# ------------------------------------------------------------------ worker side


def worker_main(conn: Connection, config: SfuConfig, name: str, verbose: bool = False) -> None:
    """Entry point of a worker process (``multiprocessing`` spawn target)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s",
    )
    logging.getLogger("aioice").setLevel(logging.WARNING)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_worker(conn, config))
        return
    uvloop.run(_worker(conn, config))


async def _worker(conn: Connection, config: SfuConfig) -> None:
    """Run commands from the main process until it closes the pipe.

    Commands that complete at once (relay changes, source switches,
    statistics) run as they arrive, in order. Those that await (SDP, ICE,
    close) run as tasks, one after the other for the same peer and
    concurrently across peers, so that a join storm is not one queue.
    """
    channel = await Channel.open(conn)
    loop = asyncio.get_running_loop()
    chains: dict[str, asyncio.Task[None]] = {}  # peer id -> its latest command

    def done(peer_id: str, task: asyncio.Task[None]) -> None:
        if chains.get(peer_id) is task:
            del chains[peer_id]

    async with Sfu(config) as sfu:
        relay = RelayIn(sfu, "127.0.0.1")
        reports = loop.create_task(_relay_reports(relay, config.rtcp_interval))
        channel.send(("ready", relay.address, os.getpid()))
        try:
            while True:
                try:
                    request_id, method, args = await channel.recv()
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the main process is gone, or stopping us
                if method not in _PEER_COMMANDS:
                    _reply(channel, request_id, method, args, *_run_now(sfu, relay, method, args))
                    continue
                peer_id = str(args[0])
                task = loop.create_task(
                    _run_in_turn(chains.get(peer_id), channel, sfu, request_id, method, args)
                )
                chains[peer_id] = task
                task.add_done_callback(functools.partial(done, peer_id))
        finally:
            reports.cancel()
            for task in list(chains.values()):
                task.cancel()
            relay.close()


def _run_now(sfu: Sfu, relay: RelayIn, method: str, args: tuple[Any, ...]) -> tuple[bool, Any]:
    """A command that does not await: (ok, result or (code, message))."""
    try:
        if method == "relay_add":
            relay.add(args[0])
            return True, None
        if method == "relay_remove":
            relay.remove(args[0])
            return True, None
        if method not in _IMMEDIATE_COMMANDS:
            raise SfuError("unknown-command", f"workers do not run {method!r}")
        return True, getattr(sfu, method)(*args)
    except Exception as exc:
        return _failure(method, exc)


def _failure(method: str, exc: Exception) -> tuple[bool, Any]:
    """The reply for a command that raised: its SfuError's code, or an internal error (logged)."""
    if isinstance(exc, SfuError):
        return False, (exc.code, str(exc))
    logger.exception("worker command %s failed", method)
    return False, ("internal-error", repr(exc))


async def _run_in_turn(
    previous: asyncio.Task[None] | None,
    channel: Channel,
    sfu: Sfu,
    request_id: int | None,
    method: str,
    args: tuple[Any, ...],
) -> None:
    """Run a peer's awaiting command once its previous one finished."""
    if previous is not None:
        await asyncio.wait([previous])
    try:
        result: tuple[bool, Any] = (True, await getattr(sfu, method)(*args))
    except Exception as exc:
        result = _failure(method, exc)
    _reply(channel, request_id, method, args, *result)


def _reply(
    channel: Channel,
    request_id: int | None,
    method: str,
    args: tuple[Any, ...],
    ok: bool,
    value: Any,
) -> None:
    if request_id is not None:
        channel.send((request_id, ok, value))
    elif not ok:
        logger.warning("%s%r: %s", method, args, value[1])


async def _relay_reports(relay: RelayIn, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        relay.send_reports()


# ------------------------------------------------------------------ main side


class Worker:
    """The main process's handle on one worker: its pipe, relay and peers."""

    def __init__(self, index: int, config: SfuConfig, verbose: bool = False) -> None:
        self.index = index
        self.name = f"worker{index}"
        if config.udp_port:  # its own shared port, next to the main process's
            config = dataclasses.replace(config, udp_port=config.udp_port + 1 + index)
        self._verbose = verbose
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._channel: Channel | None = None
        self._reading: asyncio.Task[None] | None = None
        self.process = context.Process(
            target=worker_main, args=(child, config, self.name, verbose), name=self.name
        )
        self._child = child
        self.relay: RelayOut | None = None
        self.peers: set[str] = set()
        #: The producer each of this worker's consumers takes.
        self.sources: dict[str, str] = {}
        #: Producers named by subscribe/add_sources commands still in flight.
        self.pending: Counter[str] = Counter()
        self.alive = False
        self.stats: dict[str, Any] = {}
        self.totals: dict[str, int] = {}
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._on_exit: Callable[[Worker], None] | None = None

    async def start(self, hub: Sfu, on_exit: Callable[[Worker], None]) -> None:
        """Spawn the process, wait until it is ready, open the relay to it."""
        loop = asyncio.get_running_loop()
        self.process.start()
        self._child.close()
        channel = await Channel.open(self._conn)
        try:
            _, address, pid = await asyncio.wait_for(channel.recv(), WORKER_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError) as exc:
            channel.close()
            self.process.kill()
            raise RuntimeError(f"{self.name} did not start") from exc
        self._channel = channel
        self.relay = RelayOut(hub, self.name, (address[0], address[1]))
        self.alive = True
        self._on_exit = on_exit
        self._reading = loop.create_task(self._read())
        loop.add_reader(self.process.sentinel, self._exited)
        logger.info("%s started (pid %d, relay %s:%d)", self.name, pid, *address)

    def cast(self, method: str, *args: Any) -> None:
        """Send a command without waiting (errors are logged by the worker)."""
        self._send((None, method, args))

    def request(self, method: str, *args: Any) -> asyncio.Future[Any]:
        """Send a command now; the future gets its result (or its SfuError)."""
        request_id = next(self._ids)
        self._send((request_id, method, args))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        future.add_done_callback(lambda _: self._pending.pop(request_id, None))
        return future

    async def call(self, method: str, *args: Any) -> Any:
        """Run a command on the worker and return its result (or raise its SfuError)."""
        try:
            return await asyncio.wait_for(self.request(method, *args), WORKER_TIMEOUT)
        except TimeoutError as exc:
            raise SfuError("worker-timeout", f"{self.name} did not answer {method}") from exc

    def ensure_relay(self, hub: Sfu, producer_id: str) -> None:
        """Relay ``producer_id`` to this worker unless it already is.

        The worker learns the stream first (commands are ordered); the main
        process starts sending once it confirmed, so the first packets (the
        cached keyframe) are not dropped as unknown.
        """
        if not self.alive or self.relay is None:
            raise SfuError("worker-lost", f"{self.name} is not running")
        if producer_id in self.relay.consumers:
            return
        stream = self.relay.add(producer_id)
        relay = self.relay

        def confirmed(future: asyncio.Future[Any]) -> None:
            if future.cancelled() or future.exception() is not None:
                logger.warning(
                    "%s: relay of %s not set up: %r",
                    self.name,
                    producer_id,
                    None if future.cancelled() else future.exception(),
                )
                return
            if producer_id in relay.consumers and producer_id in hub.router.producers:
                relay.start(producer_id)

        self.request("relay_add", stream).add_done_callback(confirmed)

    def take(self, consumer_id: str, producer_id: str | None) -> str | None:
        """Record that a consumer now takes ``producer_id`` (None: nothing).

        Returns the producer it took before, for :meth:`release`.
        """
        previous = self.sources.pop(consumer_id, None)
        if producer_id is not None:
            self.sources[consumer_id] = producer_id
        return previous

    def release(self, producer_ids: Iterable[str | None]) -> None:
        """Close the relays of these producers that no consumer here takes or awaits.

        Sent after the command that let go of them, so the worker detaches
        its consumer before the relayed producer goes; a later subscriber
        opens the relay again (:meth:`ensure_relay`).
        """
        taken = set(self.sources.values())
        for producer_id in {p for p in producer_ids if p is not None} - taken:
            if self.pending[producer_id] > 0:
                continue
            self.pending.pop(producer_id, None)
            self.drop_relay(producer_id)

    def drop_relay(self, producer_id: str) -> None:
        """Stop relaying a producer (closed, or no longer taken by anyone here)."""
        if self.relay is not None and producer_id in self.relay.consumers:
            self.relay.remove(producer_id)
            if self.alive:
                self.cast("relay_remove", producer_id)

    def load(self) -> MediaLoad:
        """This worker's load as of its last snapshot, and the peers placed on it."""
        lag = self.stats.get("loop_lag_ms", 0.0) / 1000
        return MediaLoad(
            self.name,
            lag,
            self.stats.get("cpu", 0.0),
            frozenset(self.peers),
            self.stats.get("cpu_limit", 1.0),
        )

    async def refresh(self) -> None:
        """Take a snapshot of the worker's stats and totals."""
        self.stats = await self.call("stats")
        self.totals = await self.call("totals")

    async def stop(self) -> None:
        """Close the pipe (the worker closes its peers and exits), then reap it."""
        self._forget()
        if self._channel is not None:
            self._channel.close()
        if self.process.pid is None:
            return  # never started (a replacement cancelled at shutdown)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.process.join, 5.0)
        if self.process.is_alive():
            self.process.kill()
            await loop.run_in_executor(None, self.process.join, 5.0)

    def _send(self, message: tuple[Any, ...]) -> None:
        if not self.alive or self._channel is None:
            raise SfuError("worker-lost", f"{self.name} is not running")
        self._channel.send(message)

    async def _read(self) -> None:
        """Hand the worker's replies to the calls waiting for them."""
        assert self._channel is not None
        try:
            while True:
                request_id, ok, value = await self._channel.recv()
                future = self._pending.get(request_id)
                if future is None or future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(SfuError(value[0], value[1]))
        except (asyncio.IncompleteReadError, ConnectionError):
            self._exited()

    def _exited(self) -> None:
        if not self.alive:
            return
        logger.error("%s exited (code %s)", self.name, self.process.exitcode)
        self._forget()
        if self._on_exit is not None:
            self._on_exit(self)

    def _forget(self) -> None:
        """Stop reading, fail waiting calls, close the relay."""
        was_alive = self.alive
        self.alive = False
        if was_alive:
            asyncio.get_running_loop().remove_reader(self.process.sentinel)
            if self._reading is not None and self._reading is not asyncio.current_task():
                self._reading.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(SfuError("worker-lost", f"{self.name} exited"))
        if self.relay is not None:
            self.relay.close()


def create_sfu(config: SfuConfig, verbose: bool = False) -> Sfu:
    """An in-process ``Sfu`` (``config.workers == 0``) or a :class:`ClusterSfu`."""
    if config.workers <= 0:
        return Sfu(config)
    return ClusterSfu(config, config.workers, verbose=verbose)


#: Worker counters added to the main process's in :meth:`ClusterSfu.totals`.
_WORKER_COUNTERS = ("send_dropped", "malformed_rtcp", "udp_unrouted")


class ClusterSfu(Sfu):
    """An ``Sfu`` whose subscribers live on worker processes (default: ``config.workers``)."""

    def __init__(
        self,
        config: SfuConfig | None = None,
        workers: int | None = None,
        clock: Callable[[], float] = time.time,
        verbose: bool = False,
    ) -> None:
        super().__init__(config, clock)
        workers = self.config.workers if workers is None else workers
        if workers < 1:
            raise ValueError("a cluster needs at least one worker")
        self._verbose = verbose
        self.workers = [Worker(i, self.config, verbose) for i in range(workers)]
        self._placement: dict[str, Worker] = {}
        self._cluster_task: asyncio.Task[None] | None = None
        self._respawning: set[asyncio.Task[None]] = set()
        self._lost_totals: dict[str, int] = {}
        #: Called with the ids of the peers a dead worker held.
        self.on_peers_lost: Callable[[list[str]], None] | None = None
        #: Whether a worker (its :class:`MediaLoad`) takes newcomers; a new
        #: subscriber goes to the one with the fewest peers among those that do
        #: (among all, if none does). Signaling sets it (``signaling/overload.py``).
        self.accepts: Callable[[MediaLoad], bool] = lambda load: True

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await super().start()
        await asyncio.gather(*(w.start(self, self._worker_exited) for w in self.workers))
        self._cluster_task = asyncio.get_running_loop().create_task(self._run_cluster())

    async def stop(self) -> None:
        if self._cluster_task is not None:
            self._cluster_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cluster_task
            self._cluster_task = None
        for task in list(self._respawning):
            task.cancel()
        await asyncio.gather(*self._respawning, return_exceptions=True)
        await asyncio.gather(*(w.stop() for w in self.workers))
        self._placement.clear()
        await super().stop()

    # --------------------------------------------------------------- commands

    async def subscribe(self, peer_id: str, sources: list[str]) -> tuple[str, list[TrackInfo]]:
        for source in sources:
            self._producer(source)
        if not sources:
            raise SfuError("no-media", "nothing to subscribe to")
        if peer_id in self._placement or peer_id in self.peers:
            raise SfuError("peer-exists", f"peer {peer_id!r} exists")
        alive = await self._alive_workers()
        worker = min(alive, key=lambda w: (not self.accepts(w.load()), len(w.peers)))
        self._placement[peer_id] = worker
        worker.peers.add(peer_id)
        try:
            return await self._add_tracks(worker, "subscribe", peer_id, sources)
        except SfuError:
            self._placement.pop(peer_id, None)
            worker.peers.discard(peer_id)
            raise

    async def _add_tracks(
        self, worker: Worker, method: str, peer_id: str, sources: list[str]
    ) -> tuple[str, list[TrackInfo]]:
        """``subscribe``/``add_sources`` on ``worker``, its relays opened and counted."""
        for source in sources:
            worker.ensure_relay(self, source)
            worker.pending[source] += 1
        try:
            result: tuple[str, list[TrackInfo]] = await worker.call(method, peer_id, sources)
            for track in result[1]:
                worker.take(track.id, track.source)
            return result
        finally:
            for source in sources:
                worker.pending[source] -= 1
            worker.release(sources)

    async def _alive_workers(self) -> list[Worker]:
        """The running workers; while none is (all being replaced), wait for one."""
        deadline = time.monotonic() + WORKER_TIMEOUT
        while not (alive := [w for w in self.workers if w.alive]):
            if time.monotonic() > deadline or not self._respawning:
                raise SfuError("worker-lost", "no media worker is running")
            await asyncio.sleep(0.05)
        return alive

    async def add_sources(self, peer_id: str, sources: list[str]) -> tuple[str, list[TrackInfo]]:
        worker = self._placement.get(peer_id)
        if worker is None:
            return await super().add_sources(peer_id, sources)
        for source in sources:
            self._producer(source)
        return await self._add_tracks(worker, "add_sources", peer_id, sources)

    async def answer(self, peer_id: str, answer_sdp: str) -> None:
        worker = self._placement.get(peer_id)
        if worker is None:
            await super().answer(peer_id, answer_sdp)
        else:
            await worker.call("answer", peer_id, answer_sdp)

    async def add_ice_candidate(self, peer_id: str, candidate: dict[str, Any] | None) -> None:
        worker = self._placement.get(peer_id)
        if worker is None:
            await super().add_ice_candidate(peer_id, candidate)
        else:
            await worker.call("add_ice_candidate", peer_id, candidate)

    def set_source(self, consumer_id: str, producer_id: str | None) -> None:
        worker = self._placement.get(consumer_id.rpartition(":")[0])
        if worker is None:
            super().set_source(consumer_id, producer_id)
            return
        if producer_id is not None:
            self._producer(producer_id)
            worker.ensure_relay(self, producer_id)
        previous = worker.take(consumer_id, producer_id)
        worker.cast("set_source", consumer_id, producer_id)
        worker.release([previous])

    def unsubscribe(self, consumer_id: str) -> None:
        worker = self._placement.get(consumer_id.rpartition(":")[0])
        if worker is None:
            super().unsubscribe(consumer_id)
        else:
            previous = worker.take(consumer_id, None)
            worker.cast("unsubscribe", consumer_id)
            worker.release([previous])

    async def close(self, peer_id: str) -> None:
        worker = self._placement.pop(peer_id, None)
        if worker is not None:
            worker.peers.discard(peer_id)
            prefix = peer_id + ":"
            released = [
                worker.take(consumer_id, None)
                for consumer_id in [c for c in worker.sources if c.startswith(prefix)]
            ]
            if worker.alive:
                with contextlib.suppress(SfuError):
                    await worker.call("close", peer_id)
            worker.release(released)
            return
        peer = self.peers.get(peer_id)
        producers = list(peer.producers.values()) if peer is not None else []
        await super().close(peer_id)
        for producer in producers:
            for w in self.workers:
                w.drop_relay(producer.id)

    # ------------------------------------------------------------ statistics

    def peer_counts(self) -> dict[str, int]:
        counts = super().peer_counts()
        for worker in self.workers:
            if worker.alive:
                counts["subscriber"] = counts.get("subscriber", 0) + len(worker.peers)
        return counts

    def media_loads(self) -> list[MediaLoad]:
        """Each running worker's load (its last snapshot) and subscribers."""
        return [w.load() for w in self.workers if w.alive]

    def _relay_consumers(self) -> set[str]:
        return {c for w in self.workers if w.relay for c in w.relay.consumers.values()}

    def stats(self) -> dict[str, Any]:
        """The main process's stats plus each worker's last snapshot.

        Producers are the publishers' (the workers' relayed copies are
        left out); consumers are the subscribers' and in-process tracks';
        ``relays`` counts the relayed streams; ``workers`` lists the workers.
        """
        merged = super().stats()
        relay_ids = self._relay_consumers()
        merged["consumers"] = [c for c in merged["consumers"] if c["id"] not in relay_ids]
        merged["relays"] = len(relay_ids)
        merged["workers"] = []
        for worker in self.workers:
            snapshot = worker.stats if worker.alive else {}
            for key in (
                "subscribers",
                "send_dropped",
                "send_errors",
                "unknown_ssrc",
                "malformed_rtcp",
            ):
                merged[key] += snapshot.get(key, 0)
            merged["consumers"] += snapshot.get("consumers", [])
            merged["workers"].append(
                {
                    "name": worker.name,
                    "alive": worker.alive,
                    "pid": worker.process.pid,
                    "peers": len(worker.peers),
                    "relayed": len(worker.relay.consumers) if worker.relay else 0,
                    "loop_lag_ms": snapshot.get("loop_lag_ms", 0.0),
                    "cpu": snapshot.get("cpu", 0.0),
                }
            )
        return merged

    def totals(self) -> dict[str, int]:
        """Monotonic counters: the main process's plus the workers' forwarding.

        A worker's ``in_*`` (its relayed copies) and its keyframe requests
        (sent to the main process, which aggregates them) are not added; a
        dead worker's last snapshot stays counted. Relay streams are not
        subscribers: their packets are left out of ``out_*``.
        """
        totals = super().totals()
        for consumer_id in self._relay_consumers():
            consumer = self.router.consumers.get(consumer_id)
            if consumer is None:
                continue
            for name in consumer.stats.__slots__:
                totals["out_" + name] -= getattr(consumer.stats, name)
        for snapshot in [self._lost_totals, *(w.totals for w in self.workers)]:
            for key, value in snapshot.items():
                if key.startswith("out_") or key in _WORKER_COUNTERS:
                    totals[key] = totals.get(key, 0) + value
        return totals

    # ---------------------------------------------------------------- timers

    async def _run_cluster(self) -> None:
        """Relay sender reports, stale-relay sweep and worker snapshots."""
        while True:
            await asyncio.sleep(self.config.rtcp_interval)
            for worker in self.workers:
                if not worker.alive or worker.relay is None:
                    continue
                worker.relay.send_reports()
                for producer_id in list(worker.relay.consumers):
                    if producer_id not in self.router.producers:
                        worker.drop_relay(producer_id)
            snapshots = [w.refresh() for w in self.workers if w.alive]
            for result in await asyncio.gather(*snapshots, return_exceptions=True):
                if isinstance(result, Exception) and not isinstance(result, SfuError):
                    logger.error("worker snapshot failed: %r", result)

    async def _replace(self, worker: Worker) -> None:
        try:
            await worker.start(self, self._worker_exited)
        except Exception:
            alive = sum(w.alive for w in self.workers)
            logger.exception("%s could not be restarted; %d worker(s) left", worker.name, alive)

    def _worker_exited(self, worker: Worker) -> None:
        lost = sorted(worker.peers)
        for peer_id in lost:
            self._placement.pop(peer_id, None)
        worker.peers.clear()
        logger.error("%s lost %d subscriber(s); starting a replacement", worker.name, len(lost))
        for key, value in worker.totals.items():  # its counts stay in the totals
            self._lost_totals[key] = self._lost_totals.get(key, 0) + value
        replacement = Worker(worker.index, self.config, self._verbose)
        self.workers[worker.index] = replacement
        task = asyncio.get_running_loop().create_task(self._replace(replacement))
        self._respawning.add(task)
        task.add_done_callback(self._respawning.discard)
        if self.on_peers_lost is not None and lost:
            self.on_peers_lost(lost)
