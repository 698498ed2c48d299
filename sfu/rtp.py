"""RTP fixed header and header extensions, read and written as bytes.

Wire formats:

* RTP fixed header and CSRC list: RFC 3550 §5.1.
* Header extension block: RFC 3550 §5.3.1, with the one-byte (``0xBEDE``) and
  two-byte (``0x100x``) element forms of RFC 8285 §4.2 and §4.3.
* Audio level element: RFC 6464 §3 (``V`` bit and level in -dBov).
* MID element: RFC 8843 §15 (the BUNDLE ``sdes:mid`` extension).
* Retransmission payload format: RFC 4588 §4 (original sequence number
  prepended to the original payload, sent on the RTX SSRC and payload type).

Packets stay ``bytes``. :func:`parse` reads only the fixed header and the
location of the extension elements; forwarding rebuilds the header once per
distinct subscriber layout (:func:`build_template`) and packs the per
subscriber sequence number, timestamp and SSRC in front of it
(:data:`FIXED_HEADER`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTP_VERSION = 2
FIXED_HEADER_SIZE = 12

#: ``!BBHII``: first byte, marker/payload type, sequence number, timestamp, SSRC.
FIXED_HEADER = struct.Struct("!BBHII")
_U16 = struct.Struct("!H")

ONE_BYTE_PROFILE = 0xBEDE
TWO_BYTE_PROFILE_MASK = 0xFFF0
TWO_BYTE_PROFILE = 0x1000

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet."""


@dataclass(slots=True)
class RtpHeader:
    """The fields of one RTP packet that forwarding needs.

    ``payload_offset`` and ``payload_end`` delimit the payload inside the
    original datagram (padding excluded); ``extensions`` maps element id to
    its value as ``(offset, length)`` inside the datagram.
    """

    marker: bool
    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    csrc_count: int
    payload_offset: int
    payload_end: int
    extensions: dict[int, tuple[int, int]]


def parse(data: bytes) -> RtpHeader:
    """Parse the fixed header and locate the header extension elements.

    Raises :class:`RtpError` for anything that is not RTP version 2 or whose
    lengths do not fit in the datagram (RFC 3550 §5.1, RFC 8285 §4).
    """
    size = len(data)
    if size < FIXED_HEADER_SIZE:
        raise RtpError("RTP packet shorter than the fixed header")
    b0, b1, seq, ts, ssrc = FIXED_HEADER.unpack_from(data)
    if b0 >> 6 != RTP_VERSION:
        raise RtpError("RTP version is not 2")
    cc = b0 & 0x0F
    offset = FIXED_HEADER_SIZE + 4 * cc
    extensions: dict[int, tuple[int, int]] = {}
    if b0 & 0x10:
        if offset + 4 > size:
            raise RtpError("truncated RTP header extension")
        profile = (data[offset] << 8) | data[offset + 1]
        ext_len = 4 * ((data[offset + 2] << 8) | data[offset + 3])
        start = offset + 4
        offset = start + ext_len
        if offset > size:
            raise RtpError("RTP header extension overruns the packet")
        if profile == ONE_BYTE_PROFILE:
            _parse_one_byte(data, start, offset, extensions)
        elif profile & TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE:
            _parse_two_byte(data, start, offset, extensions)
    end = size
    if b0 & 0x20:
        if size == offset:
            raise RtpError("RTP padding bit set without padding")
        pad = data[size - 1]
        if pad == 0 or offset + pad > size:
            raise RtpError("invalid RTP padding length")
        end = size - pad
    if offset > end:
        raise RtpError("RTP header longer than the packet")
    return RtpHeader(
        marker=bool(b1 & 0x80),
        payload_type=b1 & 0x7F,
        sequence_number=seq,
        timestamp=ts,
        ssrc=ssrc,
        csrc_count=cc,
        payload_offset=offset,
        payload_end=end,
        extensions=extensions,
    )


def _parse_one_byte(data: bytes, pos: int, end: int, out: dict[int, tuple[int, int]]) -> None:
    """RFC 8285 §4.2: 4-bit id, 4-bit length-minus-one; id 0 is padding, 15 stops."""
    while pos < end:
        byte = data[pos]
        if byte == 0:
            pos += 1
            continue
        ext_id = byte >> 4
        if ext_id == 15:
            return
        length = (byte & 0x0F) + 1
        pos += 1
        if pos + length > end:
            raise RtpError("one-byte header extension element overruns the block")
        out[ext_id] = (pos, length)
        pos += length


