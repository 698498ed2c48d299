"""A synthetic presenter that speaks the real protocol, like a browser would.

It joins a room over the WebSocket with a presenter token (``receive:
false``: it watches nothing), publishes the moving test pattern and a tone
through an aiortc peer connection (encoded by aiortc's PyAV encoders), and
rejoins by itself if the connection drops. Its video is paced like a
browser's (``bench/pacer.py``: keyframes spread over a few frame times, not
one burst). Used by ``./scripts/run``
(``telebridge serve --demo-presenter ROOM``) and reusable by the bench.

With ``stereo``, it publishes the side-by-side 3D test card instead
(:class:`bench.synthetic.StereoPattern`, 1920x1080), encoded once at
6 Mbit/s and replayed (aiortc's own VP8 encoder stops at 1.5 Mbit/s), and
says so in ``publish`` (``stereo: "sbs"``).
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
from aiortc.codecs import h264, vpx
from aiortc.mediastreams import MediaStreamTrack

from bench.clients import LoopbackPeerConnection, sending_peer
from bench.feed import EncodedLoopTrack, encode_loop
from bench.pacer import pace_video
from bench.synthetic import PatternVideoTrack, StereoPattern, ToneAudioTrack

logger = logging.getLogger(__name__)

#: The 3D test card: a side-by-side 1080p picture, as from a 3D endoscope tower.
STEREO_SIZE = (1920, 1080)
STEREO_BITRATE = 6_000_000
#: The most aiortc's encoders send (their rate follows REMB up to it).
ENCODER_CEILING_BPS = {"vp8": vpx.MAX_BITRATE, "h264": h264.MAX_BITRATE}


class ProtocolClientError(Exception):
    """The server answered with an error."""


async def publish_once(
    ws: aiohttp.ClientWebSocketResponse,
    token: str,
    tracks: Sequence[MediaStreamTrack],
    codec: str,
    stereo: str = "mono",
) -> LoopbackPeerConnection:
    """Join (publish-only) and publish ``tracks`` on an open socket; returns the peer.

    ``stereo`` is the video's layout (``mono``, ``sbs``, ``tb``), sent with ``publish``.
    """
    await ws.send_json({"type": "join", "token": token, "protocol": 1, "receive": False})
    joined = await _expect(ws, "joined")
    logger.info("presenter joined room %s as %s", joined["room"]["id"], joined["self"]["id"])
    pc = sending_peer(tracks, f"video/{codec}")
    await pc.setLocalDescription(await pc.createOffer())
    await ws.send_json(
        {"type": "publish", "id": "publish", "sdp": pc.localDescription.sdp, "stereo": stereo}
    )
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
    stereo: bool = False,
) -> None:
    """Publish into the room until cancelled, rejoining after drops (backoff to 10 s)."""
    stereo_frames: list[bytes] = []
    if stereo:
        card = StereoPattern(STEREO_SIZE[0], STEREO_SIZE[1])
        stereo_frames = await asyncio.get_running_loop().run_in_executor(
            None, encode_loop, codec, *STEREO_SIZE, 30, STEREO_BITRATE, 60, card.draw
        )
    delay = 0.5
    async with aiohttp.ClientSession() as session:
        while True:
            pc: LoopbackPeerConnection | None = None
            try:
                async with session.ws_connect(f"{url}/ws", heartbeat=15) as ws:
                    if stereo:
                        loop = EncodedLoopTrack(stereo_frames, 30)
                        pc = await publish_once(ws, token, [loop, ToneAudioTrack()], codec, "sbs")
                        loop.attach(pc)
                        pace_video(pc, loop, STEREO_BITRATE)
                    else:
                        video = PatternVideoTrack(width, height)
                        pc = await publish_once(ws, token, [video, ToneAudioTrack()], codec)
                        # aiortc's encoder adapts up to its ceiling: paced for that.
                        pace_video(pc, video, ENCODER_CEILING_BPS[codec])
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
