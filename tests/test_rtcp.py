"""Tests for sfu.rtcp, driven by hand-written byte vectors.

Each vector spells out the wire layout of the RFC section named next to it;
aiortc's RTCP classes are used only as an independent cross-check.
"""

from __future__ import annotations

import random
import struct

import pytest
from aiortc import rtp as aiortc_rtp

from sfu.rtcp import (
    Bye,
    Fir,
    Nack,
    ParseResult,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    RtcpError,
    RtcpPacket,
    Sdes,
    SenderReport,
    build_bye,
    build_fir,
    build_nack,
    build_pli,
    build_remb,
    build_rr,
    build_sdes_cname,
    build_sr,
    feedback_ssrcs,
    is_rtcp,
    ntp_from_unix,
    ntp_middle32,
    parse_compound,
    unix_from_ntp,
)

BLOCK = ReportBlock(
    ssrc=0xDEADBEEF,
    fraction_lost=0x40,
    packets_lost=-2,
    highest_seq=0x0001_0010,
    jitter=0x20,
    lsr=0xAABBCCDD,
    dlsr=0x0001_0000,
)
BLOCK_BYTES = bytes.fromhex("deadbeef 40 fffffe 00010010 00000020 aabbccdd 00010000")


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def parse_ok(data: bytes) -> list[RtcpPacket]:
    """Parse ``data`` and insist that it was entirely well-formed and known."""
    result = parse_compound(data)
    assert result.malformed == 0, result
    assert result.unknown == 0, result
    return result.packets


def parse_one(data: bytes) -> RtcpPacket:
    packets = parse_ok(data)
    assert len(packets) == 1
    return packets[0]


def block(i: int, lost: int = 0) -> ReportBlock:
    return ReportBlock(i, i & 0xFF, lost, 0x10000 + i, i * 3, i * 5, i * 7)


# ---------------------------------------------------------------------------
# Hand-written vectors: parsing
# ---------------------------------------------------------------------------


SR_VECTOR = h(
    "80 c8 0006"  # V=2 P=0 RC=0, PT=200, length 6 (28 octets)
    "12345678"  # SSRC of sender
    "e8a1b2c3 80000000"  # NTP timestamp
    "0001e240"  # RTP timestamp 123456
    "000003e8"  # packet count 1000
    "000f4240"  # octet count 1000000
)


def test_sr_vector() -> None:
    assert parse_one(SR_VECTOR) == SenderReport(
        ssrc=0x12345678,
        ntp_timestamp=0xE8A1B2C3_80000000,
        rtp_timestamp=123456,
        packet_count=1000,
        octet_count=1_000_000,
    )
    assert build_sr(0x12345678, 0xE8A1B2C3_80000000, 123456, 1000, 1_000_000) == SR_VECTOR


def test_sr_vector_with_block() -> None:
    data = h("81 c8 000c") + SR_VECTOR[4:] + BLOCK_BYTES
    packet = parse_one(data)
    assert isinstance(packet, SenderReport)
    assert packet.reports == (BLOCK,)
    assert build_sr(0x12345678, 0xE8A1B2C3_80000000, 123456, 1000, 1_000_000, [BLOCK]) == data


RR_VECTOR = h("81 c9 0007 00000001") + BLOCK_BYTES  # RC=1, PT=201, length 7


def test_rr_vector_one_block() -> None:
    assert parse_one(RR_VECTOR) == ReceiverReport(1, (BLOCK,))
    assert build_rr(1, [BLOCK]) == RR_VECTOR


def test_rr_vector_positive_loss_and_sign_extension() -> None:
    body = h("81 c9 0007 00000001 00000002 ff 7fffff 00000000 00000000 00000000 00000000")
    packet = parse_one(body)
    assert isinstance(packet, ReceiverReport)
    assert packet.reports[0].fraction_lost == 255
    assert packet.reports[0].packets_lost == 0x7FFFFF
    body = body[:13] + h("800000") + body[16:]
    packet = parse_one(body)
    assert isinstance(packet, ReceiverReport)
    assert packet.reports[0].packets_lost == -0x800000


def test_empty_rr_vector() -> None:
    data = h("80 c9 0001 0badf00d")
    assert parse_one(data) == ReceiverReport(0x0BADF00D)
    assert build_rr(0x0BADF00D, []) == data


def test_rr_with_profile_extension_is_fine() -> None:
    # RFC 3550 §6.4.1: profile-specific extensions may follow the report blocks.
    data = h("81 c9 0009 00000001") + BLOCK_BYTES + h("cafebabe 01020304")
    assert parse_one(data) == ReceiverReport(1, (BLOCK,))
    data = h("80 c8 0007") + SR_VECTOR[4:] + h("01020304")
    packet = parse_one(data)
    assert isinstance(packet, SenderReport)
    assert packet.ssrc == 0x12345678


