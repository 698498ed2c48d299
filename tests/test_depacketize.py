"""Tests of recorder.depacketize: RTP packets in, complete codec frames out.

Packets are built here with ``struct`` (RFC 3550 §5.1 header) and hand-made
payloads (RFC 7741, RFC 6184, RFC 7587); real bitstreams come from PyAV's
libvpx and libx264 encoders. Clock values are chosen well clear of the
thresholds so that float arithmetic cannot flip a comparison.
"""

from __future__ import annotations

import fractions
import functools
import random
import struct

import av
import numpy as np
import pytest

from recorder.depacketize import (
    AssemblerStats,
    Frame,
    FrameAssembler,
    h264_dimensions,
    h264_parameter_sets,
    vp8_dimensions,
)

SC = b"\x00\x00\x00\x01"
VP8_KEY = (
    bytes([0x50, 0x22, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0x68, 0x01]) + bytes(range(256)) * 8
)
VP8_DELTA = bytes([0x31, 0x05, 0x00]) + bytes(range(200)) * 3


def rtp(seq: int, ts: int, payload: bytes, *, marker: bool = False, pt: int = 96) -> bytes:
    """An RTP packet: version 2, no CSRC or extension (RFC 3550 §5.1)."""
    b1 = (0x80 if marker else 0) | pt
    return struct.pack("!BBHII", 0x80, b1, seq & 0xFFFF, ts & 0xFFFFFFFF, 0x1234) + payload


def vp8_packets(
    frame: bytes, seq: int, ts: int, *, size: int = 1000, ext: bytes = b""
) -> list[bytes]:
    """Packetize one VP8 frame per RFC 7741 §4: ``ext`` is the X byte and what follows it."""
    chunks = [frame[i : i + size] for i in range(0, len(frame), size)]
    x = 0x80 if ext else 0
    return [
        rtp(
            seq + i,
            ts,
            bytes([x | (0x10 if i == 0 else 0)]) + ext + chunk,
            marker=i == len(chunks) - 1,
        )
        for i, chunk in enumerate(chunks)
    ]


def push_all(assembler: FrameAssembler, packets: list[bytes], now: float = 0.0) -> list[Frame]:
    return [frame for packet in packets for frame in assembler.push(packet, now)]


# --- VP8 -----------------------------------------------------------------------------------

DESCRIPTORS = {
    "none": b"",
    "picture-id-7": bytes([0x80, 0x35]),
    "picture-id-15": bytes([0x80, 0x81, 0x23]),
    "tl0picidx": bytes([0x40, 0x07]),
    "tid": bytes([0x20, 0x40]),
    "keyidx": bytes([0x10, 0x05]),
    "all": bytes([0xF0, 0xFF, 0xFF, 0x07, 0x65]),
}


@pytest.mark.parametrize("ext", DESCRIPTORS.values(), ids=DESCRIPTORS.keys())
def test_vp8_frames_over_several_packets(ext: bytes) -> None:
    assembler = FrameAssembler("vp8")
    packets = vp8_packets(VP8_KEY, 100, 9000, size=700, ext=ext)
    packets += vp8_packets(VP8_DELTA, 103, 12000, size=250, ext=ext)
    assert len(packets) == 6
    frames = push_all(assembler, packets, 0.5)
    assert frames == [Frame(9000, VP8_KEY, True, 0.5), Frame(12000, VP8_DELTA, False, 0.5)]
    assert assembler.stats == AssemblerStats(packets=6, frames=2)


def test_vp8_frame_released_on_its_last_packet() -> None:
    assembler = FrameAssembler("video/VP8")
    first, second, last = vp8_packets(VP8_KEY, 7, 0, size=800)
    assert assembler.push(first, 1.0) == []
    assert assembler.push(second, 1.25) == []
    assert assembler.push(last, 1.5) == [Frame(0, VP8_KEY, True, 1.5)]


