"""RTP packets of one stream to complete codec frames, for remuxing without decoding.

Sans-I/O: no sockets, no tasks, no clock; every entry point that needs the time
takes ``now`` in seconds.

* RTP header, sequence number and timestamp wrap-around: RFC 3550 §5.1 and
  Appendix A.1 (:func:`sfu.rtp.parse`, :class:`sfu.rtp.SequenceUnwrapper`).
* VP8: RFC 7741 §4.2 (payload descriptor: ``S`` bit with partition index 0
  starts a frame) and §4.3 (the payload header's ``P`` bit is 0 on key frames);
  the frame is the concatenation of the payloads after the descriptors.
  :func:`vp8_dimensions` reads the key frame header of RFC 6386 §9.1.
* H.264: RFC 6184 §5.6 (single NAL unit packets), §5.7.1 (STAP-A) and §5.8
  (FU-A); access units are written in Annex B form (ITU-T H.264 Annex B), a
  frame is a key frame when it holds an IDR slice (NAL type 5).
  :func:`h264_dimensions` reads the SPS of ITU-T H.264 §7.3.2.1.1.
* Opus: RFC 7587 §4.2: one RTP packet carries one Opus packet, each decodable
  on its own.

A video frame is the run of packets sharing one timestamp that ends with the
marker bit (RFC 3550 §5.1, RFC 7741 §4.1, RFC 6184 §5.1). Frames leave in
sequence order; a gap holds them back until it is filled (a retransmission
asked for with :meth:`FrameAssembler.nacks`) or has waited ``max_wait``, and
then the frames it touches are dropped, never returned damaged. After a
dropped video frame, delta frames are dropped until the next key frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sfu.rtp import RtpError, SequenceUnwrapper, parse

#: Sequence numbers held back (received or missing) beyond which the oldest gap is given up.
_MAX_PACKETS = 2000
#: Buffered media duration (seconds of timestamps) beyond which the same happens.
_MAX_SPAN = 3.0

_START_CODE = b"\x00\x00\x00\x01"
_H264_SLICE = 1
_H264_IDR = 5
_H264_SPS = 7
_H264_PPS = 8
_H264_STAP_A = 24
_H264_FU_A = 28
#: NAL unit types that only come first in an access unit: SEI, SPS, PPS, AUD (H.264 §7.4.1.2.3).
_H264_AU_HEADS = frozenset((6, _H264_SPS, _H264_PPS, 9))
#: profile_idc values whose SPS carries chroma_format_idc and bit depths (H.264 §7.3.2.1.1).
_H264_HIGH_PROFILES = frozenset((100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135))

_Chunks = tuple[bytes | memoryview, ...]
#: ``(packet, payload_offset, payload_end) -> (frame bytes, starts a frame, key frame)``,
#: or None for a payload that cannot be depacketized.
_Depacketizer = Callable[[bytes, int, int], tuple[_Chunks, bool, bool] | None]


@dataclass(slots=True)
class Frame:
    """One complete codec frame."""

    #: Extended RTP timestamp (unwrapped, keeps increasing across 2**32).
    timestamp: int
    #: VP8 frame, H.264 access unit in Annex B form, or Opus packet.
    data: bytes
    #: Video: an intra frame; audio: always True.
    keyframe: bool
    #: ``now`` when the last of the frame's packets arrived.
    arrival: float


@dataclass(slots=True)
class AssemblerStats:
    """Counters of one :class:`FrameAssembler`."""

    packets: int = 0
    #: Packets already buffered, released or given up on.
    duplicates: int = 0
    #: Not RTP, empty payload or a payload that cannot be depacketized.
    malformed: int = 0
    #: Frames returned.
    frames: int = 0
    #: Incomplete frames, and frames skipped while waiting for a key frame.
    dropped_frames: int = 0
    #: Sequence numbers given up on.
    lost_packets: int = 0
    #: Sequence numbers reported by :meth:`FrameAssembler.nacks`, re-reports included.
    nacked: int = 0


@dataclass(slots=True)
class _Packet:
    timestamp: int
    marker: bool
    start: bool
    keyframe: bool
    chunks: _Chunks
    arrival: float


@dataclass(slots=True)
class _Missing:
    since: float
    last_nack: float = -math.inf
    nacks: int = 0


class FrameAssembler:
    """Reorder, depacketize and release the frames of one RTP stream.

    A gap waits ``max_wait`` from the arrival of the first packet after it, or
    less when more than 2000 sequence numbers or 3 s of timestamps pile up
    behind it. Packets at or before the release point (released, dropped or
    given up on) count as duplicates; until the first frame is released or
    dropped, an earlier packet moves the start of the stream back instead.
    """

    def __init__(
        self,
        codec: str,
        *,
        max_wait: float = 1.0,
        nack_delay: float = 0.02,
        nack_interval: float = 0.1,
        max_nacks: int = 5,
        keyframe_interval: float = 1.0,
    ) -> None:
        """``codec``: ``vp8``, ``h264`` or ``opus``, or their MIME types (any case)."""
        known = _CODECS.get(codec.lower().rpartition("/")[2])
        if known is None:
            raise ValueError(f"unsupported codec {codec!r}")
        self._depacketize, clock_rate, self._video = known
        self._max_span = int(_MAX_SPAN * clock_rate)
        self._max_wait = max_wait
        self._nack_delay = nack_delay
        self._nack_interval = nack_interval
        self._max_nacks = max_nacks
        self._keyframe_interval = keyframe_interval
        self.stats = AssemblerStats()
        self._buffer: dict[int, _Packet] = {}
        self._missing: dict[int, _Missing] = {}
        self._seqs = SequenceUnwrapper()
        self._next = -1  # extended sequence number released next; -1 before any packet
        self._scan = 0  # packets from _next up to here form the head frame, without a marker yet
        self._highest = 0  # highest extended sequence number seen
        self._highest_ts = 0  # highest extended timestamp seen
        self._started = False  # a frame was released or dropped: _next is final
        self._last_ts: int | None = None  # timestamp of the last frame released or dropped
        self._gap = -1  # the gap being waited on, and when / at what timestamp it began
        self._gap_since = 0.0
        self._gap_ts = 0
        self._need_keyframe = self._video
        self._last_request = -math.inf

    def push(self, packet: bytes, now: float) -> list[Frame]:
        """Take one RTP packet; return the frames it makes releasable, in order."""
        stats = self.stats
        stats.packets += 1
        try:
            header = parse(packet)
        except RtpError:
            stats.malformed += 1
            return []
        pos, end = header.payload_offset, header.payload_end
        payload = self._depacketize(packet, pos, end) if pos < end else None
        if payload is None:
            stats.malformed += 1
            return []
        seq = self._seqs.unwrap(header.sequence_number)
        if self._next < 0:
            self._next = self._scan = self._highest = seq
            self._highest_ts = header.timestamp
        if seq < self._next:
            if self._started or self._next - seq > _MAX_PACKETS:
                stats.duplicates += 1
                return []
            # Reordered ahead of the stream's first packet: start earlier.
            self._missing.update((s, _Missing(now)) for s in range(seq + 1, self._next))
            self._next = self._scan = seq
        elif seq in self._buffer:
            stats.duplicates += 1
            return []
        elif seq > self._highest:
            first_missing = max(self._highest + 1, seq - _MAX_PACKETS)
            self._missing.update((s, _Missing(now)) for s in range(first_missing, seq))
            self._highest = seq
        else:
            self._missing.pop(seq, None)
        chunks, start, keyframe = payload
        timestamp = self._unwrap_timestamp(header.timestamp)
        self._buffer[seq] = _Packet(timestamp, header.marker, start, keyframe, chunks, now)
        return self._release(now)

    def poll(self, now: float) -> list[Frame]:
        """Give up on gaps older than ``max_wait``; return the frames that became releasable."""
        return self._release(now)

    def flush(self) -> list[Frame]:
        """End of stream: return the remaining complete frames, drop the incomplete ones."""
        frames = self._release(math.inf)
        if self._buffer:
            self._drop(self._highest + 1)
        self._missing.clear()
        return frames

    def nacks(self, now: float) -> list[int]:
        """The 16-bit sequence numbers to ask again for (RFC 4585 §6.2.1 generic NACK).

        A number is reported once it has been missing ``nack_delay``, then again
        every ``nack_interval``, at most ``max_nacks`` times.
        """
        due = []
        for seq, missing in self._missing.items():
            if (
                missing.nacks < self._max_nacks
                and now - missing.since >= self._nack_delay
                and now - missing.last_nack >= self._nack_interval
            ):
                missing.nacks += 1
                missing.last_nack = now
                due.append(seq & 0xFFFF)
        self.stats.nacked += len(due)
        return due

    def keyframe_request(self, now: float) -> bool:
        """True when a key frame should be asked for now (RFC 4585 §6.3.1 PLI), throttled."""
        if not self._need_keyframe or now - self._last_request < self._keyframe_interval:
            return False
        self._last_request = now
        return True

    def _unwrap_timestamp(self, timestamp: int) -> int:
        """Extend a 32-bit RTP timestamp by serial arithmetic (RFC 3550 §5.1, RFC 1982)."""
        delta = (timestamp - self._highest_ts) & 0xFFFFFFFF
        if delta < 0x80000000:
            self._highest_ts += delta
            return self._highest_ts
        return self._highest_ts - (0x100000000 - delta)

    def _release(self, now: float) -> list[Frame]:
        frames: list[Frame] = []
        buffer = self._buffer
        while buffer:
            head = buffer.get(self._next)
            if head is None:
                gap = self._next
            elif not self._video:
                del buffer[self._next]
                self._next += 1
                self._started = True
                self._emit(frames, [head], keyframe=True)
                continue
            elif not head.start or (self._last_ts is not None and head.timestamp <= self._last_ts):
                if self._started:
                    self._drop(self._next + 1)
                    continue
                gap = self._next - 1  # the stream's first packets may still come
            else:
                seq = max(self._scan, self._next)
                packet = buffer.get(seq)
                while packet is not None and packet.timestamp == head.timestamp:
                    if packet.marker:
                        break
                    seq += 1
                    packet = buffer.get(seq)
                self._scan = seq
                if packet is not None:
                    if packet.timestamp == head.timestamp:
                        self._release_video(frames, seq + 1)
                    else:  # the timestamp changed without a marker
                        self._drop(seq)
                    continue
                gap = seq
                if gap > self._highest:  # the head frame's next packets have not come yet
                    if self._highest - self._next <= _MAX_PACKETS:
                        break
                    self._drop(gap)
                    continue
            if gap != self._gap:
                later = [p for s, p in buffer.items() if s > gap]
                self._gap = gap
                self._gap_since = min(p.arrival for p in later)
                self._gap_ts = min(p.timestamp for p in later)
            if (
                now - self._gap_since < self._max_wait
                and self._highest - self._next <= _MAX_PACKETS
                and self._highest_ts - self._gap_ts <= self._max_span
            ):
                break
            self._give_up(gap)
        return frames

    def _release_video(self, frames: list[Frame], end: int) -> None:
        """Release (or skip, while waiting for a key frame) the frame from _next to ``end``."""
        packets = [self._buffer.pop(seq) for seq in range(self._next, end)]
        self._next = end
        self._started = True
        self._last_ts = packets[0].timestamp
        keyframe = any(packet.keyframe for packet in packets)
        if self._need_keyframe and not keyframe:
            self.stats.dropped_frames += 1
            return
        self._need_keyframe = False
        self._emit(frames, packets, keyframe)

    def _emit(self, frames: list[Frame], packets: list[_Packet], keyframe: bool) -> None:
        data = b"".join(chunk for packet in packets for chunk in packet.chunks)
        arrival = max(packet.arrival for packet in packets)
        frames.append(Frame(packets[0].timestamp, data, keyframe, arrival))
        self.stats.frames += 1

    def _drop(self, end: int) -> None:
        """Drop the buffered packets from _next to ``end``, counting their frames."""
        for seq in range(self._next, end):
            packet = self._buffer.pop(seq, None)
            if packet is not None and packet.timestamp != self._last_ts:
                self.stats.dropped_frames += 1
                self._last_ts = packet.timestamp
        self._next = end
        self._started = True
        self._need_keyframe = self._video

    def _give_up(self, gap: int) -> None:
        """Stop waiting for the packets missing from ``gap`` on; drop the frame they cut."""
        if gap < self._next:  # the packets before the stream's first one never came
            self._drop(self._next + 1)
            return
        if self._video:
            self._drop(gap)
        resume = min(self._buffer)
        self.stats.lost_packets += resume - gap
        self._missing = {seq: m for seq, m in self._missing.items() if seq >= resume}
        self._next = resume
        self._started = True


def _vp8(data: bytes, pos: int, end: int) -> tuple[_Chunks, bool, bool] | None:
    """Strip the RFC 7741 §4.2 payload descriptor; key frame per §4.3 (``P`` bit 0)."""
    first = data[pos]
    pos += 1
    if first & 0x80:  # X: extended control bits
        if pos >= end:
            return None
        extension = data[pos]
        pos += 1
        if extension & 0x80:  # I: 7 or 15-bit PictureID (M bit)
            if pos >= end:
                return None
            pos += 2 if data[pos] & 0x80 else 1
        if extension & 0x40:  # L: TL0PICIDX
            pos += 1
        if extension & 0x30:  # T or K: TID/Y/KEYIDX
            pos += 1
    if pos >= end:
        return None
    start = first & 0x17 == 0x10  # S bit set, partition index 0
    return (memoryview(data)[pos:end],), start, start and not data[pos] & 0x01


def _h264(data: bytes, pos: int, end: int) -> tuple[_Chunks, bool, bool] | None:
    """Single NAL unit, STAP-A and FU-A packets (RFC 6184 §5.6, §5.7.1, §5.8) to Annex B."""
    view = memoryview(data)
    nal_type = data[pos] & 0x1F
    if 0 < nal_type < _H264_STAP_A:
        start = _h264_starts_au(nal_type, data, pos + 1, end)
        return (_START_CODE, view[pos:end]), start, nal_type == _H264_IDR
    if nal_type == _H264_STAP_A:
        chunks: list[bytes | memoryview] = []
        start = keyframe = False
        pos += 1
        while pos < end:
            if pos + 2 >= end:
                return None
            size = (data[pos] << 8) | data[pos + 1]
            pos += 2
            nal_end = pos + size
            nal_type = data[pos] & 0x1F
            if size == 0 or nal_end > end or nal_type == 0:
                return None
            if not chunks:
                start = _h264_starts_au(nal_type, data, pos + 1, nal_end)
            keyframe = keyframe or nal_type == _H264_IDR
            chunks += (_START_CODE, view[pos:nal_end])
            pos = nal_end
        return (tuple(chunks), start, keyframe) if chunks else None
    if nal_type == _H264_FU_A and pos + 2 < end:
        fu_header = data[pos + 1]
        fragment = view[pos + 2 : end]
        if not fu_header & 0x80:  # not the first fragment
            return (fragment,), False, False
        # The NAL unit header: F and NRI from the FU indicator, the type from the FU header.
        nal_type = fu_header & 0x1F
        nal_header = bytes(((data[pos] & 0xE0) | nal_type,))
        start = _h264_starts_au(nal_type, data, pos + 2, end)
        return (_START_CODE, nal_header, fragment), start, nal_type == _H264_IDR
    return None


def _h264_starts_au(nal_type: int, data: bytes, body: int, end: int) -> bool:
    """True if a NAL unit of this type, its body at ``body``, begins an access unit.

    SEI, SPS, PPS and access unit delimiters only come first (H.264
    §7.4.1.2.3); a slice does when its first_mb_in_slice, the first ue(v) of
    its header, is 0: a single 1 bit.
    """
    if nal_type in (_H264_SLICE, _H264_IDR):
        return body < end and bool(data[body] & 0x80)
    return nal_type in _H264_AU_HEADS


def _opus(data: bytes, pos: int, end: int) -> tuple[_Chunks, bool, bool] | None:
    """RFC 7587 §4.2: the payload is one Opus packet."""
    return (memoryview(data)[pos:end],), True, True


_CODECS: dict[str, tuple[_Depacketizer, int, bool]] = {
    "vp8": (_vp8, 90000, True),
    "h264": (_h264, 90000, True),
    "opus": (_opus, 48000, False),
}


def vp8_dimensions(frame: bytes) -> tuple[int, int] | None:
    """Width and height of a VP8 key frame (RFC 6386 §9.1), None for anything else.

    The frame tag (3 bytes, ``P`` bit 0 on key frames) is followed by the start
    code ``9d 01 2a`` and two little-endian 16-bit fields whose low 14 bits are
    the width and the height (the top 2 bits are the scaling).
    """
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return (width, height) if width and height else None


def h264_parameter_sets(access_unit: bytes) -> bytes | None:
    """The SPS and PPS NAL units of an Annex B access unit, in Annex B form.

    None unless both are present. This is the extradata an Annex B H.264
    stream needs in a container.
    """
    sets = [nal for nal in _nal_units(access_unit) if nal[0] & 0x1F in (_H264_SPS, _H264_PPS)]
    if {nal[0] & 0x1F for nal in sets} != {_H264_SPS, _H264_PPS}:
        return None
    return b"".join(_START_CODE + nal for nal in sets)


def h264_dimensions(sps_annexb: bytes) -> tuple[int, int] | None:
    """Width and height, after cropping, of the first SPS in Annex B bytes.

    Parses seq_parameter_set_data() of ITU-T H.264 §7.3.2.1.1 (semantics in
    §7.4.2.1.1, crop units in Table 6-1) after removing the
    emulation-prevention bytes (§7.4.1). None if there is no SPS or it cannot
    be parsed.
    """
    sps = next((nal for nal in _nal_units(sps_annexb) if nal[0] & 0x1F == _H264_SPS), None)
    if sps is None:
        return None
    bits = _Bits(sps[1:].replace(b"\x00\x00\x03", b"\x00\x00"))
    try:
        profile_idc = bits.u(8)
        bits.u(16)  # constraint_set flags, level_idc
        bits.ue()  # seq_parameter_set_id
        chroma_format_idc = 1
        separate_colour_planes = 0
        if profile_idc in _H264_HIGH_PROFILES:
            chroma_format_idc = bits.ue()
            if chroma_format_idc == 3:
                separate_colour_planes = bits.u(1)
            bits.ue()  # bit_depth_luma_minus8
            bits.ue()  # bit_depth_chroma_minus8
            bits.u(1)  # qpprime_y_zero_transform_bypass_flag
            if bits.u(1):  # seq_scaling_matrix_present_flag
                for i in range(8 if chroma_format_idc != 3 else 12):
                    if bits.u(1):  # seq_scaling_list_present_flag[i]
                        bits.skip_scaling_list(16 if i < 6 else 64)
        bits.ue()  # log2_max_frame_num_minus4
        pic_order_cnt_type = bits.ue()
        if pic_order_cnt_type == 0:
            bits.ue()  # log2_max_pic_order_cnt_lsb_minus4
        elif pic_order_cnt_type == 1:
            bits.u(1)  # delta_pic_order_always_zero_flag
            bits.se()  # offset_for_non_ref_pic
            bits.se()  # offset_for_top_to_bottom_field
            for _ in range(bits.ue()):  # num_ref_frames_in_pic_order_cnt_cycle
                bits.se()
        bits.ue()  # max_num_ref_frames
        bits.u(1)  # gaps_in_frame_num_value_allowed_flag
        width_mbs = bits.ue() + 1
        height_map_units = bits.ue() + 1
        frame_mbs_only = bits.u(1)
        if not frame_mbs_only:
            bits.u(1)  # mb_adaptive_frame_field_flag
        bits.u(1)  # direct_8x8_inference_flag
        crop_left = crop_right = crop_top = crop_bottom = 0
        if bits.u(1):  # frame_cropping_flag
            crop_left, crop_right, crop_top, crop_bottom = (bits.ue() for _ in range(4))
    except ValueError:
        return None
    if separate_colour_planes or chroma_format_idc == 0:  # ChromaArrayType 0
        crop_x, crop_y = 1, 2 - frame_mbs_only
    else:  # SubWidthC, SubHeightC
        crop_x = 2 if chroma_format_idc < 3 else 1
        crop_y = (2 if chroma_format_idc == 1 else 1) * (2 - frame_mbs_only)
    width = 16 * width_mbs - crop_x * (crop_left + crop_right)
    height = 16 * (2 - frame_mbs_only) * height_map_units - crop_y * (crop_top + crop_bottom)
    return (width, height) if width > 0 and height > 0 else None


def _nal_units(stream: bytes) -> Iterator[bytes]:
    """The NAL units of an Annex B byte stream, start codes and trailing zeros removed."""
    start = stream.find(b"\x00\x00\x01")
    while start >= 0:
        start += 3
        end = stream.find(b"\x00\x00\x01", start)
        nal = stream[start : end if end >= 0 else len(stream)].rstrip(b"\x00")
        if nal:
            yield nal
        start = end


class _Bits:
    """MSB-first reader of an RBSP: u(n), ue(v) and se(v) of ITU-T H.264 §7.2 and §9.1."""

    __slots__ = ("_left", "_value")

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data)
        self._left = 8 * len(data)

    def u(self, count: int) -> int:
        if count > self._left:
            raise ValueError("read past the end of the RBSP")
        self._left -= count
        return (self._value >> self._left) & ((1 << count) - 1)

    def ue(self) -> int:
        zeros = 0
        while not self.u(1):
            zeros += 1
        if zeros > 31:
            raise ValueError("exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)

    def skip_scaling_list(self, size: int) -> None:
        """scaling_list() of §7.3.2.1.1.1, read and discarded."""
        last = next_scale = 8
        for _ in range(size):
            if next_scale:
                next_scale = (last + self.se() + 256) % 256
            last = next_scale or last
