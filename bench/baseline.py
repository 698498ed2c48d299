"""The comparison server for ``telebridge bench --baseline mediarelay``.

The design Telebridge replaces: aiortc's ``MediaRelay`` receives the
presenter's tracks, **decodes them once and re-encodes them for every
subscriber** (one aiortc sender, one encoder each). It speaks just enough of
protocol v1 for the bench's presenter and subscribers (``join``, ``publish``,
the server's ``offer``, ``answer``; no tokens, roles or rooms beyond one
feed) and exposes ``/healthz`` and the ``telebridge_packets_out_total``
counter on ``/metrics``, so the bench measures it exactly like Telebridge.

Run it with ``python -m bench.baseline --port P``; it is a yardstick, not a
product.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import WSMsgType, web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from bench.clients import LoopbackPeerConnection

logger = logging.getLogger(__name__)


class RelayServer:
    """One feed: the latest publisher's tracks, relayed (re-encoded) to every subscriber."""

    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.tracks: dict[str, MediaStreamTrack] = {}  # kind -> the publisher's track
        self.peers: set[RTCPeerConnection] = set()
        self.waiting: list[tuple[web.WebSocketResponse, int]] = []

    def packets_out(self) -> int:
        """RTP packets sent to subscribers (aiortc's private sender counter)."""
        return sum(
            getattr(sender, "_RTCRtpSender__packet_count", 0)
            for pc in self.peers
            for sender in pc.getSenders()
        )

    async def publish(self, offer: str) -> str:
        pc = LoopbackPeerConnection()
        self.peers.add(pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.tracks[track.kind] = track

        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return str(pc.localDescription.sdp)

    async def offer(self) -> tuple[RTCPeerConnection, dict[str, Any]]:
        pc = LoopbackPeerConnection()
        self.peers.add(pc)
        for track in self.tracks.values():
            pc.addTrack(self.relay.subscribe(track))
        await pc.setLocalDescription(await pc.createOffer())
        described = [
            {
                "id": f"relay:{t.mid}",
                "mid": t.mid,
                "kind": t.kind,
                "slot": "main",
                "participant": None,
            }
            for t in pc.getTransceivers()
        ]
        return pc, {"type": "offer", "sdp": pc.localDescription.sdp, "tracks": described}

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=15.0)
        await ws.prepare(request)
        subscriber: RTCPeerConnection | None = None
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    break
                data = json.loads(message.data)
                kind = data.get("type")
                if kind == "join":
                    await ws.send_json(
                        {
                            "type": "joined",
                            "id": data.get("id"),
                            "self": {"id": "p", "name": "", "role": "viewer"},
                            "room": {"id": "relay", "recording": False},
                            "participants": [],
                            "floor": None,
                            "protocol": 1,
                        }
                    )
                    if data.get("receive", True) and self.tracks:
                        subscriber, offer = await self.offer()
                        await ws.send_json(offer)
                elif kind == "publish":
                    answer = await self.publish(data["sdp"])
                    await ws.send_json(
                        {"type": "published", "id": data.get("id"), "sdp": answer, "tracks": []}
                    )
                elif kind == "answer" and subscriber is not None:
                    await subscriber.setRemoteDescription(
                        RTCSessionDescription(data["sdp"], "answer")
                    )
                    await ws.send_json({"type": "ok", "id": data.get("id")})
                elif kind == "leave":
                    break
        finally:
            if subscriber is not None:
                self.peers.discard(subscriber)
                with contextlib.suppress(Exception):
                    await subscriber.close()
        return ws


def create_app() -> web.Application:
    server = RelayServer()
    app = web.Application()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=f"telebridge_packets_out_total {server.packets_out()}\n")

    async def close_peers(app: web.Application) -> None:
        await asyncio.gather(*(pc.close() for pc in server.peers), return_exceptions=True)

    app.router.add_get("/ws", server.handle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.on_shutdown.append(close_peers)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args()
    logging.basicConfig(level=logging.WARNING)
    web.run_app(create_app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