def test_reordering_within_and_across_frames() -> None:
    assembler = FrameAssembler("vp8")
    key = vp8_packets(VP8_KEY, 10, 0, size=500)  # 10..14
    delta1 = vp8_packets(VP8_DELTA, 15, 3000, size=400)  # 15..16
    delta2 = vp8_packets(VP8_DELTA[::-1], 17, 6000, size=400)  # 17..18, P bit 1 too
    order = [key[1], key[0], delta1[1], key[3], key[2], delta2[0], key[4], delta2[1], delta1[0]]
    frames: list[Frame] = []
    for i, packet in enumerate(order):
        frames += assembler.push(packet, i / 8)
    assert [(f.timestamp, f.keyframe, f.arrival) for f in frames] == [
        (0, True, 6 / 8),
        (3000, False, 8 / 8),
        (6000, False, 7 / 8),  # the arrival of its last packet
    ]
    assert [f.data for f in frames] == [VP8_KEY, VP8_DELTA, VP8_DELTA[::-1]]
    assert assembler.stats.dropped_frames == assembler.stats.lost_packets == 0


def test_first_packets_reordered_at_stream_start() -> None:
    assembler = FrameAssembler("vp8")
    a, b, c = vp8_packets(VP8_KEY, 500, 0, size=800)
    assert assembler.push(b, 0.0) == []  # not a frame start: earlier packets may follow
    assert assembler.push(c, 0.0) == []
    assert assembler.push(a, 0.125) == [Frame(0, VP8_KEY, True, 0.125)]


def test_stream_starting_mid_frame_waits_then_drops_it() -> None:
    assembler = FrameAssembler("vp8", max_wait=0.5)
    _, tail = vp8_packets(VP8_DELTA, 40, 0, size=400)
    key = vp8_packets(VP8_KEY, 42, 3000)
    assert push_all(assembler, [tail, *key], 0.0) == []
    assert assembler.poll(0.25) == []
    assert assembler.poll(0.75) == [Frame(3000, VP8_KEY, True, 0.0)]
    assert assembler.stats.dropped_frames == 1


def test_retransmission_fills_gap_before_max_wait() -> None:
    assembler = FrameAssembler("vp8", nack_delay=0.02)
    first, lost, last = vp8_packets(VP8_KEY, 10, 0, size=800)
    assert assembler.push(first, 0.0) == []
    assert assembler.push(last, 0.0) == []
    assert assembler.nacks(0.01) == []
    assert assembler.nacks(0.03) == [11]
    assert assembler.poll(0.5) == []
    assert assembler.push(lost, 0.5) == [Frame(0, VP8_KEY, True, 0.5)]
    assert assembler.nacks(1.0) == []
    assert assembler.stats.lost_packets == assembler.stats.dropped_frames == 0


def test_gap_never_filled_drops_until_next_keyframe() -> None:
    assembler = FrameAssembler("vp8", max_wait=1.0, keyframe_interval=1.0)
    assert assembler.keyframe_request(0.0)  # nothing received yet
    assert not assembler.keyframe_request(0.5)
    key0 = vp8_packets(VP8_KEY, 0, 0, size=1000)  # 0..2
    delta1 = vp8_packets(VP8_DELTA, 3, 3000, size=250)  # 3..5, 4 lost
    delta2 = vp8_packets(VP8_DELTA, 6, 6000, size=400)  # 6..7
    delta3 = vp8_packets(VP8_DELTA, 8, 9000, size=400)  # 8..9
    key1 = vp8_packets(VP8_KEY, 10, 12000, size=1000)  # 10..12
    assert [f.timestamp for f in push_all(assembler, key0, 1.0)] == [0]
    assert not assembler.keyframe_request(1.5)
    assert push_all(assembler, [delta1[0], delta1[2], *delta2], 2.0) == []
    assert not assembler.keyframe_request(2.5)  # the gap may still be filled
    assert assembler.poll(2.9) == []
    assert assembler.poll(3.1) == []  # delta1 dropped, delta2 waits for a keyframe
    assert assembler.stats.lost_packets == 1
    assert assembler.stats.dropped_frames == 2
    assert assembler.keyframe_request(3.1)
    assert not assembler.keyframe_request(3.5)  # throttled
    assert push_all(assembler, delta3, 3.75) == []
    assert assembler.stats.dropped_frames == 3
    assert assembler.keyframe_request(4.2)
    assert [(f.timestamp, f.keyframe) for f in push_all(assembler, key1, 4.5)] == [(12000, True)]
    assert not assembler.keyframe_request(6.0)
    assert assembler.push(delta1[1], 6.0) == []  # too late: given up
    assert assembler.stats.duplicates == 1
    assert assembler.stats.frames == 2


