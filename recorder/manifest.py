"""Recording manifests, finalizing files, crash recovery and retention.

Layout: one directory per recording under the recordings directory, named
by the recording id, holding its media files, ``manifest.json`` and
thumbnails. The manifest (format in ``recorder/README.md``) is rewritten
atomically (temporary file + ``os.replace``) while recording, so after a
crash it still names every file; its ``status`` stays ``"recording"``
until the recording is finalized, which is how :func:`recover` finds
unfinished ones on start-up.

Everything here blocks (file I/O, hashing, demuxing): call it from a
thread executor, never on the event loop.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import av

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VERSION = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def iso(timestamp: float) -> str:
    """UTC ISO 8601 with milliseconds and ``Z``."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """Inverse of :func:`iso` (any ISO 8601 with a zone; ``Z`` is UTC)."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def new_recording_id(room: str, now: float) -> str:
    """``<room>-<UTC date and time>-<random>``, safe as a directory name."""
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{_UNSAFE.sub('_', room)[:64]}-{stamp}-{secrets.token_hex(2)}"


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Replace ``manifest.json``: readers (and a crash) see the old file or the new, never half."""
    temporary = directory / f".{MANIFEST}.tmp"
    with temporary.open("w", encoding="utf-8") as file:
        json.dump(manifest, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, directory / MANIFEST)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a recording directory, or None if absent or unreadable."""
    try:
        data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def describe_media(path: Path) -> dict[str, Any]:
    """Duration and per-stream frame counts of a file, read back by demuxing it.

    The manifest's figures come from here rather than from what the
    recorder meant to write, so they are what a player will find.
    """
    tracks: list[dict[str, Any]] = []
    try:
        with av.open(str(path)) as container:
            streams = list(container.streams)
            first: dict[int, float] = {}
            last: dict[int, float] = {}
            frames = dict.fromkeys(range(len(streams)), 0)
            for packet in container.demux():
                if packet.pts is None or packet.time_base is None:
                    continue
                index = packet.stream.index
                start = float(packet.pts * packet.time_base)
                end = start + float((packet.duration or 0) * packet.time_base)
                frames[index] += 1
                first.setdefault(index, start)
                last[index] = max(last.get(index, start), end)
            for stream in streams:
                entry: dict[str, Any] = {
                    "kind": stream.type,
                    "codec": stream.codec_context.name,
                    "frames": frames[stream.index],
                    "duration_s": round(last.get(stream.index, 0) - first.get(stream.index, 0), 3),
                }
                if isinstance(stream, av.VideoStream):
                    entry["width"] = stream.codec_context.width
                    entry["height"] = stream.codec_context.height
                tracks.append(entry)
    except (av.FFmpegError, OSError) as exc:
        logger.warning("recorder: cannot read %s: %s", path, exc)
    ends = [t["duration_s"] for t in tracks]
    return {"duration_s": max(ends, default=0.0), "tracks": tracks}


def finalize_file(directory: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """A manifest file entry completed from the file on disk (duration, size, sha256)."""
    path = directory / entry["name"]
    if not path.exists():
        return {**entry, "bytes": 0, "sha256": None, "duration_s": 0.0}
    described = describe_media(path)
    return {
        **entry,
        "duration_s": described["duration_s"],
        "tracks": described["tracks"] or entry.get("tracks", []),
        "bytes": path.stat().st_size,
        "sha256": sha256(path),
    }


def remux(path: Path) -> bool:
    """Rewrite an unfinished file through the muxer so it gains cues and a duration.

    Packets are copied (never decoded) until the first unreadable one: a
    file cut by a crash keeps everything before the cut. True on success.
    """
    temporary = path.with_name(f".{path.name}.recovering")
    try:
        with av.open(str(path)) as source:
            fmt = "webm" if path.suffix == ".webm" else "matroska"
            with av.open(str(temporary), "w", format=fmt) as output:
                mapping = {s.index: output.add_stream_from_template(s) for s in source.streams}
                try:
                    for packet in source.demux():
                        if packet.dts is None:
                            continue  # the demuxer's end-of-stream marker
                        packet.stream = mapping[packet.stream.index]
                        output.mux(packet)
                except av.FFmpegError as exc:  # the cut: keep what came before
                    logger.info("recorder: %s ends in a damaged cluster: %s", path.name, exc)
    except (av.FFmpegError, OSError) as exc:
        logger.warning("recorder: cannot recover %s: %s", path, exc)
        temporary.unlink(missing_ok=True)
        return False
    os.replace(temporary, path)
    return True


def recover(root: Path) -> list[str]:
    """Finalize recordings a crash left unfinished (status ``recording``); returns their ids.

    Each file is remuxed (gaining duration and cues), the manifest gets
    durations, sizes and hashes, ``status: "recovered"`` and an end time
    taken from the last write. Each recovery is logged.
    """
    recovered: list[str] = []
    if not root.is_dir():
        return recovered
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        manifest = read_manifest(directory)
        if manifest is None or manifest.get("status") != "recording":
            continue
        files = [f for f in manifest.get("files", []) if isinstance(f, dict) and "name" in f]
        last_write = max(
            (
                (directory / f["name"]).stat().st_mtime
                for f in files
                if (directory / f["name"]).exists()
            ),
            default=parse_iso(manifest["started_at"]),
        )
        for entry in files:
            if (directory / entry["name"]).exists():
                remux(directory / entry["name"])
        manifest["files"] = [finalize_file(directory, f) for f in files]
        manifest["status"] = "recovered"
        manifest["ended_at"] = iso(last_write)
        manifest["duration_s"] = round(last_write - parse_iso(manifest["started_at"]), 3)
        for participant in manifest.get("participants", []):
            if participant.get("left_at") is None:
                participant["left_at"] = manifest["ended_at"]
        write_manifest(directory, manifest)
        logger.warning(
            "recorder: recovered unfinished recording %s (%d files, %.1f s)",
            directory.name,
            len(files),
            manifest["duration_s"],
        )
        recovered.append(directory.name)
    return recovered


def apply_retention(root: Path, max_age_days: float, max_total_bytes: int, now: float) -> list[str]:
    """Delete finished recordings older than ``max_age_days`` (0: keep), then the oldest
    until the total is at most ``max_total_bytes`` (0: no limit); returns the deleted ids.

    Recordings still being written are never deleted; each deletion is logged.
    """
    if not root.is_dir():
        return []
    finished: list[tuple[float, int, Path]] = []
    total = 0
    for directory in (p for p in root.iterdir() if p.is_dir()):
        size = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
        total += size
        manifest = read_manifest(directory)
        if manifest is None or manifest.get("status") == "recording":
            continue
        with contextlib.suppress(KeyError, ValueError, TypeError):
            finished.append((parse_iso(manifest["started_at"]), size, directory))
    finished.sort()
    deleted: list[str] = []
    for started, size, directory in finished:
        too_old = max_age_days > 0 and now - started > max_age_days * 86400
        too_big = max_total_bytes > 0 and total > max_total_bytes
        if not (too_old or too_big):
            continue
        shutil.rmtree(directory, ignore_errors=True)
        total -= size
        deleted.append(directory.name)
        logger.warning(
            "recorder: retention deleted recording %s (%s, %.1f MB)",
            directory.name,
            f"older than {max_age_days:g} days" if too_old else "archive over its size limit",
            size / 1e6,
        )
    return deleted
