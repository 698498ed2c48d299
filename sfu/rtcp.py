"""Sans-I/O RTCP parsing and building.

Nothing here touches a socket, an event loop or a clock: every function maps
bytes to values or values to bytes.  Wire formats, by reference:

* Common header, compound packets, padding: RFC 3550 §6.1 and §6.4.1.
* SR (PT 200) with sender info and report blocks: RFC 3550 §6.4.1.
* RR (PT 201): RFC 3550 §6.4.2 (more than 31 blocks are stacked in further RR
  packets, same section).
* SDES (PT 202), of which only CNAME items are kept: RFC 3550 §6.5 and §6.5.1.
* BYE (PT 203): RFC 3550 §6.6.
* Feedback common header (PT 205 RTPFB / PT 206 PSFB): RFC 4585 §6.1.
* Generic NACK (PT 205, FMT 1): RFC 4585 §6.2.1.
* PLI (PT 206, FMT 1): RFC 4585 §6.3.1.
* FIR (PT 206, FMT 4): RFC 5104 §4.3.1.
* REMB (PT 206, FMT 15, "REMB" identifier): draft-alvestrand-rmcat-remb-03 §2.2.
* Telling RTP from RTCP on a muxed port: RFC 5761 §4.
* Reduced-size RTCP: RFC 5506 §3.  A compound packet need not start with an SR
  or RR (RFC 3550 §6.1 / Appendix A.2 validity checks are therefore not
  enforced) and may hold a single feedback packet.
* 64-bit NTP timestamps: RFC 3550 §4; era handling follows RFC 4330 §3.

:func:`parse_compound` never raises.  A sub-packet whose common header is
broken (bad version, length running past the datagram) ends parsing, since the
packets after it cannot be located; a sub-packet whose header is sound but whose
body is inconsistent (report count, padding, truncated FCI, ...) is counted as
malformed and parsing resumes at the next sub-packet.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Bye",
    "Fir",
    "Nack",
    "ParseResult",
    "Pli",
    "ReceiverReport",
    "Remb",
    "ReportBlock",
    "RtcpError",
    "RtcpPacket",
    "Sdes",
    "SenderReport",
    "build_bye",
    "build_fir",
    "build_nack",
    "build_pli",
    "build_remb",
    "build_rr",
    "build_sdes_cname",
    "build_sr",
    "is_rtcp",
    "ntp_from_unix",
    "ntp_middle32",
    "parse_compound",
    "unix_from_ntp",
]

# Packet types (RFC 3550 §12.1, RFC 4585 §6.1).
PT_SR = 200
PT_RR = 201
PT_SDES = 202
PT_BYE = 203
PT_APP = 204
PT_RTPFB = 205
PT_PSFB = 206
PT_XR = 207

# Feedback message types (RFC 4585 §6.2 / §6.3, RFC 5104 §4.3).
FMT_NACK = 1
FMT_PLI = 1
FMT_FIR = 4
FMT_AFB = 15

SDES_END = 0
SDES_CNAME = 1

#: Largest value of the 5-bit report/source count (RFC 3550 §6.4.1).
MAX_COUNT = 31

_VERSION = 2
_HEADER_SIZE = 4
_REPORT_BLOCK_SIZE = 24
_SENDER_INFO_SIZE = 24  # SSRC of sender + 20 bytes of sender info
_FEEDBACK_SIZE = 8  # SSRC of packet sender + SSRC of media source
_REMB_ID = b"REMB"
_REMB_MANTISSA_MAX = 0x3FFFF  # 18 bits
_REMB_EXP_MAX = 0x3F  # 6 bits

_PACKETS_LOST_MIN = -0x800000
_PACKETS_LOST_MAX = 0x7FFFFF

_NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_NTP_ERA = 1 << 32
_U64 = (1 << 64) - 1

# V/P/count, PT, length (RFC 3550 §6.4.1).
_HEADER = struct.Struct("!BBH")
# SSRC of sender, NTP timestamp, RTP timestamp, packet count, octet count.
_SENDER_INFO = struct.Struct("!IQIII")
# SSRC, fraction lost, cumulative lost (24 bits as high byte + low 16), highest
# extended seq, jitter, LSR, DLSR.
_REPORT_BLOCK = struct.Struct("!IBBHIIII")
_U32 = struct.Struct("!I")
_TWO_U32 = struct.Struct("!II")
# Generic NACK FCI: PID, BLP (RFC 4585 §6.2.1).
_NACK_FCI = struct.Struct("!HH")
# FIR FCI: SSRC, Seq nr., 24 reserved bits (RFC 5104 §4.3.1.1).
_FIR_FCI = struct.Struct("!IB3x")
# REMB: "REMB", Num SSRC, BR Exp (6) | BR Mantissa (18).
_REMB_HEAD = struct.Struct("!4sBBH")


class RtcpError(ValueError):
    """Raised by the builders on values that cannot be encoded."""


@dataclass(slots=True, frozen=True)
class ReportBlock:
    """Reception report block, RFC 3550 §6.4.1 (shared by SR and RR)."""

    ssrc: int
    fraction_lost: int  # 0..255, fixed point /256
    packets_lost: int  # signed 24-bit cumulative (may be negative)
    highest_seq: int  # extended highest sequence number received
    jitter: int
    lsr: int
    dlsr: int


@dataclass(slots=True, frozen=True)
class SenderReport:
    """SR, PT 200, RFC 3550 §6.4.1."""

    ssrc: int
    ntp_timestamp: int  # full 64-bit NTP
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(slots=True, frozen=True)
class ReceiverReport:
    """RR, PT 201, RFC 3550 §6.4.2."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(slots=True, frozen=True)
