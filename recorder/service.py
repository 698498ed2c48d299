"""The recorder of one node: which rooms record, start-up recovery, retention.

:class:`Recorder` owns the recordings directory. On start it finalizes
recordings a crash left unfinished (:func:`recorder.manifest.recover`) and
applies retention; it then starts and finishes :class:`RoomRecording`
objects for the signaling layer and, after each finishes, makes its
thumbnails and applies retention again, off the event loop.
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

from recorder.archive import generate_thumbnails
from recorder.manifest import apply_retention, recover
from recorder.recording import RoomRecording
from sfu.server import Sfu

logger = logging.getLogger(__name__)

_RETENTION_INTERVAL = 3600.0


@dataclass(slots=True)
class RecorderConfig:
    """The ``[recorder]`` table of the config file."""

    #: Where recordings are written (relative paths: to the working directory).
    directory: str = "recordings"
    #: Rooms recorded from their start: room ids, or ``"*"`` for every room.
    auto_record: list[str] = field(default_factory=list)
    #: Finished recordings older than this many days are deleted (0: kept).
    retention_days: float = 0.0
    #: Oldest finished recordings are deleted while the archive is larger (0: no limit).
    max_total_gb: float = 0.0


class Recorder:
    """Starts and finishes room recordings; keeps the archive tidy."""

    def __init__(
        self, sfu: Sfu, config: RecorderConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self.sfu = sfu
        self.config = config
        self.root = Path(config.directory)
        self._clock = clock
        self.active: dict[str, RoomRecording] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retention: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Recover what a crash left unfinished, apply retention, keep applying it hourly.

        The directory itself is created by the first recording.
        """
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, recover, self.root)
        await self.apply_retention()
        self._retention = loop.create_task(self._retain_periodically())

    async def stop(self) -> None:
        """Finish every recording (their files are complete afterwards)."""
        if self._retention is not None:
            self._retention.cancel()
        for room in list(self.active):
            await self.finish(room)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def records_automatically(self, room: str) -> bool:
        return "*" in self.config.auto_record or room in self.config.auto_record

    def begin(self, room: str) -> RoomRecording:
        """Start recording ``room`` (the caller feeds it with ``update``)."""
        if room in self.active:
            return self.active[room]
        recording = RoomRecording(self.sfu, room, self.root, self._clock)
        recording.begin()
        self.active[room] = recording
        return recording

    async def finish(self, room: str) -> dict[str, Any] | None:
        """Stop recording ``room``; returns the final manifest (None if not recording)."""
        recording = self.active.pop(room, None)
        if recording is None:
            return None
        manifest = await recording.finish()
        task = asyncio.get_running_loop().create_task(self._after(recording.id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return manifest

    async def apply_retention(self) -> list[str]:
        config = self.config
        return await asyncio.get_running_loop().run_in_executor(
            None,
            apply_retention,
            self.root,
            config.retention_days,
            int(config.max_total_gb * 1e9),
            self._clock(),
        )

    async def _after(self, recording_id: str) -> None:
        """Thumbnails, then retention: after a recording, never on the hot path."""
        try:
            await generate_thumbnails(self.root, recording_id)
            await self.apply_retention()
        except OSError as exc:
            logger.warning("recorder: after %s: %s", recording_id, exc)

    async def _retain_periodically(self) -> None:
        while True:
            await asyncio.sleep(_RETENTION_INTERVAL)
            with contextlib.suppress(OSError):
                await self.apply_retention()
