"""Thumbnails of a recording: a few keyframes spread over a media file, as small JPEGs.

CPU work (demuxing, decoding, scaling): run :func:`make_thumbnails` in a thread
executor, never on the event loop. A corrupt or truncated file gives fewer
thumbnails or none; only writing them can raise (``OSError``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import cv2
import numpy as np
from av.container import InputContainer
from av.packet import Packet
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

LOG = logging.getLogger(__name__)

JPEG_QUALITY = 80


def make_thumbnails(
    directory: Path, media_name: str, count: int = 4, width: int = 320
) -> list[str]:
    """Write up to ``count`` thumbnails ``thumb-N.jpg`` of ``directory / media_name``.

    Keyframes are taken at evenly spread points of the file, scaled down to
    ``width`` pixels wide (never up) keeping the aspect ratio. Returns the
    names written, in time order; identical keyframes are written once.
    """
    if count < 0 or width < 1:
        raise ValueError(f"bad thumbnail count {count} or width {width}")
    images = [_scaled(frame, width) for frame in _keyframes(directory / media_name, count)]
    names: list[str] = []
    for image in images:
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            continue
        name = f"thumb-{len(names)}.jpg"
        temporary = directory / f".{name}.tmp"
        temporary.write_bytes(jpeg.tobytes())
        os.replace(temporary, directory / name)
        names.append(name)
    return names


def _keyframes(path: Path, count: int) -> list[np.ndarray]:
    """Up to ``count`` distinct keyframes of ``path`` as BGR images; [] when it cannot be read."""
    if count == 0:
        return []
    try:
        with av.open(str(path), "r") as container:
            if not container.streams.video:
                return []
            frames = _by_seeking(container, container.streams.video[0], count)
        if frames is None:
            frames = _by_scanning(path, count)
        return [frame.to_ndarray(format="bgr24") for frame in frames]
    except Exception as exc:  # a decoder on damaged input may fail in any way: log, go on
        LOG.warning("no thumbnails from %s: %s", path, exc)
        return []


def _duration_s(container: InputContainer, stream: VideoStream) -> float | None:
    """The duration the file declares, in seconds, if any."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _by_seeking(
    container: InputContainer, stream: VideoStream, count: int
) -> list[VideoFrame] | None:
    """The first frame after seeks to ``count`` spread points; None if the file cannot seek."""
    duration = _duration_s(container, stream)
    if duration is None or duration <= 0 or not stream.time_base:
        return None
    frames: list[VideoFrame] = []
    seen: set[int | None] = set()
    for n in range(count):
        target = duration * (n + 0.5) / count
        try:
            container.seek(int(target / stream.time_base), stream=stream)
        except av.FFmpegError:
            return None
        frame = _first_frame(stream, container.demux(stream))
        if frame is not None and frame.pts not in seen:
            seen.add(frame.pts)
            frames.append(frame)
    return frames


def _by_scanning(path: Path, count: int) -> list[VideoFrame]:
    """For files without a duration or cues: find the keyframes, decode ``count`` spread ones."""
    with av.open(str(path), "r") as container:
        stream = container.streams.video[0]
        keyframes = sum(1 for packet in container.demux(stream) if packet.is_keyframe)
    if keyframes == 0:
        return []
    wanted = sorted({(2 * n + 1) * keyframes // (2 * count) for n in range(count)})
    frames = []
    with av.open(str(path), "r") as container:
        stream = container.streams.video[0]
        packets = container.demux(stream)
        index = -1
        for packet in packets:
            if not packet.is_keyframe:
                continue
            index += 1
            if index in wanted:
                frame = _first_frame(stream, _starting_with(packet, packets))
                if frame is not None:
                    frames.append(frame)
                if index == wanted[-1]:
                    break
                stream.codec_context.flush_buffers()
    return frames


def _starting_with(
    first: Packet[VideoStream], rest: Iterable[Packet[VideoStream]]
) -> Iterator[Packet[VideoStream]]:
    """``first``, then the packets of ``rest``."""
    yield first
    yield from rest


def _first_frame(stream: VideoStream, packets: Iterable[Packet[VideoStream]]) -> VideoFrame | None:
    """The first frame decoded from ``packets`` (the decoder flushed at their end), or None."""
    for packet in packets:
        if packet.stream is not stream:
            continue
        for frame in packet.decode():
            return frame
        if packet.size == 0:  # the demuxer's end-of-stream packet: the decoder has flushed
            return None
    return None


def _scaled(image: np.ndarray, width: int) -> np.ndarray:
    """``image`` at most ``width`` pixels wide, keeping its aspect ratio."""
    height, original = image.shape[:2]
    if original <= width:
        return image
    size = (width, max(1, round(height * width / original)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