def test_nacks_timing_and_limits_across_sequence_wrap() -> None:
    assembler = FrameAssembler("vp8", nack_delay=0.02, nack_interval=0.1, max_nacks=3)
    assembler.push(rtp(65533, 0, b"\x10" + VP8_KEY, marker=True), 0.0)
    assembler.push(rtp(1, 3000, b"\x10" + VP8_DELTA, marker=True), 1.0)  # 65534, 65535, 0 lost
    assert assembler.nacks(1.01) == []
    assert assembler.nacks(1.03) == [65534, 65535, 0]
    assert assembler.nacks(1.1) == []
    assembler.push(rtp(65535, 1500, b"\x00" + VP8_DELTA, marker=True), 1.12)
    assert assembler.nacks(1.14) == [65534, 0]
    assert assembler.nacks(1.3) == [65534, 0]
    assert assembler.nacks(1.5) == []  # max_nacks reached
    assert assembler.stats.nacked == 7
    assembler.poll(2.5)
    assert assembler.stats.lost_packets == 2
    assert assembler.nacks(3.0) == []


def test_duplicates_ignored() -> None:
    assembler = FrameAssembler("vp8")
    first, second, last = vp8_packets(VP8_KEY, 1, 0, size=900)
    assert push_all(assembler, [first, first, last], 0.0) == []
    assert [f.data for f in push_all(assembler, [second, second, last, first], 0.1)] == [VP8_KEY]
    assert assembler.stats.duplicates == 4
    assert assembler.stats.frames == 1


def test_sequence_number_wrap() -> None:
    assembler = FrameAssembler("vp8")
    packets = vp8_packets(VP8_KEY, 65534, 0, size=600)  # 65534, 65535, 0, 1
    packets += vp8_packets(VP8_DELTA, 65538, 3000, size=400)
    assert [rtp_seq(p) for p in packets] == [65534, 65535, 0, 1, 2, 3]
    random.Random(3).shuffle(packets)
    frames = push_all(assembler, packets)
    assert [(f.data, f.timestamp) for f in frames] == [(VP8_KEY, 0), (VP8_DELTA, 3000)]


def rtp_seq(packet: bytes) -> int:
    return int(struct.unpack_from("!H", packet, 2)[0])


def test_timestamp_wrap_keeps_increasing() -> None:
    assembler = FrameAssembler("vp8")
    start = 2**32 - 6000
    packets = vp8_packets(VP8_KEY, 0, start)
    for i in range(1, 5):
        packets += vp8_packets(VP8_DELTA, len(packets), start + 3000 * i)
    frames = push_all(assembler, packets)
    assert [f.timestamp for f in frames] == [start + 3000 * i for i in range(5)]
    assert frames[-1].timestamp > 2**32


def test_flush_returns_complete_frames_and_drops_incomplete() -> None:
    assembler = FrameAssembler("vp8")
    k0 = vp8_packets(VP8_KEY, 0, 0, size=1000)  # 0..2, 1 lost
    k1 = vp8_packets(VP8_KEY, 3, 3000, size=1000)  # 3..5
    head, *_ = vp8_packets(VP8_DELTA, 6, 6000, size=100)  # only its first packet
    assert push_all(assembler, [k0[0], k0[2], *k1, head]) == []
    assert [f.timestamp for f in assembler.flush()] == [3000]
    assert assembler.stats.dropped_frames == 2
    assert assembler.stats.lost_packets == 1
    assert assembler.flush() == []


