"""Presentation times of recorded frames: a replayed GOP keeps its spacing (fake clock)."""

from __future__ import annotations

import itertools
from typing import Any, cast

from test_depacketize import VP8_DELTA, VP8_KEY, vp8_packets

from recorder.tracks import ANCHOR_WINDOW_S, FileRecording, TrackRecorder
from recorder.writer import TrackSpec
from sfu import rtcp

FILE_START = 100.0
TRANSIT = 0.02  # publisher -> recorder, for frames that arrive live


class FakeFile:
    """What TrackRecorder uses of a FileRecording: its tracks, start, and frames written."""

    def __init__(self) -> None:
        self.tracks = [TrackSpec("video", "vp8")]
        self.start = FILE_START
        self.written: list[tuple[int, int]] = []  # (RTP timestamp, pts in ms)

    def add_frame(self, index: int, frame: Any, pts: int, duration: int, now: float) -> None:
        self.written.append((frame.timestamp, pts))


class FakeMedia:
    """An SFU with no sender report yet: RTP time alone anchors the frames."""

    def local_feedback(self, consumer_id: str, packet: rtcp.RtcpPacket) -> None:
        pass

    def clock_mapping(self, consumer_id: str) -> tuple[str, float, int] | None:
        return None

    def track_source(self, consumer_id: str) -> str | None:
        return "presenter"


def test_a_gop_replayed_at_once_keeps_its_frame_spacing() -> None:
    """A recorder that starts from the SFU's cache gets half a second of video at once."""
    now = [0.0]
    file = FakeFile()
    track = TrackRecorder(cast(FileRecording, file), 0, "rec:0", FakeMedia(), 90000, lambda: now[0])
    seq = 0

    def send(frame_index: int, arrival: float) -> None:
        nonlocal seq
        payload = VP8_KEY if frame_index == 0 else VP8_DELTA
        now[0] = arrival
        for packet in vp8_packets(payload, seq, frame_index * 3000):
            track.send_rtp(packet)
            seq += 1

    capture_zero = FILE_START  # frame k is captured at capture_zero + k / 30
    for k in range(15):  # the replay: captured over 0.47 s, all here at once
        send(k, capture_zero + 14 / 30 + TRANSIT + 0.001 * k / 15)
    for k in range(15, 45):  # then live, each TRANSIT after its capture
        send(k, capture_zero + k / 30 + TRANSIT)
    track.poll(capture_zero + 45 / 30 + ANCHOR_WINDOW_S)
    track.finish()

    assert [ts for ts, _ in file.written] == [k * 3000 for k in range(45)]
    pts = [p for _, p in file.written]
    steps = [b - a for a, b in itertools.pairwise(pts)]
    # Every frame 1/30 s after the one before, the replayed ones included:
    # timed one by one, the replay would land within a few milliseconds.
    assert set(steps) <= {33, 34}, steps
