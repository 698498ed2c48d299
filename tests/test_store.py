"""Room-state store: the same behaviour from MemoryStore and RedisStore.

The behavioural tests run against both stores: MemoryStore with a fake clock
(expiry without sleeping) and RedisStore on a real ``redis-server`` with short
real TTLs. Redis-only tests check that two nodes share a room, that the key
prefix isolates deployments, and that no keys are left behind.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import redis.exceptions
from redis_server import (
    free_port,
    ping,
    require_redis_server,
    running_redis_server,
)
from redis_server import redis_url as redis_url  # the fixture, re-exported for pytest

from signaling.store import MemoryStore, Participant, RedisStore, Store, create_store

#: Presence TTL of the expiry tests, and a wait that outlasts it. Real seconds
#: for Redis, fake ones for MemoryStore.
TTL = 0.3
PAST_TTL = 0.45


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    """A started store and a way to let time pass for it."""

    kind: str
    store: Store
    advance: Callable[[float], Awaitable[None]]


@pytest.fixture(params=["memory", "redis"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """Each behavioural test runs on a MemoryStore (fake clock) and a RedisStore."""
    store: Store
    if request.param == "memory":
        clock = FakeClock()

        async def advance(seconds: float) -> None:
            clock.now += seconds

        store = MemoryStore(clock=clock)
        harness = Harness("memory", store, advance)
    else:
        url = request.getfixturevalue("redis_url")
        store = RedisStore(url, prefix=f"test-{uuid.uuid4().hex}")
        harness = Harness("redis", store, asyncio.sleep)
    await store.start()
    try:
        yield harness
    finally:
        await store.close()


def person(pid: str, **changes: Any) -> Participant:
    """A participant record as the signaling server stores it."""
    record: Participant = {
        "id": pid,
        "name": pid.title(),
        "role": "participant",
        "hand": False,
        "publishing": False,
        "floor": False,
        "node": "node-a",
    }
    record.update(changes)
    return record


async def ids(store: Store, room: str) -> list[str]:
    """Ids of the present participants of ``room``, in join order."""
    return [p["id"] for p in await store.participants(room)]


# --- behaviour shared by both stores -----------------------------------------


async def test_is_a_store(harness: Harness) -> None:
    assert isinstance(harness.store, Store)


async def test_join_participants_update_leave(harness: Harness) -> None:
    store = harness.store
    assert await store.participants("room-1") == []

    await store.join("room-1", person("alice", role="moderator"), ttl=30)
    await store.join("room-1", person("bob"), ttl=30)
    assert await store.participants("room-1") == [person("alice", role="moderator"), person("bob")]

    await store.update("room-1", person("bob", hand=True, publishing=True))
    assert await store.participants("room-1") == [
        person("alice", role="moderator"),
        person("bob", hand=True, publishing=True),
    ]

    await store.leave("room-1", "alice")
    assert await store.participants("room-1") == [person("bob", hand=True, publishing=True)]
    await store.leave("room-1", "alice")  # already gone: no-op
    await store.leave("room-1", "bob")
    assert await store.participants("room-1") == []


async def test_update_of_an_absent_participant_is_a_no_op(harness: Harness) -> None:
    store = harness.store
    await store.update("room-1", person("ghost"))
    assert await store.participants("room-1") == []
    assert await store.rooms() == []

    await store.join("room-1", person("alice"), ttl=30)
    await store.update("room-1", person("ghost"))
    await store.update("room-2", person("alice", hand=True))  # present elsewhere only
    assert await store.participants("room-1") == [person("alice")]
    assert await store.participants("room-2") == []


async def test_join_replaces_a_record_with_the_same_id(harness: Harness) -> None:
    store = harness.store
    await store.join("room-1", person("alice"), ttl=30)
    await store.join("room-1", person("bob"), ttl=30)
    await store.join("room-1", person("alice", name="Dr Alice", node="node-b"), ttl=30)

    # One record, the new one, still in its original place.
    assert await store.participants("room-1") == [
        person("alice", name="Dr Alice", node="node-b"),
        person("bob"),
    ]


async def test_join_order_is_preserved(harness: Harness) -> None:
    store = harness.store
    for pid in ["carol", "alice", "bob", "dave"]:
        await store.join("room-1", person(pid), ttl=30)
    assert await ids(store, "room-1") == ["carol", "alice", "bob", "dave"]

    await store.update("room-1", person("carol", floor=True))
    assert await store.heartbeat("room-1", "alice", ttl=30)
    assert await ids(store, "room-1") == ["carol", "alice", "bob", "dave"]

    # Leaving and joining again is a new join: it goes last.
    await store.leave("room-1", "alice")
    await store.join("room-1", person("alice"), ttl=30)
    assert await ids(store, "room-1") == ["carol", "bob", "dave", "alice"]


async def test_rejoining_after_expiry_is_a_new_join(harness: Harness) -> None:
    store = harness.store
    await store.join("room-1", person("alice"), ttl=TTL)
    await store.join("room-1", person("bob"), ttl=30)
    await harness.advance(PAST_TTL)
    assert await ids(store, "room-1") == ["bob"]
    await store.join("room-1", person("alice"), ttl=30)
    assert await ids(store, "room-1") == ["bob", "alice"]


async def test_presence_expires_after_its_ttl(harness: Harness) -> None:
    store = harness.store
    await store.join("room-1", person("alice"), ttl=TTL)
    await store.join("room-1", person("bob"), ttl=30)
    await store.join("room-2", person("carol"), ttl=TTL)
    assert await ids(store, "room-1") == ["alice", "bob"]
    assert await store.rooms() == ["room-1", "room-2"]

    await harness.advance(PAST_TTL)
    assert await ids(store, "room-1") == ["bob"]
    assert await store.participants("room-2") == []
    assert await store.rooms() == ["room-1"]
    # An expired participant can be neither refreshed nor updated.
    assert not await store.heartbeat("room-1", "alice", ttl=30)
    await store.update("room-1", person("alice", hand=True))
    assert await ids(store, "room-1") == ["bob"]


async def test_heartbeat_extends_presence(harness: Harness) -> None:
    store = harness.store
    await store.join("room-1", person("alice"), ttl=0.5)
    await store.join("room-1", person("bob"), ttl=0.5)
    await harness.advance(0.3)
    assert await store.heartbeat("room-1", "alice", ttl=0.5) is True
    await harness.advance(0.3)  # past the join deadline, before the heartbeat's
    assert await ids(store, "room-1") == ["alice"]
    await harness.advance(0.3)
    assert await store.participants("room-1") == []
    assert await store.heartbeat("room-1", "alice", ttl=0.5) is False


async def test_heartbeat_is_false_for_absent_participants(harness: Harness) -> None:
    store = harness.store
    assert await store.heartbeat("room-1", "nobody", ttl=30) is False
    await store.join("room-1", person("alice"), ttl=30)
    assert await store.heartbeat("room-1", "nobody", ttl=30) is False
    assert await store.heartbeat("room-2", "alice", ttl=30) is False
    await store.leave("room-1", "alice")
    assert await store.heartbeat("room-1", "alice", ttl=30) is False
    # A failed heartbeat does not create anything.
    assert await store.rooms() == []


async def test_update_keeps_the_presence_deadline(harness: Harness) -> None:
    store = harness.store
    await store.join("room-1", person("alice"), ttl=TTL)
    await harness.advance(TTL / 2)
    await store.update("room-1", person("alice", publishing=True))
    assert await store.participants("room-1") == [person("alice", publishing=True)]
    await harness.advance(PAST_TTL - TTL / 2)
    assert await store.participants("room-1") == []


async def test_rooms_lists_only_rooms_with_present_members(harness: Harness) -> None:
    store = harness.store
    assert await store.rooms() == []
    await store.join("zeta", person("alice"), ttl=30)
    await store.join("alpha", person("bob"), ttl=30)
    await store.join("mid", person("carol"), ttl=TTL)
    await store.join("alpha", person("dave"), ttl=30)
    assert await store.rooms() == ["alpha", "mid", "zeta"]

    await store.leave("zeta", "alice")
    assert await store.rooms() == ["alpha", "mid"]
    await store.leave("alpha", "bob")
    assert await store.rooms() == ["alpha", "mid"]
    await harness.advance(PAST_TTL)
    assert await store.rooms() == ["alpha"]


async def test_end_room_forgets_its_membership(harness: Harness) -> None:
    store = harness.store
    await store.join("room-1", person("alice"), ttl=30)
    await store.join("room-1", person("bob"), ttl=30)
    await store.join("room-2", person("alice"), ttl=30)

    await store.end_room("room-1")
    assert await store.participants("room-1") == []
    assert await store.rooms() == ["room-2"]
    assert await ids(store, "room-2") == ["alice"]
    assert await store.heartbeat("room-1", "bob", ttl=30) is False
    await store.end_room("room-1")  # again: no-op
    await store.end_room("never-existed")

    # The room can start again from scratch.
    await store.join("room-1", person("bob"), ttl=30)
    assert await ids(store, "room-1") == ["bob"]


async def test_same_participant_in_two_rooms_is_independent(harness: Harness) -> None:
    store = harness.store
    await store.join("room-1", person("alice"), ttl=30)
    await store.join("room-2", person("alice", role="viewer"), ttl=TTL)
    await store.update("room-1", person("alice", hand=True))
    assert await store.participants("room-1") == [person("alice", hand=True)]
    assert await store.participants("room-2") == [person("alice", role="viewer")]
    await harness.advance(PAST_TTL)
    assert await store.participants("room-1") == [person("alice", hand=True)]
    assert await store.participants("room-2") == []


async def test_records_are_copies(harness: Harness) -> None:
    store = harness.store
    record = person("alice", extra={"tracks": ("audio", "video")})
    await store.join("room-1", record, ttl=30)
    record["name"] = "changed after join"

    [stored] = await store.participants("room-1")
    assert stored == person("alice", extra={"tracks": ["audio", "video"]})  # JSON round trip
    stored["hand"] = True
    assert (await store.participants("room-1"))[0]["hand"] is False


async def test_invalid_input_is_rejected(harness: Harness) -> None:
    store = harness.store
    with pytest.raises(ValueError, match="id"):
        await store.join("room-1", {"name": "no id"}, ttl=30)
    with pytest.raises(ValueError, match="id"):
        await store.join("room-1", person(""), ttl=30)
    with pytest.raises(ValueError, match="id"):
        await store.update("room-1", {"id": 7})
    for ttl in [0, -1, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match="ttl"):
            await store.join("room-1", person("alice"), ttl=ttl)
    with pytest.raises(TypeError):
        await store.join("room-1", person("alice", socket=object()), ttl=30)
    with pytest.raises(ValueError):
        await store.join("room-1", person("alice", level=float("nan")), ttl=30)
    with pytest.raises(ValueError, match="node_id"):
        await store.register_node("", {}, ttl=30)
    assert await store.rooms() == []
    assert await store.nodes() == []


async def test_concurrent_joins_are_all_kept_in_a_single_order(harness: Harness) -> None:
    store = harness.store
    pids = [f"p{i:02d}" for i in range(40)]
    await asyncio.gather(*(store.join("room-1", person(pid), ttl=30) for pid in pids))
    joined = await ids(store, "room-1")
    assert sorted(joined) == pids
    await asyncio.gather(*(store.leave("room-1", pid) for pid in pids[::2]))
    assert await ids(store, "room-1") == [pid for pid in joined if pid in pids[1::2]]


async def test_nodes_registry_with_expiry(harness: Harness) -> None:
    store = harness.store
    assert await store.nodes() == []
    await store.register_node("node-b", {"url": "ws://10.0.0.2:8080/ws", "load": 3}, ttl=30)
    await store.register_node("node-a", {"url": "ws://10.0.0.1:8080/ws", "load": 1}, ttl=TTL)
    await store.register_node("node-c", {"id": "ignored", "load": 0}, ttl=TTL)
    assert await store.nodes() == [
        {"id": "node-a", "url": "ws://10.0.0.1:8080/ws", "load": 1},
        {"id": "node-b", "url": "ws://10.0.0.2:8080/ws", "load": 3},
        {"id": "node-c", "load": 0},
    ]

    await harness.advance(TTL / 2)
    # Registering again refreshes the deadline and replaces the info.
    await store.register_node("node-a", {"url": "ws://10.0.0.1:8080/ws", "load": 5}, ttl=30)
    await harness.advance(PAST_TTL - TTL / 2)
    assert await store.nodes() == [
        {"id": "node-a", "url": "ws://10.0.0.1:8080/ws", "load": 5},
        {"id": "node-b", "url": "ws://10.0.0.2:8080/ws", "load": 3},
    ]
    # Nodes and rooms are separate.
    assert await store.rooms() == []


async def test_close_then_start_again(harness: Harness) -> None:
    store = harness.store
    await store.join("room-1", person("alice"), ttl=30)
    await store.close()
    await store.close()  # idempotent
    await store.start()
    await store.start()  # idempotent
    assert await ids(store, "room-1") == ["alice"]


# --- create_store --------------------------------------------------------------


def test_create_store_dispatches_on_the_url() -> None:
    assert isinstance(create_store(None), MemoryStore)
    assert isinstance(create_store("memory://"), MemoryStore)
    for url in ["redis://127.0.0.1:6379/0", "rediss://redis.internal:6380/1", "unix:///run/r.sock"]:
        store = create_store(url)
        assert isinstance(store, RedisStore)
        assert store.prefix == "telebridge"
    store = create_store("redis://localhost", prefix="clinic-a")
    assert isinstance(store, RedisStore)
    assert store.prefix == "clinic-a"


@pytest.mark.parametrize(
    "url", ["", "memory", "memory://elsewhere", "http://localhost:6379", "localhost:6379", "REDIS"]
)
def test_create_store_rejects_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match="store URL"):
        create_store(url)


def test_redis_store_rejects_an_empty_prefix() -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisStore("redis://localhost", prefix="")


# --- Redis only ----------------------------------------------------------------


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client on the test server, to look at the keys."""
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