class Sdes:
    """SDES, PT 202, RFC 3550 §6.5; only CNAME items (§6.5.1) are kept."""

    cnames: tuple[tuple[int, str], ...]  # (ssrc, cname)


@dataclass(slots=True, frozen=True)
class Bye:
    """BYE, PT 203, RFC 3550 §6.6 (the optional reason is not kept)."""

    ssrcs: tuple[int, ...]


@dataclass(slots=True, frozen=True)
class Nack:
    """Generic NACK, PT 205 FMT 1, RFC 4585 §6.2.1."""

    sender_ssrc: int
    media_ssrc: int
    lost: tuple[int, ...]  # 16-bit sequence numbers, in FCI order


@dataclass(slots=True, frozen=True)
class Pli:
    """Picture Loss Indication, PT 206 FMT 1, RFC 4585 §6.3.1."""

    sender_ssrc: int
    media_ssrc: int


@dataclass(slots=True, frozen=True)
class Fir:
    """Full Intra Request, PT 206 FMT 4, RFC 5104 §4.3.1."""

    sender_ssrc: int
    entries: tuple[tuple[int, int], ...]  # (ssrc, command sequence number)


@dataclass(slots=True, frozen=True)
class Remb:
    """Receiver Estimated Max Bitrate, PT 206 FMT 15, draft-alvestrand-rmcat-remb §2.2."""

    sender_ssrc: int
    bitrate: int  # bits per second
    ssrcs: tuple[int, ...]


RtcpPacket = SenderReport | ReceiverReport | Sdes | Bye | Nack | Pli | Fir | Remb


@dataclass(slots=True)
class ParseResult:
    """Outcome of :func:`parse_compound`."""

    packets: list[RtcpPacket]
    #: Sub-packets that were malformed or truncated.  Parsing stops at the first
    #: structurally broken common header, since the rest cannot be located.
    malformed: int
    #: Well-formed sub-packets of types that are skipped (APP, XR, other FMTs).
    unknown: int


class _Malformed(Exception):
    """Internal signal: the current sub-packet's body is inconsistent."""


# --------------------------------------------------------------------------
# Demultiplexing
# --------------------------------------------------------------------------


def feedback_ssrcs(packet: RtcpPacket) -> tuple[int, ...]:
    """The media SSRCs a packet gives feedback about, in order.

    A NACK's or PLI's media source (RFC 4585 §6.1), a FIR's entries
    (RFC 5104 §4.3.1), a sender or receiver report's blocks (RFC 3550
    §6.4); nothing for the other types.
    """
    if isinstance(packet, Nack | Pli):
        return (packet.media_ssrc,)
    if isinstance(packet, Fir):
        return tuple(ssrc for ssrc, _ in packet.entries)
    if isinstance(packet, SenderReport | ReceiverReport):
        return tuple(block.ssrc for block in packet.reports)
    return ()


