"""Unit tests of the sans-I/O forwarding core, driven by byte vectors and a fake clock.

No sockets, no event loop, no real time: every ``now`` is a float chosen by the
test (mostly dyadic fractions, so that interval arithmetic is exact). Packets
are built by hand in :mod:`rtp_vectors`, independently of ``sfu.rtp``.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

import pytest
from rtp_vectors import (
    OPUS_PT,
    PUB_AUDIO_LEVEL_EXT,
    PUB_MID_EXT,
    VP8_DELTA_HEADER,
    VP8_KEY_HEADER,
    VP8_PT,
    VP8_RTX_PT,
    fu_a,
    nal,
    one_byte_ext,
    opus_rtp,
    rtp,
    rtx_of,
    stap_a,
    two_byte_ext,
    vp8_descriptor,
    vp8_payload,
    vp8_rtp,
)

from sfu import rtcp
from sfu.cache import PacketCache
from sfu.codecs import (
    SUPPORTED,
    KeyframeDetector,
    codec_info,
    h264_keyframe_start,
    no_keyframes,
    vp8_keyframe_start,
)
from sfu.keyframes import KeyframeRequester
from sfu.nack import NackTracker
from sfu.reception import ReceptionStats
from sfu.router import Consumer, Layout, Producer, Router, RouterConfig
from sfu.rtp import (
    FIXED_HEADER,
    RtpError,
    SequenceUnwrapper,
    audio_level,
    build_extension_block,
    build_template,
    parse,
    seq_newer,
    wrap_rtx,
)

U32 = 0xFFFFFFFF


# =====================================================================
# sfu.rtp
# =====================================================================


def test_parse_plain_header_matches_hand_written_bytes() -> None:
    data = bytes.fromhex("80e01234deadbeef11223344") + b"hello"
    assert data == rtp(0x1234, 0xDEADBEEF, 0x11223344, 96, b"hello", marker=True)
    h = parse(data)
    assert h.marker is True
    assert h.payload_type == 96
    assert h.sequence_number == 0x1234
    assert h.timestamp == 0xDEADBEEF
    assert h.ssrc == 0x11223344
    assert h.csrc_count == 0
    assert (h.payload_offset, h.payload_end) == (12, 17)
    assert h.extensions == {}

    h = parse(bytes.fromhex("8060ffff0000000000000001"))  # empty payload, no marker
    assert (h.marker, h.payload_type, h.sequence_number) == (False, 96, 0xFFFF)
    assert (h.payload_offset, h.payload_end) == (12, 12)


def test_parse_csrcs_shift_the_payload() -> None:
    data = rtp(7, 8, 9, 100, b"xyz", csrcs=(0x01020304, 0x0A0B0C0D, 0xFFFFFFFF))
    assert data[0] == 0x83
    h = parse(data)
    assert h.csrc_count == 3
    assert h.payload_offset == 12 + 12
    assert data[h.payload_offset : h.payload_end] == b"xyz"
    assert data[12:16] == b"\x01\x02\x03\x04"


def test_parse_one_byte_extensions_are_located() -> None:
    # id 1 (1 byte), a padding byte (id 0), id 5 (3 bytes), then id 15 which
    # stops parsing: the element after it must be ignored (RFC 8285 §4.2).
    body = bytes([0x10, 0x80, 0x00, 0x52]) + b"abc" + bytes([0xF0, 0x61]) + b"z"
    assert len(body) == 10
    body += bytes(2)
    ext = struct.pack("!HH", 0xBEDE, len(body) // 4) + body
    data = rtp(1, 2, 3, 96, b"PAYLOAD", csrcs=(42,), ext=ext)
    h = parse(data)
    ext_start = 12 + 4 + 4  # fixed header, one CSRC, extension header
    assert h.extensions == {1: (ext_start + 1, 1), 5: (ext_start + 4, 3)}
    assert data[ext_start + 1 : ext_start + 2] == b"\x80"
    assert data[ext_start + 4 : ext_start + 7] == b"abc"
    assert h.payload_offset == ext_start + 12
    assert data[h.payload_offset : h.payload_end] == b"PAYLOAD"


def test_parse_two_byte_extensions_are_located() -> None:
    long_value = bytes(range(20))
    ext = two_byte_ext([(1, b""), (200, long_value), (3, b"mi")], appbits=0x3)
    assert ext[:2] == b"\x10\x03"
    data = rtp(1, 2, 3, 96, b"P", ext=ext)
    h = parse(data)
    assert set(h.extensions) == {1, 200, 3}
    assert h.extensions[1][1] == 0
    off, length = h.extensions[200]
    assert data[off : off + length] == long_value
    off, length = h.extensions[3]
    assert data[off : off + length] == b"mi"
    assert data[h.payload_offset : h.payload_end] == b"P"


def test_parse_skips_unknown_extension_profile() -> None:
    ext = struct.pack("!HH", 0xABCD, 1) + b"\x11\x22\x33\x44"
    data = rtp(1, 2, 3, 96, b"body", ext=ext)
    h = parse(data)
    assert h.extensions == {}
    assert h.payload_offset == 20
    assert data[h.payload_offset : h.payload_end] == b"body"


def test_parse_excludes_padding_from_payload() -> None:
    data = rtp(1, 2, 3, 96, b"abcd", padding=3, ext=one_byte_ext([(2, b"q")]))
    assert data[0] & 0x20
    assert data[-3:] == b"\x00\x00\x03"
    h = parse(data)
    assert h.payload_end == len(data) - 3
    assert data[h.payload_offset : h.payload_end] == b"abcd"
    # Padding-only packet: empty payload.
    only_pad = rtp(1, 2, 3, 96, b"", padding=4)
    h = parse(only_pad)
    assert h.payload_offset == h.payload_end == 12


HEAD_X = bytes.fromhex("906000010000000200000003")  # fixed header with the X bit
HEAD_P = bytes.fromhex("a06000010000000200000003")  # fixed header with the P bit


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(bytes.fromhex("8060000100000002000000"), id="11-bytes"),
        pytest.param(rtp(1, 2, 3, 96, b"x", version=1), id="version-1"),
        pytest.param(rtp(1, 2, 3, 96, b"x", version=3), id="version-3"),
        pytest.param(rtp(1, 2, 3, 96, b"x", version=0), id="version-0"),
        pytest.param(bytes.fromhex("82600001000000020000000300000001"), id="csrc-overrun"),
        pytest.param(HEAD_X + b"\xbe\xde", id="truncated-ext-header"),
        pytest.param(
            HEAD_X + bytes.fromhex("bede0003") + b"\x10\x80\x00\x00", id="ext-length-overrun"
        ),
        pytest.param(
            HEAD_X + bytes.fromhex("bede0001") + b"\x13abc", id="one-byte-element-overrun"
        ),
        pytest.param(HEAD_X + bytes.fromhex("1000000101057878"), id="two-byte-element-overrun"),
        pytest.param(HEAD_X + bytes.fromhex("1000000100000005"), id="two-byte-element-truncated"),
        pytest.param(HEAD_P, id="padding-bit-no-bytes"),
        pytest.param(HEAD_P + b"ab\x00", id="padding-zero"),
        pytest.param(HEAD_P + b"ab\x04", id="padding-longer-than-payload"),
        pytest.param(
            bytes.fromhex("b06000010000000200000003bede0001") + b"\x10\x80\x00\x00Z\x03",
            id="padding-into-extension",
        ),
    ],
)
def test_parse_rejects_malformed(data: bytes) -> None:
    with pytest.raises(RtpError):
        parse(data)


def test_build_extension_block_one_byte_form() -> None:
    assert build_extension_block([]) == b""
    assert build_extension_block([(1, b"\x80")]) == bytes.fromhex("bede0001") + b"\x10\x80\x00\x00"
    block = build_extension_block([(3, b"ab"), (14, b"x" * 16)])
    assert block[:4] == bytes.fromhex("bede0005")  # 1+2+1+16 = 20 bytes, no padding
    assert block[4:] == b"\x31ab" + b"\xef" + b"x" * 16
    assert block == one_byte_ext([(3, b"ab"), (14, b"x" * 16)])
    block = build_extension_block([(1, b"0"), (2, b"abc")])
    assert len(block) % 4 == 0
    assert block == one_byte_ext([(1, b"0"), (2, b"abc")])


def test_build_extension_block_two_byte_form() -> None:
    # id 15 cannot be a one-byte element.
    assert build_extension_block([(15, b"a")]) == bytes.fromhex("10000001") + b"\x0f\x01a\x00"
    # a value longer than 16 bytes.
    block = build_extension_block([(1, b"y" * 17)])
    assert block == two_byte_ext([(1, b"y" * 17)])
    assert len(block) == 4 + 20
    # an empty value (allowed only in the two-byte form).
    assert build_extension_block([(2, b"")]) == bytes.fromhex("10000001") + b"\x02\x00\x00\x00"
    # one element forces the two-byte form for all of them.
    block = build_extension_block([(1, b"0"), (100, b"hi")])
    assert block == two_byte_ext([(1, b"0"), (100, b"hi")])
    with pytest.raises(RtpError):
        build_extension_block([(256, b"a")])
    with pytest.raises(RtpError):
        build_extension_block([(0, b"a")])
    with pytest.raises(RtpError):
        build_extension_block([(1, b"z" * 256)])


@pytest.mark.parametrize(
    "elements",
    [
        [(1, b"0"), (3, b"\x85")],
        [(15, b"mid-value"), (1, b"x" * 30)],
        [(7, b"a" * 16)],
    ],
)
def test_build_extension_block_parses_back(elements: list[tuple[int, bytes]]) -> None:
    data = rtp(1, 2, 3, 96, b"pl", ext=build_extension_block(elements))
    h = parse(data)
    found = {i: data[o : o + n] for i, (o, n) in h.extensions.items()}
    assert found == dict(elements)
    assert data[h.payload_offset : h.payload_end] == b"pl"


@pytest.mark.parametrize("marker", [True, False])
def test_build_template_round_trips(marker: bool) -> None:
    payload = bytes(range(37))
    src = rtp(
        0xFFFE,
        0x01020304,
        0xAAAAAAAA,
        96,
        payload,
        marker=marker,
        csrcs=(0x0C0C0C0C,),
        ext=one_byte_ext([(PUB_MID_EXT, b"publisher-mid")]),
        padding=4,
    )
    h = parse(src)
    block = build_extension_block([(1, b"0"), (3, b"\x85")])
    b0, b1, tail = build_template(src, h, 100, block)
    out = FIXED_HEADER.pack(b0, b1, 5, 0xFFFFFFFF, 0xC0FFEE) + tail
    o = parse(out)
    assert o.payload_type == 100
    assert o.marker is marker
    assert (o.sequence_number, o.timestamp, o.ssrc) == (5, 0xFFFFFFFF, 0xC0FFEE)
    assert o.csrc_count == 1
    assert out[12:16] == b"\x0c\x0c\x0c\x0c"
    assert {i: out[a : a + n] for i, (a, n) in o.extensions.items()} == {1: b"0", 3: b"\x85"}
    assert out[o.payload_offset : o.payload_end] == payload
    assert len(out) - o.payload_end == 4  # padding carried over

    # No extensions at all: the X bit is cleared and the payload follows the CSRCs.
    b0, b1, tail = build_template(src, h, 101, b"")
    out = FIXED_HEADER.pack(b0, b1, 6, 7, 8) + tail
    assert not out[0] & 0x10
    o = parse(out)
    assert o.extensions == {}
    assert o.payload_type == 101
    assert o.payload_offset == 16
    assert out[o.payload_offset : o.payload_end] == payload


def test_build_template_sets_x_bit_on_packet_without_extensions() -> None:
    src = rtp(9, 10, 11, 96, b"abc")
    h = parse(src)
    b0, b1, tail = build_template(src, h, 96, build_extension_block([(1, b"0")]))
    out = FIXED_HEADER.pack(b0, b1, 9, 10, 11) + tail
    assert out[0] & 0x10
    o = parse(out)
    assert o.extensions == {1: (17, 1)}  # element byte at 16, value at 17
    assert out[o.payload_offset :] == b"abc"


def test_wrap_rtx_rfc4588_layout() -> None:
    ext = one_byte_ext([(1, b"0")])
    plain = rtp(0x1234, 9999, 0xAAAA, 96, b"payload", marker=True, ext=ext)
    padded = rtp(0x1234, 9999, 0xAAAA, 96, b"payload", marker=True, ext=ext, padding=2)
    for original in (plain, padded):
        out = wrap_rtx(original, 97, 77, 0xBBBB)
        assert out == rtx_of(plain, 97, 77, 0xBBBB)
        h = parse(out)
        assert not out[0] & 0x20  # padding dropped
        assert (h.payload_type, h.sequence_number, h.ssrc) == (97, 77, 0xBBBB)
        assert h.timestamp == 9999
        assert h.marker is True
        assert out[h.payload_offset : h.payload_offset + 2] == b"\x12\x34"  # OSN
        assert out[h.payload_offset + 2 : h.payload_end] == b"payload"
        assert set(h.extensions) == {1}


def test_audio_level_decoding() -> None:
    assert audio_level(bytes([0x80 | 42]), (0, 1)) == (True, 42)
    assert audio_level(bytes([0x7F]), (0, 1)) == (False, 127)
    assert audio_level(b"\x00\xff", (1, 1)) == (True, 127)
    data = opus_rtp(1, 960, 5, level=30)
    h = parse(data)
    assert audio_level(data, h.extensions[PUB_AUDIO_LEVEL_EXT]) == (True, 30)
    data = opus_rtp(1, 960, 5, level=90, vad=False)
    assert audio_level(data, parse(data).extensions[PUB_AUDIO_LEVEL_EXT]) == (False, 90)


@pytest.mark.parametrize(
    ("a", "b", "newer"),
    [
        (1, 0, True),
        (0, 1, False),
        (5, 5, False),
        (0, 65535, True),
        (65535, 0, False),
        (10, 65530, True),
        (0x7FFF, 0, True),
        (0x8000, 0, False),
        (0, 0x8001, True),
    ],
)
def test_seq_newer(a: int, b: int, newer: bool) -> None:
    assert seq_newer(a, b) is newer


def test_sequence_unwrapper_wraps_forward() -> None:
    u = SequenceUnwrapper()
    assert [u.unwrap(s) for s in (65533, 65534, 65535, 0, 1, 2)] == [
        131069,
        131070,
        131071,
        131072,
        131073,
        131074,
    ]
    assert u.highest == 131074
    # A reordered packet from before the wrap maps below, without moving highest.
    assert u.unwrap(65535) == 131071
    assert u.unwrap(1) == 131073
    assert u.highest == 131074
    assert u.unwrap(3) == 131075


def test_sequence_unwrapper_old_packets_never_negative_and_big_jumps() -> None:
    u = SequenceUnwrapper()
    assert u.unwrap(0) == 65536
    assert u.unwrap(65535) == 65535  # one before the first
    assert u.unwrap(65000) == 65000
    assert u.highest == 65536
    assert u.unwrap(0x7FFF) == 65536 + 0x7FFF  # up to 32767 ahead: newer
    assert u.unwrap(0x7FFF + 0x8000) == 65536 + 0x7FFF - 0x8000  # 32768 ahead: older
    assert u.highest == 65536 + 0x7FFF


# =====================================================================
# sfu.codecs
# =====================================================================


def _detect_in_packet(detector: KeyframeDetector, payload: bytes, padding: int = 0) -> bool:
    """Run a detector with the (packet, payload_offset, payload_end) convention."""
    data = rtp(1, 2, 3, 96, payload, ext=one_byte_ext([(4, b"mid")]), padding=padding)
    h = parse(data)
    result = detector(data, h.payload_offset, h.payload_end)
    assert isinstance(result, bool)
    return result


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param(vp8_payload("key"), True, id="key"),
        pytest.param(vp8_payload("delta"), False, id="delta"),
        pytest.param(vp8_payload("cont", VP8_KEY_HEADER), False, id="S=0"),
        pytest.param(vp8_descriptor(start=True, pid=1) + VP8_KEY_HEADER, False, id="PID=1"),
        pytest.param(vp8_descriptor(start=False, pid=0) + VP8_KEY_HEADER, False, id="S=0-PID=0"),
        # Each skipped descriptor byte is chosen so that misreading it as the
        # payload header would flip the answer (odd bytes before a key
        # frame, even bytes before a delta frame).
        pytest.param(vp8_descriptor(picture_id=0x25) + VP8_KEY_HEADER, True, id="I7-key"),
        pytest.param(vp8_descriptor(picture_id=0x24) + VP8_DELTA_HEADER, False, id="I7-delta"),
        pytest.param(
            vp8_descriptor(picture_id=0x1235, long_picture_id=True) + VP8_KEY_HEADER,
            True,
            id="I15-key",
        ),
        pytest.param(
            vp8_descriptor(picture_id=0x1234, long_picture_id=True) + VP8_DELTA_HEADER,
            False,
            id="I15-delta",
        ),
        pytest.param(
            vp8_descriptor(picture_id=0x7FFF, long_picture_id=True, tl0picidx=0x11, tid=1, keyidx=3)
            + VP8_KEY_HEADER,
            True,
            id="ILTK-key",
        ),
        pytest.param(
            vp8_descriptor(picture_id=0x0100, long_picture_id=True, tl0picidx=0x10, tid=2, keyidx=0)
            + VP8_DELTA_HEADER,
            False,
            id="ILTK-delta",
        ),
        pytest.param(vp8_descriptor(tl0picidx=0x01) + VP8_KEY_HEADER, True, id="L-only-key"),
        pytest.param(vp8_descriptor(tid=0, keyidx=None) + VP8_DELTA_HEADER, False, id="T-only"),
        pytest.param(vp8_descriptor(keyidx=1) + VP8_KEY_HEADER, True, id="K-only-key"),
        pytest.param(b"", False, id="empty"),
        pytest.param(b"\x90", False, id="X-without-ext-byte"),
        pytest.param(b"\x90\x80", False, id="I-without-picture-id"),
        pytest.param(vp8_descriptor(picture_id=5), False, id="no-payload-header"),
    ],
)
def test_vp8_keyframe_start(payload: bytes, expected: bool) -> None:
    assert _detect_in_packet(vp8_keyframe_start, payload) is expected


def test_vp8_detector_respects_payload_end() -> None:
    # Descriptor only, followed by RTP padding whose zero bytes would look like
    # a key frame payload header if the detector read past payload_end.
    assert _detect_in_packet(vp8_keyframe_start, b"\x10", padding=3) is False
    assert _detect_in_packet(vp8_keyframe_start, b"\x10" + VP8_KEY_HEADER, padding=3) is True
    # The bounds given are honoured even inside a larger buffer.
    data = b"\xff\xff" + b"\x10\x10\x02" + b"\xff"
    assert vp8_keyframe_start(data, 2, 5) is True
    assert vp8_keyframe_start(data, 2, 3) is False


SPS = nal(7, b"\x42\xc0\x1f\xda")
PPS = nal(8, b"\xce\x3c\x80")
IDR = nal(5, b"\x88\x84\x00")
NON_IDR = nal(1, b"\x9a\x00")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param(IDR, True, id="idr"),
        pytest.param(SPS, True, id="sps"),
        pytest.param(nal(5, nri=0), True, id="idr-nri0"),
        pytest.param(NON_IDR, False, id="non-idr"),
        pytest.param(PPS, False, id="pps"),
        pytest.param(nal(6, b"\x05"), False, id="sei"),
        pytest.param(stap_a(SPS, PPS), True, id="stap-a-sps-pps"),
        pytest.param(stap_a(PPS, SPS, IDR), True, id="stap-a-sps-second"),
        pytest.param(stap_a(nal(6, b"\x05"), IDR), True, id="stap-a-idr-after-sei"),
        pytest.param(stap_a(NON_IDR, NON_IDR), False, id="stap-a-non-idr"),
        pytest.param(stap_a(SPS)[:-2], False, id="stap-a-truncated"),
        pytest.param(stap_a(SPS)[:2], False, id="stap-a-size-only"),
        pytest.param(b"\x78\x00\x00" + SPS, False, id="stap-a-zero-size"),
        pytest.param(b"\x78", False, id="stap-a-empty"),
        pytest.param(fu_a(5, start=True), True, id="fu-a-idr-start"),
        pytest.param(fu_a(7, start=True), True, id="fu-a-sps-start"),
        pytest.param(fu_a(5, start=False), False, id="fu-a-idr-middle"),
        pytest.param(fu_a(5, start=False, end=True), False, id="fu-a-idr-end"),
        pytest.param(fu_a(1, start=True), False, id="fu-a-non-idr-start"),
        pytest.param(b"\x7c", False, id="fu-a-no-header"),
        pytest.param(b"", False, id="empty"),
    ],
)
def test_h264_keyframe_start(payload: bytes, expected: bool) -> None:
    assert _detect_in_packet(h264_keyframe_start, payload) is expected


def test_codec_table() -> None:
    vp8 = codec_info("VIDEO/vp8")
    assert vp8 is SUPPORTED["video/vp8"]
    assert (vp8.name, vp8.clock_rate, vp8.is_video) == ("VP8", 90000, True)
    opus = codec_info("audio/OPUS")
    assert opus is not None
    assert (opus.name, opus.clock_rate, opus.is_video) == ("opus", 48000, False)
    assert codec_info("video/AV1") is None
    assert SUPPORTED["video/h264"].keyframe_start is h264_keyframe_start
    assert no_keyframes(IDR, 0, len(IDR)) is False
    assert opus.keyframe_start(IDR, 0, len(IDR)) is False


# =====================================================================
# sfu.cache
# =====================================================================


@pytest.mark.parametrize("capacity", [0, -4, 3, 6, 100])
def test_cache_capacity_must_be_power_of_two(capacity: int) -> None:
    with pytest.raises(ValueError):
        PacketCache(capacity)


def test_cache_put_get_duplicates_and_overwrites() -> None:
    cache = PacketCache(8)
    assert cache.capacity == 8
    assert cache.highest == -1
    assert cache.get(100) is None
    assert cache.put(100, b"p100", 1.0, False) is True
    assert cache.get(100) == b"p100"
    assert cache.arrival(100) == 1.0
    assert cache.get(101) is None
    assert cache.arrival(101) is None
    assert cache.highest == 100
    assert cache.put(100, b"other", 2.0, False) is False  # duplicate
    assert cache.get(100) == b"p100"
    assert cache.arrival(100) == 1.0
    for seq in range(101, 109):
        assert cache.put(seq, b"p%d" % seq, 1.5, False)
    assert cache.highest == 108
    assert cache.get(100) is None  # slot taken by 108
    assert cache.arrival(100) is None
    assert cache.get(108) == b"p108"
    assert cache.get(101) == b"p101"
    # 100 is now capacity behind the highest: rejected as too old.
    assert cache.put(100, b"p100", 3.0, False) is False
    assert cache.get(108) == b"p108"


def test_cache_late_packet_fills_hole() -> None:
    cache = PacketCache(8)
    for seq in (10, 11, 13, 14, 15, 16, 17):
        assert cache.put(seq, b"%d" % seq, 0.0, False)
    assert cache.get(12) is None
    assert cache.put(9, b"9", 0.0, False) is False  # 9 <= 17 - 8
    assert cache.put(12, b"12", 0.5, False) is True
    assert cache.get(12) == b"12"
    assert cache.highest == 17


def test_cache_key_start_tracking() -> None:
    cache = PacketCache(16)
    assert cache.key_start == -1
    cache.put(20, b"k20", 1.0, True)
    assert (cache.key_start, cache.key_time) == (20, 1.0)
    cache.put(21, b"21", 1.0, False)
    cache.put(25, b"k25", 2.0, True)
    assert (cache.key_start, cache.key_time) == (25, 2.0)
    # A late (older) keyframe start does not move the key start back.
    cache.put(22, b"k22", 2.5, True)
    assert (cache.key_start, cache.key_time) == (25, 2.0)


def test_cache_keyframe_usable_complete_and_young() -> None:
    cache = PacketCache(16)
    assert cache.keyframe_usable(0.0, 1.0) is False  # no keyframe at all
    cache.put(19, b"19", 0.9, False)  # before the keyframe: irrelevant
    cache.put(20, b"k", 1.0, True)
    cache.put(21, b"a", 1.0, False)
    cache.put(22, b"b", 1.03125, False)
    assert cache.keyframe_usable(1.5, 1.0) is True
    assert cache.keyframe_usable(2.0, 1.0) is True  # exactly max_age
    assert cache.keyframe_usable(2.0625, 1.0) is False  # too old
    assert [cache.get(s) for s in range(cache.key_start, cache.highest + 1)] == [b"k", b"a", b"b"]


def test_cache_keyframe_not_usable_with_hole() -> None:
    cache = PacketCache(16)
    cache.put(20, b"k", 1.0, True)
    cache.put(22, b"b", 1.0, False)
    assert cache.keyframe_usable(1.25, 1.0) is False
    assert cache.get(21) is None
    cache.put(21, b"a", 1.125, False)
    assert cache.keyframe_usable(1.25, 1.0) is True


def test_cache_keyframe_forgotten_when_overwritten() -> None:
    cache = PacketCache(8)
    cache.put(20, b"k", 1.0, True)
    for seq in range(21, 28):
        cache.put(seq, b"x", 1.0, False)
    assert cache.key_start == 20
    assert cache.keyframe_usable(1.0, 1.0) is True
    assert all(cache.get(s) is not None for s in range(20, 28))
    cache.put(28, b"x", 1.0, False)  # takes the keyframe's slot
    assert cache.get(20) is None
    assert cache.key_start == -1
    assert cache.keyframe_usable(1.0, 1.0) is False


def test_nack_gap_detection_and_arrival() -> None:
    nt = NackTracker(retry_interval=0.125, max_retries=3, max_age=1.0, max_gap=10)
    assert nt.on_packet(100, -1, 0.0) == []
    assert nt.on_packet(101, 100, 0.0) == []
    assert nt.on_packet(104, 101, 0.0) == [102, 103]
    assert len(nt) == 2
    assert nt.on_packet(103, 104, 0.0) == []  # late arrival
    assert len(nt) == 1
    assert nt.on_packet(105, 104, 0.0) == []
    assert len(nt) == 1


def test_nack_retries_then_gives_up_after_max_retries() -> None:
    nt = NackTracker(retry_interval=0.125, max_retries=3, max_age=10.0, max_gap=10)
    nt.on_packet(100, -1, 0.0)
    assert nt.on_packet(102, 100, 0.0) == [101]  # NACK no. 1
    assert nt.due(0.0625) == ([], [])
    assert nt.due(0.125) == ([101], [])  # no. 2
    assert nt.due(0.1875) == ([], [])
    assert nt.due(0.25) == ([101], [])  # no. 3 = max_retries
    assert nt.due(0.3125) == ([], [])  # waits one more interval for the answer
    assert nt.due(0.375) == ([], [101])
    assert len(nt) == 0
    assert nt.due(1.0) == ([], [])


def test_nack_gives_up_after_max_age() -> None:
    nt = NackTracker(retry_interval=0.125, max_retries=100, max_age=0.25, max_gap=10)
    nt.on_packet(100, -1, 0.0)
    nt.on_packet(102, 100, 0.0)
    assert nt.due(0.125) == ([101], [])
    assert nt.due(0.25) == ([101], [])  # age 0.25: not older than max_age yet
    assert nt.due(0.3125) == ([], [])  # too old, but last NACK only 0.0625 ago
    assert nt.due(0.375) == ([], [101])
    assert len(nt) == 0


def test_nack_huge_gap_is_not_nacked() -> None:
    nt = NackTracker(retry_interval=0.125, max_retries=3, max_age=1.0, max_gap=10)
    nt.on_packet(100, -1, 0.0)
    assert nt.on_packet(111, 100, 0.0) == list(range(101, 111))  # gap == max_gap
    nt.clear()
    assert len(nt) == 0
    assert nt.on_packet(123, 111, 0.0) == []  # gap 11 > max_gap
    assert len(nt) == 0
    assert nt.due(5.0) == ([], [])


# =====================================================================
# sfu.keyframes
# =====================================================================


def test_keyframe_requests_coalesce() -> None:
    kr = KeyframeRequester(0.5)
    assert kr.request(0.0) is True
    assert kr.sent == 1
    assert kr.request(0.125) is False
    assert kr.pending is True
    assert kr.request(0.25) is False
    assert kr.poll(0.375) is False
    assert kr.sent == 1
    assert kr.poll(0.5) is True  # deferred request goes out when the interval ends
    assert (kr.sent, kr.pending) == (2, False)
    assert kr.poll(1.5) is False  # nothing pending
    assert kr.request(1.5) is True  # interval elapsed: immediate
    assert kr.sent == 3


def test_an_overloaded_process_spaces_keyframe_requests_four_times_wider() -> None:
    kr = KeyframeRequester(0.5)
    assert kr.request(0.0, slow=True) is True
    assert kr.request(0.5, slow=True) is False
    assert kr.poll(1.75, slow=True) is False
    assert kr.poll(2.0, slow=True) is True  # 4 x 0.5 s
    assert kr.request(2.5) is True  # caught up: half a second again
    assert kr.sent == 3


def test_keyframe_received_cancels_pending() -> None:
    kr = KeyframeRequester(0.5)
    assert kr.request(10.0)
    assert kr.request(10.125) is False
    kr.keyframe_received()
    assert kr.pending is False
    assert kr.poll(10.5) is False
    assert kr.poll(11.0) is False
    assert kr.sent == 1


def test_fifty_requests_in_a_second_give_at_most_three_plis() -> None:
    kr = KeyframeRequester(0.5)
    sent_at: list[float] = []
    for i in range(51):
        now = i * 0.02
        if i < 50 and kr.request(now):
            sent_at.append(now)
        if kr.poll(now):
            sent_at.append(now)
    assert 2 <= len(sent_at) <= 3
    assert kr.sent == len(sent_at)
    assert sent_at[0] == 0.0
    assert all(b - a >= 0.5 - 1e-9 for a, b in itertools.pairwise(sent_at))


# =====================================================================
# sfu.reception
# =====================================================================


def test_reception_expected_lost_and_fraction() -> None:
    rs = ReceptionStats(ssrc=0x1234, clock_rate=90000)
    assert rs.report_block(0.0) is None
    assert (rs.expected, rs.lost) == (0, 0)
    for seq in range(100, 110):
        if seq != 104:
            rs.on_packet(seq, seq * 3000, seq / 30)
    assert (rs.expected, rs.received, rs.lost) == (10, 9, 1)
    block = rs.report_block(4.0)
    assert block is not None
    assert block.ssrc == 0x1234
    assert block.fraction_lost == 25  # 256 * 1 / 10
    assert block.packets_lost == 1
    assert block.highest_seq == 109
    assert (block.lsr, block.dlsr) == (0, 0)
    # Next interval: no loss, cumulative loss unchanged.
    for seq in range(110, 120):
        rs.on_packet(seq, seq * 3000, seq / 30)
    block = rs.report_block(5.0)
    assert block is not None
    assert (block.fraction_lost, block.packets_lost, block.highest_seq) == (0, 1, 119)
    # The lost packet arrives late: cumulative loss goes back to 0.
    rs.on_packet(104, 104 * 3000, 4.0)
    block = rs.report_block(6.0)
    assert block is not None
    assert (block.fraction_lost, block.packets_lost) == (0, 0)
    # Half of an interval lost.
    rs.on_packet(122, 122 * 3000, 4.1)
    rs.on_packet(123, 123 * 3000, 4.2)
    block = rs.report_block(7.0)
    assert block is not None
    assert block.fraction_lost == 128  # 2 lost of 4
    assert block.packets_lost == 2


def test_reception_jitter_zero_when_paced() -> None:
    rs = ReceptionStats(ssrc=1, clock_rate=90000)
    for i in range(100):
        rs.on_packet(i, 1_000 + i * 3000, 50.0 + i / 30)
    assert rs.jitter < 1e-3
    block = rs.report_block(60.0)
    assert block is not None
    assert block.jitter == 0


def test_reception_jitter_grows_with_irregular_arrivals() -> None:
    rs = ReceptionStats(ssrc=1, clock_rate=90000)
    rs.on_packet(0, 0, 0.0)
    rs.on_packet(1, 3000, 1 / 30 + 0.01)  # 10 ms late: D = 900 units
    assert rs.jitter == pytest.approx(900 / 16)
    history = [rs.jitter]
    for i in range(2, 60):
        rs.on_packet(i, i * 3000, i / 30 + (0.01 if i % 2 else 0.0))
        history.append(rs.jitter)
    assert all(b > a for a, b in itertools.pairwise(history))
    assert 800 < rs.jitter < 900
    block = rs.report_block(3.0)
    assert block is not None
    assert block.jitter == int(rs.jitter)
    # A timestamp jump of 10 s or more (a source switch) is not jitter.
    before = rs.jitter
    rs.on_packet(60, 60 * 3000 + 90000 * 20, 2.0 + 0.01)
    assert rs.jitter == before


def test_reception_lsr_dlsr_after_sender_report() -> None:
    rs = ReceptionStats(ssrc=7, clock_rate=48000)
    rs.on_packet(1, 960, 10.0)
    ntp = rtcp.ntp_from_unix(1_700_000_000.5)
    rs.on_sender_report(ntp, 10.0)
    block = rs.report_block(10.25)
    assert block is not None
    assert block.lsr == (ntp >> 16) & 0xFFFFFFFF
    assert block.dlsr == 16384  # 0.25 s in 1/65536 s
    assert block.dlsr == int(0.25 * 65536)


# =====================================================================
# sfu.router
# =====================================================================


class FakeSink:
    """Collects what the core emits for one peer connection."""

    def __init__(self) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []

    def send_rtp(self, packet: bytes) -> None:
        self.rtp.append(packet)

    def send_rtcp(self, packet: bytes) -> None:
        self.rtcp.append(packet)

    def rtcp_packets(self) -> list[rtcp.RtcpPacket]:
        out: list[rtcp.RtcpPacket] = []
        for data in self.rtcp:
            result = rtcp.parse_compound(data)
            assert (result.malformed, result.unknown) == (0, 0)
            out.extend(result.packets)
        return out

    def plis(self) -> list[rtcp.Pli]:
        return [p for p in self.rtcp_packets() if isinstance(p, rtcp.Pli)]

    def nacks(self) -> list[rtcp.Nack]:
        return [p for p in self.rtcp_packets() if isinstance(p, rtcp.Nack)]


@dataclass
class Out:
    """One emitted RTP packet, decoded."""

    seq: int
    ts: int
    ssrc: int
    pt: int
    marker: bool
    ext: dict[int, bytes]
    payload: bytes


def decode(data: bytes) -> Out:
    h = parse(data)
    return Out(
        seq=h.sequence_number,
        ts=h.timestamp,
        ssrc=h.ssrc,
        pt=h.payload_type,
        marker=h.marker,
        ext={i: data[o : o + n] for i, (o, n) in h.extensions.items()},
        payload=data[h.payload_offset : h.payload_end],
    )


RTCP_SSRC = 0x5F5F5F5F
LAYOUT = Layout(
    payload_type=100, mid="0", mid_ext_id=1, audio_level_ext_id=None, abs_send_time_ext_id=None
)


def small_config(**overrides: float) -> RouterConfig:
    config = RouterConfig(
        video_cache_packets=64,
        audio_cache_packets=64,
        keyframe_interval=0.5,
        keyframe_max_age=1.0,
        nack_retry_interval=0.125,
        nack_max_retries=3,
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def video_producer(
    router: Router, pid: str, ssrc: int | None, rtx_ssrc: int | None = None
) -> tuple[Producer, FakeSink]:
    sink = FakeSink()
    producer = Producer(
        pid,
        SUPPORTED["video/vp8"],
        VP8_PT,
        ssrc,
        sink,
        RTCP_SSRC,
        router.config,
        rtx_payload_type=VP8_RTX_PT,
        rtx_ssrc=rtx_ssrc,
    )
    router.add_producer(producer)
    return producer, sink


def audio_producer(router: Router, pid: str, ssrc: int | None) -> tuple[Producer, FakeSink]:
    sink = FakeSink()
    producer = Producer(
        pid,
        SUPPORTED["audio/opus"],
        OPUS_PT,
        ssrc,
        sink,
        RTCP_SSRC,
        router.config,
        audio_level_ext_id=PUB_AUDIO_LEVEL_EXT,
    )
    router.add_producer(producer)
    return producer, sink


def consumer(
    cid: str,
    ssrc: int,
    *,
    kind: str = "video",
    layout: Layout = LAYOUT,
    initial_seq: int = 1000,
    initial_ts: int = 50_000,
    rtx: bool = False,
) -> tuple[Consumer, FakeSink]:
    sink = FakeSink()
    c = Consumer(
        id=cid,
        kind=kind,
        ssrc=ssrc,
        sink=sink,
        layout=layout,
        initial_seq=initial_seq,
        initial_timestamp=initial_ts,
        rtx_payload_type=101 if rtx else None,
        rtx_ssrc=(ssrc ^ 0xFFFF) if rtx else None,
    )
    return c, sink


class Publisher:
    """Generates a VP8 stream and feeds it into the router."""

    def __init__(self, router: Router, producer: Producer, ssrc: int, seq: int, ts: int) -> None:
        self.router = router
        self.producer = producer
        self.ssrc = ssrc
        self.seq = seq
        self.ts = ts

    def build(self, key: bool = False, packets: int = 2) -> list[bytes]:
        """The packets of the next frame (sequence numbers and timestamp advance)."""
        out = []
        for i in range(packets):
            kind = "cont" if i else ("key" if key else "delta")
            out.append(vp8_rtp(self.seq, self.ts, self.ssrc, kind, marker=i == packets - 1))
            self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + 3000) & U32
        return out

    def frame(
        self, now: float, key: bool = False, packets: int = 2, drop: tuple[int, ...] = ()
    ) -> list[bytes]:
        """Build and feed a frame (except the packets whose index is in ``drop``)."""
        built = self.build(key, packets)
        for i, pkt in enumerate(built):
            if i not in drop:
                self.router.on_rtp(self.producer, pkt, now)
        return built


def test_consumer_waits_for_keyframe_then_gets_rewritten_packets() -> None:
    router = Router(small_config())
    a, a_sink = video_producer(router, "A", 0xA1A1A1A1)
    c, c_sink = consumer("c1", 0xC1C1C1C1, initial_seq=1000, initial_ts=50_000)
    router.add_consumer(c, "A", 0.0)
    assert c in a.pending
    assert c.source is None
    assert c.rtx_seq == 1000 ^ 0x5A5A
    plis = a_sink.plis()
    assert plis == [rtcp.Pli(sender_ssrc=RTCP_SSRC, media_ssrc=0xA1A1A1A1)]

    pub = Publisher(router, a, 0xA1A1A1A1, seq=200, ts=900_000)
    pub.frame(0.0, packets=2)  # delta frame: nothing to start from
    pub.frame(0.03125, packets=1)
    assert c_sink.rtp == []
    assert c.stats.packets == 0

    key = pub.frame(0.0625, key=True, packets=3)
    delta = pub.frame(0.09375, packets=2)
    sources = key + delta
    key_ts = parse(key[0]).timestamp
    assert key_ts == 906_000
    assert len(c_sink.rtp) == 5
    assert c.source is a and c.started and c not in a.pending
    for k, (src, out) in enumerate(zip(sources, c_sink.rtp, strict=True)):
        s, o = decode(src), decode(out)
        assert o.seq == 1000 + k
        assert o.ts == 50_000 + (s.ts - key_ts)
        assert o.ssrc == 0xC1C1C1C1
        assert o.pt == 100
        assert o.marker == s.marker
        assert o.ext == {1: b"0"}  # consumer MID, publisher MID dropped
        assert o.payload == s.payload
    assert [decode(p).ts for p in c_sink.rtp] == [50_000] * 3 + [53_000] * 2
    assert c.stats.packets == 5
    assert c.stats.bytes == sum(len(p) for p in sources)
    assert a.stats.packets == 8
    assert a.stats.keyframes == 1
    assert len(a_sink.plis()) == 1


def test_two_layouts_get_their_own_rewritten_copies() -> None:
    router = Router(small_config())
    a, a_sink = video_producer(router, "A", 0xA0)
    layouts = {
        "c1": LAYOUT,
        "c2": Layout(120, "video-b", 15, None, None),  # id 15: two-byte form
        "c3": Layout(100, None, None, None, None),  # no extensions at all
        "c4": LAYOUT,  # shares c1's template
    }
    consumers = {}
    for n, (cid, layout) in enumerate(layouts.items()):
        c, sink = consumer(cid, 0xC0 + n, layout=layout, initial_seq=100 * n, initial_ts=7 * n)
        router.add_consumer(c, "A", 0.0)
        consumers[cid] = (c, sink)
    assert len(a_sink.plis()) == 1  # four joins, one PLI
    pub = Publisher(router, a, 0xA0, seq=10, ts=0)
    sources = pub.frame(0.0, key=True, packets=2) + pub.frame(0.03125, packets=2)
    assert len(a.groups) == 3
    for n, (cid, (c, sink)) in enumerate(consumers.items()):
        assert len(sink.rtp) == 4, cid
        for k, (src, out) in enumerate(zip(sources, sink.rtp, strict=True)):
            s, o = decode(src), decode(out)
            assert (o.seq, o.ts, o.ssrc) == (100 * n + k, 7 * n + s.ts, c.ssrc)
            assert o.pt == c.layout.payload_type
            assert o.payload == s.payload
            assert o.marker == s.marker
        outs = [decode(p) for p in sink.rtp]
        if cid == "c2":
            assert all(o.ext == {15: b"video-b"} for o in outs)
            assert sink.rtp[0][12:14] == b"\x10\x00"
        elif cid == "c3":
            assert all(o.ext == {} for o in outs)
            assert not sink.rtp[0][0] & 0x10
            assert sink.rtp[0][12:] == sources[0][parse(sources[0]).payload_offset :]
        else:
            assert all(o.ext == {1: b"0"} for o in outs)
            assert sink.rtp[0][12:14] == b"\xbe\xde"


def test_keyframe_requests_are_throttled_and_deferred() -> None:
    router = Router(small_config())
    a, a_sink = video_producer(router, "A", 0xA0)
    c1, _ = consumer("c1", 1)
    c2, _ = consumer("c2", 2)
    router.add_consumer(c1, "A", 0.0)
    assert a.pending == [c1]
    assert len(a_sink.plis()) == 1
    router.add_consumer(c2, "A", 0.125)
    assert a.pending == [c1, c2]
    assert router.request_keyframe("A", 0.25) is False
    assert len(a_sink.plis()) == 1
    router.poll(0.375)
    assert len(a_sink.plis()) == 1
    router.poll(0.5)  # interval over, still no keyframe: the deferred PLI goes out
    assert len(a_sink.plis()) == 2
    router.poll(0.625)
    assert len(a_sink.plis()) == 2  # throttled
    router.poll(1.0)  # consumers still wait: ask again, once per interval
    assert len(a_sink.plis()) == 3
    router.poll(1.125)
    assert len(a_sink.plis()) == 3
    assert router.keyframe_requests_sent == 3
    assert a.keyframe_requests.sent == 3


def test_deferred_keyframe_request_dropped_when_keyframe_arrives() -> None:
    router = Router(small_config())
    a, a_sink = video_producer(router, "A", 0xA0)
    c1, s1 = consumer("c1", 1)
    c2, s2 = consumer("c2", 2)
    router.add_consumer(c1, "A", 0.0)
    router.add_consumer(c2, "A", 0.125)
    assert router.request_keyframe("A", 0.25) is False
    pub = Publisher(router, a, 0xA0, seq=1, ts=0)
    pub.frame(0.3125, key=True, packets=2)
    router.poll(0.5)
    router.poll(1.0)
    assert len(a_sink.plis()) == 1
    assert router.keyframe_requests_sent == 1
    assert a.pending == []
    assert len(s1.rtp) == len(s2.rtp) == 2
    # A subscriber PLI goes to its source, throttled like the others.
    router.on_subscriber_rtcp(c1, rtcp.Pli(0xBEEF, c1.ssrc), 1.0)
    assert c1.stats.keyframe_requests == 1
    assert len(a_sink.plis()) == 2
    router.on_subscriber_rtcp(c2, rtcp.Fir(0xBEEF, ((c2.ssrc, 1),)), 1.125)
    assert c2.stats.keyframe_requests == 1
    assert len(a_sink.plis()) == 2
    router.poll(1.5)
    assert len(a_sink.plis()) == 3


def test_keyframe_request_waits_for_the_publisher_ssrc() -> None:
    router = Router(small_config())
    a, a_sink = video_producer(router, "A", None)
    c, c_sink = consumer("c", 1)
    router.add_consumer(c, "A", 0.0)
    assert a_sink.rtcp == []  # no SSRC to address the PLI to yet
    pub = Publisher(router, a, 0xABCD, seq=1, ts=0)
    pub.frame(0.125, packets=1)
    assert a.ssrc == 0xABCD
    router.poll(0.25)
    assert a_sink.plis() == [rtcp.Pli(RTCP_SSRC, 0xABCD)]
    pub.frame(0.375, key=True, packets=1)
    assert len(c_sink.rtp) == 1


def _gop(router: Router, producer: Producer, ssrc: int) -> tuple[Publisher, list[bytes]]:
    """A delta frame, then a keyframe (3 packets) and two delta frames (2 each)."""
    pub = Publisher(router, producer, ssrc, seq=500, ts=10_000)
    pub.frame(1.0, packets=2)
    gop = pub.frame(1.03125, key=True, packets=3)
    gop += pub.frame(1.0625, packets=2)
    gop += pub.frame(1.09375, packets=2)
    return pub, gop


def test_instant_start_replays_cached_gop() -> None:
    router = Router(small_config())
    a, a_sink = video_producer(router, "A", 0xA0)
    pub, gop = _gop(router, a, 0xA0)
    assert a.cache.keyframe_usable(1.5, 1.0)
    c, c_sink = consumer("c", 0xC0, initial_seq=65534, initial_ts=U32 - 100)
    router.add_consumer(c, "A", 1.5)
    assert a_sink.rtcp == []  # no PLI
    assert c.source is a and c.started
    assert len(c_sink.rtp) == 7
    key_ts = parse(gop[0]).timestamp
    outs = [decode(p) for p in c_sink.rtp]
    assert [o.seq for o in outs] == [65534, 65535, 0, 1, 2, 3, 4]
    for s, o in zip(gop, outs, strict=True):
        assert o.payload == decode(s).payload
        assert o.ts == (U32 - 100 + decode(s).ts - key_ts) & U32
        assert o.ssrc == 0xC0
    assert c.stats.packets == 7
    # Live packets continue right after the replay.
    live = pub.frame(1.5, packets=1)
    last = decode(c_sink.rtp[-1])
    assert last.seq == 5
    assert last.ts == (U32 - 100 + decode(live[0]).ts - key_ts) & U32
    assert last.payload == decode(live[0]).payload


def test_later_joiners_replay_the_same_templates_until_the_next_keyframe() -> None:
    router = Router(small_config())
    a, _ = video_producer(router, "A", 0xA0)
    pub, gop = _gop(router, a, 0xA0)
    c, c_sink = consumer("c", 0xC0, initial_seq=100)
    router.add_consumer(c, "A", 1.2)
    templates = a.replay_templates[c.layout]
    assert len(templates) == 7
    gop += pub.frame(1.125, packets=2)
    d, d_sink = consumer("d", 0xD0, initial_seq=9000, initial_ts=5)
    router.add_consumer(d, "A", 1.25)
    # The first joiner's templates, extended by the two packets since.
    assert a.replay_templates[c.layout] is templates and len(templates) == 9
    key_ts = decode(gop[0]).ts
    outs = [decode(p) for p in d_sink.rtp]
    assert [o.seq for o in outs] == list(range(9000, 9009))
    for source, out in zip(gop, outs, strict=True):
        assert out.payload == decode(source).payload and out.ssrc == 0xD0
        assert out.ts == (5 + decode(source).ts - key_ts) & U32
    assert d.stats.packets == 9 and d.stats.bytes == sum(len(p) for p in gop)
    assert len(c_sink.rtp) == 9  # 7 replayed, then the 2 live ones
    pub.frame(1.5, key=True, packets=1)
    assert a.replay_templates == {}


@pytest.mark.parametrize("why", ["stale", "hole"])
def test_no_instant_start_from_unusable_keyframe(why: str) -> None:
    router = Router(small_config())
    a, a_sink = video_producer(router, "A", 0xA0)
    pub = Publisher(router, a, 0xA0, seq=500, ts=10_000)
    pub.frame(1.0, key=True, packets=3)
    pub.frame(1.03125, packets=3, drop=(1,) if why == "hole" else ())
    now = 2.125 if why == "stale" else 1.25
    assert not a.cache.keyframe_usable(now, 1.0)
    c, c_sink = consumer("c", 0xC0)
    router.add_consumer(c, "A", now)
    assert c_sink.rtp == []
    assert c in a.pending
    assert len(a_sink.plis()) == 1


@dataclass
class Switched:
    router: Router
    a: Producer
    b: Producer
    c: Consumer
    c_sink: FakeSink
    a_sink: FakeSink
    b_sink: FakeSink
    pub_a: Publisher
    pub_b: Publisher
    #: Source packet (bytes) behind each output sequence number, in output order.
    sources: list[bytes]


def _switched(rtx: bool) -> Switched:
    """A consumer fed by A across a sequence/timestamp wrap, then switched to B.

    Output sequence numbers: 65533..65535, 0..5 from A, then 6..10 from B.
    """
    router = Router(small_config())
    a, a_sink = video_producer(router, "A", 0xAAAA0001)
    b, b_sink = video_producer(router, "B", 0xBBBB0001)
    c, c_sink = consumer("c", 0xCCCC0001, initial_seq=65533, initial_ts=0xFFFFF000, rtx=rtx)
    router.add_consumer(c, "A", 0.0)
    pub_a = Publisher(router, a, 0xAAAA0001, seq=65530, ts=1_000_000)
    pub_b = Publisher(router, b, 0xBBBB0001, seq=30000, ts=7_777_777)
    sources = pub_a.frame(0.0, key=True, packets=3)  # 65530..65532
    sources += pub_a.frame(0.03125, packets=2)  # 65533, 65534
    sources += pub_a.frame(0.0625, packets=2)  # 65535, 0
    router.set_source("c", "B", 1.0)
    assert c.source is a and c in b.pending
    assert len(b_sink.plis()) == 1
    sources += pub_a.frame(1.0, packets=2)  # 1, 2: still forwarded
    pub_b.frame(1.03125, packets=2)  # B delta: not forwarded
    sources += pub_b.frame(1.0625, key=True, packets=3)  # 30002..30004
    pub_a.frame(1.09375, packets=2)  # A after the switch: not forwarded
    sources += pub_b.frame(1.09375, packets=2)
    return Switched(router, a, b, c, c_sink, a_sink, b_sink, pub_a, pub_b, sources)


def test_source_switch_continues_sequence_and_timestamps() -> None:
    sw = _switched(rtx=False)
    c, outs = sw.c, [decode(p) for p in sw.c_sink.rtp]
    assert c.source is sw.b and c.started
    assert c not in sw.a.consumers and c in sw.b.consumers
    assert len(outs) == 14
    assert [o.seq for o in outs] == [65533, 65534, 65535, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert all(o.ssrc == 0xCCCC0001 and o.pt == 100 for o in outs)
    for s, o in zip(sw.sources, outs, strict=True):
        assert o.payload == decode(s).payload
    ts = [o.ts for o in outs]
    # A: timestamps from 0xFFFFF000 in steps of 3000, wrapping past 2**32.
    assert ts[:9] == [0xFFFFF000] * 3 + [0xFFFFF000 + 3000] * 2 + [1904] * 2 + [4904] * 2
    # B starts 62.5 ms after A's last packet: 5625 ticks later, then steps of 3000.
    assert ts[9:] == [4904 + 5625] * 3 + [4904 + 5625 + 3000] * 2
    step = (ts[9] - ts[8]) & U32
    assert step >= 1
    assert step == pytest.approx((1.0625 - 1.0) * 90000, abs=1)
    # Later packets from A still go nowhere; those from B keep flowing.
    sw.pub_a.frame(1.125, packets=1)
    assert len(sw.c_sink.rtp) == 14
    sw.pub_b.frame(1.125, packets=1)
    assert decode(sw.c_sink.rtp[-1]).seq == 11
    assert sw.a.stats.packets == 12
    assert len(sw.a_sink.plis()) == 1


def test_nack_before_and_after_switch_resends_original_packets() -> None:
    sw = _switched(rtx=False)
    router, c, sink = sw.router, sw.c, sw.c_sink
    sent = list(sink.rtp)
    by_seq = {decode(p).seq: p for p in sent}
    lost = (65535, 1, 7)  # A before the wrap, A after its wrap, B
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, lost), 2.0)
    assert c.stats.nacks == 1
    assert c.stats.retransmitted == 3
    resent = sink.rtp[len(sent) :]
    assert resent == [by_seq[s] for s in lost]  # byte-identical repairs
    assert decode(resent[0]).payload == decode(sw.sources[2]).payload
    assert decode(resent[2]).payload == decode(sw.sources[10]).payload


def test_nack_with_rtx_wraps_per_rfc4588() -> None:
    sw = _switched(rtx=True)
    router, c, sink = sw.router, sw.c, sw.c_sink
    sent = list(sink.rtp)
    by_seq = {decode(p).seq: decode(p) for p in sent}
    first_rtx_seq = c.rtx_seq & 0xFFFF
    lost = (65534, 3, 9)
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, lost), 2.0)
    resent = [decode(p) for p in sink.rtp[len(sent) :]]
    assert len(resent) == 3
    for n, (seq, r) in enumerate(zip(lost, resent, strict=True)):
        orig = by_seq[seq]
        assert r.pt == 101
        assert r.ssrc == c.rtx_ssrc
        assert r.seq == (first_rtx_seq + n) & 0xFFFF
        assert r.ts == orig.ts
        assert r.marker == orig.marker
        assert r.payload[:2] == struct.pack("!H", seq)  # OSN
        assert r.payload[2:] == orig.payload
        assert r.ext == {1: b"0"}


def test_nack_repeat_within_rtt_is_ignored() -> None:
    sw = _switched(rtx=False)
    router, c, sink = sw.router, sw.c, sw.c_sink
    n = len(sink.rtp)
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, (8,)), 2.0)
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, (8,)), 2.0)
    assert len(sink.rtp) == n + 1
    assert c.stats.retransmitted == 1
    assert c.stats.nacks == 2
    c.rtt = 0.0625
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, (8,)), 2.03125)
    assert len(sink.rtp) == n + 1
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, (8,)), 2.125)
    assert len(sink.rtp) == n + 2
    assert sink.rtp[-1] == sink.rtp[-2]
    assert c.stats.retransmitted == 2


def _keyframe_forwarded(
    config: RouterConfig, initial_seq: int
) -> tuple[Router, Producer, Consumer, FakeSink]:
    """Video producer A whose keyframe (seq 1) went to consumer c: the repair tests' start."""
    router = Router(config)
    a, _ = video_producer(router, "A", 0xA0)
    c, c_sink = consumer("c", 0xC0, initial_seq=initial_seq)
    router.add_consumer(c, "A", 0.0)
    router.on_rtp(a, vp8_rtp(1, 3000, 0xA0, "key", marker=True), 0.0)
    return router, a, c, c_sink


