"""The recording archive: its API, file serving, thumbnails and the page in real Chromium."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import av
import cv2
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from browser import chromium, wait_js
from signaling_client import serving
from yarl import URL

from recorder.archive import add_archive_routes, generate_thumbnails
from recorder.thumbnails import make_thumbnails
from signaling.tokens import issue_token

SECRET = "archive-test-secret-of-at-least-32-bytes"
EARLY = "cardio-20261202T081500Z-ab12"  # cardio, 2 Dec, Dr Lee and Nurse Kim, has media
LATE = "cardio-20261203T090000Z-cd34"  # cardio, 3 Dec, still recording
SURGERY = "surgery-20261204T070000Z-ef56"  # surgery, 4 Dec, Prof Alvarez

Client = TestClient[web.Request, web.Application]


def token(room: str, role: str = "viewer", **kw: Any) -> str:
    return issue_token(SECRET, room=room, role=role, name=f"{role} of {room}", **kw)


class Unseekable:
    """A file the muxer can only append to: no cues, no duration, as a live recording's."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file

    def write(self, data: bytes) -> int:
        return self.file.write(data)


def encode_webm(path: Path, seconds: int = 3, fps: int = 15, seekable: bool = True) -> Path:
    """A real VP8 WebM, 320x240, a keyframe each second, a bar moving over changing colours."""
    with (
        path.open("wb") as file,
        av.open(file if seekable else Unseekable(file), "w", format="webm") as output,
    ):
        stream = output.add_stream("libvpx", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.gop_size = fps
        stream.codec_context.bit_rate = 400_000
        for n in range(seconds * fps):
            image = np.zeros((240, 320, 3), np.uint8)
            image[:, :, n // fps % 3] = 60 + 4 * n
            image[:, (7 * n) % 300 : (7 * n) % 300 + 20] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = n, Fraction(1, fps)
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encode_webm(tmp_path_factory.mktemp("clip") / "main.webm")


def write_recording(
    root: Path,
    recording_id: str,
    room: str,
    started_at: str,
    names: list[str],
    clip: Path | None = None,
    status: str = "complete",
) -> dict[str, Any]:
    """A recording directory with a manifest (and ``clip`` as its main file)."""
    folder = root / recording_id
    folder.mkdir(parents=True)
    files = []
    if clip is not None:
        shutil.copyfile(clip, folder / "main.webm")
        files.append(
            {
                "name": "main.webm",
                "kind": "main",
                "participant": None,
                "start_s": 0.0,
                "duration_s": 3.0,
                "bytes": clip.stat().st_size,
                "sha256": "0" * 64,
                "container": "webm",
                "tracks": [{"kind": "video", "codec": "vp8", "frames": 45, "duration_s": 3.0}],
            }
        )
    manifest = {
        "version": 1,
        "id": recording_id,
        "room": room,
        "status": status,
        "started_at": started_at,
        "ended_at": None if status == "recording" else started_at,
        "duration_s": 3.0,
        "participants": [
            {"id": f"p{n}", "name": name, "role": "presenter", "joined_at": started_at}
            for n, name in enumerate(names)
        ],
        "files": files,
        "stereo": "mono",
        "thumbnails": [],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


@pytest.fixture
def recordings(tmp_path: Path, clip: Path) -> Path:
    root = tmp_path / "recordings"
    write_recording(
        root, EARLY, "cardio", "2026-12-02T08:15:00.123Z", ["Dr Lee", "Nurse Kim"], clip
    )
    write_recording(root, LATE, "cardio", "2026-12-03T09:00:00Z", ["Dr Okafor"], status="recording")
    write_recording(root, SURGERY, "surgery", "2026-12-04T07:00:00Z", ["Prof Alvarez"], clip)
    (root / "broken").mkdir()
    (root / "broken" / "manifest.json").write_text("{not json")
    (root / "no-manifest").mkdir()
    (root / EARLY / "notes.txt").write_text("not listed in the manifest")
    (tmp_path / "passwd").write_text("root:x:0:0")
    return root


@pytest.fixture
async def client(recordings: Path) -> AsyncIterator[Client]:
    app = web.Application()
    add_archive_routes(app, recordings, SECRET)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def listed(client: Client, token_: str, **query: str) -> list[str]:
    response = await client.get("/api/recordings", params={"token": token_, **query})
    assert response.status == 200, await response.text()
    return [r["id"] for r in (await response.json())["recordings"]]


async def test_admin_sees_every_recording_newest_first_and_broken_ones_are_skipped(
    client: Client, clip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "recorder.archive"):
        response = await client.get(
            "/api/recordings", headers={"Authorization": f"Bearer {token('*', 'admin')}"}
        )
    assert response.status == 200
    recordings = (await response.json())["recordings"]
    assert [r["id"] for r in recordings] == [SURGERY, LATE, EARLY]
    assert "broken" in caplog.text
    assert recordings[2] == {
        "id": EARLY,
        "room": "cardio",
        "status": "complete",
        "started_at": "2026-12-02T08:15:00.123Z",
        "ended_at": "2026-12-02T08:15:00.123Z",
        "duration_s": 3.0,
        "participants": ["Dr Lee", "Nurse Kim"],
        "files": [
            {"name": "main.webm", "kind": "main", "bytes": clip.stat().st_size, "duration_s": 3.0}
        ],
        "thumbnails": [],
    }
    assert recordings[1]["status"] == "recording"


async def test_filters_by_room_days_and_text(client: Client, recordings: Path) -> None:
    admin = token("*", "admin")
    assert await listed(client, admin, room="cardio") == [LATE, EARLY]
    assert await listed(client, admin, **{"from": "2026-12-03", "to": "2026-12-03"}) == [LATE]
    assert await listed(client, admin, **{"from": "2026-12-03"}) == [SURGERY, LATE]
    assert await listed(client, admin, to="2026-12-02") == [EARLY]
    assert await listed(client, admin, q="dr LEE") == [EARLY]
    assert await listed(client, admin, q="SURG") == [SURGERY]
    assert await listed(client, admin, q="cd34") == [LATE]
    assert await listed(client, admin, room="cardio", q="alvarez") == []
    response = await client.get("/api/recordings", params={"token": admin, "from": "2 Dec"})
    assert response.status == 400
    assert (await response.json())["error"] == "bad-request"

    # Manifests are read again when they change: the broken one, mended, is listed.
    write_recording(recordings, "mended", "cardio", "2026-12-01T00:00:00Z", [])
    shutil.rmtree(recordings / "broken")
    assert await listed(client, admin, room="cardio") == [LATE, EARLY, "mended"]


async def test_a_room_token_sees_only_its_room(client: Client) -> None:
    cardio = token("cardio")
    assert await listed(client, cardio) == [LATE, EARLY]
    assert await listed(client, cardio, room="surgery") == []
    assert await listed(client, token("surgery", "moderator")) == [SURGERY]
    assert await listed(client, token("oncology")) == []

    response = await client.get(f"/api/recordings/{EARLY}", params={"token": cardio})
    assert response.status == 200
    manifest = await response.json()
    assert manifest["participants"][0]["name"] == "Dr Lee"
    assert manifest["files"][0]["sha256"] == "0" * 64

    for path in (f"/api/recordings/{SURGERY}", f"/recordings/{SURGERY}/main.webm"):
        response = await client.get(path, params={"token": cardio})
        assert response.status == 404
        assert (await response.json())["error"] == "unknown-recording"
    response = await client.get("/api/recordings/nope", params={"token": cardio})
    assert (response.status, (await response.json())["error"]) == (404, "unknown-recording")


async def test_missing_invalid_and_expired_tokens_are_refused(client: Client) -> None:
    expired = token("cardio", ttl=60, now=time.time() - 3600)
    forged = issue_token("another-secret-of-at-least-32-bytes!!", room="cardio", role="viewer")
    for path in ("/api/recordings", f"/api/recordings/{EARLY}", f"/recordings/{EARLY}/main.webm"):
        response = await client.get(path)
        assert response.status == 401
        assert (await response.json())["error"] == "auth-required"
        for bad, code in ((expired, "token-expired"), (forged, "invalid-token")):
            response = await client.get(path, headers={"Authorization": f"Bearer {bad}"})
            assert response.status == 401
            body = await response.json()
            assert body["error"] == code and body["message"]


async def test_files_are_served_with_ranges_types_and_downloads(
    client: Client, recordings: Path
) -> None:
    data = (recordings / EARLY / "main.webm").read_bytes()
    url = f"/recordings/{EARLY}/main.webm"
    cardio = token("cardio")

    response = await client.get(url, params={"token": cardio})
    assert response.status == 200
    assert response.headers["Content-Type"] == "video/webm"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert "Content-Disposition" not in response.headers
    assert await response.read() == data

    headers = {"Range": "bytes=100-1099", "Authorization": f"Bearer {cardio}"}
    response = await client.get(url, headers=headers)
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
    assert await response.read() == data[100:1100]

    response = await client.get(url, params={"token": cardio, "download": "1"})
    assert response.headers["Content-Disposition"] == f'attachment; filename="{EARLY}-main.webm"'

    response = await client.get(f"/recordings/{EARLY}/manifest.json", params={"token": cardio})
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(await response.read())["id"] == EARLY


@pytest.mark.parametrize(
    "path",
    [
        f"/recordings/{EARLY}/notes.txt",  # there, but not listed in the manifest
        f"/recordings/{EARLY}/thumb-9.jpg",
        f"/recordings/{EARLY}/..%2F..%2Fpasswd",
        f"/recordings/{EARLY}/%2e%2e%2f%2e%2e%2fpasswd",
        f"/recordings/{EARLY}/%2e%2e",
        f"/recordings/{EARLY}/..%5c..%5cpasswd",
        f"/recordings/{EARLY}/../{SURGERY}/main.webm",
        f"/recordings/{EARLY}/%2e%2e/{SURGERY}/main.webm",
        "/recordings/%2e%2e/passwd",
        "/recordings/evil/..%2F..%2Fpasswd",
        "/recordings/evil/..%2F..%2Frecordings%2Fevil%2Fmanifest.json",
    ],
)
async def test_only_files_named_by_the_manifest_are_served(
    client: Client, recordings: Path, path: str
) -> None:
    evil = write_recording(recordings, "evil", "cardio", "2026-12-01T00:00:00Z", [])
    evil["files"] = [{"name": "../../passwd"}, {"name": "../evil/manifest.json"}]
    evil["thumbnails"] = ["..\\..\\passwd"]
    (recordings / "evil" / "manifest.json").write_text(json.dumps(evil))

    url = URL(str(client.make_url("/")).rstrip("/") + path, encoded=True)
    async with aiohttp.ClientSession() as session:
        response = await session.get(url, params={"token": token("cardio")})
        body = await response.read()
    assert response.status in (400, 404), (path, response.status)
    assert b"root:x" not in body and not body.startswith(b"\x1aE\xdf\xa3")  # no WebM


def jpeg_shape_and_pixels(path: Path) -> tuple[tuple[int, ...], bytes]:
    """A JPEG decoded by OpenCV: its shape and its pixels."""
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable image"
    return image.shape, image.tobytes()


async def test_thumbnails_are_made_and_listed_in_the_manifest(
    client: Client, recordings: Path, clip: Path
) -> None:
    assert await listed(client, token("cardio"), q="lee") == [EARLY]  # its manifest is cached
    names = await generate_thumbnails(recordings, EARLY)
    assert 2 <= len(names) <= 4
    assert names == [f"thumb-{n}.jpg" for n in range(len(names))]
    images = [jpeg_shape_and_pixels(recordings / EARLY / name) for name in names]
    assert all(shape == (240, 320, 3) for shape, _ in images)
    assert len({pixels for _, pixels in images}) == len(images)  # spread, not repeated
    manifest = json.loads((recordings / EARLY / "manifest.json").read_text())
    assert manifest["thumbnails"] == names
    assert manifest["participants"][1]["name"] == "Nurse Kim"

    response = await client.get(
        f"/recordings/{EARLY}/{names[0]}", params={"token": token("cardio")}
    )
    assert response.headers["Content-Type"] == "image/jpeg"
    jpeg = cv2.imdecode(np.frombuffer(await response.read(), np.uint8), cv2.IMREAD_COLOR)
    assert jpeg is not None and jpeg.shape == (240, 320, 3)
    response = await client.get("/api/recordings", params={"token": token("cardio"), "q": "lee"})
    assert (await response.json())["recordings"][0]["thumbnails"] == names  # read again

    # Smaller thumbnails keep the aspect ratio.
    small = make_thumbnails(recordings / EARLY, "main.webm", count=2, width=160)
    assert small == ["thumb-0.jpg", "thumb-1.jpg"]
    assert jpeg_shape_and_pixels(recordings / EARLY / "thumb-0.jpg")[0] == (120, 160, 3)

    # No media, no manifest: nothing, and no exception.
    assert await generate_thumbnails(recordings, LATE) == []
    assert await generate_thumbnails(recordings, "no-manifest") == []


def test_damaged_media_gives_fewer_thumbnails_or_none(tmp_path: Path, clip: Path) -> None:
    data = clip.read_bytes()
    (tmp_path / "truncated.webm").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.webm").write_bytes(b"\x1aE\xdf\xa3" + bytes(range(256)) * 20)
    (tmp_path / "empty.webm").write_bytes(b"")
    assert len(make_thumbnails(tmp_path, "truncated.webm")) <= 4
    assert make_thumbnails(tmp_path, "garbage.webm") == []
    assert make_thumbnails(tmp_path, "empty.webm") == []
    assert make_thumbnails(tmp_path, "missing.webm") == []


def test_thumbnails_of_a_file_without_duration_or_cues(tmp_path: Path) -> None:
    live = encode_webm(tmp_path / "live.webm", seekable=False)
    with av.open(str(live)) as container:
        assert container.duration is None  # so the keyframes are found by reading it through
    names = make_thumbnails(tmp_path, "live.webm", count=3)
    assert names == ["thumb-0.jpg", "thumb-1.jpg", "thumb-2.jpg"]
    images = [jpeg_shape_and_pixels(tmp_path / name) for name in names]
    assert len({pixels for _, pixels in images}) == 3


@pytest.fixture
async def served(recordings: Path) -> AsyncIterator[str]:
    """Only the archive's routes, on a loopback port; yields the base URL."""
    app = web.Application()
    add_archive_routes(app, recordings, SECRET)
    async with serving(app) as base:
        yield base


async def test_the_archive_page_lists_and_plays_a_recording(
    tmp_path: Path, recordings: Path, served: str
) -> None:
    await generate_thumbnails(recordings, EARLY)
    async with chromium(tmp_path / "chromium") as browser:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(f"{served}/archive?token={token('cardio')}")
        assert await wait_js(page, "() => document.querySelectorAll('.card').length === 2")
        assert "token=" not in page.url  # kept in sessionStorage, not in the address bar
        thumbnail = page.locator(f'.card[data-id="{EARLY}"] img')
        assert await wait_js(page, "() => document.querySelector('.card img')?.naturalWidth")
        assert await thumbnail.get_attribute("src")

        await page.click(f'.card[data-id="{EARLY}"]')
        assert await wait_js(page, f"() => window.archive.manifest?.id === '{EARLY}'")
        assert await page.locator("#files a", has_text="Download").count() == 1
        # A mono recording has no stereo views, and no transport bar below the native controls.
        assert await page.is_hidden("#view-label") and await page.is_hidden("#transport")
        await page.evaluate("() => window.archive.video.play()")
        assert await wait_js(page, "() => window.archive.video.currentTime > 1.0")

        # The anaglyph view draws one eye's size onto its canvas.
        await page.evaluate(
            "() => window.archive.applyStereo(window.archive.video, 'sbs', 'anaglyph')"
        )
        await page.evaluate("() => { const v = window.archive.video; v.currentTime = 0.5; }")
        assert await wait_js(page, "() => document.querySelector('#anaglyph').width === 160")
        assert await page.is_visible("#anaglyph") and await page.is_visible("#transport")
        assert errors == []

        anonymous = await browser.new_page()
        await anonymous.goto(f"{served}/archive")
        assert await wait_js(anonymous, "() => window.archive.status === 'error'")
        assert await anonymous.is_visible("#error")
        assert "auth-required" in await anonymous.inner_text("#error")
        status = await anonymous.evaluate("() => fetch('/api/recordings').then(r => r.status)")
        assert status == 401