def _parse_two_byte(data: bytes, pos: int, end: int, out: dict[int, tuple[int, int]]) -> None:
    """RFC 8285 §4.3: 8-bit id, 8-bit length; id 0 is padding."""
    while pos < end:
        ext_id = data[pos]
        if ext_id == 0:
            pos += 1
            continue
        if pos + 2 > end:
            raise RtpError("truncated two-byte header extension element")
        length = data[pos + 1]
        pos += 2
        if pos + length > end:
            raise RtpError("two-byte header extension element overruns the block")
        out[ext_id] = (pos, length)
        pos += length


def build_extension_block(elements: list[tuple[int, bytes]]) -> bytes:
    """Serialize header extension elements, padded to 32 bits (RFC 8285 §4).

    The one-byte form is used when every id is 1..14 and every value is 1..16
    bytes long, the two-byte form otherwise. An empty list gives ``b""``.
    """
    if not elements:
        return b""
    one_byte = all(0 < i < 15 and 0 < len(v) <= 16 for i, v in elements)
    body = bytearray()
    if one_byte:
        for ext_id, value in elements:
            body.append((ext_id << 4) | (len(value) - 1))
            body += value
        profile = ONE_BYTE_PROFILE
    else:
        for ext_id, value in elements:
            if not 0 < ext_id < 256 or len(value) > 255:
                raise RtpError("header extension element cannot be encoded")
            body.append(ext_id)
            body.append(len(value))
            body += value
        profile = TWO_BYTE_PROFILE
    body += b"\x00" * (-len(body) % 4)
    return _U16.pack(profile) + _U16.pack(len(body) // 4) + bytes(body)


def build_template(
    data: bytes,
    header: RtpHeader,
    payload_type: int,
    extension_block: bytes,
) -> tuple[int, int, bytes]:
    """Rebuild a packet for another payload type and extension block.

    Returns ``(b0, b1, tail)``: the first two header bytes and everything
    after the fixed header (CSRC list, the new extension block, payload and
    padding of ``data``). A subscriber's copy is then one
    ``FIXED_HEADER.pack(b0, b1, seq, timestamp, ssrc) + tail``.
    """
    b0 = (data[0] & 0xEF) | (0x10 if extension_block else 0)
    b1 = (data[1] & 0x80) | payload_type
    csrc_end = FIXED_HEADER_SIZE + 4 * header.csrc_count
    tail = b"".join(
        (data[FIXED_HEADER_SIZE:csrc_end], extension_block, data[header.payload_offset :])
    )
    return b0, b1, tail


def wrap_rtx(packet: bytes, rtx_payload_type: int, rtx_seq: int, rtx_ssrc: int) -> bytes:
    """Wrap a packet, as the subscriber first received it, for retransmission.

    RFC 4588 §4: the original sequence number (OSN) is prepended to the
    payload, the packet goes out on the RTX SSRC, payload type and sequence
    space, with the original timestamp and marker; padding is dropped.
    """
    header = parse(packet)
    b0 = packet[0] & 0xDF
    b1 = (packet[1] & 0x80) | rtx_payload_type
    return b"".join(
        (
            FIXED_HEADER.pack(b0, b1, rtx_seq, header.timestamp, rtx_ssrc),
            packet[FIXED_HEADER_SIZE : header.payload_offset],
            _U16.pack(header.sequence_number),
            packet[header.payload_offset : header.payload_end],
        )
    )


def audio_level(data: bytes, element: tuple[int, int]) -> tuple[bool, int]:
    """Decode an RFC 6464 audio level element: (voice activity, level in -dBov)."""
    byte = data[element[0]]
    return bool(byte & 0x80), byte & 0x7F


def seq_newer(a: int, b: int) -> bool:
    """True if 16-bit sequence number ``a`` comes after ``b`` (RFC 1982 serial arithmetic)."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


class SequenceUnwrapper:
    """Extend 16-bit sequence numbers to monotonic integers (RFC 3550 Appendix A.1).

    A packet up to 32767 ahead of the highest one seen counts as newer, anything
    else as older (late or reordered); the first packet is mapped to itself
    plus 65536 so that older packets never go negative.
    """

    __slots__ = ("highest",)

    def __init__(self) -> None:
        self.highest = -1

    def unwrap(self, seq: int) -> int:
        """Map ``seq`` to its extended value, updating the highest seen."""
        highest = self.highest
        if highest < 0:
            self.highest = seq + 0x10000
            return self.highest
        delta = (seq - highest) & 0xFFFF
        if delta < 0x8000:
            ext = highest + delta
            self.highest = ext
            return ext
        return highest - (0x10000 - delta)
