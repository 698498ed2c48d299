"""The aiohttp application: ``create_app(config)`` wires signaling, the SFU and the store.

Routes: ``/ws`` (the protocol), ``/`` and ``/room/{room}`` (the browser
client), ``/static/`` (its files), ``/admin/...`` (admin API),
``/healthz`` and ``/metrics``. All state hangs off the application (an
``AppKey``); nothing lives at module level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from recorder.archive import add_archive_routes
from recorder.service import Recorder
from sfu.load import MediaLoad
from sfu.workers import ClusterSfu, create_sfu
from signaling.admin import add_admin_routes
from signaling.config import Config
from signaling.metrics import add_metrics_route
from signaling.overload import OverloadGuard
from signaling.room import PUBLISHING_ROLES, Member, Room
from signaling.session import ProtocolError, Session
from signaling.store import Store, create_store

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"


class Server:
    """Everything one node serves: rooms, the SFU, the store."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.sfu = create_sfu(config.sfu)
        signaling = config.signaling
        self.overload = OverloadGuard(signaling.overload_lag_ms / 1000, signaling.shed_after_s)
        if isinstance(self.sfu, ClusterSfu):
            self.sfu.on_peers_lost = self._subscribers_lost
            self.sfu.accepts = lambda load: self.overload.accepts(load, time.monotonic())
        self.recorder = Recorder(self.sfu, config.recorder)
        self.store: Store = create_store(signaling.store_url)
        self.rooms: dict[str, Room] = {}
        self.node_id = signaling.node_id or f"{socket.gethostname()}:{signaling.port}"
        self._tasks: list[asyncio.Task[None]] = []
        self._resubscribing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.store.start()
        await self.sfu.start()
        await self.recorder.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._speakers()),
            loop.create_task(self._presence()),
            loop.create_task(self._watch_overload()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for room in list(self.rooms.values()):
            await self.end_room(room)
        await self.recorder.stop()
        await self.sfu.stop()
        await self.store.close()

    def _subscribers_lost(self, peer_ids: list[str]) -> None:
        """A media worker died: give its subscribers a new subscribe connection."""
        lost = set(peer_ids)
        loop = asyncio.get_running_loop()
        for room in list(self.rooms.values()):
            for member in list(room.members.values()):
                if member.subscribe_peer in lost:
                    task = loop.create_task(room.resubscribe(member))
                    self._resubscribing.add(task)
                    task.add_done_callback(self._resubscribing.discard)

    async def room_for_join(self, room_id: str) -> Room:
        room = self.rooms.get(room_id)
        if room is None:
            if len(self.rooms) >= self.config.signaling.max_rooms:
                raise ProtocolError("too-many-rooms", "this server holds its maximum of rooms")
            room = Room(room_id, self.sfu, self.store, self.node_id)
            self.rooms[room_id] = room
            if self.recorder.records_automatically(room_id):
                # A recorder that cannot start (disk) is logged; the room opens anyway.
                with contextlib.suppress(ProtocolError):
                    await self.set_recording(room, True)
        return room

    async def drop_room_if_empty(self, room: Room) -> None:
        if not room.members and self.rooms.get(room.id) is room:
            del self.rooms[room.id]
            await self.set_recording(room, False)

    async def set_recording(self, room: Room, active: bool) -> None:
        """Start or stop recording a room; everyone in it is told (``recording``)."""
        if active == (room.recording is not None):
            return
        if active:
            try:
                room.recording = self.recorder.begin(room.id)
            except OSError as exc:
                logger.error("room %s: cannot start recording: %s", room.id, exc)
                raise ProtocolError("recording-failed", "the recording could not start") from exc
            room.record_state()
        else:
            room.recording = None
            await self.recorder.finish(room.id)
        await room.broadcast({"type": "recording", "active": active})

    async def remove(self, room: Room, member: Member, reason: str) -> None:
        """Remove a member (moderator or admin action)."""
        await member.send({"type": "removed", "reason": reason})
        await room.remove_member(member)
        if member.ws is not None and not member.ws.closed:
            await member.ws.close()
        await self.drop_room_if_empty(room)

    async def end_room(self, room: Room) -> None:
        await self.set_recording(room, False)
        await room.end()
        self.rooms.pop(room.id, None)

    def busy(self) -> str | None:
        """Why a new receiving member would be refused now, or None.

        Forwarding runs on event loops (this process's, or each worker's):
        once one lags, every packet to every subscriber on it is late, so
        newcomers are turned away (they retry with backoff) instead of
        degrading everyone already watching (``signaling/overload.py``).
        """
        signaling = self.config.signaling
        if signaling.max_receivers and self.receivers() >= signaling.max_receivers:
            return f"this server holds its maximum of {signaling.max_receivers} receivers"
        # This process (signaling's, and the publishers' media with workers):
        # its timers' lateness and its input's, as its Sfu measures them.
        lag = self.sfu.load.lag
        if signaling.overload_lag_ms and lag * 1000 > signaling.overload_lag_ms:
            return f"this server is overloaded (event loop {lag * 1000:.0f} ms late)"
        return self.overload.refusal(self.sfu.media_loads(), time.monotonic())

    def receivers(self) -> int:
        """Members of this node's rooms that receive media."""
        return sum(m.receive for room in self.rooms.values() for m in room.members.values())

    async def _watch_overload(self, interval: float = 0.5) -> None:
        """Shed the newest receivers of a media process that stays overloaded."""
        while True:
            await asyncio.sleep(interval)
            loads = self.sfu.media_loads()
            try:
                await self._shed(loads, self.overload.to_shed(loads, time.monotonic()))
            except Exception:  # a bug here must not end overload protection
                logger.exception("shedding failed")

    async def _shed(self, loads: list[MediaLoad], plan: dict[str, int]) -> None:
        """Tell the newest receivers of each process in ``plan`` to come back later."""
        for load in loads:
            count = plan.get(load.name, 0)
            if not count:
                continue
            members = [
                (room, member)
                for room in self.rooms.values()
                for member in room.members.values()
                if member.subscribe_peer in load.subscribers
                and not member.publishing
                and member.role not in PUBLISHING_ROLES
                and room.floor != member.id
            ]
            members.sort(key=lambda pair: pair[1].joined, reverse=True)
            shed = members[:count]
            logger.warning(
                "%s runs %.0f ms late: shedding %d of its %d receivers",
                load.name,
                load.lag * 1000,
                len(shed),
                len(load.subscribers),
            )
            self.overload.shed(len(shed))
            for room, member in shed:
                await member.send(
                    {
                        "type": "error",
                        "code": "server-busy",
                        "message": "this server is overloaded: try again later or another node",
                    }
                )
                await room.remove_member(member)
                await self.drop_room_if_empty(room)
            # Closing waits for each client's answer: all at once, not one after another.
            closing = [m.ws.close() for _, m in shed if m.ws is not None and not m.ws.closed]
            await asyncio.gather(*closing, return_exceptions=True)

    async def _speakers(self) -> None:
        """Announce each room's active speaker (RFC 6464 levels), a few times a second."""
        while True:
            await asyncio.sleep(0.3)
            for room in list(self.rooms.values()):
                try:
                    await room.update_active_speaker()
                except Exception:
                    logger.exception("active speaker of %s", room.id)

    async def _presence(self) -> None:
        """Refresh this node's members and its own registration in the store."""
        ttl = self.config.signaling.presence_ttl
        while True:
            try:
                await self.store.register_node(
                    self.node_id,
                    {"rooms": len(self.rooms), "peers": sum(self.sfu.peer_counts().values())},
                    ttl,
                )
                for room in list(self.rooms.values()):
                    for member in list(room.members.values()):
                        if not await self.store.heartbeat(room.id, member.id, ttl):
                            await self.store.join(room.id, room.record(member), ttl)
            except Exception:
                logger.exception("presence refresh failed")
            await asyncio.sleep(ttl / 3)


SERVER = web.AppKey("server", Server)


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    server = request.app[SERVER]
    limit = server.config.signaling.max_message_bytes
    # aiohttp closes (1009) beyond max_msg_size; up to it, oversized messages
    # get a "message-too-large" error and the connection stays.
    ws = web.WebSocketResponse(heartbeat=15.0, max_msg_size=4 * limit)
    await ws.prepare(request)
    session = Session(server, ws, request.query.get("room"))
    try:
        await session.run()
    finally:
        await session.close()
        if not ws.closed:
            await ws.close()
    return ws


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def _room_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "room.html")


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(config: Config) -> web.Application:
    """The Telebridge application for ``config`` (no module-level state)."""
    app = web.Application(client_max_size=config.signaling.max_message_bytes * 4)
    server = Server(config)
    app[SERVER] = server

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await server.start()
        yield
        with contextlib.suppress(Exception):
            await server.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/", _index)
    app.router.add_get("/room/{room}", _room_page)
    app.router.add_get("/healthz", _healthz)
    app.router.add_static("/static/", STATIC)
    add_admin_routes(app, SERVER)
    add_archive_routes(app, Path(config.recorder.directory), config.signaling.secret)
    add_metrics_route(app, SERVER)
    return app