def test_nacks_are_not_answered_while_the_process_lags() -> None:
    """Past saturation repairs come late and feed the overload: shed, keyframes spaced."""
    router, a, c, c_sink = _keyframe_forwarded(small_config(), initial_seq=1000)
    for seq in range(2, 11):
        router.on_rtp(a, vp8_rtp(seq, 3000 * seq, 0xA0, "delta", marker=True), seq / 30)
    router.lagging = True
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, (1003, 1004, 1005)), 1.0)
    assert len(c_sink.rtp) == 10
    assert (c.stats.nacks, c.stats.retransmitted, c.stats.repairs_shed) == (1, 0, 3)
    # A relay's or the recorder's NACK is still answered: it serves many, or a recording.
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, (1006,)), 1.0, in_process=True)
    assert [decode(p).seq for p in c_sink.rtp[10:]] == [1006]
    del c_sink.rtp[10:]
    # Its keyframe requests reach the publisher at most every 4 x keyframe_interval.
    sent = router.keyframe_requests_sent
    router.on_subscriber_rtcp(c, rtcp.Pli(0x5EED, c.ssrc), 10.0)
    assert router.keyframe_requests_sent == sent + 1
    router.on_subscriber_rtcp(c, rtcp.Pli(0x5EED, c.ssrc), 11.0)  # deferred
    router.poll(11.5)  # 1.5 s after the last: more than 0.5, less than 4 x 0.5
    assert router.keyframe_requests_sent == sent + 1
    router.poll(12.0)
    assert router.keyframe_requests_sent == sent + 2
    router.lagging = False
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, (1003,)), 12.1)
    assert [decode(p).seq for p in c_sink.rtp[10:]] == [1003]
    assert (c.stats.retransmitted, c.stats.repairs_shed) == (2, 3)