def test_buffer_bounded_by_timestamp_span() -> None:
    assembler = FrameAssembler("vp8", max_wait=10.0)
    frames: list[Frame] = []
    for seq in range(200):  # 1 never comes; keyframes 1/30 s apart
        if seq != 1:
            frames += assembler.push(rtp(seq, 3000 * seq, b"\x10" + VP8_KEY, marker=True), 0.0)
        if seq == 92:  # held behind the gap up to 3 s of timestamps, not for 10 s
            assert [f.timestamp for f in frames] == [0]
    assert len(frames) == 199
    assert assembler.stats.lost_packets == 1


def test_buffer_bounded_by_packet_count() -> None:
    assembler = FrameAssembler("vp8", max_wait=10.0)
    frames: list[Frame] = []
    for seq in range(2003):  # 1 never comes; timestamps 1 tick apart
        if seq != 1:
            frames += assembler.push(rtp(seq, seq, b"\x10" + VP8_KEY[:20], marker=True), 0.0)
        if seq == 2001:  # 2000 packets held behind the gap
            assert len(frames) == 1
    assert len(frames) == 2002
    assert assembler.stats.lost_packets == 1
    tail = FrameAssembler("vp8")
    for seq in range(2100):  # one frame that never ends
        tail.push(rtp(seq, 0, (b"\x10" if seq == 0 else b"\x00") + VP8_DELTA[:10]), 0.0)
    assert tail.stats.dropped_frames == 1


# --- malformed input --------------------------------------------------------------------------

MALFORMED = [
    b"",
    b"\x80",
    b"\x80\x60\x00\x01",
    b"\x00" * 20,  # RTP version 0
    rtp(1, 0, b""),  # empty payload
    b"\xa0" + rtp(1, 0, b"\x10\x00")[1:],  # padding bit, zero padding length
    b"\x90" + rtp(1, 0, b"")[1:],  # extension bit, no extension
]


@pytest.mark.parametrize("codec", ["vp8", "h264", "opus"])
def test_malformed_packets_counted_never_raise(codec: str) -> None:
    assembler = FrameAssembler(codec)
    for packet in MALFORMED:
        assert assembler.push(packet, 0.0) == []
    assert assembler.stats.malformed == len(MALFORMED)
    rng = random.Random(7)
    for i in range(1000):
        packet = bytes([0x80, rng.randrange(256)]) + rng.randbytes(rng.randrange(40))
        assembler.push(packet, i / 1000)
        assembler.poll(i / 1000)
        assembler.nacks(i / 1000)
    assembler.flush()


@pytest.mark.parametrize(
    "payload",
    [b"\x90", b"\x90\x80", b"\x90\x80\x80", b"\x90\x80\x81\x23", b"\x10", b"\x90\xf0\x80\x01\x02"],
)
def test_bad_vp8_descriptor(payload: bytes) -> None:
    assembler = FrameAssembler("vp8")
    assert assembler.push(rtp(1, 0, payload, marker=True), 0.0) == []
    assert assembler.stats.malformed == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x01",  # NAL type 0
        b"\x1e\x01",  # type 30
        b"\x7c",  # FU-A without FU header
        b"\x7c\x85",  # FU-A without data
        b"\x78\x00\x05\x67\x42",  # STAP-A size beyond the packet
        b"\x78\x00\x00",  # STAP-A zero size
        b"\x78\x00\x02\x67\x42\x00",  # STAP-A truncated size field
    ],
)
def test_bad_h264_payload(payload: bytes) -> None:
    assembler = FrameAssembler("h264")
    assert assembler.push(rtp(1, 0, payload, marker=True), 0.0) == []
    assert assembler.stats.malformed == 1


def test_codec_names() -> None:
    for name in ("vp8", "VP8", "video/VP8", "h264", "video/H264", "opus", "audio/opus"):
        FrameAssembler(name)
    with pytest.raises(ValueError):
        FrameAssembler("video/AV1")


# --- H.264 ---------------------------------------------------------------------------------

SPS = bytes.fromhex("6742c01fda0140")
PPS = bytes.fromhex("68ce3c80")
IDR = bytes([0x65, 0x88]) + bytes(range(1, 250)) * 4  # first_mb_in_slice 0
SLICE = bytes([0x41, 0x9A]) + bytes(range(1, 100))  # non-IDR, first_mb_in_slice 0
SLICE_2 = bytes([0x41, 0x40]) + bytes(range(1, 60))  # first_mb_in_slice 1