SDES_VECTOR = h(
    "81 ca 0003"  # SC=1, PT=202, length 3
    "11223344"  # SSRC
    "01 04 61626364"  # CNAME "abcd"
    "0000"  # null terminator + padding to the word boundary
)


def test_sdes_vector() -> None:
    assert parse_one(SDES_VECTOR) == Sdes(((0x11223344, "abcd"),))
    assert build_sdes_cname(0x11223344, "abcd") == SDES_VECTOR


def test_sdes_needs_a_whole_null_word_when_aligned() -> None:
    # Item of 4 octets ends on a word boundary: a full null word terminates it.
    data = h("81 ca 0003 11223344 01 02 6162 00000000")
    assert build_sdes_cname(0x11223344, "ab") == data
    assert parse_one(data) == Sdes(((0x11223344, "ab"),))


@pytest.mark.parametrize("length", [0, 1, 2, 3, 4, 5, 6, 7, 100, 253, 254, 255])
def test_sdes_padding_for_every_alignment(length: int) -> None:
    cname = "x" * length
    data = build_sdes_cname(7, cname)
    assert len(data) % 4 == 0
    # SSRC, type, length, text, then 1..4 null octets.
    nulls = len(data) - 4 - 4 - 2 - length
    assert 1 <= nulls <= 4
    assert data[-nulls:] == bytes(nulls)
    assert parse_one(data) == Sdes(((7, cname),))


def test_sdes_multiple_chunks_and_items() -> None:
    data = h(
        "82 ca 0007"  # SC=2, length 7
        "00000001 02 03 626f62 01 03 626f62 0000"  # NAME "bob", CNAME "bob", 2 nulls
        "00000002 02 02 6869 00000000"  # NAME only: nothing kept; a whole null word
    )
    assert parse_one(data) == Sdes(((1, "bob"),))


def test_sdes_non_utf8_cname_does_not_raise() -> None:
    data = h("81 ca 0003 00000009 01 02 fffe 00000000")
    assert parse_one(data) == Sdes(((9, "\ufffd\ufffd"),))


def test_sdes_unicode_cname_round_trip() -> None:
    assert parse_one(build_sdes_cname(3, "ünïcødé@host")) == Sdes(((3, "ünïcødé@host"),))


BYE_VECTOR = h("81 cb 0001 aabbccdd")


def test_bye_vector() -> None:
    assert parse_one(BYE_VECTOR) == Bye((0xAABBCCDD,))
    assert build_bye([0xAABBCCDD]) == BYE_VECTOR


def test_bye_with_reason() -> None:
    data = h("82 cb 0003 00000001 00000002 03 627965")  # reason "bye"
    assert parse_one(data) == Bye((1, 2))


def test_empty_bye() -> None:
    assert build_bye([]) == h("80 cb 0000")
    assert parse_one(h("80 cb 0000")) == Bye(())


NACK_VECTOR = h(
    "81 cd 0003"  # FMT=1, PT=205, length 3
    "00000001"  # SSRC of packet sender
    "00000002"  # SSRC of media source
    "0064 0005"  # PID=100, BLP bits 0 and 2: 101 and 103
)


def test_nack_vector() -> None:
    assert parse_one(NACK_VECTOR) == Nack(1, 2, (100, 101, 103))
    assert build_nack(1, 2, [100, 101, 103]) == NACK_VECTOR


def test_nack_several_fci_entries_make_one_nack() -> None:
    data = h("81 cd 0005 00000001 00000002 0064 8000 1000 0000 0005 0001")
    assert parse_one(data) == Nack(1, 2, (100, 116, 0x1000, 5, 6))


def test_nack_blp_wraps_modulo_65536() -> None:
    data = h("81 cd 0003 00000001 00000002 fffe 000f")
    assert parse_one(data) == Nack(1, 2, (65534, 65535, 0, 1, 2))


PLI_VECTOR = h("81 ce 0002 00000001 00000002")  # FMT=1, PT=206, length 2


def test_pli_vector() -> None:
    assert parse_one(PLI_VECTOR) == Pli(1, 2)
    assert build_pli(1, 2) == PLI_VECTOR


FIR_VECTOR = h(
    "84 ce 0004"  # FMT=4, PT=206, length 4
    "00000001"  # SSRC of packet sender
    "00000000"  # SSRC of media source: unused, 0 (RFC 5104 §4.3.1.2)
    "00000002 07 000000"  # FCI: SSRC, Seq nr. 7, reserved
)