def test_repairs_are_capped_by_the_subscribers_repair_budget() -> None:
    """A subscriber losing most of its stream cannot turn every loss into a send."""
    config = small_config(repair_burst=4, repair_ratio=0.25)
    router, a, c, c_sink = _keyframe_forwarded(config, initial_seq=1000)
    for seq in range(2, 41):
        router.on_rtp(a, vp8_rtp(seq, 3000 * seq, 0xA0, "delta", marker=True), seq / 30)
    assert len(c_sink.rtp) == 40
    # It reports ten of them lost: the full bucket (4) is resent, the rest shed.
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, tuple(range(1010, 1020))), 2.0)
    resent = [decode(p).seq for p in c_sink.rtp[40:]]
    assert resent == [1010, 1011, 1012, 1013]
    assert (c.stats.retransmitted, c.stats.repairs_shed) == (4, 6)
    # Eight more packets forwarded earn two repairs (0.25 each).
    for seq in range(41, 49):
        router.on_rtp(a, vp8_rtp(seq, 3000 * seq, 0xA0, "delta", marker=True), seq / 30)
    n = len(c_sink.rtp)
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, (1020, 1021, 1022)), 2.5)
    assert [decode(p).seq for p in c_sink.rtp[n:]] == [1020, 1021]
    assert (c.stats.retransmitted, c.stats.repairs_shed) == (6, 7)
    # A far subscriber's repair is sent twice and costs two.
    c.rtt = 0.3
    for seq in range(49, 57):
        router.on_rtp(a, vp8_rtp(seq, 3000 * seq, 0xA0, "delta", marker=True), seq / 30)
    n = len(c_sink.rtp)
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, (1040, 1041)), 3.0)
    assert [decode(p).seq for p in c_sink.rtp[n:]] == [1040, 1040]
    assert c.stats.repairs_shed == 8