def is_rtcp(data: bytes | bytearray | memoryview) -> bool:
    """Tell RTCP from RTP on a port shared per RFC 5761 §4.

    The second octet of an RTCP packet is its packet type, which lies in
    192..223; RTP payload types that would collide with this range (64..95 with
    the marker bit set) must not be used on a muxed port.  Inputs shorter than
    two octets are not RTCP.  The version bits are not looked at: STUN/DTLS
    demultiplexing (RFC 7983) happens before this.
    """
    return len(data) >= 2 and 192 <= data[1] <= 223


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


def parse_compound(data: bytes | bytearray | memoryview) -> ParseResult:
    """Parse a (possibly reduced-size) compound RTCP packet; never raises.

    Each sub-packet starts with the common header of RFC 3550 §6.4.1 (feedback
    packets: RFC 4585 §6.1): version 2, padding bit, 5-bit count/FMT, packet
    type and a length in 32-bit words minus one.  RFC 5506 §3 reduced-size
    packets are accepted, so the first sub-packet need not be an SR or RR.

    * A header with a version other than 2, or whose length runs past the end
      of ``data``, or fewer than 4 trailing octets, counts as malformed and ends
      parsing (what follows cannot be located).
    * If the padding bit is set, the last octet is the padding count
      (RFC 3550 §6.4.1); it must be 1..body length, else the sub-packet is
      malformed.
    * SR/RR whose report count does not fit the body, SDES/BYE/feedback with
      truncated content count as malformed; parsing resumes after them.
    * Extra octets after the report blocks of an SR/RR (profile-specific
      extensions, RFC 3550 §6.4.1) are ignored.
    * APP, XR, unknown packet types and unhandled feedback FMTs are counted in
      ``unknown`` and skipped.
    """
    buf = data if isinstance(data, bytes) else bytes(data)
    packets: list[RtcpPacket] = []
    malformed = 0
    unknown = 0
    size = len(buf)
    offset = 0
    while offset < size:
        if size - offset < _HEADER_SIZE:
            malformed += 1
            break
        first, pt, length = _HEADER.unpack_from(buf, offset)
        if first >> 6 != _VERSION:
            malformed += 1
            break
        end = offset + (length + 1) * 4
        if end > size:
            malformed += 1
            break
        start = offset + _HEADER_SIZE
        offset = end
        if first & 0x20:
            pad = buf[end - 1]
            if pad == 0 or pad > end - start:
                malformed += 1
                continue
            end -= pad
        try:
            packet = _parse_one(buf, pt, first & 0x1F, start, end)
        except (_Malformed, struct.error):
            malformed += 1
            continue
        if packet is None:
            unknown += 1
        else:
            packets.append(packet)
    return ParseResult(packets, malformed, unknown)


def _parse_one(buf: bytes, pt: int, count: int, start: int, end: int) -> RtcpPacket | None:
    """Decode the body ``buf[start:end]`` of one sub-packet; ``None`` if unhandled."""
    if pt == PT_SR:
        return _parse_sr(buf, count, start, end)
    if pt == PT_RR:
        return _parse_rr(buf, count, start, end)
    if pt == PT_SDES:
        return _parse_sdes(buf, count, start, end)
    if pt == PT_BYE:
        return _parse_bye(buf, count, start, end)
    if pt == PT_RTPFB:
        if count == FMT_NACK:
            return _parse_nack(buf, start, end)
        return None
    if pt == PT_PSFB:
        if count == FMT_PLI:
            return _parse_pli(buf, start, end)
        if count == FMT_FIR:
            return _parse_fir(buf, start, end)
        if count == FMT_AFB:
            return _parse_remb(buf, start, end)
        return None
    return None


