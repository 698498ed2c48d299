"""Keyframe requests toward a publisher: coalesced and throttled.

Policy (documented in ``sfu/README.md``): any number of requests from
subscribers, joins or source switches collapse into at most one PLI
(RFC 4585 §6.3.1) per ``interval`` seconds per published video stream. A
request made inside the interval is remembered and sent when the interval
ends, unless a keyframe arrived in the meantime, which satisfies it.
While the process is overloaded (``slow``: it reads its input late, see
``sfu/load.py``) the interval is :data:`SLOW_FACTOR` times longer: each
keyframe is a burst of copies to every subscriber, and past saturation
the subscribers that lost packets ask for one after another, so that
keyframes alone (two a second to 300 subscribers: ~30,000 copies) would
keep the process saturated.
"""

from __future__ import annotations

#: How much wider keyframe requests are spaced while the process is overloaded.
SLOW_FACTOR = 4.0


class KeyframeRequester:
    """Decides when a PLI may go to the publisher of one video stream."""

    __slots__ = ("interval", "last_sent", "pending", "sent")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last_sent = float("-inf")
        self.pending = False
        #: Number of PLIs actually sent upstream.
        self.sent = 0

    def request(self, now: float, slow: bool = False) -> bool:
        """Ask for a keyframe; True if a PLI should be sent right now (else it is deferred)."""
        self.pending = True
        return self.poll(now, slow)

    def poll(self, now: float, slow: bool = False) -> bool:
        """True if a pending request is due now: the interval (wider when ``slow``) has passed."""
        if self.pending and now - self.last_sent >= self.interval * (SLOW_FACTOR if slow else 1.0):
            self.last_sent = now
            self.pending = False
            self.sent += 1
            return True
        return False

    def keyframe_received(self) -> None:
        """A keyframe arrived: deferred requests are satisfied."""
        self.pending = False