def test_fir_vector() -> None:
    assert parse_one(FIR_VECTOR) == Fir(1, ((2, 7),))
    assert build_fir(1, 2, 7) == FIR_VECTOR


def test_fir_vector_two_entries() -> None:
    data = h("84 ce 0006 00000001 00000000 00000002 07 000000 00000003 ff 000000")
    assert parse_one(data) == Fir(1, ((2, 7), (3, 255)))


REMB_VECTOR = h(
    "8f ce 0005"  # FMT=15, PT=206, length 5
    "00000001"  # SSRC of packet sender
    "00000000"  # SSRC of media source: 0
    "52454d42"  # "REMB"
    "01"  # Num SSRC
    "0b d090"  # exp 2, mantissa 0x3d090 = 250000: 250000 << 2 = 1,000,000
    "12345678"  # SSRC feedback
)


def test_remb_vector_one_megabit() -> None:
    assert parse_one(REMB_VECTOR) == Remb(1, 1_000_000, (0x12345678,))
    assert build_remb(1, 1_000_000, [0x12345678]) == REMB_VECTOR


def test_remb_mantissa_exponent_encoding() -> None:
    small = build_remb(1, 0x3FFFF, [])  # fits the mantissa: exponent 0
    assert small[-4:] == h("00 03ffff")
    big = build_remb(1, 0x40000, [])  # one bit too many: exponent 1
    assert big[-4:] == h("00 06 0000")
    assert parse_one(big) == Remb(1, 0x40000, ())
    # Not exactly representable: rounded down to the mantissa's precision.
    packet = parse_one(build_remb(1, 1_000_001, [5, 6]))
    assert isinstance(packet, Remb)
    assert packet.bitrate == 1_000_000
    assert packet.ssrcs == (5, 6)
    top = 0x3FFFF << 63
    assert parse_one(build_remb(1, top, [])) == Remb(1, top, ())


def test_remb_vs_aiortc_fci() -> None:
    for bitrate in (0, 1, 30_000, 1_000_000, 2_500_000, 123_456_789):
        ours = build_remb(9, bitrate, [1, 2, 3])
        assert ours[12:] == aiortc_rtp.pack_remb_fci(bitrate, [1, 2, 3])


# ---------------------------------------------------------------------------
# Compound packets
# ---------------------------------------------------------------------------


def test_compound_sr_sdes_bye_in_order() -> None:
    data = (
        build_sr(1, ntp_from_unix(1_700_000_000.25), 90_000, 10, 12_000, [BLOCK])
        + build_sdes_cname(1, "user@example")
        + build_bye([1])
    )
    packets = parse_ok(data)
    assert [type(p) for p in packets] == [SenderReport, Sdes, Bye]
    sr, sdes, bye = packets
    assert isinstance(sr, SenderReport)
    assert sr.reports == (BLOCK,)
    assert unix_from_ntp(sr.ntp_timestamp) == pytest.approx(1_700_000_000.25, abs=1e-6)
    assert sdes == Sdes(((1, "user@example"),))
    assert bye == Bye((1,))


def test_reduced_size_single_feedback_packet() -> None:
    # RFC 5506: a compound packet may hold just one feedback message.
    assert parse_compound(build_pli(1, 2)) == ParseResult([Pli(1, 2)], 0, 0)


def test_compound_rr_plus_feedback() -> None:
    data = build_rr(1, [BLOCK]) + build_nack(1, 2, [7]) + build_fir(1, 2, 3) + REMB_VECTOR
    assert parse_ok(data) == [
        ReceiverReport(1, (BLOCK,)),
        Nack(1, 2, (7,)),
        Fir(1, ((2, 3),)),
        Remb(1, 1_000_000, (0x12345678,)),
    ]


def test_empty_input() -> None:
    assert parse_compound(b"") == ParseResult([], 0, 0)


def test_accepts_bytearray_and_memoryview() -> None:
    assert parse_compound(bytearray(PLI_VECTOR)).packets == [Pli(1, 2)]
    assert parse_compound(memoryview(PLI_VECTOR)).packets == [Pli(1, 2)]


