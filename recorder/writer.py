"""Remuxing encoded frames into WebM/Matroska with PyAV, on a writer thread.

Nothing is decoded or re-encoded: each frame the depacketizer returns is
handed to FFmpeg's Matroska muxer as one packet. The muxer is opened with
short clusters (``cluster_time_limit`` 1 s), a flush after every packet
and a bounded interleaving delay, so a ``kill -9`` leaves a file that plays
up to its last second or so (measured in ``AIORTC_NOTES.md``); a clean
:meth:`MediaWriter.close` also writes the cues (seeking) and the duration.

Muxing blocks on disk I/O, so it runs on one thread per file fed by a
queue; the event loop only enqueues.
"""

from __future__ import annotations

import logging
import queue
import struct
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

logger = logging.getLogger(__name__)

#: Timestamps in the files are milliseconds (Matroska's usual timecode scale).
TIME_BASE = Fraction(1, 1000)

_MUXER_OPTIONS = {
    # A cluster at least every second, flushed as soon as it is written.
    "cluster_time_limit": "1000",
    "flush_packets": "1",
    # Wait at most 0.5 s for a quiet stream (a muted microphone) before
    # writing the others' packets; 0 would wait forever.
    "max_interleave_delta": "500000",
}

#: FFmpeg encoder names PyAV needs for a stream with a codec context (VP8 needs
#: none: it is a bare mux stream, see ``MediaWriter._add_stream``).
_STREAM_CODECS = {"h264": "libx264", "opus": "libopus"}


def opus_head(channels: int = 2, pre_skip: int = 312, sample_rate: int = 48000) -> bytes:
    """The Opus identification header (RFC 7845 §5.1), Matroska's CodecPrivate for Opus."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, sample_rate, 0, 0)


def container_for(video_codec: str | None) -> tuple[str, str]:
    """(FFmpeg format, file suffix): WebM for VP8/Opus, Matroska when H.264 is in it."""
    if video_codec == "h264":
        return "matroska", ".mkv"
    return "webm", ".webm"


@dataclass(slots=True)
class TrackSpec:
    """One stream of a file: ``codec`` is ``vp8``, ``h264`` or ``opus``."""

    kind: str
    codec: str
    width: int = 0
    height: int = 0
    #: H.264: SPS and PPS in Annex B form (FFmpeg turns them into avcC).
    extradata: bytes = b""


@dataclass(slots=True)
class TrackTotals:
    """What was written to one stream (read by the manifest)."""

    frames: int = 0
    bytes: int = 0
    first_pts: int | None = None
    last_pts: int = 0
    last_duration: int = 0
    keyframes: int = 0

    @property
    def duration_ms(self) -> int:
        if self.first_pts is None:
            return 0
        return self.last_pts + self.last_duration - self.first_pts


@dataclass(slots=True)
class _Item:
    track: int
    data: bytes
    pts: int
    duration: int
    keyframe: bool


@dataclass
class MediaWriter:
    """One output file, written by its own thread.

    :meth:`write` only enqueues (it never blocks the event loop); errors on
    the thread are logged and stop the file (``failed`` is set), they never
    propagate into the forwarding path.
    """

    path: Path
    tracks: list[TrackSpec]
    totals: list[TrackTotals] = field(init=False)
    failed: str | None = field(default=None, init=False)
    #: Frames the muxer refused (logged once); the file goes on without them.
    rejected: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.totals = [TrackTotals() for _ in self.tracks]
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name=f"recorder:{self.path.name}", daemon=True
        )
        self._thread.start()

    def write(self, track: int, data: bytes, pts: int, duration: int, keyframe: bool) -> None:
        """Queue one frame; ``pts`` and ``duration`` in milliseconds, increasing per track."""
        totals = self.totals[track]
        if totals.first_pts is None:
            totals.first_pts = pts
        totals.frames += 1
        totals.bytes += len(data)
        totals.keyframes += keyframe
        totals.last_pts = pts
        totals.last_duration = duration
        self._queue.put(_Item(track, data, pts, duration, keyframe))

    def close(self) -> None:
        """Finish the file (cues, duration) and wait for the thread; call off the loop."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        fmt = container_for(next((t.codec for t in self.tracks if t.kind == "video"), None))[0]
        try:
            output = av.open(str(self.path), "w", format=fmt, options=_MUXER_OPTIONS)
        except (av.FFmpegError, OSError) as exc:
            self._fail(f"cannot create {self.path}: {exc}")
            return
        try:
            streams = [self._add_stream(output, spec) for spec in self.tracks]
            while (item := self._queue.get()) is not None:
                if self.failed is not None:
                    continue  # keep draining until close()
                try:
                    self._mux(output, streams[item.track], item)
                except av.FFmpegError as exc:  # one bad frame: skip it, keep the file
                    self.rejected += 1
                    if self.rejected == 1:
                        logger.warning("recorder: %s: frame rejected: %s", self.path.name, exc)
        except (av.FFmpegError, OSError, ValueError) as exc:
            self._fail(f"writing {self.path} failed: {exc}")
            while self._queue.get() is not None:
                pass
        finally:
            try:
                output.close()
            except (av.FFmpegError, OSError) as exc:
                self._fail(f"closing {self.path} failed: {exc}")

    def _mux(
        self, output: av.container.OutputContainer, stream: av.stream.Stream, item: _Item
    ) -> None:
        packet = av.Packet(item.data)
        packet.stream = stream
        packet.time_base = TIME_BASE
        packet.pts = packet.dts = item.pts
        packet.duration = item.duration
        packet.is_keyframe = item.keyframe
        output.mux(packet)

    @staticmethod
    def _add_stream(output: av.container.OutputContainer, spec: TrackSpec) -> av.stream.Stream:
        """A stream for already encoded packets.

        VP8 needs no codec private data, so it gets a bare mux stream: PyAV
        opens an encoder for every stream that has a codec context when the
        header is written, and a libvpx encoder at 720p costs ~25 MB. H.264
        (SPS/PPS) and Opus (``OpusHead``) need their private data, which
        PyAV only lets us set on a codec context; an Opus encoder is small.
        """
        width, height = spec.width or 640, spec.height or 480
        if spec.kind == "video" and not spec.extradata:
            return output.add_mux_stream(
                spec.codec, width=width, height=height, time_base=TIME_BASE
            )
        if spec.kind == "video":
            video = output.add_stream(_STREAM_CODECS[spec.codec], rate=30)
            assert isinstance(video, av.VideoStream)
            video.width, video.height = width, height
            video.pix_fmt = "yuv420p"
            video.codec_context.extradata = spec.extradata
            video.time_base = TIME_BASE
            return video
        audio = output.add_stream(_STREAM_CODECS[spec.codec], rate=48000)
        audio.codec_context.extradata = opus_head()
        audio.time_base = TIME_BASE
        return audio

    def _fail(self, message: str) -> None:
        if self.failed is None:
            self.failed = message
            logger.error("recorder: %s", message)