def test_ordinary_loss_is_repaired_in_full_under_the_default_budget() -> None:
    router, a, c, c_sink = _keyframe_forwarded(small_config(), initial_seq=0)
    for seq in range(2, 2001):  # 2,000 packets, a 5 % loss reported as it happens
        router.on_rtp(a, vp8_rtp(seq, 3000 * seq, 0xA0, "delta", marker=True), seq / 200)
        if seq % 20 == 0:
            router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, (seq - 5,)), seq / 200)
    assert c.stats.retransmitted == 100 and c.stats.repairs_shed == 0
    assert len(c_sink.rtp) == 2100


def test_nack_for_evicted_or_unknown_packet_is_a_miss() -> None:
    sw = _switched(rtx=False)
    router, c, sink = sw.router, sw.c, sw.c_sink
    for i in range(35):  # 70 more packets from B: its cache (64) forgets 30002
        sw.pub_b.frame(1.125 + i / 64, packets=2)
    n = len(sink.rtp)
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, (6,)), 3.0)
    assert c.stats.nack_misses == 1
    # Before the consumer's first packet.
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, (65532,)), 3.0)
    assert c.stats.nack_misses == 2
    assert len(sink.rtp) == n
    assert c.stats.retransmitted == 0
    # A recent one is still served.
    router.on_subscriber_rtcp(c, rtcp.Nack(0x5EED, c.ssrc, ((decode(sink.rtp[-1]).seq),)), 3.0)
    assert len(sink.rtp) == n + 1
    # A consumer that never sent anything misses everything.
    idle, idle_sink = consumer("idle", 0x1D1E)
    router.add_consumer(idle, None, 3.0)
    router.on_subscriber_rtcp(idle, rtcp.Nack(0x5EED, idle.ssrc, (1000,)), 3.0)
    assert idle.stats.nack_misses == 1
    assert idle_sink.rtp == []


