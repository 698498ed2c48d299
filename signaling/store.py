"""Room-state store: who is in which room, shared by the signaling nodes.

The signaling server keeps room membership behind the :class:`Store`
interface so that one node can run on its own (:class:`MemoryStore`) and
several nodes can share rooms through Redis (:class:`RedisStore`).

Semantics common to both implementations:

* A participant record is a JSON object (:data:`Participant`) identified by
  its ``"id"``. Records are stored as JSON, so what comes back is always a
  fresh copy that went through ``json.dumps``/``json.loads`` (tuples come back
  as lists, for example) and a record that is not JSON-serialisable is
  rejected with :class:`TypeError`/:class:`ValueError` on write.
* Presence has a deadline: ``clock() + ttl`` at :meth:`Store.join` or
  :meth:`Store.heartbeat`. A participant whose deadline is at or before
  ``clock()`` is gone: every read ignores it, and the stores delete such
  members lazily.
* Join order is kept per room. Joining again while still present replaces the
  record and keeps the original position; joining after leaving or expiring
  appends at the end.
* Nodes (signaling servers) register themselves with their own TTL; the
  registry follows the same expiry rules.

The Redis layout (``P`` is the prefix, ``R`` a room id)::

    P:rooms                      set     room ids that may have members
    P:room:R:participants        hash    participant id -> JSON record
    P:room:R:presence            zset    participant id -> presence deadline
    P:room:R:order               zset    participant id -> join sequence number
    P:room:R:seq                 string  join sequence counter (INCR)
    P:nodes                      zset    node id -> registration deadline
    P:nodes:info                 hash    node id -> JSON info

Deadlines are seconds from the injected clock (``time.time`` by default, so
all nodes must keep their clocks in sync, e.g. with NTP). Each operation on a
room or on the node registry runs as one Lua script (``end_room`` as one
MULTI/EXEC, ``rooms`` as one script per candidate room), so it is atomic with
respect to the other nodes: expired members are removed (``ZRANGEBYSCORE``
then ``HDEL``/``ZREM``), a room with no member left is deleted and dropped from
``P:rooms``, and the keys of a live room get a Redis expiry five minutes after
its last presence deadline, so rooms abandoned by crashed nodes vanish even if
nobody reads them. No ``KEYS`` or ``SCAN`` anywhere.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from redis.asyncio import Redis

__all__ = [
    "MemoryStore",
    "Participant",
    "RedisStore",
    "Store",
    "create_store",
]

Participant = dict[str, Any]
"""A JSON-serialisable participant record.

