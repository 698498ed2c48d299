"""One recorded file and the in-process SFU tracks that feed it.

A :class:`TrackRecorder` is the sink of an in-process subscriber track
(``Sfu.attach_local``): it gets the same rewritten RTP a remote subscriber
would, reassembles frames (:mod:`recorder.depacketize`), asks the SFU for
retransmissions and keyframes like any subscriber, and hands complete
frames with a presentation time to its :class:`FileRecording`.

Presentation times come from RTP time and the publisher's sender reports
(RFC 3550 §6.4.1): a frame's capture time on the publisher's clock is its
RTP timestamp placed on the SR's NTP/RTP mapping, and that clock is tied
to this server's by the smallest transit seen (publisher clock -> arrival).
Audio and video of one publisher share its clock, so they stay in sync;
before the first SR the arrival of the fastest frame anchors RTP time.

A new anchor (the first frame, the first SR, another source) is not taken
from one frame: the frames of the next ``ANCHOR_WINDOW_S`` wait, and all of
them are timed with the smallest transit among them. A subscriber that
starts from the SFU's cache gets up to a second of video at once; timed one
by one against a minimum still falling, those frames would all land on
nearly the same instant and play as a fast-forward at the start of the file
and at every floor handover.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from recorder.depacketize import (
    Frame,
    FrameAssembler,
    h264_dimensions,
    h264_parameter_sets,
    vp8_dimensions,
)
from recorder.writer import MediaWriter, TrackSpec, container_for
from sfu import rtcp

logger = logging.getLogger(__name__)

#: Without a keyframe for this long, a file starts with a default picture size.
_KEYFRAME_WAIT = 3.0
#: Frames held while a file waits for its first keyframe (about 10 s of audio).
_MAX_PENDING = 600
_HALF = 1 << 31
#: After a track (re)anchors its clock, its frames wait this long, by arrival,
#: for the smallest transit among them before they get presentation times.
ANCHOR_WINDOW_S = 0.2


class MediaPlane(Protocol):
    """What the recorder needs of :class:`sfu.server.Sfu` (in-process tracks)."""

    def local_feedback(self, consumer_id: str, packet: rtcp.RtcpPacket) -> None: ...

    def clock_mapping(self, consumer_id: str) -> tuple[str, float, int] | None: ...

    def track_source(self, consumer_id: str) -> str | None: ...


class TrackRecorder:
    """Sink of one in-process SFU track; frames go to one stream of a file."""

    def __init__(
        self,
        file: FileRecording,
        index: int,
        consumer_id: str,
        media: MediaPlane,
        clock_rate: int,
        clock: Callable[[], float],
    ) -> None:
        self.file = file
        self.index = index
        self.consumer_id = consumer_id
        self.spec = file.tracks[index]
        self._media = media
        self._clock = clock
        self._clock_rate = clock_rate
        self.assembler = FrameAssembler(self.spec.codec)
        self._anchor_key: tuple[str | None, bool] | None = None
        self._offset = 0.0
        #: Frames (with their base time) waiting for a new anchor, and until when.
        self._held: list[tuple[Frame, float]] = []
        self._anchoring_until = 0.0
        self._last_pts = -1
        self._last_timestamp: int | None = None

    # Sink protocol (called by the router, on the event loop)

    def send_rtp(self, packet: bytes) -> None:
        now = self._clock()
        for frame in self.assembler.push(packet, now):
            self._deliver(frame)

    def send_rtcp(self, packet: bytes) -> None:
        """RTCP from the SFU (a BYE when the track is removed): nothing to do."""

    # ------------------------------------------------------------------

    def poll(self, now: float) -> None:
        """Release frames whose gaps expired; send NACKs and keyframe requests."""
        for frame in self.assembler.poll(now):
            self._deliver(frame)
        if self._held and now >= self._anchoring_until:
            self._release()
        lost = self.assembler.nacks(now)
        if lost:
            self._media.local_feedback(self.consumer_id, rtcp.Nack(0, 0, tuple(lost)))
        if self.assembler.keyframe_request(now):
            self._media.local_feedback(self.consumer_id, rtcp.Pli(0, 0))

    def finish(self) -> None:
        """End of recording: write what is complete, drop the rest."""
        for frame in self.assembler.flush():
            self._deliver(frame)
        self._release()

    def _deliver(self, frame: Frame) -> None:
        """Time a complete frame (see the module docstring) and hand it to the file."""
        base, key = self._base(frame)
        transit = frame.arrival - base
        if key != self._anchor_key:  # new source or first SR: a new clock to tie
            self._release()
            self._anchor_key = key
            self._offset = transit
            self._anchoring_until = frame.arrival + ANCHOR_WINDOW_S
        else:
            self._offset = min(self._offset, transit)
        if self._held or frame.arrival < self._anchoring_until:
            self._held.append((frame, base))
            if frame.arrival >= self._anchoring_until:
                self._release()
            return
        self._write(frame, base)

    def _release(self) -> None:
        """Time the held frames with the anchor they waited for."""
        held, self._held = self._held, []
        for frame, base in held:
            self._write(frame, base)

    def _write(self, frame: Frame, base: float) -> None:
        pts = round((base + self._offset - self.file.start) * 1000)
        pts = max(pts, self._last_pts + 1)
        if self._last_timestamp is None:
            duration = 20 if self.spec.kind == "audio" else 33
        else:
            elapsed = (frame.timestamp - self._last_timestamp) * 1000 // self._clock_rate
            duration = max(1, min(elapsed, 200))
        self._last_pts = pts
        self._last_timestamp = frame.timestamp
        self.file.add_frame(self.index, frame, pts, duration, frame.arrival)

    def _base(self, frame: Frame) -> tuple[float, tuple[str | None, bool]]:
        """The frame's capture time on its publisher's clock, and which clock that is."""
        mapping = self._media.clock_mapping(self.consumer_id)
        if mapping is not None:
            source, wall, rtp_now = mapping
            delta = ((frame.timestamp - rtp_now + _HALF) & 0xFFFFFFFF) - _HALF
            return wall + delta / self._clock_rate, (source, True)
        base = frame.timestamp / self._clock_rate
        return base, (self._media.track_source(self.consumer_id), False)


@dataclass(slots=True)
class _Pending:
    index: int
    frame: Frame
    pts: int
    duration: int


class FileRecording:
    """One media file of a recording (the main feed, or one participant's publication)."""

    def __init__(
        self,
        directory: Path,
        stem: str,
        kind: str,
        participant: str | None,
        tracks: list[TrackSpec],
        start: float,
        session_start: float,
    ) -> None:
        video = next((t.codec for t in tracks if t.kind == "video"), None)
        self.container, suffix = container_for(video)
        self.name = stem + suffix
        self.path = directory / self.name
        self.kind = kind
        self.participant = participant
        self.tracks = tracks
        self.start = start
        self.session_start = session_start
        self.writer: MediaWriter | None = None
        self._pending: list[_Pending] = []
        self._waiting = {i for i, t in enumerate(tracks) if t.kind == "video"}
        self.closed = False

    def add_frame(self, index: int, frame: Frame, pts: int, duration: int, now: float) -> None:
        if self.closed:
            return
        if self.writer is not None:
            self.writer.write(index, frame.data, pts, duration, frame.keyframe)
            return
        if index in self._waiting and frame.keyframe and self._learn_format(index, frame.data):
            self._waiting.discard(index)
        self._pending.append(_Pending(index, frame, pts, duration))
        del self._pending[:-_MAX_PENDING]
        if not self._waiting or now - self.start >= _KEYFRAME_WAIT:
            self._open()

    def poll(self, now: float) -> None:
        """Open the file after the keyframe wait even if no frame arrives to trigger it."""
        if (
            self.writer is None
            and not self.closed
            and self._pending
            and now - self.start >= _KEYFRAME_WAIT
        ):
            self._open()

    def _learn_format(self, index: int, data: bytes) -> bool:
        spec = self.tracks[index]
        if spec.codec == "vp8":
            size = vp8_dimensions(data)
        else:
            sets = h264_parameter_sets(data)
            size = h264_dimensions(sets) if sets else None
            if sets:
                spec.extradata = sets
        if size is None:
            return False
        spec.width, spec.height = size
        return True

    def _open(self) -> None:
        if self._waiting:
            logger.warning("recorder: %s starts without a keyframe's picture size", self.name)
        self.writer = MediaWriter(self.path, self.tracks)
        for item in sorted(self._pending, key=lambda p: p.pts):
            self.writer.write(
                item.index, item.frame.data, item.pts, item.duration, item.frame.keyframe
            )
        self._pending.clear()

    def close(self) -> None:
        """Finish the file; blocking (run it in an executor)."""
        self.closed = True
        if self.writer is None and self._pending:
            self._open()
        if self.writer is not None:
            self.writer.close()

    def describe(self) -> dict[str, Any]:
        """This file's entry in the manifest (sizes and hashes are added at the end)."""
        tracks: list[dict[str, Any]] = []
        for i, spec in enumerate(self.tracks):
            totals = self.writer.totals[i] if self.writer is not None else None
            entry: dict[str, Any] = {
                "kind": spec.kind,
                "codec": spec.codec,
                "frames": totals.frames if totals else 0,
                "duration_s": round(totals.duration_ms / 1000, 3) if totals else 0.0,
            }
            if spec.kind == "video":
                entry["width"], entry["height"] = spec.width, spec.height
            tracks.append(entry)
        durations = [t["duration_s"] for t in tracks]
        return {
            "name": self.name,
            "kind": self.kind,
            "participant": self.participant,
            "start_s": round(self.start - self.session_start, 3),
            "duration_s": max(durations, default=0.0),
            "bytes": self.path.stat().st_size if self.path.exists() else 0,
            "container": self.container,
            "tracks": tracks,
        }