def test_upstream_loss_is_nacked_retried_and_repaired_by_rtx() -> None:
    router = Router(small_config())
    a, a_sink = video_producer(router, "A", 0xA0, rtx_ssrc=0xA1)
    c, c_sink = consumer("c", 0xC0, initial_seq=1000)
    router.add_consumer(c, "A", 0.0)
    p1 = vp8_rtp(1, 3000, 0xA0, "key")
    p2 = vp8_rtp(2, 3000, 0xA0, "cont", marker=True)
    p3 = vp8_rtp(3, 6000, 0xA0, "delta")
    p4 = vp8_rtp(4, 6000, 0xA0, "cont", marker=True)
    router.on_rtp(a, p1, 0.0)
    router.on_rtp(a, p2, 0.0)
    assert a_sink.nacks() == []
    router.on_rtp(a, p4, 0.0078125)
    assert a_sink.nacks() == [rtcp.Nack(RTCP_SSRC, 0xA0, (3,))]
    assert a.stats.nacks_sent == 1
    assert [decode(p).seq for p in c_sink.rtp] == [1000, 1001, 1003]
    router.poll(0.0625)
    assert len(a_sink.nacks()) == 1
    router.poll(0.1328125)  # retry interval after the first NACK
    assert a_sink.nacks() == [rtcp.Nack(RTCP_SSRC, 0xA0, (3,))] * 2
    # The publisher answers on its RTX stream (RFC 4588).
    router.on_rtp(a, rtx_of(p3, VP8_RTX_PT, 777, 0xA1), 0.15)
    assert a.stats.retransmissions == 1
    assert a.cache.get(a.unwrapper.highest - 1) == p3  # the original, rebuilt exactly
    out = decode(c_sink.rtp[-1])
    assert (out.seq, out.ts, out.ssrc, out.pt) == (1002, 53_000, 0xC0, 100)
    assert out.payload == decode(p3).payload
    assert len(a.nacks) == 0
    router.poll(0.5)
    router.poll(1.0)
    assert len(a_sink.nacks()) == 2
    assert a.stats.lost_unrecovered == 0
    assert a.reception is not None
    assert a.reception.received == 3  # retransmissions are not counted
    # Another copy of the same packet is a duplicate.
    router.on_rtp(a, rtx_of(p3, VP8_RTX_PT, 778, 0xA1), 1.0)
    assert a.stats.duplicates == 1
    assert len(c_sink.rtp) == 4