def _parse_report_blocks(buf: bytes, count: int, pos: int, end: int) -> tuple[ReportBlock, ...]:
    """Report blocks of RFC 3550 §6.4.1; trailing profile extensions are ignored."""
    if pos + count * _REPORT_BLOCK_SIZE > end:
        raise _Malformed
    blocks = []
    for _ in range(count):
        ssrc, fraction, lost_hi, lost_lo, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(
            buf, pos
        )
        lost = (lost_hi << 16) | lost_lo
        if lost & 0x800000:
            lost -= 0x1000000
        blocks.append(ReportBlock(ssrc, fraction, lost, highest, jitter, lsr, dlsr))
        pos += _REPORT_BLOCK_SIZE
    return tuple(blocks)


def _parse_sr(buf: bytes, count: int, start: int, end: int) -> SenderReport:
    """SR body, RFC 3550 §6.4.1: sender SSRC, sender info, report blocks."""
    if start + _SENDER_INFO_SIZE > end:
        raise _Malformed
    ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(buf, start)
    reports = _parse_report_blocks(buf, count, start + _SENDER_INFO_SIZE, end)
    return SenderReport(ssrc, ntp, rtp_ts, packets, octets, reports)


def _parse_rr(buf: bytes, count: int, start: int, end: int) -> ReceiverReport:
    """RR body, RFC 3550 §6.4.2: reporter SSRC, report blocks."""
    if start + 4 > end:
        raise _Malformed
    (ssrc,) = _U32.unpack_from(buf, start)
    return ReceiverReport(ssrc, _parse_report_blocks(buf, count, start + 4, end))


def _parse_sdes(buf: bytes, count: int, start: int, end: int) -> Sdes:
    """SDES body, RFC 3550 §6.5: ``count`` chunks of SSRC + items.

    Items are (type, length, text); a chunk's item list ends with a null octet
    followed by null padding up to the next 32-bit boundary.  Only CNAME
    (§6.5.1) items are kept; text that is not UTF-8 is decoded with
    replacement characters.
    """
    cnames: list[tuple[int, str]] = []
    pos = start
    for _ in range(count):
        if pos + 4 > end:
            raise _Malformed
        (ssrc,) = _U32.unpack_from(buf, pos)
        pos += 4
        while True:
            if pos >= end:
                raise _Malformed  # no terminating null item
            item_type = buf[pos]
            if item_type == SDES_END:
                # Skip the null octet and the padding to the next word boundary
                # (chunks start word-aligned, as does ``start``).
                pos = start + ((pos + 1 - start + 3) & ~3)
                break
            if pos + 2 > end:
                raise _Malformed
            item_len = buf[pos + 1]
            text_end = pos + 2 + item_len
            if text_end > end:
                raise _Malformed
            if item_type == SDES_CNAME:
                cname = buf[pos + 2 : text_end].decode("utf-8", errors="replace")
                cnames.append((ssrc, cname))
            pos = text_end
    return Sdes(tuple(cnames))


def _parse_bye(buf: bytes, count: int, start: int, end: int) -> Bye:
    """BYE body, RFC 3550 §6.6: ``count`` SSRC/CSRCs, then an optional reason."""
    pos = start + 4 * count
    if pos > end:
        raise _Malformed
    if pos < end and pos + 1 + buf[pos] > end:
        raise _Malformed  # reason length runs past the packet
    return Bye(struct.unpack_from(f"!{count}I", buf, start))


def _parse_nack(buf: bytes, start: int, end: int) -> Nack:
    """Generic NACK, RFC 4585 §6.2.1 (common feedback header: §6.1).

    Each FCI entry is PID (16 bits) and BLP (16 bits); bit i of BLP marks
    PID + i + 1 (modulo 2**16) as lost.  Sequence numbers are returned in FCI
    order, PID first, then BLP bits from least significant.
    """
    fci_len = end - start - _FEEDBACK_SIZE
    if fci_len < _NACK_FCI.size or fci_len % _NACK_FCI.size:
        raise _Malformed
    sender, media = _TWO_U32.unpack_from(buf, start)
    lost: list[int] = []
    for pid, blp in _NACK_FCI.iter_unpack(buf[start + _FEEDBACK_SIZE : end]):
        lost.append(pid)
        bit = 0
        while blp:
            if blp & 1:
                lost.append((pid + bit + 1) & 0xFFFF)
            blp >>= 1
            bit += 1
    return Nack(sender, media, tuple(lost))