# ---------------------------------------------------------------------------
# Unknown packet types are skipped, not errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(h("80 cc 0002 00000001 6e616d65"), id="APP-204"),
        pytest.param(h("80 cf 0003 00000001 04 00 0002 00000000"), id="XR-207"),
        pytest.param(h("8f cd 0003 00000001 00000002 00010001"), id="RTPFB-transport-cc"),
        pytest.param(h("83 cd 0004 00000001 00000002 00000000 00000000"), id="RTPFB-TMMBR"),
        pytest.param(h("82 ce 0003 00000001 00000002 00000000"), id="PSFB-SLI"),
        pytest.param(h("8f ce 0003 00000001 00000000 41424344"), id="AFB-not-REMB"),
        pytest.param(h("80 c3 0000"), id="IJ-195"),
    ],
)
def test_unknown_types_are_skipped(packet: bytes) -> None:
    result = parse_compound(PLI_VECTOR + packet + BYE_VECTOR)
    assert result == ParseResult([Pli(1, 2), Bye((0xAABBCCDD,))], malformed=0, unknown=1)


# ---------------------------------------------------------------------------
# Malformed input is counted, never raised
# ---------------------------------------------------------------------------


def test_short_header_is_malformed() -> None:
    for data in (h("80"), h("80 c9"), h("80 c9 00")):
        assert parse_compound(data) == ParseResult([], 1, 0)
    assert parse_compound(BYE_VECTOR + h("81 cb 00")) == ParseResult([Bye((0xAABBCCDD,))], 1, 0)


@pytest.mark.parametrize("version", [0, 1, 3])
def test_bad_version_stops_parsing(version: int) -> None:
    bad = bytes([(version << 6) | 1]) + BYE_VECTOR[1:]
    assert parse_compound(PLI_VECTOR + bad + BYE_VECTOR) == ParseResult([Pli(1, 2)], 1, 0)


def test_length_overflow_stops_parsing() -> None:
    overflow = h("81 cb 0005 aabbccdd")  # claims 24 octets, holds 8
    assert parse_compound(PLI_VECTOR + overflow) == ParseResult([Pli(1, 2)], 1, 0)
    assert parse_compound(h("80 c9 ffff")) == ParseResult([], 1, 0)


def test_truncated_sub_packet_is_malformed() -> None:
    data = build_sr(1, 2, 3, 4, 5, [BLOCK])
    assert parse_compound(data[:-4]) == ParseResult([], 1, 0)


def test_valid_padding_is_honoured() -> None:
    # RR with P set: 4 octets of padding, the last holding the count.
    data = h("a0 c9 0002 00000005 00000004")
    assert parse_compound(data) == ParseResult([ReceiverReport(5)], 0, 0)
    # Padding that eats the whole body is allowed by the padding rule, but an
    # RR then lacks its SSRC.
    assert parse_compound(h("a0 c9 0001 00000004")) == ParseResult([], 1, 0)


@pytest.mark.parametrize("pad", [0, 9, 255])
def test_bad_padding_is_malformed_and_parsing_resumes(pad: int) -> None:
    bad = h("a0 c9 0002 00000005 000000") + bytes([pad])  # body is 8 octets
    assert parse_compound(bad + BYE_VECTOR) == ParseResult([Bye((0xAABBCCDD,))], 1, 0)


def test_padding_bit_on_empty_body_is_malformed() -> None:
    assert parse_compound(h("a0 cb 0000") + BYE_VECTOR) == ParseResult([Bye((0xAABBCCDD,))], 1, 0)


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(h("81 c8 0006") + SR_VECTOR[4:], id="SR-count-past-body"),
        pytest.param(h("80 c8 0005") + SR_VECTOR[4:24], id="SR-short-sender-info"),
        pytest.param(h("81 c9 0001 00000001"), id="RR-count-past-body"),
        pytest.param(h("9f c9 0001 00000001"), id="RR-31-blocks-missing"),
        pytest.param(h("80 c9 0000"), id="RR-no-ssrc"),
        pytest.param(h("81 ca 0002 11223344 01 04 6162"), id="SDES-item-past-body"),
        pytest.param(h("81 ca 0002 11223344 01 02 6162"), id="SDES-no-terminator"),
        pytest.param(h("82 ca 0002 11223344 00000000"), id="SDES-chunk-missing"),
        pytest.param(h("81 ca 0000"), id="SDES-empty-body"),
        pytest.param(h("a1 ca 0002 11223344 01 000003"), id="SDES-item-header-cut-by-padding"),
        pytest.param(h("82 cb 0001 00000001"), id="BYE-count-past-body"),
        pytest.param(h("81 cb 0002 00000001 05 627965"), id="BYE-reason-past-body"),
        pytest.param(h("81 cd 0002 00000001 00000002"), id="NACK-no-FCI"),
        pytest.param(h("a1 cd 0003 00000001 00000002 0064 0002"), id="NACK-truncated-FCI"),
        pytest.param(h("81 cd 0001 00000001"), id="NACK-short-header"),
        pytest.param(h("81 ce 0001 00000001"), id="PLI-short"),
        pytest.param(h("84 ce 0002 00000001 00000000"), id="FIR-no-FCI"),
        pytest.param(h("84 ce 0003 00000001 00000000 00000002"), id="FIR-truncated-FCI"),
        pytest.param(h("8f ce 0003 00000001 00000000 52454d42"), id="REMB-short"),
        pytest.param(h("8f ce 0002 00000001 00000000"), id="AFB-no-FCI"),
        pytest.param(
            h("8f ce 0005 00000001 00000000 52454d42 02 0bd090 12345678"),
            id="REMB-ssrc-count-past-body",
        ),
    ],
)
def test_malformed_bodies_are_counted_and_parsing_resumes(packet: bytes) -> None:
    assert len(packet) % 4 == 0  # header itself is sound: length fits
    result = parse_compound(PLI_VECTOR + packet + BYE_VECTOR)
    assert result == ParseResult([Pli(1, 2), Bye((0xAABBCCDD,))], malformed=1, unknown=0)


