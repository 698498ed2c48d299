"""One WebSocket connection: framing, limits, authentication and message dispatch.

Every problem with a message becomes an ``error`` frame with a stable code
(``signaling/PROTOCOL.md``); only authentication failures close the socket.
Nothing a client sends can raise out of this module into the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from sfu.server import SfuError
from signaling.room import PUBLISHING_ROLES, STEREO_LAYOUTS, Member, Room
from signaling.tokens import ADMIN_ROLE, TokenError, verify_token

if TYPE_CHECKING:
    from signaling.app import Server

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
#: Error codes after which the socket is closed.
FATAL = {
    "auth-required",
    "invalid-token",
    "token-expired",
    "wrong-room",
    "room-full",
    "too-many-rooms",
    "server-busy",
    "unsupported-protocol",
}


class ProtocolError(Exception):
    """A request that cannot be served; ``code`` goes to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class TokenBucket:
    """Per-connection message rate limit: ``rate`` per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.last = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def _stereo(message: dict[str, Any]) -> str:
    """The ``stereo`` field: how the publisher's video packs the two eyes."""
    layout = _field(message, "stereo", str)
    if layout not in STEREO_LAYOUTS:
        raise ProtocolError("invalid-message", f"stereo must be one of {list(STEREO_LAYOUTS)}")
    return str(layout)