def _parse_pli(buf: bytes, start: int, end: int) -> Pli:
    """PLI, RFC 4585 §6.3.1: common feedback header only, no FCI."""
    if start + _FEEDBACK_SIZE > end:
        raise _Malformed
    sender, media = _TWO_U32.unpack_from(buf, start)
    return Pli(sender, media)


def _parse_fir(buf: bytes, start: int, end: int) -> Fir:
    """FIR, RFC 5104 §4.3.1: one or more (SSRC, Seq nr., reserved) FCI entries.

    The media source field of the common header is unused (zero) and ignored.
    """
    fci_len = end - start - _FEEDBACK_SIZE
    if fci_len < _FIR_FCI.size or fci_len % _FIR_FCI.size:
        raise _Malformed
    (sender,) = _U32.unpack_from(buf, start)
    entries = tuple(_FIR_FCI.iter_unpack(buf[start + _FEEDBACK_SIZE : end]))
    return Fir(sender, entries)


def _parse_remb(buf: bytes, start: int, end: int) -> Remb | None:
    """REMB, draft-alvestrand-rmcat-remb-03 §2.2, an application-layer FB (FMT 15).

    FCI: "REMB", Num SSRC (8), BR Exp (6), BR Mantissa (18), then Num SSRC
    SSRCs; bitrate = mantissa * 2**exp.  Other FMT 15 applications are unknown.
    """
    pos = start + _FEEDBACK_SIZE
    if pos + 4 > end:
        raise _Malformed
    if buf[pos : pos + 4] != _REMB_ID:
        return None
    if pos + _REMB_HEAD.size > end:
        raise _Malformed
    (sender,) = _U32.unpack_from(buf, start)
    _, num_ssrc, exp_mant_hi, mant_lo = _REMB_HEAD.unpack_from(buf, pos)
    pos += _REMB_HEAD.size
    if pos + 4 * num_ssrc > end:
        raise _Malformed
    bitrate = (((exp_mant_hi & 0x03) << 16) | mant_lo) << (exp_mant_hi >> 2)
    return Remb(sender, bitrate, struct.unpack_from(f"!{num_ssrc}I", buf, pos))


# --------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------


def _packet(count: int, pt: int, body: bytes) -> bytes:
    """Prefix ``body`` (a multiple of 4 octets) with an RFC 3550 §6.4.1 header."""
    words = len(body) // 4
    if words > 0xFFFF:
        raise RtcpError(f"RTCP packet too long: {len(body) + _HEADER_SIZE} octets")
    return _HEADER.pack(0x80 | count, pt, words) + body


def _pack(st: struct.Struct, *values: int | bytes) -> bytes:
    try:
        return st.pack(*values)
    except struct.error as exc:
        raise RtcpError(f"value out of range for RTCP field: {exc}") from None


def _pack_block(block: ReportBlock) -> bytes:
    """One report block (RFC 3550 §6.4.1).

    The cumulative loss is clamped to the signed 24-bit range, as in
    RFC 3550 Appendix A.3; the other fields must fit their width.
    """
    lost = max(_PACKETS_LOST_MIN, min(_PACKETS_LOST_MAX, block.packets_lost)) & 0xFFFFFF
    return _pack(
        _REPORT_BLOCK,
        block.ssrc,
        block.fraction_lost,
        lost >> 16,
        lost & 0xFFFF,
        block.highest_seq,
        block.jitter,
        block.lsr,
        block.dlsr,
    )


def _stacked_rrs(ssrc: int, reports: Sequence[ReportBlock]) -> list[bytes]:
    """RR packets carrying ``reports`` at 31 per packet (RFC 3550 §6.4.2)."""
    head = _pack(_U32, ssrc)
    return [
        _packet(
            len(chunk),
            PT_RR,
            head + b"".join(_pack_block(block) for block in chunk),
        )
        for chunk in (reports[i : i + MAX_COUNT] for i in range(0, len(reports), MAX_COUNT))
    ]