# ---------------------------------------------------------------------------
# Builders: round trips, splitting, limits
# ---------------------------------------------------------------------------


def test_sr_round_trip() -> None:
    ntp = ntp_from_unix(1_712_345_678.123456)
    reports = [block(1), block(2, lost=-5), block(3, lost=12345)]
    packet = parse_one(build_sr(0xFFFFFFFF, ntp, 0xFFFFFFFF, 7, 8, reports))
    assert packet == SenderReport(0xFFFFFFFF, ntp, 0xFFFFFFFF, 7, 8, tuple(reports))


def test_sr_with_more_than_31_blocks_stacks_rrs() -> None:
    reports = [block(i) for i in range(40)]
    packets = parse_ok(build_sr(1, 2, 3, 4, 5, reports))
    assert packets == [
        SenderReport(1, 2, 3, 4, 5, tuple(reports[:31])),
        ReceiverReport(1, tuple(reports[31:])),
    ]


@pytest.mark.parametrize("count", [0, 1, 30, 31, 32, 62, 63, 100])
def test_rr_round_trip_and_split(count: int) -> None:
    reports = [block(i, lost=i - 50) for i in range(count)]
    data = build_rr(42, reports)
    packets = parse_ok(data)
    assert len(packets) == max(1, -(-count // 31))
    got: list[ReportBlock] = []
    for packet in packets:
        assert isinstance(packet, ReceiverReport)
        assert packet.ssrc == 42
        assert len(packet.reports) <= 31
        got.extend(packet.reports)
    assert got == reports
    # Each header's RC matches its blocks and the length is exact.
    assert len(data) == 8 * len(packets) + 24 * count


def test_packets_lost_is_clamped_to_24_bits() -> None:
    packet = parse_one(build_rr(1, [block(1, lost=10**9), block(2, lost=-(10**9))]))
    assert isinstance(packet, ReceiverReport)
    assert [r.packets_lost for r in packet.reports] == [0x7FFFFF, -0x800000]


def test_sdes_round_trip() -> None:
    assert parse_one(build_sdes_cname(0xFFFFFFFF, "{f81d4fae}")) == Sdes(
        ((0xFFFFFFFF, "{f81d4fae}"),)
    )


@pytest.mark.parametrize("count", [1, 2, 31, 32, 70])
def test_bye_round_trip_and_split(count: int) -> None:
    ssrcs = list(range(1000, 1000 + count))
    packets = parse_ok(build_bye(ssrcs))
    assert len(packets) == -(-count // 31)
    got: list[int] = []
    for packet in packets:
        assert isinstance(packet, Bye)
        got.extend(packet.ssrcs)
    assert got == ssrcs


def test_pli_and_fir_round_trip() -> None:
    assert parse_one(build_pli(0xFFFFFFFF, 0)) == Pli(0xFFFFFFFF, 0)
    assert parse_one(build_fir(5, 0xFFFFFFFF, 255)) == Fir(5, ((0xFFFFFFFF, 255),))


def test_remb_round_trip() -> None:
    ssrcs = tuple(range(255))
    assert parse_one(build_remb(3, 256_000, ssrcs)) == Remb(3, 256_000, ssrcs)


# NACK packing -------------------------------------------------------------


def nack_fci(data: bytes) -> list[tuple[int, int]]:
    assert data[:2] == h("81 cd")
    (length,) = struct.unpack_from("!H", data, 2)
    assert len(data) == (length + 1) * 4
    return [(pid, blp) for pid, blp in struct.iter_unpack("!HH", data[12:])]


def test_nack_wrap_around_single_fci() -> None:
    data = build_nack(1, 2, [65534, 65535, 0, 1, 2])
    assert nack_fci(data) == [(65534, 0b1111)]
    assert parse_one(data) == Nack(1, 2, (65534, 65535, 0, 1, 2))


def test_nack_wrap_around_sorted_in_serial_order() -> None:
    # Given out of order: serial order relative to the first (2) puts 65534 first.
    data = build_nack(1, 2, [2, 0, 65535, 1, 65534])
    assert nack_fci(data) == [(65534, 0b1111)]
    assert parse_one(data) == Nack(1, 2, (65534, 65535, 0, 1, 2))
    assert parse_one(build_nack(1, 2, [0, 65535])) == Nack(1, 2, (65535, 0))


def test_nack_dedups() -> None:
    data = build_nack(1, 2, [5, 5, 3, 3, 5])
    assert nack_fci(data) == [(3, 0b10)]
    assert parse_one(data) == Nack(1, 2, (3, 5))


def test_nack_span_over_16_uses_several_fci() -> None:
    data = build_nack(1, 2, range(40))
    assert nack_fci(data) == [(0, 0xFFFF), (17, 0xFFFF), (34, 0b11111)]
    assert parse_one(data) == Nack(1, 2, tuple(range(40)))
    # PID + 16 is still covered by the same entry; PID + 17 is not.
    assert nack_fci(build_nack(1, 2, [10, 26])) == [(10, 0x8000)]
    assert nack_fci(build_nack(1, 2, [10, 27])) == [(10, 0), (27, 0)]


def test_nack_span_over_16_across_wrap() -> None:
    lost = [(65530 + i) & 0xFFFF for i in range(30)]
    data = build_nack(1, 2, lost)
    assert nack_fci(data) == [(65530, 0xFFFF), (11, 0x0FFF)]
    assert parse_one(data) == Nack(1, 2, tuple(lost))


def test_nack_round_trip_random() -> None:
    rng = random.Random(1234)
    for _ in range(200):
        base = rng.randrange(65536)
        offsets = sorted(set(rng.sample(range(2000), rng.randrange(1, 60))))
        lost = [(base + o) & 0xFFFF for o in offsets]
        shuffled = lost[:]
        rng.shuffle(shuffled)
        shuffled.insert(0, lost[0])  # serial order is relative to the first element
        packet = parse_one(build_nack(7, 8, shuffled))
        assert packet == Nack(7, 8, tuple(lost))


@pytest.mark.parametrize("lost", [[], [-1], [65536], [1, 2, 70000]])
def test_nack_rejects_bad_input(lost: list[int]) -> None:
    with pytest.raises(RtcpError):
        build_nack(1, 2, lost)


def test_nack_accepts_generator() -> None:
    assert parse_one(build_nack(1, 2, (s for s in (9, 8)))) == Nack(1, 2, (8, 9))


# Builder value checks ------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: build_pli(1 << 32, 0),
        lambda: build_pli(-1, 0),
        lambda: build_sr(1, 1 << 64, 0, 0, 0),
        lambda: build_sr(1, 0, 0, 1 << 32, 0),
        lambda: build_rr(1, [ReportBlock(1, 256, 0, 0, 0, 0, 0)]),
        lambda: build_rr(1, [ReportBlock(1, 0, 0, 1 << 32, 0, 0, 0)]),
        lambda: build_sdes_cname(1, "x" * 256),
        lambda: build_sdes_cname(1, "é" * 128),  # 256 octets of UTF-8
        lambda: build_bye([1 << 32]),
        lambda: build_fir(1, 2, 256),
        lambda: build_fir(1, 2, -1),
        lambda: build_remb(1, -1, []),
        lambda: build_remb(1, 0x40000 << 63, []),
        lambda: build_remb(1, 1000, list(range(256))),
        lambda: ntp_from_unix(float("nan")),
        lambda: ntp_from_unix(float("inf")),
    ],
)
def test_builders_reject_unencodable_values(build: object) -> None:
    assert callable(build)
    with pytest.raises(RtcpError):
        build()


def test_rtcp_error_is_value_error() -> None:
    assert issubclass(RtcpError, ValueError)


# ---------------------------------------------------------------------------
# Cross-check against aiortc's encoder/decoder
# ---------------------------------------------------------------------------


def _aiortc_block(b: ReportBlock) -> aiortc_rtp.RtcpReceiverInfo:
    return aiortc_rtp.RtcpReceiverInfo(
        ssrc=b.ssrc,
        fraction_lost=b.fraction_lost,
        packets_lost=b.packets_lost,
        highest_sequence=b.highest_seq,
        jitter=b.jitter,
        lsr=b.lsr,
        dlsr=b.dlsr,
    )


def test_byte_layouts_match_aiortc() -> None:
    blocks = [BLOCK, block(2, lost=77)]
    sr = aiortc_rtp.RtcpSrPacket(
        ssrc=1,
        sender_info=aiortc_rtp.RtcpSenderInfo(
            ntp_timestamp=0x0123456789ABCDEF, rtp_timestamp=2, packet_count=3, octet_count=4
        ),
        reports=[_aiortc_block(b) for b in blocks],
    )
    assert build_sr(1, 0x0123456789ABCDEF, 2, 3, 4, blocks) == bytes(sr)
    rr = aiortc_rtp.RtcpRrPacket(ssrc=9, reports=[_aiortc_block(b) for b in blocks])
    assert build_rr(9, blocks) == bytes(rr)
    for cname in ("", "ab", "abc", "abcd", "user@host.x"):
        # aiortc always writes two null octets; that matches the minimal
        # padding except when the item ends one octet short of a word ("a").
        sdes = aiortc_rtp.RtcpSdesPacket(
            chunks=[aiortc_rtp.RtcpSourceInfo(ssrc=5, items=[(1, cname.encode())])]
        )
        assert build_sdes_cname(5, cname) == bytes(sdes)
    for cname in ("a", "abcde", "user@host"):
        (parsed,) = aiortc_rtp.RtcpPacket.parse(build_sdes_cname(5, cname))
        assert isinstance(parsed, aiortc_rtp.RtcpSdesPacket)
        assert parsed.chunks[0].ssrc == 5
        assert parsed.chunks[0].items == [(1, cname.encode())]
    assert build_bye([1, 2, 3]) == bytes(aiortc_rtp.RtcpByePacket(sources=[1, 2, 3]))
    lost = [100, 101, 103, 120, 121, 300]
    nack = aiortc_rtp.RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=2, lost=lost)
    assert build_nack(1, 2, lost) == bytes(nack)
    assert build_pli(1, 2) == bytes(aiortc_rtp.RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=2))
    fir = aiortc_rtp.RtcpPsfbPacket(fmt=4, ssrc=1, media_ssrc=0, fci=h("00000002 07 000000"))
    assert build_fir(1, 2, 7) == bytes(fir)


