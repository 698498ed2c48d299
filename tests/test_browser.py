"""Real Chromium pages on kiosk deep links: play, floor handover, rejoin after a drop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from browser import ARTIFACTS, chromium, wait_js, write_y4m
from playwright.async_api import Page
from signaling_client import room_link, running_server, token, wait_until

from recorder.manifest import read_manifest
from signaling.config import Config

FRAMES_JS = """() => {
  const v = window.telebridge && window.telebridge.mainVideo;
  if (!v || !v.getVideoPlaybackQuality) return -1;
  return v.getVideoPlaybackQuality().totalVideoFrames;
}"""

SIZE_JS = """() => {
  const v = window.telebridge && window.telebridge.mainVideo;
  return v ? [v.videoWidth, v.videoHeight] : [0, 0];
}"""

# The colour at the centre of the main video, drawn to a canvas.
PIXEL_JS = """() => {
  const v = window.telebridge.mainVideo;
  if (!v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d');
  g.drawImage(v, 0, 0);
  return Array.from(g.getImageData(v.videoWidth >> 1, v.videoHeight >> 1, 1, 1).data);
}"""


async def plays(page: Page, timeout: float = 20.0) -> None:
    """The main video decodes frames: its frame count rises."""
    first = await wait_js(page, FRAMES_JS, lambda n: n is not None and n > 0, timeout)
    await wait_js(page, FRAMES_JS, lambda n: n > first + 10, timeout)


async def test_kiosk_viewers_play_follow_the_floor_and_rejoin(tmp_path: Path) -> None:
    config = Config()
    recordings = tmp_path / "recordings"
    config.recorder.directory = str(recordings)
    async with running_server(config) as (base, server):
        room = "consult"

        def link(role: str, name: str) -> str:
            return room_link(base, room, role, name)

        magenta = write_y4m(tmp_path / "participant.y4m", 320, 240, (230, 20, 230))
        async with (
            chromium(tmp_path / "a") as browser,
            chromium(tmp_path / "b", [f"--use-file-for-fake-video-capture={magenta}"]) as other,
        ):
            presenter = await browser.new_page()
            await presenter.goto(link("presenter", "Central hospital"))
            await wait_js(presenter, "() => window.telebridge.state", lambda s: s == "joined")
            assert await wait_js(
                presenter,
                "() => window.telebridge.floor === window.telebridge.self.id",
                bool,
            )
            viewers = []
            for n in range(3):
                page = await browser.new_page()
                await page.goto(link("viewer", f"District hospital {n + 1}"))
                viewers.append(page)
            moderator = await browser.new_page()
            await moderator.goto(link("moderator", "Moderator"))
            participant = await other.new_page()
            await participant.goto(link("participant", "Island station"))
            for page in viewers:
                await plays(page)
                assert await page.evaluate(SIZE_JS) == [640, 480]  # Chromium's fake camera

            # The moderator hands the floor to the island station, with a click.
            participant_id = await wait_js(
                participant, "() => window.telebridge.self && window.telebridge.self.id", bool
            )
            button = moderator.locator(
                f'button[data-action="grant-floor"][data-participant="{participant_id}"]'
            )
            await button.click(timeout=15000)
            for page in viewers:
                await wait_js(
                    page, "() => window.telebridge.mainFeed", lambda f: f == participant_id
                )
                await wait_js(page, SIZE_JS, lambda s: s == [320, 240])
                # The participant's magenta picture: red and blue high, green low.
                await wait_js(
                    page,
                    PIXEL_JS,
                    lambda p: p is not None and p[0] > 150 and p[1] < 100 and p[2] > 150,
                )
                await plays(page)

            # The moderator records a while: every page shows the banner.
            banner = "() => !document.getElementById('recording-banner').hidden"
            await moderator.locator("#toggle-recording").click(timeout=15000)
            for page in [*viewers, participant, presenter]:
                await wait_js(page, banner, bool)
            await asyncio.sleep(3.0)
            await moderator.locator("#toggle-recording").click(timeout=15000)
            for page in [*viewers, participant]:
                await wait_js(page, banner, lambda shown: not shown)
            [recording] = [d for d in recordings.iterdir() if d.is_dir()]
            await wait_until(lambda: (read_manifest(recording) or {}).get("status") == "complete")
            manifest = read_manifest(recording)
            assert manifest is not None
            main = next(f for f in manifest["files"] if f["kind"] == "main")
            # Chromium's VP8 and Opus, remuxed as they came.
            codecs = sorted((t["kind"], t["codec"]) for t in main["tracks"])
            assert codecs == [("audio", "opus"), ("video", "vp8")]
            video = next(t for t in main["tracks"] if t["kind"] == "video")
            assert (video["width"], video["height"]) == (320, 240)  # the island station's feed
            assert video["frames"] >= 40  # ~3 s of the fake camera's 20 fps
            # The recording plays in Chromium from the archive page, with the room's token.
            archive = await browser.new_page()
            await archive.goto(f"{base}/archive?token={token(room, 'moderator', 'Moderator')}")
            await archive.click(f'.card[data-id="{manifest["id"]}"]', timeout=15000)
            await wait_js(archive, f"() => window.archive.manifest?.id === '{manifest['id']}'")
            await archive.evaluate("() => window.archive.video.play()")
            await wait_js(archive, "() => window.archive.video.currentTime", lambda t: t > 1.0)
            await archive.close()

            # A network drop: the server loses the viewer's connections; the
            # page rejoins by itself and plays again.
            dropped = viewers[0]
            dropped_id = await dropped.evaluate("() => window.telebridge.self.id")
            live_room = server.rooms[room]
            member = live_room.members[dropped_id]
            await live_room.remove_member(member)
            assert member.ws is not None
            await member.ws.close()
            await wait_js(dropped, "() => window.telebridge.joins", lambda n: n >= 2, 30)
            await wait_js(dropped, "() => window.telebridge.state", lambda s: s == "joined")
            await plays(dropped, 30)
            assert len(live_room.members) == 6

            # Overload: the server sheds its newest viewer (the one that just
            # rejoined); the page says why, comes back by itself and plays.
            await dropped.evaluate(
                """() => {
                  window.reconnectReasons = [];
                  const session = window.telebridge.session;
                  session.addEventListener("state", () => {
                    if (session.state === "reconnecting") {
                      window.reconnectReasons.push(session.statusDetail);
                    }
                  });
                }"""
            )
            await server._shed(server.sfu.media_loads(), {"main": 1})
            reasons = await wait_js(dropped, "() => window.reconnectReasons", bool)
            assert "overloaded" in reasons[0], reasons
            await wait_js(dropped, "() => window.telebridge.joins", lambda n: n >= 3, 30)
            await wait_js(dropped, "() => window.telebridge.state", lambda s: s == "joined")
            await plays(dropped, 30)
            assert len(live_room.members) == 6

            ARTIFACTS.mkdir(exist_ok=True)
            await viewers[1].screenshot(path=str(ARTIFACTS / "viewer.png"))


async def test_browser_viewers_on_media_workers_survive_a_worker_crash(tmp_path: Path) -> None:
    """Subscribers on two worker processes; SIGKILL one: its viewer plays again, the other
    viewer is never renegotiated."""
    import os
    import signal

    config = Config()
    config.sfu.workers = 2
    async with running_server(config) as (base, server):
        room = "workers"
        async with chromium(tmp_path / "a") as browser:
            presenter = await browser.new_page()
            await presenter.goto(room_link(base, room, "presenter", "Central hospital"))
            await wait_js(presenter, "() => window.telebridge.state", lambda s: s == "joined")
            viewers = []
            for n in range(2):
                page = await browser.new_page()
                await page.goto(room_link(base, room, "viewer", f"District hospital {n + 1}"))
                viewers.append(page)
            for page in viewers:
                await plays(page)
            sfu = server.sfu
            members = {m.name: m for m in server.rooms[room].members.values()}
            placement = {
                name: next(w for w in sfu.workers if m.subscribe_peer in w.peers)  # type: ignore[attr-defined]
                for name, m in members.items()
                if m.subscribe_peer is not None
            }
            victim = placement["District hospital 1"]
            assert placement["District hospital 2"] is not victim
            survivor_peer = members["District hospital 2"].subscribe_peer
            old_peer = members["District hospital 1"].subscribe_peer
            assert victim.process.pid is not None
            killed = time.monotonic()
            os.kill(victim.process.pid, signal.SIGKILL)
            # The crashed worker's viewer gets a new subscribe connection and plays.
            assert await wait_until(
                lambda: members["District hospital 1"].subscribe_peer not in (None, old_peer), 15
            )
            await plays(viewers[0])
            back_after = time.monotonic() - killed
            print(f"viewer playing again {back_after:.2f} s after its worker was killed")
            assert back_after < 10, back_after
            assert await viewers[0].evaluate("() => window.telebridge.state") == "joined"
            # The other viewer kept its connection and kept playing.
            assert members["District hospital 2"].subscribe_peer == survivor_peer
            await plays(viewers[1], timeout=5)
