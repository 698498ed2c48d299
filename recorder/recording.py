"""One room's recording: the main feed across floor handovers, and each participant.

The room tells a :class:`RoomRecording` what it looks like now
(:meth:`RoomRecording.update`: who holds the main feed, who publishes
what, who is present); the recording turns that into in-process SFU
tracks and files:

* ``main.webm`` (``.mkv`` for H.264): one video and one audio track that
  follow the floor exactly as a viewer's main tracks do, switching source
  at a keyframe, so a handover continues the same file.
* ``<participant>-<n>.webm``: each publication of each participant (a
  republish starts the next ``n``).

While recording, ``manifest.json`` is rewritten every two seconds with
status ``"recording"``; :meth:`RoomRecording.finish` closes the files and
writes the final manifest (durations, sizes, sha256).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recorder.manifest import VERSION, finalize_file, iso, new_recording_id, write_manifest
from recorder.tracks import FileRecording, TrackRecorder
from recorder.writer import TrackSpec
from sfu.server import Sfu, SfuError

logger = logging.getLogger(__name__)

_POLL_INTERVAL = 0.02
_MANIFEST_INTERVAL = 2.0
_CODECS = {"video/vp8": "vp8", "video/h264": "h264", "audio/opus": "opus"}


@dataclass(slots=True)
class _Open:
    """A file being written and the SFU tracks feeding it."""

    file: FileRecording
    tracks: list[TrackRecorder]
    #: What it records: main feed kinds, or a publication's producer ids.
    key: tuple[str, ...]


@dataclass(slots=True)
class RoomState:
    """What a room looks like, as the recorder needs it."""

    #: kind -> producer id of the main feed (None: nobody holds the floor).
    main: dict[str, str | None]
    #: kind -> mime type of the room's media (what the main tracks carry).
    codecs: dict[str, str]
    #: member id -> {kind: producer id} of everyone publishing.
    publications: dict[str, dict[str, str]]
    #: member id -> (name, role) of everyone present.
    members: dict[str, tuple[str, str]]
    #: Producer id -> mime type, for every producer named above.
    producer_codecs: dict[str, str] = field(default_factory=dict)
    #: member id -> stereo layout ("mono", "sbs", "tb") of everyone publishing.
    stereo: dict[str, str] = field(default_factory=dict)
    #: The publishing member whose media the main feed carries, if any.
    main_holder: str | None = None


class RoomRecording:
    """Records one room from :meth:`begin` to :meth:`finish`."""

    def __init__(
        self, sfu: Sfu, room: str, root: Path, clock: Callable[[], float] = time.time
    ) -> None:
        self.sfu = sfu
        self.room = room
        self._clock = clock
        self.start = clock()
        self.id = new_recording_id(room, self.start)
        self.directory = root / self.id
        self.files: list[FileRecording] = []
        self._main: _Open | None = None
        self._main_sources: dict[str, str | None] = {}
        self._publications: dict[str, _Open] = {}
        self._counts: dict[str, int] = {}
        self._participants: dict[str, dict[str, Any]] = {}
        #: The main feed's stereo layout, and when it changed (seconds from the start).
        self.stereo = "mono"
        self._stereo_changes: list[dict[str, Any]] = []
        #: Participant file name -> that publisher's stereo layout.
        self._file_stereo: dict[str, str] = {}
        self._closing: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self.finished = False

    # ------------------------------------------------------------ lifecycle

    def begin(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=False)
        write_manifest(self.directory, self.manifest("recording"))
        self._task = asyncio.get_running_loop().create_task(self._run())
        logger.info("recorder: room %s: recording %s started", self.room, self.id)

    async def finish(self) -> dict[str, Any]:
        """Stop: close every file, then write the final manifest (returned)."""
        self.finished = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._main is not None:
            self._close(self._main)
        for member in list(self._publications):
            self._close(self._publications.pop(member))
        await asyncio.gather(*self._closing)
        now = self._clock()
        for participant in self._participants.values():
            if participant["left_at"] is None:
                participant["left_at"] = iso(now)
        manifest = self.manifest("complete", now)
        entries = manifest["files"]
        loop = asyncio.get_running_loop()
        manifest["files"] = [
            await loop.run_in_executor(None, finalize_file, self.directory, e) for e in entries
        ]
        await loop.run_in_executor(None, write_manifest, self.directory, manifest)
        logger.info(
            "recorder: room %s: recording %s finished (%d files, %.1f s)",
            self.room,
            self.id,
            len(self.files),
            manifest["duration_s"],
        )
        return manifest

    def manifest(self, status: str, end: float | None = None) -> dict[str, Any]:
        return {
            "version": VERSION,
            "id": self.id,
            "room": self.room,
            "status": status,
            "started_at": iso(self.start),
            "ended_at": iso(end) if end is not None else None,
            "duration_s": round((end if end is not None else self._clock()) - self.start, 3),
            "participants": list(self._participants.values()),
            "files": [
                {**f.describe(), "stereo": self._file_stereo.get(f.name, self.stereo)}
                for f in self.files
            ],
            "stereo": self.stereo,
            "stereo_changes": list(self._stereo_changes),
            "thumbnails": [],
        }

    async def _run(self) -> None:
        next_manifest = self._clock() + _MANIFEST_INTERVAL
        while True:
            await asyncio.sleep(_POLL_INTERVAL)
            now = self._clock()
            try:
                for opened in self._open_files():
                    for track in opened.tracks:
                        track.poll(now)
                    opened.file.poll(now)
                if now >= next_manifest:
                    next_manifest = now + _MANIFEST_INTERVAL
                    write_manifest(self.directory, self.manifest("recording"))
            except OSError as exc:
                logger.error("recorder: %s: cannot write the manifest: %s", self.id, exc)
            except Exception:  # a bug must not stop the recording's other files
                logger.exception("recorder: %s: poll failed", self.id)

    def _open_files(self) -> list[_Open]:
        opened = list(self._publications.values())
        return [self._main, *opened] if self._main is not None else opened

    # ---------------------------------------------------------------- state

    def update(self, state: RoomState) -> None:
        """Follow the room: participants, the main feed's source, publications."""
        if self.finished:
            return
        now = self._clock()
        for member_id, (name, role) in state.members.items():
            if member_id not in self._participants or self._participants[member_id]["left_at"]:
                self._participants[member_id] = {
                    "id": member_id,
                    "name": name,
                    "role": role,
                    "joined_at": iso(now),
                    "left_at": None,
                }
        for member_id, participant in self._participants.items():
            if member_id not in state.members and participant["left_at"] is None:
                participant["left_at"] = iso(now)
        self._update_main(state)
        self._update_publications(state)
        self._update_stereo(state, now)

    def _update_stereo(self, state: RoomState, now: float) -> None:
        """Follow the main feed's layout (kept while nobody holds it) and each publisher's."""
        if state.main_holder is not None:
            layout = state.stereo.get(state.main_holder, "mono")
            if layout != self.stereo:
                self.stereo = layout
                self._stereo_changes.append({"at_s": round(now - self.start, 3), "stereo": layout})
        for member_id, opened in self._publications.items():
            self._file_stereo[opened.file.name] = state.stereo.get(member_id, "mono")

    def _update_main(self, state: RoomState) -> None:
        kinds = tuple(k for k in ("video", "audio") if _CODECS.get(state.codecs.get(k, "").lower()))
        if kinds and (self._main is None or set(kinds) - set(self._main.key)):
            if self._main is not None:
                self._close(self._main)  # a medium appeared: the main feed goes on in a new file
            stem = "main" if not self._counts.get("main") else f"main-{self._counts['main'] + 1}"
            self._counts["main"] = self._counts.get("main", 0) + 1
            specs = {k: state.codecs[k] for k in kinds}
            self._main = self._open_file(stem, "main", None, specs, dict.fromkeys(kinds))
            self._main_sources = dict.fromkeys(kinds)
        if self._main is None:
            return
        for track in self._main.tracks:
            kind = track.spec.kind
            wanted = state.main.get(kind)
            if wanted == self._main_sources.get(kind):
                continue
            self._main_sources[kind] = wanted
            try:
                self.sfu.set_source(track.consumer_id, wanted)
            except SfuError as exc:
                logger.info("recorder: %s: main %s stays idle: %s", self.id, kind, exc)
                self.sfu.set_source(track.consumer_id, None)

    def _update_publications(self, state: RoomState) -> None:
        for member_id in list(self._publications):
            producers = state.publications.get(member_id, {})
            if self._publications[member_id].key != tuple(sorted(producers.values())):
                self._close(self._publications.pop(member_id))
        for member_id, producers in state.publications.items():
            if member_id in self._publications or not producers:
                continue
            specs = {
                kind: state.producer_codecs.get(producer, "")
                for kind, producer in producers.items()
                if _CODECS.get(state.producer_codecs.get(producer, "").lower())
            }
            if not specs:
                continue
            count = self._counts[member_id] = self._counts.get(member_id, 0) + 1
            sources: dict[str, str | None] = {k: producers[k] for k in specs}
            opened = self._open_file(
                f"{member_id}-{count}", "participant", member_id, specs, sources
            )
            opened.key = tuple(sorted(producers.values()))
            self._publications[member_id] = opened

    # ---------------------------------------------------------------- files

    def _open_file(
        self,
        stem: str,
        kind: str,
        participant: str | None,
        codecs: dict[str, str],
        sources: dict[str, str | None],
    ) -> _Open:
        ordered = [k for k in ("video", "audio") if k in codecs]
        specs = [TrackSpec(k, _CODECS[codecs[k].lower()]) for k in ordered]
        now = self._clock()
        file = FileRecording(self.directory, stem, kind, participant, specs, now, self.start)
        self.files.append(file)
        tracks: list[TrackRecorder] = []
        for index, media_kind in enumerate(ordered):
            consumer_id = f"rec/{self.id}/{stem}/{media_kind}"
            clock_rate = 90000 if media_kind == "video" else 48000
            track = TrackRecorder(file, index, consumer_id, self.sfu, clock_rate, self._clock)
            try:
                self.sfu.attach_local(
                    consumer_id, media_kind, codecs[media_kind], track, sources[media_kind]
                )
            except SfuError as exc:
                logger.warning("recorder: %s: cannot record %s: %s", self.id, consumer_id, exc)
                continue
            tracks.append(track)
        return _Open(file, tracks, tuple(ordered) if kind == "main" else ())

    def _close(self, opened: _Open) -> None:
        for track in opened.tracks:
            with contextlib.suppress(SfuError):
                self.sfu.unsubscribe(track.consumer_id)
            track.finish()
        future = asyncio.get_running_loop().run_in_executor(None, opened.file.close)
        self._closing.append(future)