def stap_a(*nals: bytes) -> bytes:
    return bytes([0x78]) + b"".join(struct.pack("!H", len(n)) + n for n in nals)


def fu_a(nal: bytes, size: int) -> list[bytes]:
    body = nal[1:]
    indicator = (nal[0] & 0xE0) | 28
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return [
        bytes([indicator, (0x80 if i == 0 else 0x40 if i == len(parts) - 1 else 0) | nal[0] & 0x1F])
        + part
        for i, part in enumerate(parts)
    ]


def test_h264_single_stap_a_and_fu_a_to_annex_b() -> None:
    assembler = FrameAssembler("video/H264")
    fragments = fu_a(IDR, 300)
    assert len(fragments) == 4
    au1 = [rtp(10, 0, stap_a(SPS, PPS))]
    au1 += [rtp(11 + i, 0, f, marker=i == 3) for i, f in enumerate(fragments)]
    au2 = [rtp(15, 3000, SLICE), rtp(16, 3000, SLICE_2, marker=True)]
    au3 = [rtp(17, 6000, SLICE, marker=True)]
    packets = au1 + au2 + au3
    packets[1], packets[3] = packets[3], packets[1]
    frames = push_all(assembler, packets)
    assert frames == [
        Frame(0, SC + SPS + SC + PPS + SC + IDR, True, 0.0),
        Frame(3000, SC + SLICE + SC + SLICE_2, False, 0.0),
        Frame(6000, SC + SLICE, False, 0.0),
    ]


def test_h264_lost_first_slice_never_taken_for_a_frame_start() -> None:
    assembler = FrameAssembler("h264", max_wait=0.5)
    assert push_all(assembler, [rtp(0, 0, IDR, marker=True)]) != []
    # Access unit 3000: its first slice (1) is lost, the second (2) must not start a frame.
    assert push_all(assembler, [rtp(2, 3000, SLICE_2, marker=True)], 0.1) == []
    assert push_all(assembler, [rtp(3, 6000, SLICE, marker=True)], 0.2) == []
    assert assembler.poll(1.0) == []  # the delta frame after the loss waits for a keyframe
    assert assembler.stats.dropped_frames == 2
    frames = push_all(assembler, [rtp(4, 9000, stap_a(SPS, PPS, IDR), marker=True)], 1.1)
    assert [(f.timestamp, f.keyframe) for f in frames] == [(9000, True)]


def test_h264_idr_detection_in_fu_a_and_stap_a() -> None:
    for packets, keyframe in [
        ([rtp(1 + i, 0, f, marker=i == 1) for i, f in enumerate(fu_a(IDR, 600))], True),
        ([rtp(1, 0, stap_a(SPS, PPS, IDR), marker=True)], True),
        ([rtp(1, 0, stap_a(SPS, PPS), marker=True)], False),
        ([rtp(1 + i, 0, f, marker=i == 1) for i, f in enumerate(fu_a(SLICE, 60))], False),
    ]:
        assembler = FrameAssembler("h264")
        frames = push_all(assembler, packets)
        assert len(frames) == int(keyframe)  # delta frames wait for a keyframe
        assert all(f.keyframe for f in frames)


@functools.cache
def x264_access_units(width: int, height: int, pix_fmt: str = "yuv420p") -> list[bytes]:
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, pix_fmt
    codec.time_base = fractions.Fraction(1, 30)
    codec.options = {"tune": "zerolatency"}
    units = []
    for i in range(3):
        image = np.full((height, width, 3), 40 * i, np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt)
        frame.pts = i
        units += [bytes(packet) for packet in codec.encode(frame)]
    units += [bytes(packet) for packet in codec.encode(None)]
    return units


def test_h264_parameter_sets_of_real_access_units() -> None:
    first, second, *_ = x264_access_units(1280, 720)
    sets = h264_parameter_sets(first)
    assert sets is not None
    assert sets.startswith(SC + b"\x67")
    assert sets.count(SC) == 2 and SC + b"\x68" in sets
    assert sets.split(SC)[1] in first and sets.split(SC)[2] in first
    assert h264_parameter_sets(second) is None
    assert h264_parameter_sets(b"") is None


