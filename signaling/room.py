"""Rooms and their members: roles, the floor, the main feed, and who receives what.

A room's *main feed* is the media of the member holding the floor (the
presenter by default, or a participant a moderator granted it to), once it
publishes: until then the previous main feed stays on (:meth:`Room.on_air`). Every
receiving member has two ``main`` tracks (video, audio) that always carry
the main feed and switch source at a keyframe when the floor changes, with
no renegotiation; plus one ``participant`` track per medium of every other
publisher (thumbnails). Idle participant tracks are reused before new ones
are negotiated. See ``signaling/PROTOCOL.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from recorder.recording import RoomRecording, RoomState
from sfu.server import Sfu, SfuError, TrackInfo
from signaling.store import Store

logger = logging.getLogger(__name__)

PUBLISHING_ROLES = ("moderator", "presenter")
#: How a published video packs a stereo (3D) picture: one view, left|right, left over right.
STEREO_LAYOUTS = ("mono", "sbs", "tb")


@dataclass(slots=True)
class Slot:
    """One track of a member's subscribe connection."""

    consumer_id: str
    mid: str
    kind: str
    codec: str
    main: bool
    producer: str | None = None
    participant: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.consumer_id,
            "mid": self.mid,
            "kind": self.kind,
            "slot": "main" if self.main else "participant",
            "participant": self.participant,
        }


@dataclass(eq=False)
class Member:
    """One participant of a room, connected to this node."""

    id: str
    name: str
    role: str
    subject: str
    ws: web.WebSocketResponse | None
    receive: bool = True
    hand: bool = False
    publish_peer: str | None = None
    producers: dict[str, str] = field(default_factory=dict)  # kind -> producer id
    codecs: dict[str, str] = field(default_factory=dict)  # kind -> mime type
    muted: set[str] = field(default_factory=set)
    subscribe_peer: str | None = None
    slots: list[Slot] = field(default_factory=list)
    negotiating: bool = False
    sync_again: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    publish_count: int = 0
    #: The stereo layout of the member's video (metadata only: pixels travel untouched).
    stereo: str = "mono"
    #: Round trip of the member's own link as its client measures it (ms, rounded
    #: to 100 ms; None until reported). Viewers of a far publisher size their
    #: playout delay from it before the first late frame.
    rtt_ms: int | None = None
    #: When it joined (``time.monotonic``): overload sheds the newest receivers first.
    joined: float = field(default_factory=time.monotonic)

    @property
    def publishing(self) -> bool:
        return bool(self.producers)

    async def send(self, message: dict[str, Any]) -> None:
        """Send a message; a closed or failing socket is not the sender's problem."""
        if self.ws is None or self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(json.dumps(message))