def test_upstream_loss_given_up_after_retries() -> None:
    router = Router(small_config())
    a, a_sink = video_producer(router, "A", 0xA0)
    pub = Publisher(router, a, 0xA0, seq=1, ts=0)
    pub.frame(0.0, key=True, packets=4, drop=(2,))
    for t in (0.125, 0.25, 0.375, 0.5, 0.625):
        router.poll(t)
    assert a_sink.nacks() == [rtcp.Nack(RTCP_SSRC, 0xA0, (3,))] * 3
    assert a.stats.nacks_sent == 3
    assert a.stats.lost_unrecovered == 1
    assert len(a.nacks) == 0


def test_receiver_report_for_publisher() -> None:
    router = Router(small_config())
    a, _ = video_producer(router, "A", None)
    assert router.receiver_report(a, 0.0) is None
    pub = Publisher(router, a, 0xA0, seq=1, ts=0)
    pub.frame(0.0, key=True, packets=4, drop=(1,))
    rr = router.receiver_report(a, 1.0)
    assert rr is not None
    packets = rtcp.parse_compound(rr).packets
    assert len(packets) == 1
    report = packets[0]
    assert isinstance(report, rtcp.ReceiverReport)
    assert report.ssrc == RTCP_SSRC
    (block,) = report.reports
    assert (block.ssrc, block.packets_lost, block.fraction_lost) == (0xA0, 1, 64)
    assert block.highest_seq & 0xFFFF == 4


