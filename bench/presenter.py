"""A synthetic presenter that speaks the real protocol, like a browser would.

It joins a room over the WebSocket with a presenter token (``receive:
false``: it watches nothing), publishes the moving test pattern and a tone
through an aiortc peer connection (encoded once, by aiortc's PyAV encoders),
and rejoins by itself if the connection drops. Used by ``./scripts/run``
(``telebridge serve --demo-presenter ROOM``) and reusable by the bench.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from bench.clients import LoopbackPeerConnection, sending_peer
from bench.synthetic import PatternVideoTrack, ToneAudioTrack

logger = logging.getLogger(__name__)


class ProtocolClientError(Exception):
    """The server answered with an error."""


async def publish_once(
    ws: aiohttp.ClientWebSocketResponse,
    token: str,
    tracks: Sequence[MediaStreamTrack],
    codec: str,
) -> LoopbackPeerConnection:
    """Join (publish-only) and publish ``tracks`` on an open socket; returns the peer."""
    await ws.send_json({"type": "join", "token": token, "protocol": 1, "receive": False})
    joined = await _expect(ws, "joined")
    logger.info("presenter joined room %s as %s", joined["room"]["id"], joined["self"]["id"])
    pc = sending_peer(tracks, f"video/{codec}")
    await pc.setLocalDescription(await pc.createOffer())
    await ws.send_json({"type": "publish", "id": "publish", "sdp": pc.localDescription.sdp})
    published = await _expect(ws, "published")
    await pc.setRemoteDescription(RTCSessionDescription(published["sdp"], "answer"))
    return pc


async def _expect(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while True:
        message = await ws.receive(timeout=15)
        if message.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"socket closed while waiting for {kind}")
        data = json.loads(message.data)
        if data.get("type") == "error":
            raise ProtocolClientError(f"{data.get('code')}: {data.get('message')}")
        if data.get("type") == kind:
            return dict(data)


async def run_presenter(
    url: str,
    token: str,
    width: int = 1280,
    height: int = 720,
    codec: str = "vp8",
) -> None:
    """Publish into the room until cancelled, rejoining after drops (backoff to 10 s)."""
    delay = 0.5
    async with aiohttp.ClientSession() as session:
        while True:
            pc: LoopbackPeerConnection | None = None
            try:
                async with session.ws_connect(f"{url}/ws", heartbeat=15) as ws:
                    tracks = [PatternVideoTrack(width, height), ToneAudioTrack()]
                    pc = await publish_once(ws, token, tracks, codec)
                    delay = 0.5
                    async for message in ws:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            break
                        data = json.loads(message.data)
                        if data.get("type") in ("removed", "room-ended"):
                            logger.info("synthetic presenter: %s", data["type"])
                            return
            except (OSError, aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
                logger.info("synthetic presenter disconnected (%s); retrying", exc)
            except ProtocolClientError as exc:
                logger.error("synthetic presenter refused: %s", exc)
                return
            finally:
                if pc is not None:
                    with contextlib.suppress(Exception):
                        await pc.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
