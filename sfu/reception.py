"""Reception statistics of one incoming stream, for receiver reports.

RFC 3550 Appendix A.3 (packets expected and lost, fraction lost per
interval) and Appendix A.8 (interarrival jitter), with LSR/DLSR from the
sender's last SR (§6.4.1). Times are passed in; nothing here reads a clock.
"""

from __future__ import annotations

from sfu.rtcp import ReportBlock, ntp_middle32


class ReceptionStats:
    """Counters of one incoming RTP stream, turned into RR report blocks."""

    __slots__ = (
        "_base",
        "_expected_prior",
        "_received_prior",
        "_transit",
        "clock_rate",
        "highest",
        "jitter",
        "last_sr_arrival",
        "last_sr_ntp",
        "received",
        "ssrc",
    )

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self._base = -1
        self.highest = -1
        self.received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._transit: float | None = None
        #: Interarrival jitter in timestamp units (RFC 3550 A.8), as a float.
        self.jitter = 0.0
        self.last_sr_ntp = 0
        self.last_sr_arrival = 0.0

    def on_packet(self, ext_seq: int, timestamp: int, now: float) -> None:
        """Count one packet (not retransmissions) that arrived at ``now``."""
        if self._base < 0:
            self._base = ext_seq
        if ext_seq > self.highest:
            self.highest = ext_seq
        self.received += 1
        transit = now * self.clock_rate - timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            if d < self.clock_rate * 10:  # ignore timestamp jumps (source switch)
                self.jitter += (d - self.jitter) / 16
        self._transit = transit

    def on_sender_report(self, ntp_timestamp: int, now: float) -> None:
        """Remember the sender's last SR, for LSR/DLSR."""
        self.last_sr_ntp = ntp_timestamp
        self.last_sr_arrival = now

    @property
    def expected(self) -> int:
        return 0 if self._base < 0 else self.highest - self._base + 1

    @property
    def lost(self) -> int:
        return self.expected - self.received

    def report_block(self, now: float) -> ReportBlock | None:
        """An RR report block for this interval (RFC 3550 §6.4.1, A.3)."""
        if self._base < 0:
            return None
        expected = self.expected
        expected_interval = expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        lost = max(-0x800000, min(0x7FFFFF, self.lost))
        lsr = dlsr = 0
        if self.last_sr_ntp:
            lsr = ntp_middle32(self.last_sr_ntp)
            dlsr = int((now - self.last_sr_arrival) * 65536) & 0xFFFFFFFF
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=lost,
            highest_seq=self.highest & 0xFFFFFFFF,
            jitter=int(self.jitter),
            lsr=lsr,
            dlsr=dlsr,
        )