def test_malformed_and_duplicate_packets() -> None:
    router = Router(small_config())
    a, _ = video_producer(router, "A", 0xA0, rtx_ssrc=0xA1)
    c, c_sink = consumer("c", 0xC0)
    router.add_consumer(c, "A", 0.0)
    key = vp8_rtp(1, 0, 0xA0, "key")
    router.on_rtp(a, key, 0.0)
    assert len(c_sink.rtp) == 1
    bad = [
        key[:11],  # truncated header
        b"\x40" + key[1:],  # version 1
        vp8_rtp(2, 0, 0xBAD, "cont"),  # another SSRC
        vp8_rtp(2, 0, 0xA0, "cont", pt=55),  # unknown payload type
        rtp(2, 0, 0xA1, VP8_RTX_PT, b"\x00"),  # RTX too short for an OSN
        key[:20],  # extension overruns the packet
    ]
    for i, data in enumerate(bad, 1):
        router.on_rtp(a, data, 0.125)
        assert a.stats.malformed == i
    assert a.stats.packets == 1
    assert a.cache.highest == a.unwrapper.highest
    assert len(c_sink.rtp) == 1
    router.on_rtp(a, key, 0.25)
    assert a.stats.duplicates == 1
    assert a.stats.packets == 1
    assert len(c_sink.rtp) == 1


def test_remove_consumer_says_bye() -> None:
    router = Router(small_config())
    a, _ = video_producer(router, "A", 0xA0)
    c, c_sink = consumer("c", 0xC0C0)
    router.add_consumer(c, "A", 0.0)
    pending, pending_sink = consumer("p", 0x9090)
    pub = Publisher(router, a, 0xA0, seq=1, ts=0)
    pub.frame(0.0, key=True, packets=2)
    b, _ = video_producer(router, "B", 0xB0)
    router.add_consumer(pending, "B", 0.0)
    assert pending in b.pending
    assert len(c_sink.rtp) == 2
    router.remove_consumer("c", 0.5)
    assert c.closed and "c" not in router.consumers
    assert c not in a.consumers
    (bye,) = c_sink.rtcp_packets()
    assert bye == rtcp.Bye((0xC0C0,))
    n = len(c_sink.rtp)
    pub.frame(0.5, packets=1)
    assert len(c_sink.rtp) == n
    router.remove_consumer("p", 0.5)
    assert pending not in b.pending
    assert pending_sink.rtcp_packets() == [rtcp.Bye((0x9090,))]
    router.remove_consumer("p", 0.5)  # unknown: nothing happens
    assert len(pending_sink.rtcp) == 1


@pytest.mark.parametrize("start", ["replay", "keyframe"])
def test_remove_producer_then_new_source_continues_sequence(start: str) -> None:
    router = Router(small_config())
    a, _ = video_producer(router, "A", 0xA0)
    c, c_sink = consumer("c", 0xC0, initial_seq=65535, initial_ts=1000)
    router.add_consumer(c, "A", 0.0)
    pub_a = Publisher(router, a, 0xA0, seq=10, ts=0)
    pub_a.frame(0.0, key=True, packets=3)  # out 65535, 0, 1 at ts 1000
    router.remove_producer("A", 1.0)
    assert a.closed and "A" not in router.producers
    assert c.source is None and not c.started
    assert "c" in router.consumers
    assert router.sender_report(c, 1.0) is None
    router.on_rtp(a, pub_a.build(packets=1)[0], 1.0)
    assert len(c_sink.rtp) == 3

    b, b_sink = video_producer(router, "B", 0xB0)
    pub_b = Publisher(router, b, 0xB0, seq=40000, ts=123_456)
    if start == "replay":
        pub_b.frame(1.25, key=True, packets=2)
        router.set_source("c", "B", 1.5)
        assert b_sink.rtcp == []
        at = 1.5
    else:
        router.set_source("c", "B", 1.5)
        assert c in b.pending
        assert len(b_sink.plis()) == 1
        pub_b.frame(1.75, key=True, packets=2)
        at = 1.75
    outs = [decode(p) for p in c_sink.rtp[3:]]
    assert [o.seq for o in outs] == [2, 3]
    assert all(o.ssrc == 0xC0 for o in outs)
    assert outs[0].ts == 1000 + int(at * 90000)  # A's last packet arrived at 0.0
    assert c.source is b and c.started


def test_remove_producer_drops_pending_switches_to_it() -> None:
    router = Router(small_config())
    a, _ = video_producer(router, "A", 0xA0)
    b, _ = video_producer(router, "B", 0xB0)
    c, c_sink = consumer("c", 0xC0)
    router.add_consumer(c, "B", 0.0)
    pub_a = Publisher(router, a, 0xA0, seq=1, ts=0)
    pub_b = Publisher(router, b, 0xB0, seq=1, ts=0)
    pub_b.frame(0.0, key=True, packets=2)
    router.set_source("c", "A", 0.5)
    assert c in a.pending
    router.remove_producer("A", 1.0)
    assert a.pending == []
    assert c.source is b
    # A straggling keyframe handed to the removed producer switches nobody.
    pub_a.frame(1.0, key=True, packets=1)
    assert c.source is b
    pub_b.frame(1.0, packets=1)
    assert [decode(p).seq for p in c_sink.rtp] == [1000, 1001, 1002]


def test_sender_report_translates_publisher_sr() -> None:
    router = Router(small_config())
    a, _ = video_producer(router, "A", 0xA0)
    c, _ = consumer("c", 0xC0, initial_ts=4_000_000_000)
    router.add_consumer(c, "A", 0.0)
    pub = Publisher(router, a, 0xA0, seq=1, ts=3_000_000_000)
    pub.frame(0.0, key=True, packets=2)
    pub.frame(0.03125, packets=2)
    ts_offset = (4_000_000_000 - 3_000_000_000) & U32
    assert c.ts_offset == ts_offset
    sr_unix = 1_700_000_000.25
    sr = rtcp.SenderReport(
        ssrc=0xA0,
        ntp_timestamp=rtcp.ntp_from_unix(sr_unix),
        rtp_timestamp=3_000_002_000,
        packet_count=4,
        octet_count=400,
    )
    router.on_sender_report(a, sr, 2.0)
    data = router.sender_report(c, 2.5)
    assert data is not None
    result = rtcp.parse_compound(data)
    assert result.malformed == 0
    report, sdes = result.packets
    assert isinstance(report, rtcp.SenderReport)
    assert report.ssrc == 0xC0
    assert report.rtp_timestamp == (3_000_002_000 + ts_offset + 45_000) & U32
    assert report.rtp_timestamp == 4_000_047_000
    assert rtcp.unix_from_ntp(report.ntp_timestamp) == pytest.approx(sr_unix + 0.5, abs=1e-5)
    assert report.packet_count == c.stats.packets == 4
    assert report.octet_count == c.stats.bytes
    assert sdes == rtcp.Sdes(((0xC0, "telebridge"),))

    # The subscriber echoes the SR: RTT = arrival - SR time - DLSR.
    lsr = rtcp.ntp_middle32(report.ntp_timestamp)
    dlsr = int(0.1 * 65536)

    def rr(lsr_value: int, now: float) -> None:
        block = rtcp.ReportBlock(0xC0, 0, 0, 9, 0, lsr_value, dlsr)
        router.on_subscriber_rtcp(c, rtcp.ReceiverReport(0x5EED, (block,)), now)

    rr(lsr ^ 1, 2.64)  # another SR: ignored
    rr(0, 2.64)  # no SR received: ignored
    assert c.rtt is None
    rr(lsr, 2.64)
    assert c.rtt == pytest.approx(0.04, abs=1e-4)
    rr(lsr, 2.68)  # smoothed: 0.8 * 0.04 + 0.2 * 0.08
    assert c.rtt == pytest.approx(0.048, abs=1e-4)