def build_sr(
    ssrc: int,
    ntp_timestamp: int,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    reports: Sequence[ReportBlock] = (),
) -> bytes:
    """Build an SR, RFC 3550 §6.4.1.

    The SR carries up to 31 report blocks; any beyond those go into RR packets
    stacked after it, as RFC 3550 §6.4.2 prescribes.
    """
    body = _pack(_SENDER_INFO, ssrc, ntp_timestamp, rtp_timestamp, packet_count, octet_count)
    first = reports[:MAX_COUNT]
    sr = _packet(len(first), PT_SR, body + b"".join(_pack_block(b) for b in first))
    if len(reports) <= MAX_COUNT:
        return sr
    return b"".join([sr, *_stacked_rrs(ssrc, reports[MAX_COUNT:])])


def build_rr(ssrc: int, reports: Sequence[ReportBlock]) -> bytes:
    """Build RR packet(s), RFC 3550 §6.4.2.

    With no reports this is a single empty RR (RC = 0); with more than 31, one
    RR per 31 blocks, concatenated.
    """
    if not reports:
        return _packet(0, PT_RR, _pack(_U32, ssrc))
    return b"".join(_stacked_rrs(ssrc, reports))


def build_sdes_cname(ssrc: int, cname: str) -> bytes:
    """Build an SDES with one chunk holding one CNAME item, RFC 3550 §6.5 / §6.5.1.

    The item list ends with a null octet and is null-padded to a 32-bit
    boundary (at least one and at most four null octets).  The UTF-8 CNAME
    must be at most 255 octets.
    """
    text = cname.encode("utf-8")
    if len(text) > 255:
        raise RtcpError(f"CNAME too long: {len(text)} octets (max 255)")
    item_len = 2 + len(text)
    pad = 4 - (item_len % 4)  # 1..4 null octets: terminator plus alignment
    body = b"".join([_pack(_U32, ssrc), bytes((SDES_CNAME, len(text))), text, bytes(pad)])
    return _packet(1, PT_SDES, body)


def build_bye(ssrcs: Sequence[int]) -> bytes:
    """Build BYE packet(s) without a reason, RFC 3550 §6.6.

    Up to 31 SSRCs fit one packet; more are split into several BYE packets.
    An empty sequence gives a single BYE with SC = 0 (valid but useless).
    """
    if not ssrcs:
        return _packet(0, PT_BYE, b"")
    return b"".join(
        _packet(len(chunk), PT_BYE, b"".join(_pack(_U32, s) for s in chunk))
        for chunk in (ssrcs[i : i + MAX_COUNT] for i in range(0, len(ssrcs), MAX_COUNT))
    )


def build_nack(sender_ssrc: int, media_ssrc: int, lost: Iterable[int]) -> bytes:
    """Build a Generic NACK, RFC 4585 §6.2.1 (feedback header: §6.1).

    ``lost`` is deduplicated and sorted in RFC 1982 serial-number order
    relative to its first element, so a run such as 65534, 65535, 0, 1 packs
    into one PID/BLP entry.  Each FCI entry covers PID and the 16 following
    sequence numbers.  Raises :class:`RtcpError` if ``lost`` is empty or holds
    a value outside 0..65535.
    """
    seqs = list(lost)
    if not seqs:
        raise RtcpError("NACK needs at least one lost sequence number")
    for seq in seqs:
        if not 0 <= seq <= 0xFFFF:
            raise RtcpError(f"sequence number out of range: {seq}")
    first = seqs[0]
    # Signed 16-bit distance from ``first`` (RFC 1982 §3.2) as the sort key.
    ordered = sorted(set(seqs), key=lambda s: ((s - first + 0x8000) & 0xFFFF) - 0x8000)

    parts = [_pack(_TWO_U32, sender_ssrc, media_ssrc)]
    pid = ordered[0]
    blp = 0
    for seq in ordered[1:]:
        gap = (seq - pid) & 0xFFFF  # 1..65535: ``ordered`` is strictly increasing
        if gap <= 16:
            blp |= 1 << (gap - 1)
        else:
            parts.append(_NACK_FCI.pack(pid, blp))
            pid = seq
            blp = 0
    parts.append(_NACK_FCI.pack(pid, blp))
    return _packet(FMT_NACK, PT_RTPFB, b"".join(parts))


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    """Build a PLI, RFC 4585 §6.3.1: the §6.1 feedback header without FCI."""
    return _packet(FMT_PLI, PT_PSFB, _pack(_TWO_U32, sender_ssrc, media_ssrc))


