"""The recording archive over HTTP: a page to browse and play recordings, and its API.

Routes (see :func:`add_archive_routes`):

* ``GET /archive``: the archive page; ``GET /archive/static/{name}`` its script and style.
* ``GET /api/recordings?room=&from=&to=&q=``: summaries of the visible recordings, newest first.
* ``GET /api/recordings/{id}``: one recording's full manifest.
* ``GET /recordings/{id}/{name}``: a file named by that manifest (media, thumbnail,
  ``manifest.json``), with HTTP range requests; ``?download=1`` makes it an attachment.

The API and the files need a token (``Authorization: Bearer <jwt>``, or ``?token=<jwt>``
where a header cannot be set, as for ``<video src>``). An admin token sees every
recording; any other valid token sees the recordings of its own room. Another
room's recording answers 404, as if it did not exist.

Each recording is a directory named by its id holding ``manifest.json`` and the
files it lists; manifests are re-read when they change, malformed ones are
skipped with a warning.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import wraps
from pathlib import Path
from typing import Any

from aiohttp import web

from recorder.manifest import MANIFEST, write_manifest
from recorder.thumbnails import make_thumbnails
from signaling.tokens import ADMIN_ROLE, Grant, TokenError, verify_token

LOG = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
#: The page's files: name -> (path, content type). The stereo renderer is the
#: room page's own, so a recording looks as it did live.
STATIC_FILES = {
    "archive.js": (STATIC / "archive.js", "text/javascript; charset=utf-8"),
    "archive.css": (STATIC / "archive.css", "text/css; charset=utf-8"),
    "stereo.js": (
        Path(__file__).resolve().parent.parent / "signaling" / "static" / "stereo.js",
        "text/javascript; charset=utf-8",
    ),
}
RECORDING_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
CONTENT_TYPES = {
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".mp4": "video/mp4",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".json": "application/json",
}
NO_STORE = {"Cache-Control": "no-store"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refusal(Exception):
    """A request the archive answers with a JSON error ``{"error": code, "message": ...}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _error(status: int, code: str, message: str) -> web.Response:
    headers = {**NO_STORE, "WWW-Authenticate": "Bearer"} if status == 401 else NO_STORE
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


def _refusals(handler: Handler) -> Handler:
    """``handler`` with a :class:`Refusal` it raises answered as a JSON error."""

    @wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refusal as refusal:
            return _error(refusal.status, refusal.code, str(refusal))

    return wrapper


def load_manifest(path: Path, recording_id: str) -> dict[str, Any]:
    """The manifest at ``path`` of recording ``recording_id``, checked enough to be served.

    Raises ``OSError`` when it cannot be read and ``ValueError`` when it is not
    a usable manifest (not JSON, another recording's id, no room, bad file list).
    """
    manifest = json.loads(path.read_bytes())
    if not isinstance(manifest, dict):
        raise ValueError("not a JSON object")
    if manifest.setdefault("id", recording_id) != recording_id:
        raise ValueError(f"its id {manifest['id']!r} is not its directory's")
    if not isinstance(manifest.get("room"), str) or not manifest["room"]:
        raise ValueError("no room")
    files = manifest.setdefault("files", [])
    if not isinstance(files, list) or not all(
        isinstance(f, dict) and isinstance(f.get("name"), str) for f in files
    ):
        raise ValueError("files is not a list of named files")
    thumbnails = manifest.setdefault("thumbnails", [])
    if not isinstance(thumbnails, list) or not all(isinstance(t, str) for t in thumbnails):
        raise ValueError("thumbnails is not a list of names")
    participants = manifest.setdefault("participants", [])
    if not isinstance(participants, list) or not all(isinstance(p, dict) for p in participants):
        raise ValueError("participants is not a list of objects")
    return manifest


@dataclass(frozen=True, slots=True)
class _Cached:
    stamp: tuple[int, int, int]  # inode, size, mtime_ns of manifest.json
    manifest: dict[str, Any] | None  # None: malformed (warned about once)


