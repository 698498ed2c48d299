"""Codec-specific payload inspection, without decoding: keyframes and frame starts.

* VP8: RFC 7741 §4.2 (payload descriptor) and §4.3 (payload header, whose
  ``P`` bit is 0 on key frames); the descriptor's ``S`` bit with partition
  index 0 marks the first packet of a frame.
* H.264: RFC 6184 §5.6 (single NAL unit packets), §5.7.1 (STAP-A) and
  §5.8 (FU-A); a packet carries a keyframe when it holds an IDR slice (NAL
  type 5) or a sequence parameter set (type 7); for FU-A only the fragment
  with the start bit is looked at.
* Opus (RFC 7587): every packet is independently decodable.

Each detector takes the whole RTP packet and the payload bounds, so that no
payload slice is copied on the hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: ``(packet, payload_offset, payload_end) -> is the first packet of a keyframe``
KeyframeDetector = Callable[[bytes, int, int], bool]

_H264_IDR = 5
_H264_SPS = 7
_H264_STAP_A = 24
_H264_FU_A = 28


def vp8_keyframe_start(data: bytes, pos: int, end: int) -> bool:
    """True if the packet starts a VP8 key frame (RFC 7741 §4.2, §4.3)."""
    if pos >= end:
        return False
    first = data[pos]
    # S bit set and partition index 0: the first packet of a frame.
    if not first & 0x10 or first & 0x07:
        return False
    pos += 1
    if first & 0x80:  # X: extended control bits present
        if pos >= end:
            return False
        ext = data[pos]
        pos += 1
        if ext & 0x80:  # I: picture id, 7 or 15 bits (M bit)
            if pos >= end:
                return False
            pos += 2 if data[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX byte
            pos += 1
    if pos >= end:
        return False
    return not data[pos] & 0x01


def h264_keyframe_start(data: bytes, pos: int, end: int) -> bool:
    """True if the packet carries an IDR slice start or an SPS (RFC 6184)."""
    if pos >= end:
        return False
    nal_type = data[pos] & 0x1F
    if nal_type in (_H264_IDR, _H264_SPS):
        return True
    if nal_type == _H264_STAP_A:
        pos += 1
        while pos + 2 < end:
            size = (data[pos] << 8) | data[pos + 1]
            pos += 2
            if size == 0 or pos + size > end:
                return False
            if data[pos] & 0x1F in (_H264_IDR, _H264_SPS):
                return True
            pos += size
        return False
    if nal_type == _H264_FU_A:
        if pos + 1 >= end:
            return False
        fu_header = data[pos + 1]
        return bool(fu_header & 0x80) and fu_header & 0x1F in (_H264_IDR, _H264_SPS)
    return False


def no_keyframes(data: bytes, pos: int, end: int) -> bool:
    """Audio: there are no keyframes; every packet can start a stream."""
    return False


@dataclass(frozen=True, slots=True)
class CodecInfo:
    """What the forwarding core needs to know about a negotiated codec."""

    mime_type: str
    clock_rate: int
    is_video: bool
    keyframe_start: KeyframeDetector

    @property
    def name(self) -> str:
        return self.mime_type.split("/", 1)[1]


SUPPORTED: dict[str, CodecInfo] = {
    "video/vp8": CodecInfo("video/VP8", 90000, True, vp8_keyframe_start),
    "video/h264": CodecInfo("video/H264", 90000, True, h264_keyframe_start),
    "audio/opus": CodecInfo("audio/opus", 48000, False, no_keyframes),
}


def codec_info(mime_type: str) -> CodecInfo | None:
    """The forwarding description of a MIME type, or None if it cannot be forwarded."""
    return SUPPORTED.get(mime_type.lower())