def test_aiortc_parses_our_compound() -> None:
    data = (
        build_sr(1, 2, 3, 4, 5, [BLOCK])
        + build_sdes_cname(1, "cname")
        + build_nack(1, 2, [65534, 65535, 0])
        + build_pli(1, 2)
        + build_bye([1])
    )
    theirs = aiortc_rtp.RtcpPacket.parse(data)
    assert [type(p).__name__ for p in theirs] == [
        "RtcpSrPacket",
        "RtcpSdesPacket",
        "RtcpRtpfbPacket",
        "RtcpPsfbPacket",
        "RtcpByePacket",
    ]
    assert isinstance(theirs[1], aiortc_rtp.RtcpSdesPacket)
    assert theirs[1].chunks[0].items == [(1, b"cname")]
    assert parse_ok(data)[2] == Nack(1, 2, (65534, 65535, 0))


# ---------------------------------------------------------------------------
# Fuzzing: parse_compound never raises
# ---------------------------------------------------------------------------


def _valid_compounds() -> list[tuple[bytes, list[int]]]:
    """Valid compounds with the offsets at which their sub-packets end."""
    pieces = [
        [build_sr(1, 2, 3, 4, 5, [BLOCK]), build_sdes_cname(1, "abc"), build_bye([1, 2])],
        [build_rr(1, [block(i) for i in range(35)]), build_sdes_cname(1, "x" * 20)],
        [build_nack(1, 2, range(0, 100, 3)), build_pli(1, 2), build_fir(1, 2, 3)],
        [build_rr(1, []), REMB_VECTOR, h("80 cc 0002 00000001 6e616d65")],
        [h("a0 c9 0002 00000005 00000004"), build_bye([9])],
    ]
    out = []
    for parts in pieces:
        ends = []
        total = 0
        for part in parts:
            total += len(part)
            ends.append(total)
        out.append((b"".join(parts), ends))
    return out