It carries at least ``"id"``, ``"name"``, ``"role"``, ``"hand"``,
``"publishing"``, ``"floor"`` and ``"node"`` (the signaling node that holds
the participant's socket); only ``"id"`` (a non-empty string) is checked.
"""

#: Redis keys of a live room expire this long after its last presence deadline.
_KEY_GRACE_MS = 300_000


@runtime_checkable
class Store(Protocol):
    """Room membership and the node registry, shared by the signaling nodes."""

    async def start(self) -> None:
        """Connect (where there is anything to connect to)."""
        ...

    async def close(self) -> None:
        """Release connections; the store may be started again afterwards."""
        ...

    async def join(self, room: str, participant: Participant, ttl: float) -> None:
        """Add or replace ``participant`` (by its id), present for ``ttl`` seconds."""
        ...

    async def update(self, room: str, participant: Participant) -> None:
        """Replace a present participant's record, keeping its deadline; no-op if absent."""
        ...

    async def heartbeat(self, room: str, participant_id: str, ttl: float) -> bool:
        """Extend presence to ``ttl`` seconds from now; False if not present."""
        ...

    async def leave(self, room: str, participant_id: str) -> None:
        """Remove a participant (no-op if absent)."""
        ...

    async def participants(self, room: str) -> list[Participant]:
        """The present participants of ``room``, in join order."""
        ...

    async def rooms(self) -> list[str]:
        """Rooms with at least one present participant, sorted."""
        ...

    async def end_room(self, room: str) -> None:
        """Forget all membership of ``room``."""
        ...

    async def register_node(self, node_id: str, info: dict[str, Any], ttl: float) -> None:
        """Register (or refresh) a signaling node for ``ttl`` seconds."""
        ...

    async def nodes(self) -> list[dict[str, Any]]:
        """Live nodes, sorted by id: their info plus ``"id"``."""
        ...


def _check_ttl(ttl: float) -> float:
    """``ttl`` as a float, or ValueError unless it is finite and positive."""
    value = float(ttl)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    return value


def _check_id(value: object, what: str) -> str:
    """``value`` if it is a non-empty string, else ValueError."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _participant_id(participant: Participant) -> str:
    """The id of ``participant``, checked."""
    if not isinstance(participant, dict):
        raise TypeError(f"participant must be a dict, got {type(participant).__name__}")
    return _check_id(participant.get("id"), 'participant["id"]')


def _encode(record: dict[str, Any]) -> str:
    """Compact JSON for a record; NaN and infinities are rejected as not JSON."""
    return json.dumps(record, separators=(",", ":"), allow_nan=False)


def _decode(text: object) -> dict[str, Any] | None:
    """A stored JSON object, or None for anything else."""
    if isinstance(text, bytes):
        text = text.decode()
    if not isinstance(text, str):
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else None


def _node_record(node_id: str, info_json: object) -> dict[str, Any] | None:
    """A node's info plus its ``"id"``."""
    info = _decode(info_json)
    return None if info is None else {**info, "id": node_id}


@dataclass
class _Member:
    """A participant held by :class:`MemoryStore`."""

    record: str
    deadline: float
    seq: int


class MemoryStore:
    """In-process :class:`Store` for a single signaling node and for tests.

    ``clock`` gives the time in seconds used for presence deadlines; tests
    pass a fake clock to exercise expiry without sleeping.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Create an empty store reading time from ``clock``."""
        self._clock = clock
        self._rooms: dict[str, dict[str, _Member]] = {}
        self._nodes: dict[str, tuple[str, float]] = {}
        self._seq = 0

    async def start(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release; the state is kept."""

    def _members(self, room: str) -> dict[str, _Member]:
        """The present members of ``room`` after dropping expired ones (maybe empty)."""
        members = self._rooms.get(room)
        if members is None:
            return {}
        now = self._clock()
        for pid in [pid for pid, m in members.items() if m.deadline <= now]:
            del members[pid]
        if not members:
            del self._rooms[room]
        return members

    async def join(self, room: str, participant: Participant, ttl: float) -> None:
        """Add or replace ``participant`` (by its id), present for ``ttl`` seconds."""
        pid = _participant_id(participant)
        record = _encode(participant)
        deadline = self._clock() + _check_ttl(ttl)
        members = self._members(room)
        current = members.get(pid)
        if current is None:
            self._seq += 1
            self._rooms.setdefault(room, members)[pid] = _Member(record, deadline, self._seq)
        else:
            current.record = record
            current.deadline = deadline

    async def update(self, room: str, participant: Participant) -> None:
        """Replace a present participant's record, keeping its deadline; no-op if absent."""
        pid = _participant_id(participant)
        record = _encode(participant)
        member = self._members(room).get(pid)
        if member is not None:
            member.record = record

    async def heartbeat(self, room: str, participant_id: str, ttl: float) -> bool:
        """Extend presence to ``ttl`` seconds from now; False if not present."""
        deadline = self._clock() + _check_ttl(ttl)
        member = self._members(room).get(participant_id)
        if member is None:
            return False
        member.deadline = deadline
        return True

    async def leave(self, room: str, participant_id: str) -> None:
        """Remove a participant (no-op if absent)."""
        members = self._members(room)
        if members.pop(participant_id, None) is not None and not members:
            del self._rooms[room]

    async def participants(self, room: str) -> list[Participant]:
        """The present participants of ``room``, in join order."""
        members = sorted(self._members(room).values(), key=lambda m: m.seq)
        return [record for m in members if (record := _decode(m.record)) is not None]

    async def rooms(self) -> list[str]:
        """Rooms with at least one present participant, sorted."""
        return sorted(room for room in list(self._rooms) if self._members(room))

    async def end_room(self, room: str) -> None:
        """Forget all membership of ``room``."""
        self._rooms.pop(room, None)

    async def register_node(self, node_id: str, info: dict[str, Any], ttl: float) -> None:
        """Register (or refresh) a signaling node for ``ttl`` seconds."""
        _check_id(node_id, "node_id")
        record = _encode(info)
        self._nodes[node_id] = (record, self._clock() + _check_ttl(ttl))

    async def nodes(self) -> list[dict[str, Any]]:
        """Live nodes, sorted by id: their info plus ``"id"``."""
        now = self._clock()
        for node_id in [n for n, (_, deadline) in self._nodes.items() if deadline <= now]:
            del self._nodes[node_id]
        return [
            node
            for node_id in sorted(self._nodes)
            if (node := _node_record(node_id, self._nodes[node_id][0])) is not None
        ]


# --- Redis -----------------------------------------------------------------
#
# Room scripts: KEYS = participants hash, presence zset, order zset, seq
# counter, rooms set; ARGV = now, room, grace ms, deadline, participant id,
# record JSON (unused trailing ones are empty strings).

_ROOM_LIB = """
local now = tonumber(ARGV[1])
local room = ARGV[2]
local grace = tonumber(ARGV[3])

local function remove(ids)
  for i = 1, #ids, 1000 do
    local j = math.min(i + 999, #ids)
    redis.call('HDEL', KEYS[1], unpack(ids, i, j))
    redis.call('ZREM', KEYS[2], unpack(ids, i, j))
    redis.call('ZREM', KEYS[3], unpack(ids, i, j))
  end
end

local function prune()
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
  if #expired > 0 then
    remove(expired)
  end
end

-- Delete an empty room, or keep the keys of a live one a while past its
-- last deadline. Returns the number of present members.
local function settle()
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
    redis.call('SREM', KEYS[5], room)
    return 0
  end
  local ms = math.ceil((tonumber(last[2]) - now) * 1000) + grace
  for i = 1, 4 do
    redis.call('PEXPIRE', KEYS[i], ms)
  end
  return redis.call('ZCARD', KEYS[2])
end
"""

_JOIN = (
    _ROOM_LIB
    + """
prune()
if not redis.call('ZSCORE', KEYS[3], ARGV[5]) then
  redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), ARGV[5])
end
redis.call('HSET', KEYS[1], ARGV[5], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('SADD', KEYS[5], room)
return settle()
"""
)

_UPDATE = (
    _ROOM_LIB
    + """
prune()
local present = redis.call('ZSCORE', KEYS[2], ARGV[5])
if present then
  redis.call('HSET', KEYS[1], ARGV[5], ARGV[6])
end
settle()
if present then return 1 end
return 0
"""
)

_HEARTBEAT = (
    _ROOM_LIB
    + """
prune()
local present = redis.call('ZSCORE', KEYS[2], ARGV[5])
if present then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
end
settle()
if present then return 1 end
return 0
"""
)

_LEAVE = (
    _ROOM_LIB
    + """
remove({ARGV[5]})
prune()
return settle()
"""
)

_PARTICIPANTS = (
    _ROOM_LIB
    + """
prune()
settle()
local ids = redis.call('ZRANGE', KEYS[3], 0, -1)
local out = {}
for i = 1, #ids, 1000 do
  local j = math.min(i + 999, #ids)
  local values = redis.call('HMGET', KEYS[1], unpack(ids, i, j))
  for k = 1, #values do
    if values[k] then
      out[#out + 1] = values[k]
    end
  end
end
return out
"""
)

_PRUNE_ROOM = (
    _ROOM_LIB
    + """
prune()
return settle()
"""
)

# Node scripts: KEYS = nodes zset, nodes info hash; ARGV = now, grace ms,
# deadline, node id, info JSON (empty strings to only read).
_NODES = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for i = 1, #expired, 1000 do
  local j = math.min(i + 999, #expired)
  redis.call('ZREM', KEYS[1], unpack(expired, i, j))
  redis.call('HDEL', KEYS[2], unpack(expired, i, j))
end
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return {}
end
local ms = math.ceil((tonumber(last[2]) - tonumber(ARGV[1])) * 1000) + tonumber(ARGV[2])
redis.call('PEXPIRE', KEYS[1], ms)
redis.call('PEXPIRE', KEYS[2], ms)
if ARGV[4] ~= '' then
  return {}
end
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for i = 1, #ids do
  local info = redis.call('HGET', KEYS[2], ids[i])
  if info then
    out[#out + 1] = ids[i]
    out[#out + 1] = info
  end
end
return out
"""


@dataclass(frozen=True)
class _Scripts:
    """The Lua scripts of a started :class:`RedisStore`, registered on its client."""

    join: Any
    update: Any
    heartbeat: Any
    leave: Any
    participants: Any
    prune_room: Any
    nodes: Any


def _text(value: object) -> str:
    """A Redis reply item as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """:class:`Store` in Redis, shared by every signaling node using ``url`` and ``prefix``.

    ``prefix`` namespaces the keys, so that several deployments can share one
    Redis database. ``clock`` gives the unix time used for presence deadlines
    (every node must use the same time base). Call :meth:`start` before use.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "telebridge",
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Configure the store; nothing connects until :meth:`start`."""
        self._url = url
        self._prefix = _check_id(prefix, "prefix")
        self._clock = clock
        self._redis: Redis | None = None
        self._scripts: _Scripts | None = None

    @property
    def prefix(self) -> str:
        """The key prefix of this deployment."""
        return self._prefix

    async def start(self) -> None:
        """Connect to Redis and check it answers (idempotent)."""
        if self._redis is not None:
            return
        client = Redis.from_url(self._url, decode_responses=True)
        try:
            await client.ping()
        except BaseException:
            await client.aclose()
            raise
        self._redis = client
        self._scripts = _Scripts(
            join=client.register_script(_JOIN),
            update=client.register_script(_UPDATE),
            heartbeat=client.register_script(_HEARTBEAT),
            leave=client.register_script(_LEAVE),
            participants=client.register_script(_PARTICIPANTS),
            prune_room=client.register_script(_PRUNE_ROOM),
            nodes=client.register_script(_NODES),
        )

    async def close(self) -> None:
        """Close the connections (idempotent); :meth:`start` may be called again."""
        client, self._redis, self._scripts = self._redis, None, None
        if client is not None:
            await client.aclose()

    def _client(self) -> tuple[Redis, _Scripts]:
        """The started client and scripts, or RuntimeError."""
        if self._redis is None or self._scripts is None:
            raise RuntimeError("RedisStore is not started; await store.start() first")
        return self._redis, self._scripts

    def _room_keys(self, room: str) -> list[str]:
        """KEYS of the room scripts for ``room``."""
        base = f"{self._prefix}:room:{room}"
        return [
            f"{base}:participants",
            f"{base}:presence",
            f"{base}:order",
            f"{base}:seq",
            f"{self._prefix}:rooms",
        ]

    def _room_args(
        self, room: str, ttl: float | None = None, pid: str = "", record: str = ""
    ) -> list[str]:
        """ARGV of the room scripts; the deadline is ``ttl`` seconds from now when given."""
        now = self._clock()
        return [
            repr(float(now)),
            room,
            str(_KEY_GRACE_MS),
            "" if ttl is None else repr(float(now + ttl)),
            pid,
            record,
        ]

    async def _room_script(
        self,
        script: Callable[[_Scripts], Any],
        room: str,
        ttl: float | None = None,
        pid: str = "",
        record: str = "",
    ) -> Any:
        """Run one of the room scripts on ``room``."""
        _, scripts = self._client()
        return await script(scripts)(
            keys=self._room_keys(room), args=self._room_args(room, ttl, pid, record)
        )

    async def join(self, room: str, participant: Participant, ttl: float) -> None:
        """Add or replace ``participant`` (by its id), present for ``ttl`` seconds."""
        pid = _participant_id(participant)
        record = _encode(participant)
        await self._room_script(lambda s: s.join, room, _check_ttl(ttl), pid, record)

    async def update(self, room: str, participant: Participant) -> None:
        """Replace a present participant's record, keeping its deadline; no-op if absent."""
        pid = _participant_id(participant)
        record = _encode(participant)
        await self._room_script(lambda s: s.update, room, None, pid, record)

    async def heartbeat(self, room: str, participant_id: str, ttl: float) -> bool:
        """Extend presence to ``ttl`` seconds from now; False if not present."""
        ttl = _check_ttl(ttl)
        if not participant_id:
            return False
        found = await self._room_script(lambda s: s.heartbeat, room, ttl, participant_id)
        return bool(int(found))

    async def leave(self, room: str, participant_id: str) -> None:
        """Remove a participant (no-op if absent)."""
        if participant_id:
            await self._room_script(lambda s: s.leave, room, None, participant_id)

    async def participants(self, room: str) -> list[Participant]:
        """The present participants of ``room``, in join order."""
        values: Sequence[object] = await self._room_script(lambda s: s.participants, room)
        return [record for value in values if (record := _decode(value)) is not None]

    async def rooms(self) -> list[str]:
        """Rooms with at least one present participant, sorted.

        Rooms whose members all expired are deleted on the way.
        """
        client, scripts = self._client()
        candidates = sorted(_text(r) for r in await client.smembers(f"{self._prefix}:rooms"))
        if not candidates:
            return []
        async with client.pipeline(transaction=False) as pipe:
            for room in candidates:
                await scripts.prune_room(
                    keys=self._room_keys(room), args=self._room_args(room), client=pipe
                )
            counts = await pipe.execute()
        return [room for room, count in zip(candidates, counts, strict=True) if int(count) > 0]

    async def end_room(self, room: str) -> None:
        """Forget all membership of ``room``."""
        client, _ = self._client()
        *room_keys, rooms_key = self._room_keys(room)
        async with client.pipeline(transaction=True) as pipe:
            pipe.delete(*room_keys)
            pipe.srem(rooms_key, room)
            await pipe.execute()

    def _node_keys(self) -> list[str]:
        """KEYS of the node script."""
        return [f"{self._prefix}:nodes", f"{self._prefix}:nodes:info"]

    async def register_node(self, node_id: str, info: dict[str, Any], ttl: float) -> None:
        """Register (or refresh) a signaling node for ``ttl`` seconds."""
        _check_id(node_id, "node_id")
        record = _encode(info)
        ttl = _check_ttl(ttl)
        _, scripts = self._client()
        now = self._clock()
        await scripts.nodes(
            keys=self._node_keys(),
            args=[repr(float(now)), str(_KEY_GRACE_MS), repr(float(now + ttl)), node_id, record],
        )

    async def nodes(self) -> list[dict[str, Any]]:
        """Live nodes, sorted by id: their info plus ``"id"``."""
        _, scripts = self._client()
        now = repr(float(self._clock()))
        reply: Sequence[object] = await scripts.nodes(
            keys=self._node_keys(), args=[now, str(_KEY_GRACE_MS), "", "", ""]
        )
        pairs = sorted(zip(map(_text, reply[0::2]), reply[1::2], strict=True), key=lambda p: p[0])
        return [node for node_id, info in pairs if (node := _node_record(node_id, info))]


def create_store(url: str | None, *, prefix: str = "telebridge") -> Store:
    """The store for ``url``: None or ``memory://`` for a :class:`MemoryStore`,
    ``redis://``, ``rediss://`` (TLS) or ``unix://`` for a :class:`RedisStore`
    with key prefix ``prefix``. Anything else raises ValueError.

    The store is not started.
    """
    if url is None or url == "memory://":
        return MemoryStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url, prefix=prefix)
    raise ValueError(
        f"unsupported store URL {url!r}: expected memory:// or redis://host:port/db "
        "(rediss:// and unix:// also accepted)"
    )
