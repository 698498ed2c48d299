"""The recorder end to end: real aiortc publishers, the SFU, files read back with PyAV."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiortc import VideoStreamTrack
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from signaling_client import SECRET, Client, ProtocolFailure, running_server, token

from bench.clients import publish
from bench.impair import ImpairedPath, impair_ice_connection, parse_impairment
from recorder.manifest import read_manifest, recover, sha256
from recorder.recording import RoomRecording, RoomState
from sfu.server import Sfu, TrackInfo
from signaling.config import Config

FPS = 30
RATE = 48000


class FlashVideo(VideoStreamTrack):
    """Frames white during even seconds after ``epoch`` and black otherwise (30 fps)."""

    def __init__(self, epoch: float, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.epoch = epoch
        self.frames = 0
        self.size = (height, width)

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        bright = (time.time() - self.epoch) % 2 < 1
        image = np.full((*self.size, 3), 235 if bright else 16, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = pts, time_base
        self.frames += 1
        return frame


class BeepAudio(MediaStreamTrack):
    """A 1 kHz tone during even seconds after ``epoch`` (by capture time), silence otherwise."""

    kind = "audio"

    def __init__(self, epoch: float) -> None:
        super().__init__()
        self.epoch = epoch
        self.samples = 0
        self.start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.start is None:
            self.start = time.time()
        else:
            await asyncio.sleep(self.start + self.samples / RATE - time.time())
        first = self.samples
        self.samples += 960
        t = np.arange(first, first + 960) / RATE
        on = ((self.start + t - self.epoch) % 2) < 1
        samples = (np.sin(2 * math.pi * 1000 * t) * 12000 * on).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts, frame.time_base = first, fractions.Fraction(1, RATE)
        return frame


def _state(main: list[TrackInfo], publishers: dict[str, list[TrackInfo]]) -> RoomState:
    every = [t for tracks in publishers.values() for t in tracks]
    return RoomState(
        main={t.kind: t.id for t in main},
        codecs={t.kind: t.codec for t in every},
        publications={m: {t.kind: t.id for t in ts} for m, ts in publishers.items()},
        members={m: (m.upper(), "presenter") for m in publishers},
        producer_codecs={t.id: t.codec for t in every},
    )


def _edges(times: list[float], levels: list[float], threshold: float) -> list[float]:
    """Times where ``levels`` rise through ``threshold``."""
    return [
        t
        for t, prev, cur in zip(times[1:], levels, levels[1:], strict=False)
        if prev < threshold <= cur
    ]


def _video_edges(path: Path) -> tuple[list[float], int]:
    times, levels = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            times.append(float(frame.time))
            levels.append(float(frame.to_ndarray(format="gray").mean()))
    return _edges(times, levels, 128), len(times)


def _audio_edges(path: Path) -> list[float]:
    times, levels = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            samples = frame.to_ndarray().astype(np.float64)
            if frame.format.name in ("flt", "fltp", "dbl", "dblp"):
                samples *= 32768  # the Opus decoder gives floats in [-1, 1]
            # 10 ms windows: the edge to within a window
            step = frame.sample_rate // 100
            for i in range(0, samples.shape[-1] - step + 1, step):
                window = samples[..., i : i + step]
                times.append(float(frame.time) + i / frame.sample_rate)
                levels.append(float(np.sqrt((window**2).mean())))
    return _edges(times, levels, 2000)


def _packets(path: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"video": [], "audio": []}
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.pts is not None and packet.time_base is not None:
                out[packet.stream.type].append(float(packet.pts * packet.time_base))
    return out


async def test_recording_keeps_every_frame_and_lip_sync(sfu: Sfu, tmp_path: Path) -> None:
    epoch = time.time() + 0.5
    video, audio = FlashVideo(epoch), BeepAudio(epoch)
    pc, tracks = await publish(sfu, "pub", [video, audio])
    recording = RoomRecording(sfu, "theatre", tmp_path)
    recording.begin()
    recording.update(_state(tracks, {"alice": tracks}))
    await asyncio.sleep(7.5)
    sent = video.frames
    await pc.close()
    await asyncio.sleep(0.3)
    manifest = await recording.finish()

    assert manifest["status"] == "complete" and manifest["room"] == "theatre"
    names = {f["name"]: f for f in manifest["files"]}
    assert set(names) == {"main.webm", "alice-1.webm"}
    for name, entry in names.items():
        path = recording.directory / name
        assert entry["bytes"] == path.stat().st_size and entry["sha256"] == sha256(path)
        with av.open(str(path)) as container:
            kinds = {s.type: s.codec_context.name for s in container.streams}
        assert kinds == {"video": "vp8", "audio": "opus"}
        packets = _packets(path)
        for times in packets.values():
            assert times == sorted(times) and len(set(times)) == len(times)
        video_edges, decoded = _video_edges(path)
        # Every frame sent after the recorder attached is in the file (1 % tolerance).
        assert abs(decoded - sent) <= max(1, sent // 100), (name, decoded, sent)
        track = {t["kind"]: t for t in entry["tracks"]}
        assert track["video"]["frames"] == decoded
        assert abs(track["video"]["duration_s"] - sent / FPS) <= 0.02 * sent / FPS
        assert track["video"]["width"] == 320 and track["video"]["height"] == 240
        audio_edges = _audio_edges(path)
        assert len(video_edges) >= 3 and len(audio_edges) >= 3, (video_edges, audio_edges)
        offsets = [min(abs(a - v) for a in audio_edges) for v in video_edges]
        print(name, "A/V offsets (s):", [round(o, 3) for o in offsets], decoded, sent)
        assert max(offsets) < 0.1, (name, video_edges, audio_edges)
    assert manifest["participants"][0]["name"] == "ALICE"
    on_disk = read_manifest(recording.directory)
    assert on_disk is not None and on_disk["files"] == manifest["files"]


async def test_floor_handover_continues_one_main_file(sfu: Sfu, tmp_path: Path) -> None:
    epoch = time.time()
    first, second = FlashVideo(epoch), FlashVideo(epoch + 0.5)
    pc_a, tracks_a = await publish(sfu, "a", [first, BeepAudio(epoch)])
    pc_b, tracks_b = await publish(sfu, "b", [second, BeepAudio(epoch)])
    publishers = {"a": tracks_a, "b": tracks_b}
    recording = RoomRecording(sfu, "handover", tmp_path)
    recording.begin()
    recording.update(_state(tracks_a, publishers))
    await asyncio.sleep(3.0)
    recording.update(_state(tracks_b, publishers))
    await asyncio.sleep(3.0)
    recording.update(_state(tracks_a, publishers))
    await asyncio.sleep(2.0)
    await pc_a.close()
    await pc_b.close()
    manifest = await recording.finish()

    mains = [f for f in manifest["files"] if f["kind"] == "main"]
    assert [f["name"] for f in mains] == ["main.webm"]
    packets = _packets(recording.directory / "main.webm")
    video = packets["video"]
    assert video == sorted(video)
    gaps = np.diff(video)
    # Two handovers, each at a keyframe: no hole longer than a couple of frames.
    assert gaps.max() < 0.25, gaps.max()
    assert video[-1] - video[0] > 7.0
    _, decoded = _video_edges(recording.directory / "main.webm")
    assert decoded == len(video)  # every frame decodes: each switch started at a keyframe


def test_recover_finalizes_an_unfinished_recording(tmp_path: Path) -> None:
    """A manifest left in status 'recording' with a file cut mid-cluster is finalized."""
    directory = tmp_path / "room-x"
    directory.mkdir()
    media = directory / "main.webm"
    with av.open(str(media), "w", format="webm") as output:
        stream = output.add_stream("libvpx", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(90):
            image = np.full((120, 160, 3), (i * 3) % 255, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    data = media.read_bytes()
    media.write_bytes(data[: int(len(data) * 0.8)])  # cut as a kill -9 would
    manifest: dict[str, Any] = {
        "version": 1,
        "id": "room-x",
        "room": "room",
        "status": "recording",
        "started_at": "2026-12-02T08:00:00.000Z",
        "ended_at": None,
        "duration_s": 1.0,
        "participants": [
            {
                "id": "p1",
                "name": "A",
                "role": "presenter",
                "joined_at": "2026-12-02T08:00:00.000Z",
                "left_at": None,
            }
        ],
        "files": [
            {"name": "main.webm", "kind": "main", "participant": None, "start_s": 0.0, "tracks": []}
        ],
        "stereo": "mono",
        "thumbnails": [],
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    assert recover(tmp_path) == ["room-x"]
    result = read_manifest(directory)
    assert result is not None and result["status"] == "recovered"
    assert result["participants"][0]["left_at"] is not None
    entry = result["files"][0]
    assert entry["sha256"] == sha256(media) and entry["bytes"] == media.stat().st_size
    with av.open(str(media)) as container:
        assert container.duration is not None  # the remux wrote one
        frames = sum(1 for _ in container.decode(video=0))
    assert 50 <= frames < 90 and entry["tracks"][0]["frames"] == frames
    assert recover(tmp_path) == []  # idempotent


@pytest.mark.parametrize("codec", ["video/H264"])
async def test_h264_goes_to_matroska(sfu: Sfu, tmp_path: Path, codec: str) -> None:
    video = FlashVideo(time.time(), 640, 360)
    pc, tracks = await publish(sfu, "pub", [video], video_codec=codec)
    recording = RoomRecording(sfu, "h264", tmp_path)
    recording.begin()
    recording.update(_state(tracks, {"bob": tracks}))
    await asyncio.sleep(3.0)
    await pc.close()
    manifest = await recording.finish()
    main = next(f for f in manifest["files"] if f["kind"] == "main")
    assert main["name"] == "main.mkv" and main["container"] == "matroska"
    with av.open(str(recording.directory / "main.mkv")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.codec_context.width, stream.codec_context.height) == (640, 360)
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded >= 60


async def test_moderators_record_through_the_protocol_and_the_admin_api(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = Config()
    config.recorder.directory = str(tmp_path)
    config.recorder.auto_record = ["always"]
    async with running_server(config) as (base, _server):
        presenter, moderator, viewer, late = (Client(base, http) for _ in range(4))
        try:
            await presenter.join(token("r", "presenter", "Dr Lee"), receive=False)
            epoch = time.time()
            await presenter.publish([FlashVideo(epoch), BeepAudio(epoch)])
            await moderator.join(token("r", "moderator", "Chair"))
            joined = await viewer.join(token("r", "viewer", "Clinic"))
            assert joined["room"]["recording"] is False
            with pytest.raises(ProtocolFailure) as refused:
                await viewer.request({"type": "start-recording"})
            assert refused.value.code == "forbidden"

            await moderator.request({"type": "start-recording"})
            await viewer.expect("recording", active=True)
            joined = await late.join(token("r", "viewer", "Island"))
            assert joined["room"]["recording"] is True
            await asyncio.sleep(3.0)
            await moderator.request({"type": "stop-recording"})
            await viewer.expect("recording", active=False)

            admin = {"Authorization": f"Bearer {token('*', 'admin')}"}
            async with http.post(f"{base}/admin/rooms/r/recording", headers=admin) as response:
                assert response.status == 200
                second_id = (await response.json())["recording"]
            await viewer.expect("recording", active=True)
            await asyncio.sleep(2.0)
            async with http.delete(f"{base}/admin/rooms/r/recording", headers=admin) as response:
                assert response.status == 200 and (await response.json())["recording"] is None
            async with http.post(f"{base}/admin/rooms/none/recording", headers=admin) as response:
                assert response.status == 404

            auto = Client(base, http)
            joined = await auto.join(token("always", "viewer"))
            assert joined["room"]["recording"] is True
            await auto.close()
        finally:
            for client in (presenter, moderator, viewer, late):
                await client.close()

    manifests = [m for d in tmp_path.iterdir() if (m := read_manifest(d)) is not None]
    by_room: dict[str, list[dict[str, Any]]] = {}
    for manifest in manifests:
        by_room.setdefault(manifest["room"], []).append(manifest)
    assert len(by_room["r"]) == 2 and len(by_room["always"]) == 1
    assert all(m["status"] == "complete" for m in manifests)
    second = next(m for m in by_room["r"] if m["id"] == second_id)
    first = next(m for m in by_room["r"] if m["id"] != second_id)
    assert {p["name"] for p in first["participants"]} == {"Dr Lee", "Chair", "Clinic", "Island"}
    kinds = sorted(f["kind"] for f in first["files"])
    assert kinds == ["main", "participant"]
    main = next(f for f in first["files"] if f["kind"] == "main")
    assert 2.0 < main["duration_s"] < 4.0 and main["tracks"][0]["frames"] > 60
    assert second["files"] and second["files"][0]["bytes"] > 0


async def test_kill_9_leaves_a_playable_file_and_restart_recovers_it(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    recordings = tmp_path / "recordings"
    command = [
        sys.executable,
        "-m",
        "signaling.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--record",
        "--recordings",
        str(recordings),
    ]
    env = {**os.environ, "TELEBRIDGE_SECRET": SECRET}

    def spawn(port: int, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                [*command, "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    async def ready(base: str) -> None:
        for _ in range(150):
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(f"{base}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
        raise AssertionError("the server did not start")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = spawn(port, tmp_path / "first.log")
    presenter = Client(base, http)
    try:
        await ready(base)
        await presenter.join(token("crash", "presenter"), receive=False)
        video = FlashVideo(time.time())
        await presenter.publish([video, BeepAudio(time.time())])
        await asyncio.sleep(6.0)
        sent = video.frames
        server.send_signal(signal.SIGKILL)
        server.wait(10)
    finally:
        await presenter.close()
        if server.poll() is None:
            server.kill()
    [directory] = list(recordings.iterdir())
    manifest = read_manifest(directory)
    assert manifest is not None and manifest["status"] == "recording"
    main = directory / "main.webm"
    with av.open(str(main)) as container:  # playable as the crash left it
        decoded = sum(1 for _ in container.decode(video=0))
    # At most the last 2 seconds are missing.
    assert decoded >= sent - 2 * FPS, (decoded, sent)

    server = spawn(port, tmp_path / "second.log")
    try:
        await ready(base)
    finally:
        server.terminate()
        server.wait(10)
    recovered = read_manifest(directory)
    assert recovered is not None and recovered["status"] == "recovered"
    entry = next(f for f in recovered["files"] if f["name"] == "main.webm")
    assert entry["sha256"] == sha256(main) and entry["tracks"][0]["frames"] == decoded
    assert entry["duration_s"] >= (sent - 2 * FPS) / FPS
    assert "recovered unfinished recording" in (tmp_path / "second.log").read_text()


def _impair_publisher(pc: Any, spec: str) -> ImpairedPath:
    """Put a publishing aiortc peer's every datagram, both ways, behind an emulated link."""
    path = ImpairedPath(parse_impairment(f"1:{spec}")[1], seed=7)
    impair_ice_connection(pc.getTransceivers()[0].sender.transport.transport._connection, path)
    return path


