"""Test helpers: a real server on a loopback port and an aiortc protocol client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from bench.clients import LoopbackPeerConnection, ReceivedTrack, sending_peer
from signaling.app import SERVER, Server, create_app
from signaling.config import Config
from signaling.tokens import issue_token

SECRET = "test-secret-of-at-least-thirty-two-bytes!"


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port); yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running_server(config: Config) -> AsyncIterator[tuple[str, Server]]:
    """Serve ``create_app(config)`` on 127.0.0.1 (a free port); yields (base URL, server)."""
    config.signaling.secret = SECRET
    app = create_app(config)
    async with serving(app) as base:
        yield base, app[SERVER]


def room_link(base: str, room: str, role: str, name: str, **query: str) -> str:
    """A kiosk deep link to the room page (joins by itself), as ops hand them out."""
    jwt = token(room, role, name, subject=name)
    extra = "".join(f"&{key}={value}" for key, value in query.items())
    return f"{base}/room/{room}?token={jwt}&autojoin=1{extra}"


def token(room: str, role: str, name: str | None = None, ttl: float = 600, **kw: Any) -> str:
    return issue_token(SECRET, room, role, name or role, ttl, **kw)


class Client:
    """One participant speaking the protocol; media through aiortc peers."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.inbox: list[dict[str, Any]] = []
        self.event = asyncio.Event()
        self.self_id: str | None = None
        self.publisher: LoopbackPeerConnection | None = None
        self.subscriber: LoopbackPeerConnection | None = None
        self.tracks: dict[str, dict[str, Any]] = {}  # mid -> track description
        self.received: dict[str, ReceivedTrack] = {}  # mid -> what was decoded
        self.offers = 0
        self.auto_answer = True
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = asyncio.Event()

    async def connect(self) -> None:
        self.ws = await self.session.ws_connect(f"{self.base}/ws")
        self._tasks.append(asyncio.ensure_future(self._reader()))

    async def _reader(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            self.inbox.append(data)
            self.event.set()
            if data.get("type") == "offer" and self.auto_answer:
                await self.answer_offer(data)
            elif data.get("type") == "tracks":
                self.tracks = {t["mid"]: t for t in data["tracks"]}
        self.closed.set()

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(message))

    async def send_raw(self, text: str) -> None:
        assert self.ws is not None
        await self.ws.send_str(text)

    async def expect(
        self, message_type: str, timeout: float = 10.0, **fields: Any
    ) -> dict[str, Any]:
        """The first message (seen or to come) of this type with these field values."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.inbox:
                if message.get("type") == message_type and all(
                    message.get(k) == v for k, v in fields.items()
                ):
                    self.inbox.remove(message)
                    return message
            self.event.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no {message_type} {fields} within {timeout} s; got {self.inbox}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), remaining)

    async def request(self, message: dict[str, Any], reply: str = "ok") -> dict[str, Any]:
        """Send with an id; return the reply, or raise on an error."""
        request_id = f"r{time.monotonic_ns()}"
        await self.send({**message, "id": request_id})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for item in list(self.inbox):
                if item.get("id") == request_id:
                    self.inbox.remove(item)
                    if item.get("type") == "error":
                        raise ProtocolFailure(item["code"], item["message"])
                    assert item["type"] == reply, item
                    return item
            self.event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), 1)
        raise AssertionError(f"no reply to {message}")

    async def join(self, jwt: str, **extra: Any) -> dict[str, Any]:
        await self.connect()
        joined = await self.request(
            {"type": "join", "token": jwt, "protocol": 1, **extra}, reply="joined"
        )
        self.self_id = joined["self"]["id"]
        return joined

    async def publish(self, tracks: Sequence[MediaStreamTrack], **extra: Any) -> dict[str, Any]:
        pc = sending_peer(tracks)
        await pc.setLocalDescription(await pc.createOffer())
        published = await self.request(
            {"type": "publish", "sdp": pc.localDescription.sdp, **extra}, reply="published"
        )
        await pc.setRemoteDescription(RTCSessionDescription(published["sdp"], "answer"))
        self.publisher = pc
        return published

    async def answer_offer(self, offer: dict[str, Any]) -> None:
        self.offers += 1
        self.tracks = {t["mid"]: t for t in offer["tracks"]}
        if offer.get("restart") and self.subscriber is not None:
            await self.subscriber.close()  # a new server-side connection
            self.subscriber = None
            self.received = {}
        if self.subscriber is None:
            self.subscriber = LoopbackPeerConnection()
            self.subscriber.on("track", self._on_track)
        await self.subscriber.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await self.subscriber.setLocalDescription(await self.subscriber.createAnswer())
        await self.send({"type": "answer", "sdp": self.subscriber.localDescription.sdp})

    def _on_track(self, track: MediaStreamTrack) -> None:
        assert self.subscriber is not None
        mid = next(t.mid for t in self.subscriber.getTransceivers() if t.receiver.track is track)
        received = ReceivedTrack(track.kind)
        self.received[str(mid)] = received
        self._tasks.append(asyncio.ensure_future(self._consume(track, received)))

    async def _consume(self, track: MediaStreamTrack, received: ReceivedTrack) -> None:
        from aiortc.mediastreams import MediaStreamError
        from av import VideoFrame

        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                received.frames += 1
                received.arrivals.append(time.monotonic())
                if isinstance(frame, VideoFrame):
                    received.width, received.height = frame.width, frame.height

    def main(self, kind: str) -> ReceivedTrack:
        for mid, description in self.tracks.items():
            if description["slot"] == "main" and description["kind"] == kind:
                return self.received.get(mid, ReceivedTrack(kind))
        return ReceivedTrack(kind)

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        for pc in (self.publisher, self.subscriber):
            if pc is not None:
                await pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class ProtocolFailure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


async def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())
