"""Per incoming stream packet cache: recent packets and the current keyframe.

One cache per published stream (not per subscriber) holds the last
``capacity`` packets by extended sequence number. It serves:

* NACKs from subscribers (RFC 4585 §6.2.1), mapped back to source sequence
  numbers through each consumer's offsets (:class:`sfu.router.Router`);
* the instant start of a new subscriber or of a source switch: the packets
  from the start of the most recent keyframe up to the newest packet (the
  group of pictures so far), when that keyframe is complete and young enough.

A slot is overwritten when a packet ``capacity`` newer arrives, so memory is
bounded by ``capacity`` times the packet size whatever the subscribers do.
"""

from __future__ import annotations


class PacketCache:
    """Ring buffer of RTP packets indexed by extended sequence number."""

    __slots__ = (
        "_mask",
        "_packets",
        "_seqs",
        "_times",
        "capacity",
        "highest",
        "key_start",
        "key_time",
    )

    def __init__(self, capacity: int) -> None:
        if capacity <= 0 or capacity & (capacity - 1):
            raise ValueError("cache capacity must be a power of two")
        self.capacity = capacity
        self._mask = capacity - 1
        self._seqs = [-1] * capacity
        self._packets: list[bytes | None] = [None] * capacity
        self._times = [0.0] * capacity
        #: Highest extended sequence number stored, -1 when empty.
        self.highest = -1
        #: Extended sequence number of the newest keyframe's first packet, -1 if none.
        self.key_start = -1
        #: Arrival time of that first keyframe packet.
        self.key_time = 0.0

    def put(self, ext_seq: int, packet: bytes, now: float, keyframe_start: bool) -> bool:
        """Store a packet; returns False for a duplicate or a packet too old to keep."""
        if self.highest >= 0 and ext_seq <= self.highest - self.capacity:
            return False
        slot = ext_seq & self._mask
        if self._seqs[slot] == ext_seq:
            return False
        self._seqs[slot] = ext_seq
        self._packets[slot] = packet
        self._times[slot] = now
        if ext_seq > self.highest:
            self.highest = ext_seq
        if keyframe_start and ext_seq > self.key_start:
            self.key_start = ext_seq
            self.key_time = now
        if self.key_start >= 0 and self.key_start <= self.highest - self.capacity:
            self.key_start = -1
        return True

    def get(self, ext_seq: int) -> bytes | None:
        """The packet with this extended sequence number, if still cached."""
        slot = ext_seq & self._mask
        if self._seqs[slot] != ext_seq:
            return None
        return self._packets[slot]

    def evicted(self, ext_seq: int) -> bool:
        """True if a packet this old can no longer be in the cache (its slot was reused)."""
        return ext_seq <= self.highest - self.capacity

    def arrival(self, ext_seq: int) -> float | None:
        """When the packet arrived, if still cached."""
        slot = ext_seq & self._mask
        if self._seqs[slot] != ext_seq:
            return None
        return self._times[slot]

    def keyframe_usable(self, now: float, max_age: float) -> bool:
        """True if the newest keyframe can start a subscriber right now.

        It must still be in the cache, have arrived at most ``max_age``
        seconds ago, and every packet from its start to the newest one must be
        present (a hole would leave the subscriber undecodable until the
        next keyframe anyway).
        """
        start = self.key_start
        if start < 0 or now - self.key_time > max_age:
            return False
        seqs = self._seqs
        mask = self._mask
        return all(seqs[s & mask] == s for s in range(start, self.highest + 1))