def stores(url: str, prefix: str, count: int) -> list[RedisStore]:
    """``count`` independent RedisStores (as separate signaling nodes) on one deployment."""
    return [RedisStore(url, prefix=prefix) for _ in range(count)]


async def test_two_nodes_share_rooms_immediately(redis_url: str) -> None:
    node_a, node_b = stores(redis_url, f"test-{uuid.uuid4().hex}", 2)
    await node_a.start()
    await node_b.start()
    try:
        await node_a.join("room-1", person("alice", node="node-a"), ttl=30)
        await node_b.join("room-1", person("bob", node="node-b"), ttl=30)
        expected = [person("alice", node="node-a"), person("bob", node="node-b")]
        assert await node_a.participants("room-1") == expected
        assert await node_b.participants("room-1") == expected
        assert await node_a.rooms() == await node_b.rooms() == ["room-1"]

        # An update on one node is visible on the other at once.
        await node_b.update("room-1", person("alice", node="node-a", hand=True))
        assert (await node_a.participants("room-1"))[0]["hand"] is True
        # Either node can refresh anyone's presence.
        assert await node_a.heartbeat("room-1", "bob", ttl=30) is True

        # Concurrent joins from both nodes get one consistent order.
        await asyncio.gather(
            *(node_a.join("room-2", person(f"a{i}"), ttl=30) for i in range(10)),
            *(node_b.join("room-2", person(f"b{i}"), ttl=30) for i in range(10)),
        )
        order = await ids(node_a, "room-2")
        assert order == await ids(node_b, "room-2")
        assert sorted(order) == sorted([f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)])

        await node_b.leave("room-1", "alice")
        assert await ids(node_a, "room-1") == ["bob"]

        await node_a.register_node("node-a", {"load": 1}, ttl=30)
        await node_b.register_node("node-b", {"load": 2}, ttl=30)
        assert (
            await node_a.nodes()
            == await node_b.nodes()
            == [
                {"id": "node-a", "load": 1},
                {"id": "node-b", "load": 2},
            ]
        )

        await node_b.end_room("room-1")
        assert await node_a.participants("room-1") == []
        assert await node_a.rooms() == ["room-2"]
    finally:
        await node_a.close()
        await node_b.close()