def _check(result: ParseResult) -> None:
    assert isinstance(result, ParseResult)
    assert result.malformed >= 0
    assert result.unknown >= 0


def test_fuzz_never_raises() -> None:
    rng = random.Random(0x5EED)
    compounds = _valid_compounds()
    for i in range(2000):
        mode = i % 4
        if mode == 0:  # random bytes
            data = rng.randbytes(rng.randrange(0, 120))
        elif mode == 1:  # random bytes with a plausible RTCP header
            data = bytes([0x80 | rng.randrange(32), rng.randrange(192, 224)])
            data += rng.randbytes(rng.randrange(0, 120))
        elif mode == 2:  # truncation of a valid compound
            whole, ends = rng.choice(compounds)
            cut = rng.randrange(0, len(whole))
            result = parse_compound(whole[:cut])
            _check(result)
            complete = [e for e in ends if e <= cut]
            full = parse_compound(whole[: complete[-1]]) if complete else None
            # The packets before the cut survive; a cut inside a packet is malformed.
            expected_malformed = 0 if cut in (0, *ends) else 1
            assert result.malformed == expected_malformed
            if full is not None:
                assert result.packets == full.packets
            continue
        else:  # valid compound with a few bytes mutated
            whole, _ = rng.choice(compounds)
            mutated = bytearray(whole)
            for _ in range(rng.randrange(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            data = bytes(mutated)
        _check(parse_compound(data))


# ---------------------------------------------------------------------------
# RFC 5761 §4 demultiplexing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", False),
        (b"\x80", False),
        (h("80 60 0001"), False),  # RTP, PT 96
        (h("80 e0 0001"), False),  # RTP, PT 96 with the marker bit (224)
        (h("80 00 0001"), False),  # RTP, PCMU
        (h("80 bf"), False),  # 191
        (h("80 c0"), True),  # 192
        (SR_VECTOR, True),
        (RR_VECTOR, True),
        (PLI_VECTOR, True),
        (FIR_VECTOR, True),
        (h("80 cf"), True),  # XR
        (h("80 df"), True),  # 223
    ],
)
def test_is_rtcp(data: bytes, expected: bool) -> None:
    assert is_rtcp(data) is expected
    assert is_rtcp(bytearray(data)) is expected
    assert is_rtcp(memoryview(data)) is expected