class Room:
    """The live state of one room on this node."""

    def __init__(self, room_id: str, sfu: Sfu, store: Store, node_id: str) -> None:
        self.id = room_id
        self.sfu = sfu
        self.store = store
        self.node_id = node_id
        self.members: dict[str, Member] = {}
        self.floor: str | None = None
        self.main_feed: str | None = None
        self.active_speaker: str | None = None
        #: The recording in progress, if any (see :meth:`record_state`).
        self.recording: RoomRecording | None = None
        self.ended = False

    # ------------------------------------------------------------ membership

    def describe(self, member: Member) -> dict[str, Any]:
        return {
            "id": member.id,
            "name": member.name,
            "role": member.role,
            "hand": member.hand,
            "publishing": member.publishing,
            "stereo": member.stereo,
            "rtt_ms": member.rtt_ms,
            "floor": member.id == self.floor,
        }

    def record(self, member: Member) -> dict[str, Any]:
        """The member as stored (its description plus the node it is on)."""
        return {**self.describe(member), "node": self.node_id}

    def new_member(
        self, name: str, role: str, subject: str, ws: web.WebSocketResponse | None, receive: bool
    ) -> Member:
        member_id = f"p{secrets.token_hex(4)}"
        member = Member(member_id, name, role, subject, ws, receive=receive)
        self.members[member_id] = member
        return member

    def find_by_subject(self, subject: str) -> Member | None:
        for member in self.members.values():
            if member.subject == subject:
                return member
        return None

    async def admit(self, member: Member, presence_ttl: float) -> None:
        """Announce a member that joined; presenters take a free floor."""
        await self.store.join(self.id, self.record(member), presence_ttl)
        await self.broadcast(
            {"type": "participant-joined", "participant": self.describe(member)},
            exclude=member,
            about=member,
        )
        if member.role == "presenter" and self.floor is None:
            await self.set_floor(member.id)
        else:
            self.record_state()

    async def remove_member(self, member: Member) -> None:
        """Forget a member: close its connections, hand the floor on, tell the others.

        Only a member others received something from (a publisher, the main
        feed) changes their subscriptions: a viewer leaving costs nothing per
        remaining member (when hundreds leave at the end of a session, or
        an overloaded node sheds them, a full sync per leave is O(N²)).
        """
        if self.members.pop(member.id, None) is None:
            return
        received_from = member.publishing or member.id == self.main_feed
        await self._close_media(member)
        with contextlib.suppress(Exception):
            await self.store.leave(self.id, member.id)
        await self.broadcast({"type": "participant-left", "participant": member.id}, about=member)
        if self.floor == member.id:
            await self.set_floor(self._default_floor())
        elif received_from:
            await self.sync_all()
        else:
            self.record_state()

    async def _close_media(self, member: Member) -> None:
        for peer_id in (member.publish_peer, member.subscribe_peer):
            if peer_id is not None:
                await self.sfu.close(peer_id)
        member.publish_peer = member.subscribe_peer = None
        member.producers.clear()
        member.slots.clear()

    def _default_floor(self) -> str | None:
        for member in self.members.values():
            if member.role == "presenter":
                return member.id
        return None

    @staticmethod
    def sees(observer: Member, member: Member) -> bool:
        """Whether ``observer`` hears of ``member``: viewers are announced to moderators only.

        A room of 1,000 viewers would otherwise send every join to every
        screen (signaling/PROTOCOL.md, "Who hears of whom").
        """
        return member.role != "viewer" or observer.role == "moderator" or observer is member

    async def broadcast(
        self,
        message: dict[str, Any],
        exclude: Member | None = None,
        about: Member | None = None,
    ) -> None:
        """Send ``message`` to every member but ``exclude``; if it is ``about`` a
        member, only to those who see that member (:meth:`sees`)."""
        text = json.dumps(message)
        for member in list(self.members.values()):
            if member is exclude or member.ws is None or member.ws.closed:
                continue
            if about is not None and not self.sees(member, about):
                continue
            with contextlib.suppress(ConnectionError, RuntimeError):
                await member.ws.send_str(text)

    async def updated(self, member: Member) -> None:
        """Tell everyone (and the store) that a member's state changed."""
        with contextlib.suppress(Exception):
            await self.store.update(self.id, self.record(member))
        await self.broadcast(
            {"type": "participant-updated", "participant": self.describe(member)}, about=member
        )

    # ----------------------------------------------------------------- floor

    async def set_floor(self, holder: str | None) -> None:
        """Give the floor (the main feed) to a member, or to nobody."""
        previous = self.floor
        self.floor = holder
        await self.broadcast({"type": "floor", "holder": holder})
        for member_id in {previous, holder} - {None}:
            member = self.members.get(member_id or "")
            if member is not None:
                await self.updated(member)
        await self.sync_all()

    # ------------------------------------------------------------ publishing

    async def publish(
        self, member: Member, offer: str, stereo: str = "mono"
    ) -> tuple[str, list[dict[str, str]]]:
        """Accept a member's offer; its tracks join the room. ``stereo``: its video's layout."""
        if member.publish_peer is not None:
            await self.unpublish(member, sync=False)
        member.publish_count += 1
        peer_id = f"{self.id}.{member.id}.pub{member.publish_count}"
        answer, tracks = await self.sfu.publish(peer_id, offer)
        member.publish_peer = peer_id
        member.stereo = stereo
        member.producers = {}
        member.codecs = {}
        member.muted.clear()
        for track in tracks:
            if track.kind not in member.producers:
                member.producers[track.kind] = track.id
                member.codecs[track.kind] = track.codec
        await self.updated(member)
        await self.sync_all()
        return answer, [{"id": t.id, "kind": t.kind} for t in tracks]

    async def unpublish(self, member: Member, sync: bool = True) -> None:
        if member.publish_peer is None:
            return
        peer_id, member.publish_peer = member.publish_peer, None
        member.producers = {}
        member.codecs = {}
        await self.sfu.close(peer_id)
        await self.updated(member)
        if sync:
            await self.sync_all()

    async def set_link(self, member: Member, rtt_ms: int) -> None:
        """A member's client measured its link: kept, and announced when it could
        matter to others (a member who may publish) and moved to another 100 ms step."""
        rounded = round(rtt_ms, -2)
        if rounded == member.rtt_ms:
            return
        member.rtt_ms = rounded
        if member.role != "viewer":
            await self.updated(member)

    async def set_stereo(self, member: Member, layout: str) -> None:
        """A publisher's picture changed layout (mid-session): everyone is told."""
        if member.stereo == layout:
            return
        member.stereo = layout
        await self.updated(member)
        self.record_state()

    def mute(self, member: Member, kind: str) -> bool:
        producer = member.producers.get(kind)
        if producer is None:
            return False
        self.sfu.set_paused(producer, True)
        member.muted.add(kind)
        return True

    # --------------------------------------------------------- subscriptions

    def _desired(self, member: Member) -> tuple[dict[str, str | None], list[tuple[str, str]]]:
        """What a member should receive: main sources per kind, and thumbnails.

        Returns ``({kind: producer or None}, [(publisher member id, producer id)])``.
        """
        on_air = self.on_air()
        main: dict[str, str | None] = {"video": None, "audio": None}
        if on_air is not None and on_air is not member:
            for kind in main:
                main[kind] = on_air.producers.get(kind)
        thumbs = [
            (other.id, producer)
            for other in self.members.values()
            if other is not member and other is not on_air
            for producer in other.producers.values()
        ]
        return main, thumbs

    def on_air(self) -> Member | None:
        """Whose media the main feed carries.

        The floor holder once it publishes. Until then (a participant just
        granted the floor starting its camera, perhaps over a satellite link)
        the previous main feed stays on, so viewers never look at nothing; the
        switch then happens at the new holder's first keyframe.
        """
        holder = self.members.get(self.floor or "")
        if holder is None:
            return None
        if holder.publishing:
            return holder
        previous = self.members.get(self.main_feed or "")
        return previous if previous is not None and previous.publishing else None

    async def sync_all(self) -> None:
        """Bring every receiving member's subscriptions up to date."""
        on_air = self.on_air()
        main_source = on_air.id if on_air is not None else None
        for member in list(self.members.values()):
            if member.receive:
                await self.sync(member)
        if main_source != self.main_feed:
            self.main_feed = main_source
            await self.broadcast({"type": "main-feed", "participant": main_source})
        self.record_state()

    def record_state(self) -> None:
        """Tell the recording (if any) what the room looks like now.

        A recorder failure is logged and never reaches the participants.
        """
        if self.recording is None:
            return
        try:
            self._record_state(self.recording)
        except Exception:
            logger.exception("room %s: the recording could not follow the room", self.id)

    def _record_state(self, recording: RoomRecording) -> None:
        holder = self.on_air()
        main: dict[str, str | None] = {
            kind: holder.producers.get(kind) if holder is not None else None
            for kind in ("video", "audio")
        }
        recording.update(
            RoomState(
                main=main,
                codecs=self._codecs(),
                publications={m.id: dict(m.producers) for m in self.members.values()},
                members={m.id: (m.name, m.role) for m in self.members.values()},
                stereo={m.id: m.stereo for m in self.members.values() if m.publishing},
                main_holder=holder.id if holder is not None and holder.publishing else None,
                producer_codecs={
                    producer: m.codecs[kind]
                    for m in self.members.values()
                    for kind, producer in m.producers.items()
                },
            )
        )

    async def sync(self, member: Member) -> None:
        """Reassign, reuse or add tracks so the member receives what it should."""
        if member.negotiating:
            member.sync_again = True  # after the pending answer
            return
        async with member.lock:
            try:
                await self._sync(member)
            except SfuError as exc:
                logger.warning("room %s: cannot update %s's tracks: %s", self.id, member.id, exc)

    async def _sync(self, member: Member) -> None:
        main, thumbs = self._desired(member)
        codecs = self._codecs()
        if member.subscribe_peer is None:
            await self._first_offer(member, main, thumbs, codecs)
            return
        changed = False
        for slot in member.slots:
            if slot.main and slot.producer != main.get(slot.kind):
                changed |= self._assign(slot, main.get(slot.kind), self.floor)
        wanted = {producer: owner for owner, producer in thumbs}
        for slot in member.slots:
            if not slot.main and slot.producer is not None and slot.producer not in wanted:
                changed |= self._assign(slot, None, None)
        present = {slot.producer for slot in member.slots if not slot.main}
        missing = [(o, p) for p, o in wanted.items() if p not in present]
        to_add: list[tuple[str, str]] = []
        for owner, producer in missing:
            kind, codec = self._kind_codec(producer)
            idle = next(
                (
                    s
                    for s in member.slots
                    if not s.main
                    and s.producer is None
                    and s.kind == kind
                    and s.codec.lower() == codec.lower()
                ),
                None,
            )
            if idle is not None:
                changed |= self._assign(idle, producer, owner)
            else:
                to_add.append((owner, producer))
        if to_add:
            await self._renegotiate(member, to_add)
        elif changed:
            await member.send({"type": "tracks", "tracks": [s.describe() for s in member.slots]})

    def _assign(self, slot: Slot, producer: str | None, participant: str | None) -> bool:
        if slot.producer == producer:
            return False
        try:
            self.sfu.set_source(slot.consumer_id, producer)
        except SfuError as exc:
            logger.info("room %s: track %s stays idle: %s", self.id, slot.consumer_id, exc)
            producer = participant = None
            self.sfu.set_source(slot.consumer_id, None)
        slot.producer = producer
        slot.participant = participant
        return True

    def _codecs(self) -> dict[str, str]:
        """The codec of the room's first producer of each kind (main tracks use it)."""
        codecs: dict[str, str] = {}
        for member in self.members.values():
            for kind, codec in member.codecs.items():
                codecs.setdefault(kind, codec)
        return codecs

    def _kind_codec(self, producer: str) -> tuple[str, str]:
        for member in self.members.values():
            for kind, producer_id in member.producers.items():
                if producer_id == producer:
                    return kind, member.codecs[kind]
        raise SfuError("unknown-track", f"no published track {producer!r}")

    def _main_template(self, kind: str, main: dict[str, str | None]) -> str | None:
        """A producer to create a main track from (its codec), preferring the real source."""
        if main.get(kind):
            return main[kind]
        for member in self.members.values():
            if kind in member.producers:
                return member.producers[kind]
        return None

    async def _first_offer(
        self,
        member: Member,
        main: dict[str, str | None],
        thumbs: list[tuple[str, str]],
        codecs: dict[str, str],
    ) -> None:
        plan: list[tuple[bool, str | None, str]] = []  # (main, owner, template producer)
        for kind in ("video", "audio"):
            template = self._main_template(kind, main)
            if template is not None:
                plan.append((True, self.floor if main.get(kind) else None, template))
        plan += [(False, owner, producer) for owner, producer in thumbs]
        if not plan:
            return  # nothing published in the room yet
        peer_id = f"{self.id}.{member.id}.sub{secrets.token_hex(2)}"
        offer, tracks = await self.sfu.subscribe(peer_id, [p for _, _, p in plan])
        member.subscribe_peer = peer_id
        member.slots = []
        for (is_main, owner, template), track in zip(plan, tracks, strict=True):
            slot = _slot(track, is_main, template, owner)
            member.slots.append(slot)
            if is_main and main.get(track.kind) != template:
                self._assign(slot, None, None)  # codec template only: idle until a holder
        member.negotiating = True
        # A new SFU peer: the client must answer on a new connection.
        await member.send(
            {
                "type": "offer",
                "sdp": offer,
                "tracks": [s.describe() for s in member.slots],
                "restart": True,
            }
        )

    async def _renegotiate(self, member: Member, to_add: list[tuple[str, str]]) -> None:
        assert member.subscribe_peer is not None
        offer, tracks = await self.sfu.add_sources(member.subscribe_peer, [p for _, p in to_add])
        for (owner, producer), track in zip(to_add, tracks, strict=True):
            member.slots.append(_slot(track, False, producer, owner))
        member.negotiating = True
        await member.send(
            {"type": "offer", "sdp": offer, "tracks": [s.describe() for s in member.slots]}
        )

    async def resubscribe(self, member: Member) -> None:
        """The member's subscribe connection is gone (its media worker died): offer a new one.

        Its publications and everyone else's media are untouched.
        """
        if self.members.get(member.id) is not member:
            return
        async with member.lock:
            member.subscribe_peer = None
            member.slots = []
            member.negotiating = False
            member.sync_again = False
        logger.warning("room %s: %s's media worker was lost; offering anew", self.id, member.id)
        await self.sync(member)

    async def answered(self, member: Member, sdp: str) -> None:
        """The member answered the latest offer; apply it and catch up on changes."""
        if member.subscribe_peer is None or not member.negotiating:
            raise SfuError("wrong-state", "there is no offer to answer")
        try:
            await self.sfu.answer(member.subscribe_peer, sdp)
        finally:
            member.negotiating = False
        if member.sync_again:
            member.sync_again = False
            await self.sync(member)

    # ------------------------------------------------------------------ misc

    def audio_producers(self) -> dict[str, str]:
        """Producer id -> member id of every audio track in the room."""
        return {
            producer: member.id
            for member in self.members.values()
            for kind, producer in member.producers.items()
            if kind == "audio"
        }

    async def update_active_speaker(self) -> None:
        producers = self.audio_producers()
        speaker_producer = self.sfu.active_speaker(among=producers) if producers else None
        speaker = producers.get(speaker_producer or "")
        if speaker != self.active_speaker:
            self.active_speaker = speaker
            await self.broadcast({"type": "active-speaker", "participant": speaker})

    async def end(self) -> None:
        """End the room: everyone is told and disconnected."""
        self.ended = True
        await self.broadcast({"type": "room-ended"})
        for member in list(self.members.values()):
            self.members.pop(member.id, None)
            await self._close_media(member)
            if member.ws is not None and not member.ws.closed:
                await member.ws.close()
        with contextlib.suppress(Exception):
            await self.store.end_room(self.id)


def _slot(track: TrackInfo, main: bool, producer: str | None, owner: str | None) -> Slot:
    """The slot for a subscribed track the SFU just created (id ``"<peer>:<mid>"``)."""
    mid = track.id.rsplit(":", 1)[1]
    return Slot(track.id, mid, track.kind, track.codec, main, producer=producer, participant=owner)
