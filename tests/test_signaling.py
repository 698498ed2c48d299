"""The signaling protocol with real aiortc clients on loopback: media, roles, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis_server import redis_url as redis_url
from signaling_client import (
    SECRET,
    Client,
    ProtocolFailure,
    running_server,
    token,
    wait_until,
)

from bench.synthetic import PatternVideoTrack, ToneAudioTrack
from sfu.load import cpu_limit
from sfu.workers import ClusterSfu
from signaling.app import Server
from signaling.config import Config
from signaling.overload import CAP_GROW_S


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Server]]:
    config = Config()
    config.signaling.rate_limit = 50
    config.signaling.rate_burst = 60
    async with running_server(config) as running:
        yield running


async def test_viewers_receive_the_presenter_and_the_floor_passes_without_renegotiating_main(
    server: tuple[str, Server], http: aiohttp.ClientSession
) -> None:
    base, srv = server
    presenter, moderator, participant = Client(base, http), Client(base, http), Client(base, http)
    viewers = [Client(base, http) for _ in range(2)]
    everyone = [presenter, moderator, participant, *viewers]
    try:
        joined = await presenter.join(token("r1", "presenter", "Central"), receive=False)
        assert joined["self"]["role"] == "presenter"
        await presenter.expect("floor", holder=presenter.self_id)
        await presenter.publish([PatternVideoTrack(320, 240), ToneAudioTrack()])
        await moderator.join(token("r1", "moderator", "Expert"))
        await participant.join(token("r1", "participant", "District 7"))
        for n, viewer in enumerate(viewers):
            joined = await viewer.join(token("r1", "viewer", f"Clinic {n}"))
            assert joined["floor"] == presenter.self_id
            await viewer.expect("main-feed", participant=presenter.self_id)
        for client in (moderator, participant, *viewers):
            assert await wait_until(lambda c=client: c.main("video").frames > 10, 15), (
                client.tracks,
                client.received,
                client.inbox,
            )
            assert (client.main("video").width, client.main("video").height) == (320, 240)
            assert await wait_until(lambda c=client: c.main("audio").frames > 20, 10)
        # Active speaker from the presenter's tone (RFC 6464 levels).
        await viewers[0].expect("active-speaker", participant=presenter.self_id)

        # The participant raises a hand; the moderator grants it the floor.
        await participant.request({"type": "raise-hand", "raised": True})
        update = await moderator.expect("participant-updated")
        while not (
            update["participant"]["id"] == participant.self_id and update["participant"]["hand"]
        ):
            update = await moderator.expect("participant-updated")
        offers_before = [v.offers for v in viewers]
        await moderator.request({"type": "grant-floor", "participant": participant.self_id})
        await participant.expect("floor", holder=participant.self_id)
        await participant.publish([PatternVideoTrack(160, 120), ToneAudioTrack()])
        for viewer in viewers:
            await viewer.expect("main-feed", participant=participant.self_id)
            assert await wait_until(lambda v=viewer: v.main("video").width == 160, 10)
            frames = viewer.main("video").frames
            assert await wait_until(lambda v=viewer, f=frames: v.main("video").frames > f + 15, 10)
        # The main tracks switched source in place; the one new offer adds the
        # former presenter as a thumbnail.
        assert [v.offers for v in viewers] == [n + 1 for n in offers_before]
        thumbs = [t for t in viewers[0].tracks.values() if t["slot"] == "participant"]
        assert {t["participant"] for t in thumbs} == {presenter.self_id}
        assert await wait_until(
            lambda: all(
                viewers[0].received.get(t["mid"]) is not None
                and viewers[0].received[t["mid"]].frames > 5
                for t in thumbs
            ),
            10,
        )

        # Revoking gives the floor back to the presenter.
        await moderator.request({"type": "revoke-floor"})
        await viewers[0].expect("main-feed", participant=presenter.self_id)
        assert await wait_until(lambda: viewers[0].main("video").width == 320, 10)
        assert srv.sfu.stats()["send_dropped"] == 0
    finally:
        for client in everyone:
            await client.close()


async def test_moderator_mutes_removes_and_ends(
    server: tuple[str, Server], http: aiohttp.ClientSession
) -> None:
    base, srv = server
    presenter, moderator, viewer, other = (Client(base, http) for _ in range(4))
    try:
        await presenter.join(token("r2", "presenter"), receive=False)
        await presenter.publish([PatternVideoTrack(160, 120), ToneAudioTrack()])
        await moderator.join(token("r2", "moderator"))
        await viewer.join(token("r2", "viewer", "v1", subject="v1"))
        other_joined = await other.join(token("r2", "viewer", "v2", subject="v2"))
        assert await wait_until(lambda: viewer.main("audio").frames > 20, 10)

        await moderator.request({"type": "mute", "participant": presenter.self_id, "kind": "audio"})
        await presenter.expect("muted", kind="audio")
        await asyncio.sleep(0.5)
        frames = viewer.main("audio").frames
        await asyncio.sleep(1.0)
        assert viewer.main("audio").frames <= frames + 5  # audio stopped
        assert viewer.main("video").frames > 0

        # Viewers are announced to moderators only: the moderator heard of
        # both, the other viewer of neither, and its list holds no viewer.
        await moderator.request({"type": "remove", "participant": viewer.self_id})
        await viewer.expect("removed")
        assert await wait_until(lambda: viewer.closed.is_set(), 5)
        left = await moderator.expect("participant-left", participant=viewer.self_id)
        assert left
        joined = [m["participant"] for m in moderator.inbox if m["type"] == "participant-joined"]
        assert {viewer.self_id, other.self_id} <= {p["id"] for p in joined}

        def names_a_viewer(message: dict[str, Any]) -> bool:
            about = message.get("participant")
            if isinstance(about, dict):
                return bool(about["role"] == "viewer")
            return about == viewer.self_id

        about_viewers = [
            m for m in other.inbox if m["type"].startswith("participant-") and names_a_viewer(m)
        ]
        assert not about_viewers
        seen = {p["role"] for p in other_joined["participants"] if p["id"] != other.self_id}
        assert seen == {"presenter", "moderator"}

        await moderator.send({"type": "end-room"})
        for client in (presenter, other, moderator):
            await client.expect("room-ended")
            assert await wait_until(lambda c=client: c.closed.is_set(), 5)
        assert "r2" not in srv.rooms
        assert await wait_until(lambda: not srv.sfu.peers, 5)
    finally:
        for client in (presenter, moderator, viewer, other):
            await client.close()


async def test_rejoin_with_the_same_identity_replaces_the_old_session(
    server: tuple[str, Server], http: aiohttp.ClientSession
) -> None:
    base, srv = server
    first, second = Client(base, http), Client(base, http)
    try:
        jwt = token("r3", "viewer", "Kiosk 12", subject="kiosk-12")
        await first.join(jwt)
        await second.join(jwt)
        assert await wait_until(lambda: first.closed.is_set(), 5)
        assert [m.id for m in srv.rooms["r3"].members.values()] == [second.self_id]
    finally:
        await first.close()
        await second.close()


async def test_errors_have_codes_and_disturb_nobody(
    server: tuple[str, Server], http: aiohttp.ClientSession
) -> None:
    base, srv = server
    presenter, viewer = Client(base, http), Client(base, http)
    clients = [presenter, viewer]

    async def fresh() -> Client:
        client = Client(base, http)
        clients.append(client)
        await client.connect()
        return client

    async def refused(message: dict[str, object] | str, code: str) -> Client:
        client = await fresh()
        if isinstance(message, str):
            await client.send_raw(message)
        else:
            await client.send(message)
        error = await client.expect("error")
        assert error["code"] == code, error
        return client

    try:
        await presenter.join(token("r4", "presenter"), receive=False)
        await presenter.publish([PatternVideoTrack(160, 120)])
        await viewer.join(token("r4", "viewer"))
        assert await wait_until(lambda: viewer.main("video").frames > 5, 10)

        # Before joining.
        await refused("{not json", "bad-json")
        await refused("[1, 2]", "bad-json")
        await refused({"type": "publish", "sdp": "x"}, "auth-required")
        await refused({"type": "dance"}, "unknown-type")
        await refused(
            {"type": "join", "token": token("r4", "viewer"), "protocol": 2}, "unsupported-protocol"
        )
        await refused({"type": "join", "token": "abc.def.ghi", "protocol": 1}, "invalid-token")
        forged = token("r4", "moderator")[:-4] + "AAAA"
        await refused({"type": "join", "token": forged, "protocol": 1}, "invalid-token")
        from signaling.tokens import issue_token

        other_secret = issue_token("another-secret-of-at-least-32-bytes!!", "r4", "moderator")
        await refused({"type": "join", "token": other_secret, "protocol": 1}, "invalid-token")
        expired = token("r4", "viewer", ttl=-10)
        await refused({"type": "join", "token": expired, "protocol": 1}, "token-expired")
        await refused(
            {"type": "join", "token": token("r5", "viewer"), "room": "r4", "protocol": 1},
            "wrong-room",
        )
        await refused({"type": "join", "protocol": 1}, "invalid-token")
        client = await fresh()
        await client.send_raw("x" * (srv.config.signaling.max_message_bytes + 1))
        assert (await client.expect("error"))["code"] == "message-too-large"

        # After joining, as a viewer.
        rogue = await fresh()
        rogue_joined = await rogue.request(
            {"type": "join", "token": token("r4", "viewer", "rogue"), "protocol": 1},
            reply="joined",
        )
        assert rogue_joined["self"]["role"] == "viewer"
        for message, code in [
            ({"type": "join", "token": token("r4", "viewer"), "protocol": 1}, "already-joined"),
            ({"type": "publish", "sdp": "v=0"}, "forbidden"),
            ({"type": "grant-floor", "participant": presenter.self_id}, "forbidden"),
            ({"type": "mute", "participant": presenter.self_id, "kind": "audio"}, "forbidden"),
            ({"type": "remove", "participant": presenter.self_id}, "forbidden"),
            ({"type": "end-room"}, "forbidden"),
            ({"type": "start-recording"}, "forbidden"),
            ({"type": "unpublish"}, "not-publishing"),
            ({"type": "raise-hand"}, "invalid-message"),
            ({"type": "raise-hand", "raised": "yes"}, "invalid-message"),
            ({"type": "ice", "target": "publish", "candidate": None}, "not-publishing"),
            ({"type": "ice", "target": "sideways", "candidate": None}, "invalid-message"),
            ({"type": "answer", "sdp": 5}, "invalid-message"),
        ]:
            with pytest.raises(ProtocolFailure) as failure:
                await rogue.request(message)
            assert failure.value.code == code, (message, failure.value)

        # As a moderator: bad targets, bad SDP, a recordings directory that cannot exist.
        srv.recorder.root = Path("/dev/null/recordings")
        moderator = await fresh()
        await moderator.request(
            {"type": "join", "token": token("r4", "moderator"), "protocol": 1}, reply="joined"
        )
        for message, code in [
            ({"type": "grant-floor", "participant": "nobody"}, "unknown-participant"),
            (
                {"type": "mute", "participant": presenter.self_id, "kind": "smell"},
                "invalid-message",
            ),
            ({"type": "publish", "sdp": "v=0\r\nthis is not sdp"}, "invalid-sdp"),
            ({"type": "start-recording"}, "recording-failed"),
        ]:
            with pytest.raises(ProtocolFailure) as failure:
                await moderator.request(message)
            assert failure.value.code == code, (message, failure.value)

        # Flooding is rate limited, and the connection stays usable.
        burst = srv.config.signaling.rate_burst
        for _ in range(burst + 20):
            await rogue.send({"type": "ping"})
        await rogue.expect("error", code="rate-limited")
        await asyncio.sleep(1.5)
        assert (await rogue.request({"type": "ping"}, reply="pong"))["type"] == "pong"

        # The room never noticed.
        frames = viewer.main("video").frames
        assert await wait_until(lambda: viewer.main("video").frames > frames + 10, 5)
        assert set(srv.rooms["r4"].members) >= {presenter.self_id, viewer.self_id}
    finally:
        for client in clients:
            await client.close()


async def test_limits_on_rooms_and_participants(http: aiohttp.ClientSession) -> None:
    config = Config()
    config.signaling.max_rooms = 1
    config.signaling.max_participants = 1
    config.signaling.join_timeout = 0.5
    async with running_server(config) as (base, _):
        first, second, third, silent = (Client(base, http) for _ in range(4))
        try:
            await first.join(token("a", "viewer"))
            with pytest.raises(ProtocolFailure) as failure:
                await second.join(token("a", "viewer", "second"))
            assert failure.value.code == "room-full"
            with pytest.raises(ProtocolFailure) as failure:
                await third.join(token("b", "viewer"))
            assert failure.value.code == "too-many-rooms"
            await silent.connect()
            assert (await silent.expect("error", timeout=3))["code"] == "auth-required"
            assert await wait_until(lambda: silent.closed.is_set(), 3)
        finally:
            for client in (first, second, third, silent):
                await client.close()


async def test_an_overloaded_node_turns_new_receivers_away(
    http: aiohttp.ClientSession,
) -> None:
    """Load shedding at the door: a receiver cap, and event-loop lag; publishers still get in."""
    config = Config()
    config.signaling.max_receivers = 2
    async with running_server(config) as (base, srv):
        clients = [Client(base, http) for _ in range(5)]
        first, second, third, presenter, late = clients
        try:
            await first.join(token("a", "viewer", "one", subject="one"))
            await second.join(token("b", "viewer", "two", subject="two"))
            with pytest.raises(ProtocolFailure) as failure:
                await third.join(token("a", "viewer", "three", subject="three"))
            assert failure.value.code == "server-busy"
            assert await wait_until(lambda: third.closed.is_set(), 3)
            # A presenter receives nothing: it is never turned away.
            await presenter.join(token("a", "presenter"), receive=False)

            await second.close()
            assert await wait_until(lambda: srv.receivers() == 1, 5)
            srv.sfu.load.lag = 1.0  # as measured (sfu/load.py) when forwarding falls behind
            with pytest.raises(ProtocolFailure) as failure:
                await late.join(token("a", "viewer", "late", subject="late"))
            assert failure.value.code == "server-busy" and "overloaded" in str(failure.value)
            # The watcher's decaying maximum forgets the spike within a few seconds.
            assert await wait_until(lambda: srv.busy() is None, 6)
            late = Client(base, http)
            clients.append(late)
            await late.join(token("a", "viewer", "late", subject="late"))
        finally:
            for client in clients:
                await client.close()


async def test_with_workers_a_lagging_main_process_or_workers_turn_newcomers_away(
    http: aiohttp.ClientSession,
) -> None:
    """The main process (publishers' input) and the workers (viewers) are watched apart."""
    config = Config()
    config.sfu.workers = 2
    async with running_server(config) as (base, srv):
        clients = [Client(base, http) for _ in range(3)]
        try:
            assert await wait_until(lambda: len(srv.sfu.media_loads()) == 2, 10)
            assert isinstance(srv.sfu, ClusterSfu) and srv.sfu._cluster_task is not None
            srv.sfu._cluster_task.cancel()  # no fresh snapshot overwrites the workers' below
            srv.sfu.load.lag = 1.0  # the main process reads its input a second late
            with pytest.raises(ProtocolFailure) as failure:
                await clients[0].join(token("w", "viewer", "one", subject="one"))
            assert failure.value.code == "server-busy" and "overloaded" in str(failure.value)
            srv.sfu.load.lag = 0.0
            for worker in srv.sfu.workers:  # both workers' last snapshots: a second late
                worker.stats = {**worker.stats, "loop_lag_ms": 1000.0}
            with pytest.raises(ProtocolFailure) as failure:
                await clients[1].join(token("w", "viewer", "two", subject="two"))
            assert failure.value.code == "server-busy" and "media 1000 ms late" in str(
                failure.value
            )
            srv.sfu.workers[0].stats = {**srv.sfu.workers[0].stats, "loop_lag_ms": 0.0}
            await clients[2].join(token("w", "viewer", "three", subject="three"))
        finally:
            for client in clients:
                await client.close()


async def test_an_overloaded_media_loop_sheds_its_newest_viewer_and_keeps_the_others(
    http: aiohttp.ClientSession,
) -> None:
    """Shedding: a loop held late (blocking callbacks) sheds the newest receiver only."""
    config = Config()
    config.signaling.shed_after_s = 1.0
    async with running_server(config) as (base, srv):
        presenter, moderator = Client(base, http), Client(base, http)
        viewers = [Client(base, http) for _ in range(3)]
        late = Client(base, http)
        everyone = [presenter, moderator, *viewers, late]
        hog: asyncio.Task[None] | None = None
        try:
            await presenter.join(token("r", "presenter", "Central"), receive=False)
            await presenter.publish([PatternVideoTrack(160, 120)])
            await moderator.join(token("r", "moderator", "Expert"))
            for n, viewer in enumerate(viewers):
                await viewer.join(token("r", "viewer", f"Clinic {n}", subject=f"clinic{n}"))
                assert await wait_until(lambda v=viewer: v.main("video").frames > 3, 15)
            assert len(srv.sfu.media_loads()[0].subscribers) == 4

            async def overload() -> None:
                """Every callback of the loop waits 0.35 s, as behind a saturated core."""
                while True:
                    time.sleep(0.35)
                    await asyncio.sleep(0.05)

            hog = asyncio.ensure_future(overload())
            newest = viewers[-1]
            error = await newest.expect("error", timeout=15)
            assert srv.sfu.router.lagging  # NACKs go unanswered meanwhile
            hog.cancel()
            assert error["code"] == "server-busy" and "overloaded" in error["message"]
            assert await wait_until(lambda: newest.closed.is_set(), 5)
            assert srv.overload.shed_total == 1
            # The moderator and the first viewers stay, and their pictures go on.
            assert not any(c.closed.is_set() for c in (presenter, moderator, *viewers[:2]))
            for client in (moderator, *viewers[:2]):
                frames = client.main("video").frames
                assert await wait_until(lambda c=client, f=frames: c.main("video").frames > f + 5)
            # Caught up, the loop still holds the count it kept: a newcomer is turned away.
            assert await wait_until(lambda: srv.sfu.load.lag < 0.25, 5)
            with pytest.raises(ProtocolFailure) as failure:
                await late.join(token("r", "viewer", "Late", subject="late"))
            assert failure.value.code == "server-busy" and "lately" in str(failure.value)
            async with http.get(f"{base}/metrics") as response:
                assert "telebridge_receivers_shed_total 1.0" in await response.text()
            # Calm with room to spare for CAP_GROW_S, it raises the cap: a newcomer plays.
            refused_at = time.monotonic()
            for attempt in range(40):
                later = Client(base, http)
                everyone.append(later)
                try:
                    await later.join(token("r", "viewer", "Later", subject=f"later{attempt}"))
                    break
                except ProtocolFailure as refused:
                    assert refused.code == "server-busy"
                    await asyncio.sleep(0.25)
            else:
                raise AssertionError("the cap never grew back")
            assert time.monotonic() - refused_at >= CAP_GROW_S - 1.0
            assert await wait_until(lambda: later.main("video").frames > 3, 15)
        finally:
            if hog is not None:
                hog.cancel()
            for client in everyone:
                await client.close()


async def test_admin_api_health_and_metrics(
    server: tuple[str, Server], http: aiohttp.ClientSession
) -> None:
    base, _ = server
    presenter, viewer = Client(base, http), Client(base, http)
    admin = {"Authorization": f"Bearer {token('*', 'admin')}"}
    try:
        await presenter.join(token("ops", "presenter", "Central"), receive=False)
        await presenter.publish([PatternVideoTrack(160, 120)])
        await viewer.join(token("ops", "viewer", "Island"))
        assert await wait_until(lambda: viewer.main("video").frames > 5, 10)

        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200 and (await response.json()) == {"status": "ok"}
        async with http.get(f"{base}/admin/rooms") as response:
            assert response.status == 401
        viewer_token = {"Authorization": f"Bearer {token('ops', 'viewer')}"}
        async with http.get(f"{base}/admin/rooms", headers=viewer_token) as response:
            assert response.status == 403
        async with http.get(f"{base}/admin/rooms", headers=admin) as response:
            rooms = (await response.json())["rooms"]
        assert [r["id"] for r in rooms] == ["ops"]
        names = {p["name"]: p for p in rooms[0]["participants"]}
        assert set(names) == {"Central", "Island"} and names["Central"]["floor"]
        async with http.get(f"{base}/admin/rooms/nowhere", headers=admin) as response:
            assert response.status == 404

        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
        values = {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("telebridge_")
        }
        assert values["telebridge_rooms"] == 1 and values["telebridge_participants"] == 2
        # The media process's load: how late it reads its input, its CPU share.
        assert 0 <= values['telebridge_media_loop_lag_seconds{process="main"}'] < 1
        assert 0 <= values['telebridge_media_cpu_ratio{process="main"}'] < 2
        # What the process may use, as it reads its cgroup (1.0 without a quota).
        assert values['telebridge_media_cpu_limit_ratio{process="main"}'] == cpu_limit()
        assert values["telebridge_receivers_shed_total"] == 0
        assert values["telebridge_publishers"] == 1 and values["telebridge_subscribers"] == 1
        assert values["telebridge_packets_out_total"] > 0
        assert values["telebridge_bytes_in_total"] > 0

        url = f"{base}/admin/rooms/ops/participants/{viewer.self_id}"
        async with http.delete(url, headers=admin) as response:
            assert response.status == 200
        await viewer.expect("removed")
        async with http.delete(f"{base}/admin/rooms/ops", headers=admin) as response:
            assert response.status == 200
        await presenter.expect("room-ended")
        async with http.get(f"{base}/admin/rooms", headers=admin) as response:
            assert (await response.json())["rooms"] == []
    finally:
        await presenter.close()
        await viewer.close()


async def test_two_nodes_sharing_redis_see_the_same_membership(
    redis_url: str,
    http: aiohttp.ClientSession,
) -> None:
    configs = []
    for node in ("node-a", "node-b"):
        config = Config()
        config.signaling.store_url = redis_url
        config.signaling.node_id = node
        configs.append(config)
    async with running_server(configs[0]) as (base_a, _), running_server(configs[1]) as (base_b, _):
        on_a, on_b = Client(base_a, http), Client(base_b, http)
        admin = {"Authorization": f"Bearer {token('*', 'admin')}"}
        try:
            await on_a.join(token("shared", "viewer", "Hospital A"))
            await on_b.join(token("shared", "viewer", "Hospital B"))
            for base in (base_a, base_b):
                async with http.get(f"{base}/admin/rooms/shared", headers=admin) as response:
                    room = await response.json()
                nodes = {p["name"]: p["node"] for p in room["participants"]}
                assert nodes == {"Hospital A": "node-a", "Hospital B": "node-b"}
            await on_a.close()
            await asyncio.sleep(0.3)
            async with http.get(f"{base_b}/admin/rooms/shared", headers=admin) as response:
                room = await response.json()
            assert [p["name"] for p in room["participants"]] == ["Hospital B"]
        finally:
            await on_a.close()
            await on_b.close()


def test_token_command_and_secret_from_environment() -> None:
    import subprocess
    import sys

    from signaling.tokens import verify_token

    env = {"TELEBRIDGE_SECRET": SECRET, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "signaling.cli",
            "token",
            "--room",
            "demo",
            "--role",
            "viewer",
            "--name",
            "AV room 3",
            "--ttl",
            "60",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    grant = verify_token(SECRET, result.stdout.strip())
    assert (grant.room, grant.role, grant.name) == ("demo", "viewer", "AV room 3")
    result = subprocess.run(
        [sys.executable, "-m", "signaling.cli", "token", "--room", "demo", "--role", "viewer"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 2 and "TELEBRIDGE_SECRET" in result.stderr


async def test_unpublish_trickle_ice_ping_and_leave(
    server: tuple[str, Server], http: aiohttp.ClientSession
) -> None:
    base, srv = server
    presenter, viewer = Client(base, http), Client(base, http)
    try:
        await presenter.join(token("r6", "presenter"), receive=False)
        await presenter.publish([PatternVideoTrack(160, 120)])
        await viewer.join(token("r6", "viewer"))
        assert await wait_until(lambda: viewer.main("video").frames > 5, 10)
        # Trickle ICE: a well-formed extra candidate and the end-of-candidates
        # marker are accepted silently; a broken one is refused.
        candidate = {
            "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
        }
        await viewer.send({"type": "ice", "target": "subscribe", "candidate": candidate})
        await viewer.send({"type": "ice", "target": "subscribe", "candidate": None})
        with pytest.raises(ProtocolFailure) as failure:
            await viewer.request(
                {"type": "ice", "target": "subscribe", "candidate": {"candidate": "candidate:x"}}
            )
        assert failure.value.code == "invalid-message"
        assert (await viewer.request({"type": "ping"}, reply="pong"))["type"] == "pong"
        # Unpublishing stops the main feed; the viewer is told who publishes.
        await presenter.request({"type": "unpublish"}, reply="unpublished")
        await viewer.expect("main-feed", participant=None)
        update = await viewer.expect("participant-updated")
        assert update["participant"]["publishing"] is False
        # Leaving closes the socket and tells the others.
        await presenter.send({"type": "leave"})
        assert await wait_until(lambda: presenter.closed.is_set(), 5)
        await viewer.expect("participant-left", participant=presenter.self_id)
        assert list(srv.rooms["r6"].members) == [viewer.self_id]
    finally:
        await presenter.close()
        await viewer.close()


async def test_members_report_their_link_and_far_publishers_are_announced(
    server: tuple[str, Server], http: aiohttp.ClientSession
) -> None:
    base, srv = server
    island, viewer = Client(base, http), Client(base, http)
    try:
        await island.join(token("far", "participant", "Island"))
        await viewer.join(token("far", "viewer", "Clinic"))
        with pytest.raises(ProtocolFailure) as bad:
            await island.request({"type": "link", "rtt_ms": -5})
        assert bad.value.code == "invalid-message"
        await island.send({"type": "link", "rtt_ms": 612})
        update = await viewer.expect("participant-updated")
        assert update["participant"]["id"] == island.self_id
        assert update["participant"]["rtt_ms"] == 600  # rounded to 100 ms
        # A viewer's own link matters to nobody else: kept, not announced.
        await viewer.send({"type": "link", "rtt_ms": 40})
        assert await wait_until(
            lambda: srv.rooms["far"].members[viewer.self_id or ""].rtt_ms == 0, 5
        )
        about_viewer = [
            m
            for m in island.inbox
            if m.get("type") == "participant-updated" and m["participant"]["id"] == viewer.self_id
        ]
        assert not about_viewer
    finally:
        for client in (island, viewer):
            await client.close()