async def test_a_lossy_uplink_is_recorded_without_corrupt_frames(sfu: Sfu, tmp_path: Path) -> None:
    """3 % loss each way on the publisher's link: retransmissions fill the gaps, and
    whatever stays missing costs whole frames, never a corrupt one."""
    epoch = time.time()
    video = FlashVideo(epoch, 640, 360)
    pc, tracks = await publish(sfu, "pub", [video, BeepAudio(epoch)])
    path = _impair_publisher(pc, "delay=40ms,loss=3%")
    recording = RoomRecording(sfu, "lossy", tmp_path)
    recording.begin()
    recording.update(_state(tracks, {"far": tracks}))
    await asyncio.sleep(8.0)
    sent = video.frames
    await pc.close()
    path.close()
    manifest = await recording.finish()

    lost_up = path.stats()["up"]["dropped_loss"]
    assert lost_up > 20  # the link really lost packets
    producer = sfu.router.producers.get(tracks[0].id)
    main = recording.directory / "main.webm"
    with av.open(str(main)) as container:
        decoded = sum(1 for _ in container.decode(video=0))  # a truncated frame would raise
    entry = next(f for f in manifest["files"] if f["name"] == "main.webm")
    assert entry["tracks"][0]["frames"] == decoded
    print("lossy uplink:", lost_up, "packets lost,", decoded, "of", sent, "frames recorded")
    assert decoded >= 0.9 * sent, (decoded, sent, producer)


async def test_a_recorder_that_cannot_start_does_not_keep_anyone_out(
    http: aiohttp.ClientSession,
) -> None:
    config = Config()
    config.recorder.directory = "/dev/null/recordings"  # cannot be created
    config.recorder.auto_record = ["*"]
    async with running_server(config) as (base, _server):
        viewer = Client(base, http)
        try:
            joined = await viewer.join(token("ward", "viewer"))
            assert joined["room"]["recording"] is False
        finally:
            await viewer.close()