# ---------------------------------------------------------------------------
# NTP timestamps
# ---------------------------------------------------------------------------


def test_ntp_known_values() -> None:
    assert ntp_from_unix(0.0) == 2_208_988_800 << 32
    assert ntp_from_unix(1.5) == ((2_208_988_800 + 1) << 32) | 0x8000_0000
    assert unix_from_ntp(2_208_988_800 << 32) == 0.0
    # 2024-01-01T00:00:00Z is 3,913,056,000 s after 1900-01-01.
    assert ntp_from_unix(1_704_067_200) == 0xE93C_7F00_0000_0000


def test_ntp_fraction_carry() -> None:
    ntp = ntp_from_unix(1.0 - 2**-40)  # fraction rounds up to a whole second
    assert ntp == (2_208_988_800 + 1) << 32


@pytest.mark.parametrize(
    "seconds",
    [
        0.0,
        0.000001,
        1_700_000_000.0,
        1_712_345_678.123456,
        1_999_999_999.999999,
        2_085_978_495.5,  # just before the 2036 NTP era rollover
        2_085_978_496.25,  # just after it (era 1, RFC 4330 §3)
        3_000_000_000.75,
        -60_000_000.5,  # 1968
    ],
)
def test_ntp_round_trip_within_a_microsecond(seconds: float) -> None:
    ntp = ntp_from_unix(seconds)
    assert 0 <= ntp < 1 << 64
    assert abs(unix_from_ntp(ntp) - seconds) < 1e-6


def test_ntp_era_rollover_wraps() -> None:
    assert ntp_from_unix(2_085_978_496.0) == 0  # 2036-02-07T06:28:16Z


def test_ntp_middle32() -> None:
    assert ntp_middle32(0x0123_4567_89AB_CDEF) == 0x4567_89AB
    assert ntp_middle32(0xE93C_DA00_8000_0000) == 0xDA00_8000
    assert ntp_middle32(0) == 0
    assert ntp_middle32((1 << 64) - 1) == 0xFFFF_FFFF


def test_feedback_ssrcs_names_the_media_each_packet_is_about() -> None:
    block = ReportBlock(0x22, 0, 0, 0, 0, 0, 0)
    nack = parse_compound(build_nack(1, 0x11, [5])).packets[0]
    pli = parse_compound(build_pli(1, 0x12)).packets[0]
    fir = parse_compound(build_fir(1, 0x13, 0)).packets[0]
    rr = parse_compound(build_rr(1, [block])).packets[0]
    sdes = parse_compound(build_sdes_cname(1, "x")).packets[0]
    assert [feedback_ssrcs(p) for p in (nack, pli, fir, rr, sdes)] == [
        (0x11,),
        (0x12,),
        (0x13,),
        (0x22,),
        (),
    ]