async def test_two_nodes_see_expiry_alike(redis_url: str) -> None:
    node_a, node_b = stores(redis_url, f"test-{uuid.uuid4().hex}", 2)
    await node_a.start()
    await node_b.start()
    try:
        await node_a.join("room-1", person("alice"), ttl=TTL)
        await node_a.join("room-1", person("bob"), ttl=30)
        assert await ids(node_b, "room-1") == ["alice", "bob"]
        await asyncio.sleep(PAST_TTL)
        assert await ids(node_b, "room-1") == ["bob"]
        assert await node_b.heartbeat("room-1", "alice", ttl=30) is False
        assert await ids(node_a, "room-1") == ["bob"]
    finally:
        await node_a.close()
        await node_b.close()


async def test_prefix_isolates_deployments(redis_url: str) -> None:
    base = f"test-{uuid.uuid4().hex}"
    clinic_a = RedisStore(redis_url, prefix=f"{base}-a")
    clinic_b = RedisStore(redis_url, prefix=f"{base}-b")
    await clinic_a.start()
    await clinic_b.start()
    try:
        await clinic_a.join("room-1", person("alice"), ttl=30)
        await clinic_a.register_node("node-1", {}, ttl=30)
        assert await clinic_b.participants("room-1") == []
        assert await clinic_b.rooms() == []
        assert await clinic_b.nodes() == []
        assert await clinic_b.heartbeat("room-1", "alice", ttl=30) is False

        await clinic_b.join("room-1", person("alice", role="viewer"), ttl=30)
        await clinic_b.end_room("room-1")
        assert await clinic_a.participants("room-1") == [person("alice")]
        assert await clinic_a.nodes() == [{"id": "node-1"}]
    finally:
        await clinic_a.close()
        await clinic_b.close()