class Manifests:
    """The manifests under a recordings directory, re-read when a file changes.

    Safe to use from the event loop and from executor threads at once (at
    worst a manifest that changed is read twice).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()  # guards _cache, never held while reading files

    def get(self, recording_id: str) -> dict[str, Any] | None:
        """The manifest of ``recording_id``; None if absent, unreadable or malformed."""
        if not RECORDING_ID.match(recording_id):
            return None
        path = self.directory / recording_id / MANIFEST
        try:
            info = path.stat()
        except OSError:
            with self._lock:
                self._cache.pop(recording_id, None)
            return None
        stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
        with self._lock:
            cached = self._cache.get(recording_id)
        if cached is not None and cached.stamp == stamp:
            return cached.manifest
        manifest: dict[str, Any] | None
        try:
            manifest = load_manifest(path, recording_id)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            LOG.warning("skipping recording %s: unusable %s: %s", recording_id, MANIFEST, exc)
            manifest = None
        with self._lock:
            self._cache[recording_id] = _Cached(stamp, manifest)
        return manifest

    def all(self) -> list[dict[str, Any]]:
        """Every usable manifest, in no particular order."""
        try:
            with os.scandir(self.directory) as entries:
                ids = [e.name for e in entries if RECORDING_ID.match(e.name) and e.is_dir()]
        except FileNotFoundError:
            ids = []
        with self._lock:
            for gone in self._cache.keys() - set(ids):
                del self._cache[gone]
        return [m for m in map(self.get, ids) if m is not None]


def _started(manifest: dict[str, Any]) -> datetime | None:
    """When the recording started (UTC), if its manifest says so readably."""
    value = manifest.get("started_at")
    if not isinstance(value, str):
        return None
    try:
        started = datetime.fromisoformat(value)
    except ValueError:
        return None
    return started.replace(tzinfo=UTC) if started.tzinfo is None else started.astimezone(UTC)


def _participant_names(manifest: dict[str, Any]) -> list[str]:
    return [p["name"] for p in manifest["participants"] if isinstance(p.get("name"), str)]


def summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the recording list shows of a (checked) manifest."""
    return {
        "id": manifest["id"],
        "room": manifest["room"],
        "status": manifest.get("status"),
        "started_at": manifest.get("started_at"),
        "ended_at": manifest.get("ended_at"),
        "duration_s": manifest.get("duration_s"),
        "participants": _participant_names(manifest),
        "files": [
            {key: f.get(key) for key in ("name", "kind", "bytes", "duration_s")}
            for f in manifest["files"]
        ],
        "thumbnails": manifest["thumbnails"],
    }


@dataclass(frozen=True, slots=True)
class Search:
    """The list's filters: exact room, started_at within [first, last] (UTC days), text."""

    room: str | None = None
    first: date | None = None
    last: date | None = None
    text: str = ""

    def matches(self, manifest: dict[str, Any]) -> bool:
        """Whether the (checked) manifest passes every filter."""
        if self.room is not None and manifest["room"] != self.room:
            return False
        if self.first is not None or self.last is not None:
            started = _started(manifest)
            if started is None:
                return False
            day = started.date()
            if (self.first is not None and day < self.first) or (
                self.last is not None and day > self.last
            ):
                return False
        if self.text:
            needle = self.text.casefold()
            haystack = [manifest["room"], manifest["id"], *_participant_names(manifest)]
            return any(needle in value.casefold() for value in haystack)
        return True


def _day(request: web.Request, key: str) -> date | None:
    value = request.query.get(key, "").strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise Refusal(400, "bad-request", f"{key} must be a date, YYYY-MM-DD") from None