def build_fir(sender_ssrc: int, media_ssrc: int, seq_nr: int) -> bytes:
    """Build a FIR with one FCI entry, RFC 5104 §4.3.1.

    The media source SSRC of the common header is 0 (RFC 5104 §4.3.1.2); the
    target SSRC goes in the FCI with the command sequence number ``seq_nr``,
    which must be 0..255 (the caller keeps the modulo-256 counter).
    """
    body = _pack(_TWO_U32, sender_ssrc, 0) + _pack(_FIR_FCI, media_ssrc, seq_nr)
    return _packet(FMT_FIR, PT_PSFB, body)


def build_remb(sender_ssrc: int, bitrate: int, ssrcs: Sequence[int]) -> bytes:
    """Build a REMB, draft-alvestrand-rmcat-remb-03 §2.2 (PSFB FMT 15, RFC 4585 §6.4).

    The bitrate is encoded as an 18-bit mantissa and a 6-bit exponent,
    rounding down when it does not fit exactly.  The media source SSRC of the
    common header is 0; at most 255 SSRCs may be listed.
    """
    if bitrate < 0:
        raise RtcpError(f"negative bitrate: {bitrate}")
    if len(ssrcs) > 255:
        raise RtcpError(f"too many SSRCs for REMB: {len(ssrcs)} (max 255)")
    exp = max(0, bitrate.bit_length() - 18)
    if exp > _REMB_EXP_MAX:
        raise RtcpError(f"bitrate too large for REMB: {bitrate}")
    mantissa = bitrate >> exp
    parts = [
        _pack(_TWO_U32, sender_ssrc, 0),
        _REMB_HEAD.pack(_REMB_ID, len(ssrcs), (exp << 2) | (mantissa >> 16), mantissa & 0xFFFF),
    ]
    parts.extend(_pack(_U32, s) for s in ssrcs)
    return _packet(FMT_AFB, PT_PSFB, b"".join(parts))


# --------------------------------------------------------------------------
# NTP timestamps (RFC 3550 §4)
# --------------------------------------------------------------------------


def ntp_from_unix(seconds: float) -> int:
    """Convert Unix time to a 64-bit NTP timestamp (RFC 3550 §4, epoch 1900).

    The upper 32 bits are seconds since 1900-01-01, the lower 32 bits the
    fraction.  The seconds field wraps modulo 2**32 (NTP eras, RFC 4330 §3),
    so :func:`unix_from_ntp` round-trips for times in 1968..2104.
    """
    if not math.isfinite(seconds):
        raise RtcpError(f"cannot convert {seconds!r} to an NTP timestamp")
    whole = math.floor(seconds)
    fraction = round((seconds - whole) * _NTP_ERA)  # may round up to 2**32: carries
    return (((whole + _NTP_EPOCH_OFFSET) << 32) + fraction) & _U64


def unix_from_ntp(ntp: int) -> float:
    """Convert a 64-bit NTP timestamp (RFC 3550 §4) to Unix time.

    Following RFC 4330 §3, a seconds field with its top bit clear is taken to
    be in NTP era 1 (2036-02-07 onwards), so the range covered is 1968..2104.
    """
    secs = (ntp >> 32) & 0xFFFFFFFF
    if not secs & 0x80000000:
        secs += _NTP_ERA
    return (secs - _NTP_EPOCH_OFFSET) + (ntp & 0xFFFFFFFF) / _NTP_ERA


def ntp_middle32(ntp: int) -> int:
    """Middle 32 bits of a 64-bit NTP timestamp: the LSR form of RFC 3550 §6.4.1."""
    return (ntp >> 16) & 0xFFFFFFFF