def _field(message: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = message.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError("invalid-message", f"field {name!r} is missing or has the wrong type")
    return value


class Session:
    """The server side of one client's WebSocket."""

    def __init__(self, server: Server, ws: web.WebSocketResponse, url_room: str | None) -> None:
        self.server = server
        self.ws = ws
        self.url_room = url_room
        self.config = server.config.signaling
        self.bucket = TokenBucket(self.config.rate_limit, self.config.rate_burst)
        self.room: Room | None = None
        self.member: Member | None = None
        self.closing = False
        self.handlers: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]] = {
            "join": self.on_join,
            "publish": self.on_publish,
            "unpublish": self.on_unpublish,
            "set-stereo": self.on_set_stereo,
            "link": self.on_link,
            "answer": self.on_answer,
            "ice": self.on_ice,
            "raise-hand": self.on_raise_hand,
            "grant-floor": self.on_grant_floor,
            "revoke-floor": self.on_revoke_floor,
            "mute": self.on_mute,
            "remove": self.on_remove,
            "end-room": self.on_end_room,
            "start-recording": self.on_recording,
            "stop-recording": self.on_recording,
            "ping": self.on_ping,
            "leave": self.on_leave,
        }

    # ------------------------------------------------------------- plumbing

    async def send(self, message: dict[str, Any]) -> None:
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_str(json.dumps(message))

    async def error(self, code: str, message: str, request_id: Any = None) -> None:
        reply: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if request_id is not None:
            reply["id"] = request_id
        await self.send(reply)
        if code in FATAL:
            self.closing = True
            await self.ws.close()

    async def run(self) -> None:
        """Serve the socket until it closes."""
        try:
            first = await asyncio.wait_for(self.ws.receive(), timeout=self.config.join_timeout)
        except TimeoutError:
            await self.error("auth-required", "send join first")
            return
        await self.handle(first)
        while not self.ws.closed and not self.closing:
            message = await self.ws.receive()
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
            await self.handle(message)

    async def handle(self, raw: Any) -> None:
        """One frame: size, JSON, rate limit, authentication, dispatch."""
        if raw.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            self.closing = True
            return
        if raw.type != WSMsgType.TEXT:
            await self.error("invalid-message", "frames must be JSON text")
            return
        if len(raw.data) > self.config.max_message_bytes:
            await self.error(
                "message-too-large",
                f"messages are limited to {self.config.max_message_bytes} bytes",
            )
            return
        if not self.bucket.take():
            await self.error("rate-limited", "too many messages; this one was dropped")
            return
        try:
            message = json.loads(raw.data)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            await self.error("bad-json", "a message must be a JSON object")
            return
        request_id = message.get("id")
        kind = message.get("type")
        handler = self.handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            await self.error("unknown-type", f"unknown message type {kind!r}", request_id)
            return
        if self.member is None and kind != "join":
            await self.error("auth-required", "send join first", request_id)
            return
        try:
            reply = await handler(message)
        except ProtocolError as exc:
            await self.error(exc.code, str(exc), request_id)
            return
        except TokenError as exc:
            await self.error(exc.code, str(exc), request_id)
            return
        except SfuError as exc:
            sdp_codes = ("invalid-sdp", "no-media", "codec-unsupported")
            code = "invalid-sdp" if exc.code in sdp_codes else "invalid-message"
            await self.error(code, str(exc), request_id)
            return
        except Exception:
            logger.exception("handling %s failed", kind)
            await self.error("internal", "the server failed to handle this message", request_id)
            return
        if reply is not None:
            if request_id is not None:
                reply["id"] = request_id
            await self.send(reply)

    def require(self, *roles: str) -> tuple[Room, Member]:
        assert self.room is not None and self.member is not None
        if self.member.role not in roles:
            raise ProtocolError("forbidden", f"a {self.member.role} may not do this")
        return self.room, self.member

    def joined(self) -> tuple[Room, Member]:
        assert self.room is not None and self.member is not None
        return self.room, self.member

    async def close(self) -> None:
        """The socket ended: the member leaves its room."""
        if self.room is not None and self.member is not None:
            room, member = self.room, self.member
            self.member = None
            if room.members.get(member.id) is member:
                await room.remove_member(member)
            await self.server.drop_room_if_empty(room)

    # ------------------------------------------------------------- handlers

    async def on_join(self, message: dict[str, Any]) -> None:
        if self.member is not None:
            raise ProtocolError("already-joined", "this socket has joined already")
        if message.get("protocol", PROTOCOL_VERSION) != PROTOCOL_VERSION:
            raise ProtocolError(
                "unsupported-protocol", f"this server speaks protocol {PROTOCOL_VERSION}"
            )
        grant = verify_token(self.config.secret, message.get("token"))
        if grant.role == ADMIN_ROLE:
            raise ProtocolError("forbidden", "admin tokens are for the admin API")
        asked = message.get("room", self.url_room)
        if asked is not None and asked != grant.room:
            raise ProtocolError("wrong-room", "the token is for another room")
        receive = message.get("receive", True)
        if not isinstance(receive, bool):
            raise ProtocolError("invalid-message", "field 'receive' must be a boolean")
        if receive and (busy := self.server.busy()):
            raise ProtocolError("server-busy", f"{busy}: try again later or another node")
        room = await self.server.room_for_join(grant.room)
        previous = room.find_by_subject(grant.subject)
        if len(room.members) - (previous is not None) >= self.config.max_participants:
            await self.server.drop_room_if_empty(room)
            raise ProtocolError("room-full", "the room is full")
        # Add the newcomer first, so the room never looks empty (and gets dropped)
        # while a previous session of the same identity is being replaced.
        member = room.new_member(grant.name, grant.role, grant.subject, self.ws, receive)
        self.room, self.member = room, member
        if previous is not None:
            # The same identity rejoined (a kiosk after a drop): the new socket wins.
            await room.remove_member(previous)
            if previous.ws is not None and not previous.ws.closed:
                await previous.ws.close()
        await room.admit(member, self.config.presence_ttl)
        joined = {
            "type": "joined",
            "protocol": PROTOCOL_VERSION,
            "self": {"id": member.id, "name": member.name, "role": member.role},
            "room": {"id": room.id, "recording": room.recording is not None},
            "participants": [
                room.describe(m) for m in room.members.values() if room.sees(member, m)
            ],
            "floor": room.floor,
        }
        if "id" in message:
            joined["id"] = message["id"]
        await self.send(joined)
        if member.receive:
            await room.sync(member)
            await self.send({"type": "main-feed", "participant": room.main_feed})
        return None

    async def on_publish(self, message: dict[str, Any]) -> dict[str, Any]:
        room, member = self.joined()
        if member.role not in PUBLISHING_ROLES and room.floor != member.id:
            raise ProtocolError(
                "forbidden", "only the floor holder, presenters and moderators publish"
            )
        stereo = _stereo(message) if "stereo" in message else "mono"
        answer, tracks = await room.publish(member, _field(message, "sdp", str), stereo)
        return {"type": "published", "sdp": answer, "tracks": tracks}

    async def on_link(self, message: dict[str, Any]) -> None:
        """The client's own link round trip (no reply): see ``Member.rtt_ms``."""
        room, member = self.joined()
        rtt_ms = _field(message, "rtt_ms", (int, float))
        if not 0 <= rtt_ms <= 60_000:
            raise ProtocolError("invalid-message", "rtt_ms must be between 0 and 60000")
        await room.set_link(member, int(rtt_ms))
        return None

    async def on_set_stereo(self, message: dict[str, Any]) -> dict[str, Any]:
        room, member = self.joined()
        if member.role not in PUBLISHING_ROLES and room.floor != member.id:
            raise ProtocolError("forbidden", "only publishers describe their picture")
        await room.set_stereo(member, _stereo(message))
        return {"type": "ok"}

    async def on_unpublish(self, message: dict[str, Any]) -> dict[str, Any]:
        room, member = self.joined()
        if member.publish_peer is None:
            raise ProtocolError("not-publishing", "nothing is being published")
        await room.unpublish(member)
        return {"type": "unpublished"}

    async def on_answer(self, message: dict[str, Any]) -> dict[str, Any]:
        room, member = self.joined()
        await room.answered(member, _field(message, "sdp", str))
        return {"type": "ok"}

    async def on_ice(self, message: dict[str, Any]) -> None:
        _, member = self.joined()
        target = message.get("target")
        peer = {"publish": member.publish_peer, "subscribe": member.subscribe_peer}.get(
            target if isinstance(target, str) else ""
        )
        if target not in ("publish", "subscribe"):
            raise ProtocolError("invalid-message", "target must be 'publish' or 'subscribe'")
        if peer is None:
            raise ProtocolError("not-publishing", f"there is no {target} connection")
        candidate = message.get("candidate")
        if candidate is not None and not isinstance(candidate, dict):
            raise ProtocolError("invalid-message", "candidate must be an object or null")
        try:
            await self.server.sfu.add_ice_candidate(peer, candidate)
        except SfuError as exc:
            raise ProtocolError("invalid-message", str(exc)) from exc
        return None

    async def on_raise_hand(self, message: dict[str, Any]) -> dict[str, Any]:
        room, member = self.require("participant", "viewer")
        member.hand = _field(message, "raised", bool)
        await room.updated(member)
        return {"type": "ok"}

    def _target(self, message: dict[str, Any]) -> Member:
        room, _ = self.joined()
        target = room.members.get(_field(message, "participant", str))
        if target is None:
            raise ProtocolError("unknown-participant", "no such participant in this room")
        return target

    async def on_grant_floor(self, message: dict[str, Any]) -> dict[str, Any]:
        room, _ = self.require("moderator")
        target = self._target(message)
        if target.role == "viewer":
            raise ProtocolError("forbidden", "viewers receive only")
        target.hand = False
        await room.set_floor(target.id)
        return {"type": "ok"}

    async def on_revoke_floor(self, message: dict[str, Any]) -> dict[str, Any]:
        room, _ = self.require("moderator")
        holder = room.members.get(room.floor or "")
        await room.set_floor(room._default_floor())
        if holder is not None and holder.role == "participant":
            await room.unpublish(holder)
        return {"type": "ok"}

    async def on_mute(self, message: dict[str, Any]) -> dict[str, Any]:
        room, _ = self.require("moderator")
        target = self._target(message)
        kind = message.get("kind")
        if kind not in ("audio", "video"):
            raise ProtocolError("invalid-message", "kind must be 'audio' or 'video'")
        if not room.mute(target, kind):
            raise ProtocolError("not-publishing", f"{target.name} publishes no {kind}")
        await target.send({"type": "muted", "kind": kind})
        await room.updated(target)
        return {"type": "ok"}

    async def on_remove(self, message: dict[str, Any]) -> dict[str, Any]:
        self.require("moderator")
        target = self._target(message)
        await self.server.remove(self.joined()[0], target, "removed by a moderator")
        return {"type": "ok"}

    async def on_end_room(self, message: dict[str, Any]) -> None:
        room, _ = self.require("moderator")
        await self.server.end_room(room)
        return None

    async def on_recording(self, message: dict[str, Any]) -> dict[str, Any]:
        room, _ = self.require("moderator")
        await self.server.set_recording(room, message["type"] == "start-recording")
        return {"type": "ok"}

    async def on_ping(self, message: dict[str, Any]) -> dict[str, Any]:
        return {"type": "pong"}

    async def on_leave(self, message: dict[str, Any]) -> None:
        self.closing = True
        await self.close()
        await self.ws.close()
        return None