def test_sender_report_without_publisher_sr_uses_own_clock() -> None:
    router = Router(small_config())
    a, _ = video_producer(router, "A", 0xA0)
    c, _ = consumer("c", 0xC0, initial_ts=100)
    router.add_consumer(c, "A", 0.0)
    pub = Publisher(router, a, 0xA0, seq=1, ts=5000)
    pub.frame(1_700_000_000.0, key=True, packets=1)
    data = router.sender_report(c, 1_700_000_000.5)
    assert data is not None
    report = rtcp.parse_compound(data).packets[0]
    assert isinstance(report, rtcp.SenderReport)
    assert report.rtp_timestamp == 100 + 45_000
    assert rtcp.unix_from_ntp(report.ntp_timestamp) == pytest.approx(1_700_000_000.5, abs=1e-5)


def test_audio_consumer_forwarding_and_switch() -> None:
    router = Router(small_config())
    m1, m1_sink = audio_producer(router, "m1", 0xAA01)
    m2, _ = audio_producer(router, "m2", 0xAA02)
    layout = Layout(
        payload_type=109, mid="1", mid_ext_id=2, audio_level_ext_id=3, abs_send_time_ext_id=None
    )
    c, c_sink = consumer("c", 0xC0, kind="audio", layout=layout, initial_seq=7, initial_ts=100)
    video, _ = consumer("v", 0xC1)
    router.add_consumer(video, None, 0.0)
    with pytest.raises(ValueError):
        router.set_source("v", "m1", 0.0)
    router.add_consumer(c, "m1", 0.0)
    assert c.source is m1 and not c.started  # audio starts at the next packet
    assert m1_sink.rtcp == []
    router.on_rtp(m1, opus_rtp(40, 48_000, 0xAA01, level=33), 0.0)
    router.on_rtp(m1, opus_rtp(41, 48_960, 0xAA01, level=34, vad=False), 0.02)
    outs = [decode(p) for p in c_sink.rtp]
    assert [(o.seq, o.ts, o.pt, o.ssrc) for o in outs] == [
        (7, 100, 109, 0xC0),
        (8, 1060, 109, 0xC0),
    ]
    assert outs[0].ext == {2: b"1", 3: bytes([0x80 | 33])}
    assert outs[1].ext == {2: b"1", 3: bytes([34])}
    assert outs[0].payload == decode(opus_rtp(40, 48_000, 0xAA01, level=33)).payload

    router.set_source("c", "m2", 0.5)  # no keyframe to wait for: switch at once
    assert c.source is m2
    router.on_rtp(m1, opus_rtp(42, 49_920, 0xAA01, level=34), 0.5)
    assert len(c_sink.rtp) == 2
    router.on_rtp(m2, opus_rtp(9000, 777, 0xAA02, level=10), 0.515625)
    o = decode(c_sink.rtp[-1])
    assert o.seq == 9
    assert o.ts == 1060 + int((0.515625 - 0.02) * 48000)


def test_audio_level_and_active_speaker() -> None:
    router = Router(small_config())
    m1, _ = audio_producer(router, "m1", 0xAA01)
    m2, _ = audio_producer(router, "m2", 0xAA02)
    m3, _ = audio_producer(router, "m3", 0xAA03)
    v, _ = video_producer(router, "v", 0xBB01)
    assert router.active_speaker(10.0) is None
    router.on_rtp(m1, opus_rtp(1, 960, 0xAA01, level=50), 10.0)
    router.on_rtp(m2, opus_rtp(1, 960, 0xAA02, level=20), 10.0)
    router.on_rtp(m3, opus_rtp(1, 960, 0xAA03, level=127, vad=False), 10.0)
    assert m1.audio_level == (True, 50)
    assert m2.audio_level == (True, 20)
    assert m3.audio_level == (False, 127)
    assert m2.audio_level_time == 10.0
    assert v.audio_level is None
    assert router.active_speaker(10.5) is m2  # -20 dBov is the loudest
    router.on_rtp(m1, opus_rtp(2, 1920, 0xAA01, level=60), 11.0)
    assert router.active_speaker(11.25) is m1  # m2 has been quiet for over a second
    router.on_rtp(m1, opus_rtp(3, 2880, 0xAA01, level=127), 11.5)
    assert router.active_speaker(12.25) is None  # only silence is recent
    assert router.active_speaker(12.25, window=5.0) is m2


def test_h264_keyframe_counted_once_per_frame() -> None:
    """SPS/PPS and the IDR start of one frame share a timestamp: one keyframe start."""
    router = Router(small_config())
    sink = FakeSink()
    h264 = Producer("h", SUPPORTED["video/h264"], 102, 0x264, sink, RTCP_SSRC, router.config)
    router.add_producer(h264)
    c, c_sink = consumer("c", 0xC0, initial_seq=300, initial_ts=0)
    router.add_consumer(c, "h", 0.0)
    frame = [
        rtp(1, 9000, 0x264, 102, stap_a(SPS, PPS)),
        rtp(2, 9000, 0x264, 102, fu_a(5, start=True)),
        rtp(3, 9000, 0x264, 102, fu_a(5, start=False)),
        rtp(4, 9000, 0x264, 102, fu_a(5, start=False, end=True), marker=True),
        rtp(5, 12000, 0x264, 102, NON_IDR, marker=True),
    ]
    for data in frame:
        router.on_rtp(h264, data, 0.0)
    assert h264.stats.keyframes == 1
    assert h264.cache.key_start == h264.unwrapper.highest - 4
    assert [decode(p).seq for p in c_sink.rtp] == [300, 301, 302, 303, 304]
    assert [decode(p).ts for p in c_sink.rtp] == [0, 0, 0, 0, 3000]
    assert [decode(p).payload for p in c_sink.rtp] == [decode(d).payload for d in frame]
    # A later subscriber replays from the STAP-A, not from the FU-A start.
    late, late_sink = consumer("late", 0xC1, initial_seq=0, initial_ts=0)
    router.add_consumer(late, "h", 0.5)
    assert len(late_sink.rtp) == 5
    assert decode(late_sink.rtp[0]).payload == stap_a(SPS, PPS)
    # The next IDR (new timestamp) is a new keyframe.
    router.on_rtp(h264, rtp(6, 15000, 0x264, 102, IDR, marker=True), 0.5)
    assert h264.stats.keyframes == 2


def test_duplicate_ids_rejected() -> None:
    router = Router(small_config())
    video_producer(router, "A", 1)
    with pytest.raises(ValueError):
        video_producer(router, "A", 2)
    c, _ = consumer("c", 1)
    router.add_consumer(c, None, 0.0)
    with pytest.raises(ValueError):
        router.add_consumer(c, None, 0.0)


# ---------------------------------------------------------------------
# Invariants that the current core violates (see the report).
# ---------------------------------------------------------------------


def test_switching_back_to_current_source_cancels_pending_switch() -> None:
    router = Router(small_config())
    a, _ = video_producer(router, "A", 0xA0)
    b, _ = video_producer(router, "B", 0xB0)
    c, c_sink = consumer("c", 0xC0)
    router.add_consumer(c, "A", 0.0)
    pub_a = Publisher(router, a, 0xA0, seq=1, ts=0)
    pub_b = Publisher(router, b, 0xB0, seq=1, ts=0)
    pub_a.frame(0.0, key=True, packets=2)
    router.set_source("c", "B", 1.0)  # B has no keyframe: pending
    assert c in b.pending
    router.set_source("c", "A", 1.25)  # changed our mind: stay on A
    assert c not in b.pending
    pub_b.frame(1.5, key=True, packets=2)
    assert c.source is a
    n = len(c_sink.rtp)
    pub_a.frame(1.5, packets=1)
    assert len(c_sink.rtp) == n + 1


def test_late_packet_from_before_switch_point_is_not_forwarded() -> None:
    """A consumer must never see two different packets with the same sequence number."""
    router = Router(small_config())
    a, _ = video_producer(router, "A", 0xA0)
    b, _ = video_producer(router, "B", 0xB0, rtx_ssrc=0xB1)
    c, c_sink = consumer("c", 0xC0)
    router.add_consumer(c, "A", 0.0)
    pub_a = Publisher(router, a, 0xA0, seq=1, ts=0)
    pub_b = Publisher(router, b, 0xB0, seq=500, ts=0)
    pub_a.frame(0.0, key=True, packets=2)
    router.set_source("c", "B", 1.0)
    lost = pub_b.frame(1.0, packets=2, drop=(1,))  # B 501 lost upstream
    pub_b.frame(1.03125, key=True, packets=2)  # consumer switches at 502
    assert c.source is b
    # The upstream repair of 501 (or a reordered copy) arrives after the switch.
    router.on_rtp(b, rtx_of(lost[1], VP8_RTX_PT, 1, 0xB1), 1.0625)
    seqs = [decode(p).seq for p in c_sink.rtp]
    assert len(seqs) == len(set(seqs)), seqs


def test_rtx_before_first_media_packet_does_not_lock_ssrc() -> None:
    router = Router(small_config())
    a, _ = video_producer(router, "A", None)
    original = vp8_rtp(10, 0, 0xA0, "key")
    router.on_rtp(a, rtx_of(original, VP8_RTX_PT, 1, 0xA1), 0.0)  # e.g. an RTX probe
    router.on_rtp(a, vp8_rtp(11, 0, 0xA0, "cont"), 0.0)
    router.on_rtp(a, vp8_rtp(12, 3000, 0xA0, "delta"), 0.03125)
    assert a.ssrc == 0xA0
    assert a.stats.malformed <= 1
    assert a.cache.highest >= 0 and a.cache.get(a.cache.highest) == vp8_rtp(12, 3000, 0xA0, "delta")