def _newest_first(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(manifests, key=lambda m: (_started(m) or oldest, m["id"]), reverse=True)


def _grant(request: web.Request, secret: str) -> Grant:
    """The request's token, verified; raises a 401 :class:`Refusal`."""
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.startswith("Bearer ") else request.query.get("token")
    if not token:
        raise Refusal(
            401, "auth-required", "a token is required (Authorization: Bearer or ?token=)"
        )
    try:
        return verify_token(secret, token)
    except TokenError as exc:
        raise Refusal(401, exc.code, str(exc)) from None


def _sees(grant: Grant, manifest: dict[str, Any]) -> bool:
    return grant.role == ADMIN_ROLE or manifest["room"] == grant.room


def _served_names(manifest: dict[str, Any]) -> set[str]:
    """The plain file names of a recording that may be fetched."""
    names = {MANIFEST, *(f["name"] for f in manifest["files"]), *manifest["thumbnails"]}
    return {name for name in names if FILE_NAME.match(name)}


def _content_type(name: str) -> str:
    return CONTENT_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")


def add_archive_routes(app: web.Application, directory: Path, secret: str) -> None:
    """Mount the archive page, its API and the recordings' files (from ``directory``) on ``app``.

    Tokens are checked with ``secret``, the signaling server's token secret.
    """
    manifests = Manifests(directory)

    def visible(request: web.Request) -> tuple[str, dict[str, Any]]:
        """The requested recording's id and manifest, if the token may see it."""
        grant = _grant(request, secret)
        recording_id = request.match_info["id"]
        manifest = manifests.get(recording_id)
        if manifest is None or not _sees(grant, manifest):
            raise Refusal(404, "unknown-recording", f"no recording {recording_id!r}")
        return recording_id, manifest

    async def page(request: web.Request) -> web.FileResponse:
        headers = {"Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"}
        return web.FileResponse(STATIC / "archive.html", headers=headers)

    async def static(request: web.Request) -> web.FileResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        path, content_type = STATIC_FILES[name]
        headers = {"Content-Type": content_type, "Cache-Control": "no-cache"}
        return web.FileResponse(path, headers=headers)

    @_refusals
    async def list_recordings(request: web.Request) -> web.StreamResponse:
        grant = _grant(request, secret)
        search = Search(
            room=request.query.get("room", "").strip() or None,
            first=_day(request, "from"),
            last=_day(request, "to"),
            text=request.query.get("q", "").strip(),
        )
        found = [
            m
            for m in await asyncio.to_thread(manifests.all)
            if _sees(grant, m) and search.matches(m)
        ]
        return web.json_response(
            {"recordings": [summary(m) for m in _newest_first(found)]}, headers=NO_STORE
        )

    @_refusals
    async def get_recording(request: web.Request) -> web.StreamResponse:
        _, manifest = visible(request)
        return web.json_response(manifest, headers=NO_STORE)

    @_refusals
    async def get_file(request: web.Request) -> web.StreamResponse:
        recording_id, manifest = visible(request)
        name = request.match_info["name"]
        path = directory / recording_id / name
        if name not in _served_names(manifest) or not path.is_file():
            raise Refusal(404, "unknown-file", f"recording {recording_id!r} has no file {name!r}")
        headers = {
            "Content-Type": _content_type(name),
            "Cache-Control": "private, no-cache",
            "X-Content-Type-Options": "nosniff",
        }
        if request.query.get("download") in ("1", "true"):
            headers["Content-Disposition"] = f'attachment; filename="{recording_id}-{name}"'
        return web.FileResponse(path, headers=headers)

    app.router.add_get("/archive", page)
    app.router.add_get("/archive/static/{name}", static)
    app.router.add_get("/api/recordings", list_recordings)
    app.router.add_get("/api/recordings/{id}", get_recording)
    app.router.add_get("/recordings/{id}/{name}", get_file)


def _main_file(manifest: dict[str, Any]) -> str | None:
    """The recording's main media file: the first of kind "main", else the first file."""
    files = manifest["files"]
    chosen = next((f for f in files if f.get("kind") == "main"), files[0] if files else None)
    if chosen is None or not FILE_NAME.match(chosen["name"]) or chosen["name"] == MANIFEST:
        return None
    return str(chosen["name"])


def _thumbnails_now(directory: Path, recording_id: str) -> list[str]:
    """:func:`generate_thumbnails`, blocking."""
    path = directory / recording_id / MANIFEST
    try:
        media = _main_file(load_manifest(path, recording_id))
    except (OSError, ValueError) as exc:
        LOG.warning("no thumbnails for recording %s: unusable %s: %s", recording_id, MANIFEST, exc)
        return []
    if media is None:
        return []
    names = make_thumbnails(path.parent, media)
    try:
        manifest = load_manifest(path, recording_id)  # again: it may have changed meanwhile
    except ValueError as exc:
        LOG.warning("thumbnails of recording %s not listed: %s", recording_id, exc)
        return names
    manifest["thumbnails"] = names
    write_manifest(path.parent, manifest)
    return names


async def generate_thumbnails(directory: Path, recording_id: str) -> list[str]:
    """Make the thumbnails of a recording's main file and list them in its manifest.

    The decoding runs in the default executor. Returns the thumbnail names
    written (none when the manifest is unusable, with a warning, or the media
    cannot be decoded); raises ``OSError`` when the recording's directory cannot
    be written.
    """
    if not RECORDING_ID.match(recording_id):
        raise ValueError(f"bad recording id {recording_id!r}")
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, _thumbnails_now, directory, recording_id)