@pytest.mark.parametrize(
    ("width", "height", "pix_fmt"),
    [(1280, 720, "yuv420p"), (320, 180, "yuv420p"), (200, 90, "yuv444p"), (176, 100, "yuv422p")],
)
def test_h264_dimensions_of_real_sps(width: int, height: int, pix_fmt: str) -> None:
    sets = h264_parameter_sets(x264_access_units(width, height, pix_fmt)[0])
    assert sets is not None
    assert h264_dimensions(sets) == (width, height)


class BitWriter:
    def __init__(self) -> None:
        self.bits: list[str] = []

    def u(self, count: int, value: int) -> None:
        self.bits.append(format(value, f"0{count}b"))

    def ue(self, value: int) -> None:
        code = format(value + 1, "b")
        self.bits.append("0" * (len(code) - 1) + code)

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def nal(self, header: int) -> bytes:
        """The NAL unit with rbsp trailing bits and emulation prevention (H.264 §7.4.1)."""
        bits = "".join(self.bits) + "1"
        bits += "0" * (-len(bits) % 8)
        out = bytearray([header])
        zeros = 0
        for byte in int(bits, 2).to_bytes(len(bits) // 8):
            if zeros >= 2 and byte <= 3:
                out.append(3)
                zeros = 0
            out.append(byte)
            zeros = zeros + 1 if byte == 0 else 0
        return bytes(out)


def test_h264_dimensions_interlaced_scaling_lists_poc_type_1() -> None:
    w = BitWriter()
    w.u(8, 100)  # High
    w.u(16, 0x001F)
    w.ue(0)
    w.ue(1)  # chroma_format_idc 4:2:0
    w.ue(0)
    w.ue(0)
    w.u(1, 0)
    w.u(1, 1)  # seq_scaling_matrix_present_flag
    for i in range(8):
        w.u(1, i % 2)
        if i % 2:
            for j in range(16 if i < 6 else 64):
                w.se(-8 if j == 3 else 1)  # nextScale 0 after four entries
    w.ue(0)
    w.ue(1)  # pic_order_cnt_type 1
    w.u(1, 0)
    w.se(-3)
    w.se(2)
    w.ue(2)
    w.se(5)
    w.se(-5)
    w.ue(4)
    w.u(1, 0)
    w.ue(119)  # 120 macroblocks wide: 1920
    w.ue(33)  # 34 map units of field macroblock pairs: 1088
    w.u(1, 0)  # frame_mbs_only_flag 0
    w.u(1, 1)
    w.u(1, 1)
    w.u(1, 1)  # frame_cropping_flag
    for crop in (0, 4, 0, 2):  # right 4 * 2, bottom 2 * 4
        w.ue(crop)
    w.u(1, 0)  # vui_parameters_present_flag
    assert h264_dimensions(SC + w.nal(0x67)) == (1912, 1080)


def test_h264_dimensions_removes_emulation_prevention() -> None:
    w = BitWriter()
    w.u(8, 66)  # Baseline
    w.u(16, 0)
    w.ue(0)
    w.ue(0)
    w.ue(0)
    w.ue(0)
    w.ue(1)
    w.u(1, 0)
    w.ue(2**15 - 1)  # 30 zero bits in a row: 00 00 0x needs escaping
    w.ue(2**15 - 1)
    w.u(1, 1)
    w.u(1, 1)
    w.u(1, 0)
    sps = w.nal(0x67)
    assert b"\x00\x00\x03" in sps
    assert h264_dimensions(SC + sps) == (2**19, 2**19)


@pytest.mark.parametrize(
    "data", [b"", SC, SC + b"\x67", SC + b"\x67\x64\x00", SC + PPS, SC + b"\x67" + b"\x00" * 8]
)
def test_h264_dimensions_none_when_unparseable(data: bytes) -> None:
    assert h264_dimensions(data) is None


# --- VP8 bitstreams from libvpx -------------------------------------------------------------


@functools.cache
def vp8_encoded(count: int, width: int = 640, height: int = 360) -> list[tuple[bytes, bool]]:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = fractions.Fraction(1, 30)
    codec.bit_rate = 2_000_000
    codec.thread_count = 1
    codec.options = {"deadline": "realtime", "cpu-used": "8"}
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 255, (height, width, 3), np.uint8)
    out = []
    for i in range(count):
        image = np.roll(noise, 8 * i, axis=1)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [(bytes(p), bool(p.is_keyframe)) for p in codec.encode(frame)]
    out += [(bytes(p), bool(p.is_keyframe)) for p in codec.encode(None)]
    return out


