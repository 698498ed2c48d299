"""Admin HTTP API (``Authorization: Bearer <admin token>``), see PROTOCOL.md.

Room listings come from the store, so with a shared Redis every node's
rooms and participants are visible; removals and room ends act on the rooms
held by this node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from signaling.session import ProtocolError
from signaling.tokens import ADMIN_ROLE, TokenError, verify_token

if TYPE_CHECKING:
    from signaling.app import Server


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


def add_admin_routes(app: web.Application, key: web.AppKey[Server]) -> None:
    """Mount ``/admin/...`` on ``app``; the server is ``app[key]``."""

    def authorized(request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return _error(401, "auth-required", "an admin bearer token is required")
        try:
            grant = verify_token(request.app[key].config.signaling.secret, header[7:].strip())
        except TokenError as exc:
            return _error(401, exc.code, str(exc))
        if grant.role != ADMIN_ROLE:
            return _error(403, "forbidden", "this needs an admin token")
        return None

    async def describe(server: Server, room_id: str) -> dict[str, Any]:
        local = server.rooms.get(room_id)
        return {
            "id": room_id,
            "participants": await server.store.participants(room_id),
            "floor": local.floor if local is not None else None,
        }

    async def list_rooms(request: web.Request) -> web.Response:
        if (denied := authorized(request)) is not None:
            return denied
        server = request.app[key]
        return web.json_response(
            {"rooms": [await describe(server, r) for r in await server.store.rooms()]}
        )

    async def get_room(request: web.Request) -> web.Response:
        if (denied := authorized(request)) is not None:
            return denied
        server = request.app[key]
        room_id = request.match_info["room"]
        if room_id not in await server.store.rooms():
            return _error(404, "unknown-room", f"no room {room_id!r}")
        return web.json_response(await describe(server, room_id))

    async def remove_participant(request: web.Request) -> web.Response:
        if (denied := authorized(request)) is not None:
            return denied
        server = request.app[key]
        room = server.rooms.get(request.match_info["room"])
        member = room.members.get(request.match_info["participant"]) if room else None
        if room is None or member is None:
            return _error(404, "unknown-participant", "no such participant on this node")
        await server.remove(room, member, "removed by an administrator")
        return web.json_response({"removed": member.id})

    async def end_room(request: web.Request) -> web.Response:
        if (denied := authorized(request)) is not None:
            return denied
        server = request.app[key]
        room_id = request.match_info["room"]
        room = server.rooms.get(room_id)
        if room is not None:
            await server.end_room(room)
        elif room_id in await server.store.rooms():
            await server.store.end_room(room_id)
        else:
            return _error(404, "unknown-room", f"no room {room_id!r}")
        return web.json_response({"ended": room_id})

    async def recording(request: web.Request) -> web.Response:
        """POST starts recording a room held by this node, DELETE stops it."""
        if (denied := authorized(request)) is not None:
            return denied
        server = request.app[key]
        room = server.rooms.get(request.match_info["room"])
        if room is None:
            return _error(404, "unknown-room", "no such room on this node")
        active = request.method == "POST"
        try:
            await server.set_recording(room, active)
        except ProtocolError as exc:
            return _error(500, exc.code, str(exc))
        recording = room.recording
        return web.json_response(
            {"room": room.id, "recording": recording.id if recording is not None else None}
        )

    app.router.add_get("/admin/rooms", list_rooms)
    app.router.add_post("/admin/rooms/{room}/recording", recording)
    app.router.add_delete("/admin/rooms/{room}/recording", recording)
    app.router.add_get("/admin/rooms/{room}", get_room)
    app.router.add_delete("/admin/rooms/{room}/participants/{participant}", remove_participant)
    app.router.add_delete("/admin/rooms/{room}", end_room)