async def test_redis_keys_layout_and_cleanup(
    redis_url: str,
    raw_redis: redis.asyncio.Redis,
) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    store = RedisStore(redis_url, prefix=prefix)
    await store.start()
    try:
        await store.join("room-1", person("alice"), ttl=30)
        await store.join("room-1", person("bob"), ttl=TTL)
        await store.register_node("node-1", {"load": 0}, ttl=TTL)
        keys = sorted([key async for key in raw_redis.scan_iter(match=f"{prefix}:*")])
        room = f"{prefix}:room:room-1"
        assert keys == sorted(
            [
                f"{prefix}:rooms",
                f"{room}:participants",
                f"{room}:presence",
                f"{room}:order",
                f"{room}:seq",
                f"{prefix}:nodes",
                f"{prefix}:nodes:info",
            ]
        )
        # Room and node keys expire on their own some time after the last
        # deadline, so abandoned rooms do not pile up.
        for key in keys:
            if key != f"{prefix}:rooms":
                assert 0 < await raw_redis.pttl(key) <= 30_000 + 300_000

        await asyncio.sleep(PAST_TTL)
        await store.leave("room-1", "alice")  # bob expired, alice left: the room is empty
        assert await store.nodes() == []
        assert [key async for key in raw_redis.scan_iter(match=f"{prefix}:*")] == []
    finally:
        await store.close()


async def test_redis_store_must_be_started(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix=f"test-{uuid.uuid4().hex}")
    with pytest.raises(RuntimeError, match="start"):
        await store.participants("room-1")
    with pytest.raises(RuntimeError, match="start"):
        await store.nodes()


async def test_redis_store_start_fails_without_a_server() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(redis.exceptions.ConnectionError):
        await store.start()
    with pytest.raises(RuntimeError, match="start"):
        await store.rooms()


# --- the redis-server fixture helper ----------------------------------------------


def test_missing_redis_server_is_skipped_outside_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server is not on PATH"):
        require_redis_server()


def test_missing_redis_server_fails_in_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_redis_server()


def test_redis_server_is_stopped_afterwards(tmp_path: Path) -> None:
    with running_redis_server(tmp_path) as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert ping(server.port)
    assert not ping(server.port)
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)