def test_vp8_dimensions_of_real_frames() -> None:
    (key, is_key), (delta, is_delta_key), *_ = vp8_encoded(30)
    assert is_key and not is_delta_key
    assert vp8_dimensions(key) == (640, 360)
    assert vp8_dimensions(delta) is None
    assert vp8_dimensions(b"") is None
    assert vp8_dimensions(key[:9]) is None
    assert vp8_dimensions(b"\x50\x22\x00\x00\x00\x00\x80\x02\x68\x01") is None


@pytest.mark.parametrize("seed", range(5))
def test_vp8_end_to_end_with_reordering_loss_and_nacks(seed: int) -> None:
    encoded = vp8_encoded(30)
    assert len(encoded) == 30
    rng = random.Random(seed)
    packets: list[bytes] = []
    for i, (frame, _) in enumerate(encoded):
        ext = bytes([0x80, 0x80 | (i >> 8), i & 0xFF])  # 15-bit PictureID
        packets += vp8_packets(frame, 65000 + len(packets), 2**32 - 30000 + 3000 * i, ext=ext)
    assert len(packets) > 2 * len(encoded)  # frames really are split
    by_seq = {rtp_seq(p): p for p in packets}
    for start in range(0, len(packets), 5):  # shuffle within windows of 5
        window = packets[start : start + 5]
        rng.shuffle(window)
        packets[start : start + 5] = window
    # 10 % lost, but not among the first or last packets: nothing would reveal those losses.
    lost = set(rng.sample(range(5, len(packets) - 5), len(packets) // 10))

    assembler = FrameAssembler("vp8", max_wait=0.5)
    frames: list[Frame] = []
    for i in range(len(packets) + 100):  # a packet every 2 ms, then 200 ms more
        now = i / 500
        if i < len(packets) and i not in lost:
            frames += assembler.push(packets[i], now)
        frames += assembler.poll(now)
        for seq in assembler.nacks(now):  # the sender answers at once
            frames += assembler.push(by_seq[seq], now)
    assert assembler.flush() == []

    assert [f.data for f in frames] == [frame for frame, _ in encoded]
    assert [f.keyframe for f in frames] == [key for _, key in encoded]
    assert [f.timestamp for f in frames] == [2**32 - 30000 + 3000 * i for i in range(30)]
    assert assembler.stats.nacked >= len(lost)
    assert assembler.stats.dropped_frames == assembler.stats.lost_packets == 0


# --- Opus ----------------------------------------------------------------------------------


def test_opus_pass_through_skips_lost_packets_after_max_wait() -> None:
    assembler = FrameAssembler("audio/opus", max_wait=0.5)
    payloads = [bytes([0x78, i]) * (10 + i) for i in range(6)]
    packets = [rtp(100 + i, 960 * i, p, marker=i == 0, pt=111) for i, p in enumerate(payloads)]
    assert push_all(assembler, packets[:2], 0.0) == [
        Frame(0, payloads[0], True, 0.0),
        Frame(960, payloads[1], True, 0.0),
    ]
    assert push_all(assembler, packets[3:], 0.25) == []  # 102 lost
    assert assembler.nacks(0.3) == [102]
    assert assembler.poll(0.5) == []
    frames = assembler.poll(0.8)
    assert [(f.timestamp, f.data, f.keyframe) for f in frames] == [
        (960 * i, payloads[i], True) for i in (3, 4, 5)
    ]
    assert assembler.stats.lost_packets == 1
    assert assembler.stats.dropped_frames == 0
    assert not assembler.keyframe_request(0.0)
