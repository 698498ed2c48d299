"""Keyframe requests toward a publisher: coalesced and throttled.

Policy (documented in ``sfu/README.md``): any number of requests from
subscribers, joins or source switches collapse into at most one PLI
(RFC 4585 §6.3.1) per ``interval`` seconds per published video stream. A
request made inside the interval is remembered and sent when the interval
ends, unless a keyframe arrived in the meantime, which satisfies it.
"""

from __future__ import annotations


class KeyframeRequester:
    """Decides when a PLI may go to the publisher of one video stream."""

    __slots__ = ("interval", "last_sent", "pending", "sent")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last_sent = float("-inf")
        self.pending = False
        #: Number of PLIs actually sent upstream.
        self.sent = 0

    def request(self, now: float) -> bool:
        """Ask for a keyframe; True if a PLI should be sent right now."""
        if now - self.last_sent >= self.interval:
            self.last_sent = now
            self.pending = False
            self.sent += 1
            return True
        self.pending = True
        return False

    def poll(self, now: float) -> bool:
        """Called periodically: True if a deferred request is due now."""
        if self.pending and now - self.last_sent >= self.interval:
            self.last_sent = now
            self.pending = False
            self.sent += 1
            return True
        return False

    def keyframe_received(self) -> None:
        """A keyframe arrived: deferred requests are satisfied."""
        self.pending = False
