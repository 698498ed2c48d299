"""The bench presenter's video: the test pattern encoded once, with PyAV, then replayed.

A loop of ``loop_seconds`` of the moving pattern (plus film-grain noise, so
the encoder really spends the requested bitrate, as on a detailed surgical
picture) is encoded once at start-up with libvpx (VP8) or libx264 (H.264),
constant bitrate, one keyframe at the start of the loop. The track then
hands aiortc the encoded packets (``av.Packet``: aiortc packetizes them, it
does not re-encode) paced at the frame rate, so the presenter costs almost
nothing while the bench runs. The RTP abs-send-time extension carries the
send time of every packet, which subscribers turn into end-to-end latency.

A keyframe request (PLI/FIR) restarts the loop at its keyframe: the stream
stays valid, only the pattern jumps back. ``keyframe_requests`` counts them.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable
from typing import Any, cast

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.video.codeccontext import VideoCodecContext

from bench.synthetic import PatternVideoTrack


def encode_loop(
    codec: str,
    width: int,
    height: int,
    fps: int,
    bitrate: int,
    frames: int,
    draw: Callable[[int], np.ndarray] | None = None,
) -> list[bytes]:
    """Encode ``frames`` pattern frames once; returns one encoded frame per entry.

    ``draw(n)`` gives frame ``n`` as a BGR image of the requested size
    (default: the moving test pattern; the stereo card for 3D feeds).
    """
    draw = draw or PatternVideoTrack(width, height).draw
    rng = np.random.default_rng(7)
    grain = rng.integers(-14, 15, size=(height + 64, width + 64, 1), dtype=np.int16)
    name = {"vp8": "libvpx", "h264": "libx264"}[codec]
    context = cast(VideoCodecContext, av.CodecContext.create(name, "w"))
    context.width, context.height = width, height
    context.pix_fmt = "yuv420p"
    context.time_base = fractions.Fraction(1, fps)
    context.framerate = fractions.Fraction(fps, 1)
    context.bit_rate = bitrate
    context.gop_size = frames
    if codec == "vp8":
        context.options = {
            "deadline": "realtime",
            "cpu-used": "8",
            "lag-in-frames": "0",
            "minrate": str(bitrate),
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),
            "undershoot-pct": "95",
            "overshoot-pct": "15",
            "static-thresh": "0",
        }
    else:
        context.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "profile": "baseline",
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),
            "bf": "0",
            "x264-params": f"keyint={frames}:min-keyint={frames}:scenecut=0:nal-hrd=cbr",
        }
    encoded: list[bytes] = []
    for index in range(frames):
        image = draw(index).astype(np.int16)
        dy, dx = (index * 13) % 64, (index * 29) % 64
        image += grain[dy : dy + height, dx : dx + width]
        frame = av.VideoFrame.from_ndarray(
            np.clip(image, 0, 255).astype(np.uint8), format="bgr24"
        ).reformat(format="yuv420p")
        frame.pts = index
        frame.time_base = context.time_base
        if index == 0:
            frame.pict_type = av.video.frame.PictureType.I
        encoded.append(b"".join(bytes(p) for p in context.encode(frame)))
    tail = b"".join(bytes(p) for p in context.encode(None))
    if tail:
        encoded[-1] += tail
    return encoded


class EncodedLoopTrack(MediaStreamTrack):
    """A video track replaying pre-encoded frames at ``fps`` (aiortc packetizes them)."""

    kind = "video"

    def __init__(self, frames: list[bytes], fps: int) -> None:
        super().__init__()
        self._frames = frames
        self._fps = fps
        self._time_base = fractions.Fraction(1, 90000)
        self._index = 0
        self._sent = 0
        self._start: float | None = None
        self.keyframe_requests = 0

    def attach(self, pc: Any) -> None:
        """Send the peer's keyframe requests (PLI/FIR) for this track to the loop."""
        sender = next(t.sender for t in pc.getTransceivers() if t.sender.track is self)
        setattr(sender, "_send_keyframe", self.request_keyframe)  # noqa: B010

    def request_keyframe(self) -> None:
        """Restart the loop at its keyframe (called on PLI/FIR)."""
        self.keyframe_requests += 1
        self._index = 0

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.time()
        else:
            await asyncio.sleep(self._start + self._sent / self._fps - time.time())
        data = self._frames[self._index]
        self._index = (self._index + 1) % len(self._frames)
        packet = av.Packet(data)
        packet.pts = self._sent * 90000 // self._fps
        packet.time_base = self._time_base
        self._sent += 1
        return packet
