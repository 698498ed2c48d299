"""Synthetic media sources: a moving test pattern and a tone.

The video is a surgical-style test card drawn with numpy/OpenCV: a moving
bar and disc over a gradient, with the frame number printed on it, so that
a decoded picture shows motion and which frame it is. The audio is a
440 Hz tone with a 1 s on / 1 s off cadence (so audio levels change).
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time

import cv2
import numpy as np
from aiortc import VideoStreamTrack
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

AUDIO_RATE = 48000
AUDIO_PTIME = 0.020


class PatternVideoTrack(VideoStreamTrack):
    """A moving test pattern of a given size at 30 fps (yuv420p frames)."""

    def __init__(self, width: int = 640, height: int = 360) -> None:
        super().__init__()
        self.width = width
        self.height = height
        self.frames = 0
        y = np.linspace(40, 120, height, dtype=np.uint8)[:, None]
        self._background = np.repeat(np.repeat(y, width, axis=1)[:, :, None], 3, axis=2)

    def draw(self, n: int) -> np.ndarray:
        """Frame ``n`` of the pattern as a BGR image (deterministic in ``n``)."""
        image = self._background.copy()
        x = (n * 7) % self.width
        cv2.rectangle(
            image,
            (x, 0),
            (min(x + self.width // 12, self.width - 1), self.height - 1),
            (40, 40, 200),
            -1,
        )
        cx = int(self.width / 2 + self.width / 4 * math.cos(n / 15))
        cy = int(self.height / 2 + self.height / 4 * math.sin(n / 15))
        cv2.circle(image, (cx, cy), max(4, self.height // 10), (200, 200, 240), -1)
        cv2.putText(
            image,
            f"{n:06d}",
            (8, max(16, self.height // 8)),
            cv2.FONT_HERSHEY_SIMPLEX,
            max(0.4, self.height / 360),
            (255, 255, 255),
            2,
        )
        return image

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        image = self.draw(self.frames)
        self.frames += 1
        frame = VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
        frame.pts = pts
        frame.time_base = time_base
        return frame


class StereoPattern:
    """A side-by-side stereo (3D) test card, as a 3D laparoscopic tower sends it.

    The left half is the left eye, the right half the right eye, each the
    moving pattern squeezed to half width. The right eye's pattern is
    shifted ``disparity`` pixels to the left (objects float in front of the
    screen), and each eye carries a marker a viewer can check pixel by
    pixel: a pure red box in the left eye and a pure green box in the right
    one, at the same place in each eye (:attr:`marker`), labelled L and R.
    """

    #: Marker box in each eye, as fractions of the eye's width and height.
    marker = (0.06, 0.66, 0.26, 0.9)
    LEFT_BGR = (0, 0, 255)
    RIGHT_BGR = (0, 255, 0)

    def __init__(self, width: int = 1920, height: int = 1080, disparity: int = 24) -> None:
        self.width = width
        self.height = height
        self.eye_width = width // 2
        self.disparity = disparity
        self._eye = PatternVideoTrack(self.eye_width + disparity, height)

    def draw(self, n: int) -> np.ndarray:
        """Frame ``n`` (BGR, ``height`` x ``width``), deterministic in ``n``."""
        wide = self._eye.draw(n)
        left = np.ascontiguousarray(wide[:, : self.eye_width])
        right = np.ascontiguousarray(wide[:, self.disparity : self.disparity + self.eye_width])
        for eye, color, label in ((left, self.LEFT_BGR, "L"), (right, self.RIGHT_BGR, "R")):
            x0, y0, x1, y1 = self._marker_box()
            cv2.rectangle(eye, (x0, y0), (x1, y1), color, -1)
            cv2.putText(
                eye,
                label,
                (x1 + 12, y1),
                cv2.FONT_HERSHEY_SIMPLEX,
                self.height / 270,
                (255, 255, 255),
                max(2, self.height // 180),
            )
        return np.hstack([left, right])

    def _marker_box(self) -> tuple[int, int, int, int]:
        fx0, fy0, fx1, fy1 = self.marker
        w, h = self.eye_width, self.height
        return int(fx0 * w), int(fy0 * h), int(fx1 * w), int(fy1 * h)


class ToneAudioTrack(MediaStreamTrack):
    """A 440 Hz tone, one second on and one second off, mono s16 at 48 kHz."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._samples = 0
        self._start: float | None = None
        self._chunk = int(AUDIO_RATE * AUDIO_PTIME)
        self._time_base = fractions.Fraction(1, AUDIO_RATE)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.time()
        else:
            await asyncio.sleep(self._start + self._samples / AUDIO_RATE - time.time())
        start = self._samples
        self._samples += self._chunk
        samples = np.zeros(self._chunk, dtype=np.int16)
        if (start // AUDIO_RATE) % 2 == 0:
            t = np.arange(start, start + self._chunk) / AUDIO_RATE
            samples = (np.sin(2 * math.pi * 440 * t) * 8000).astype(np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = start
        frame.time_base = self._time_base
        return frame
