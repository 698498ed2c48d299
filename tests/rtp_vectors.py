"""Hand-made RTP byte vectors for the forwarding-core tests.

Everything here is written from the RFCs with :mod:`struct`, independently of
``sfu.rtp``, so that the tests compare the core against a second encoder:

* RTP fixed header, CSRCs, padding: RFC 3550 §5.1.
* Header extension block: RFC 3550 §5.3.1; one-byte elements RFC 8285 §4.2,
  two-byte elements RFC 8285 §4.3.
* VP8 payload descriptor and payload header: RFC 7741 §4.2, §4.3.
* H.264 NAL unit, STAP-A and FU-A packets: RFC 6184 §5.6, §5.7.1, §5.8.
* RTX: RFC 4588 §4.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

VP8_PT = 96
VP8_RTX_PT = 97
OPUS_PT = 111

#: Extension id under which the test publishers send their MID (RFC 8843 §15).
PUB_MID_EXT = 4
#: Extension id under which the test publishers send the audio level (RFC 6464).
PUB_AUDIO_LEVEL_EXT = 1


def one_byte_ext(elements: Sequence[tuple[int, bytes]]) -> bytes:
    """An RFC 8285 §4.2 one-byte extension block (profile 0xBEDE), zero padded."""
    body = b"".join(bytes([(i << 4) | (len(v) - 1)]) + v for i, v in elements)
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


def two_byte_ext(elements: Sequence[tuple[int, bytes]], appbits: int = 0) -> bytes:
    """An RFC 8285 §4.3 two-byte extension block (profile 0x100X), zero padded."""
    body = b"".join(bytes([i, len(v)]) + v for i, v in elements)
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", 0x1000 | appbits, len(body) // 4) + body


def rtp(
    seq: int,
    ts: int,
    ssrc: int,
    pt: int,
    payload: bytes,
    *,
    marker: bool = False,
    csrcs: Sequence[int] = (),
    ext: bytes = b"",
    padding: int = 0,
    version: int = 2,
) -> bytes:
    """An RTP packet; ``ext`` is a whole extension block (profile, length, body)."""
    b0 = (version << 6) | (0x20 if padding else 0) | (0x10 if ext else 0) | len(csrcs)
    b1 = (0x80 if marker else 0) | pt
    head = struct.pack("!BBHII", b0, b1, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    head += b"".join(struct.pack("!I", c) for c in csrcs)
    pad = bytes(padding - 1) + bytes([padding]) if padding else b""
    return head + ext + payload + pad


# --------------------------------------------------------------------- VP8


def vp8_descriptor(
    *,
    start: bool = True,
    pid: int = 0,
    picture_id: int | None = None,
    long_picture_id: bool = False,
    tl0picidx: int | None = None,
    tid: int | None = None,
    keyidx: int | None = None,
) -> bytes:
    """RFC 7741 §4.2 payload descriptor."""
    x = picture_id is not None or tl0picidx is not None or tid is not None or keyidx is not None
    first = (0x80 if x else 0) | (0x10 if start else 0) | (pid & 0x07)
    out = bytearray([first])
    if not x:
        return bytes(out)
    ext = 0
    if picture_id is not None:
        ext |= 0x80
    if tl0picidx is not None:
        ext |= 0x40
    if tid is not None:
        ext |= 0x20
    if keyidx is not None:
        ext |= 0x10
    out.append(ext)
    if picture_id is not None:
        if long_picture_id:
            out += struct.pack("!H", 0x8000 | (picture_id & 0x7FFF))
        else:
            out.append(picture_id & 0x7F)
    if tl0picidx is not None:
        out.append(tl0picidx & 0xFF)
    if tid is not None or keyidx is not None:
        out.append(((tid or 0) << 6) | (keyidx or 0))
    return bytes(out)


#: RFC 7741 §4.3 payload header of a key frame (P bit 0, show_frame 1) and
#: the VP8 key frame start code; a delta frame has the P bit set.
VP8_KEY_HEADER = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A])
VP8_DELTA_HEADER = bytes([0x11, 0x02, 0x00])


def vp8_payload(kind: str, body: bytes = b"", descriptor: bytes | None = None) -> bytes:
    """A VP8 RTP payload: ``kind`` is ``key``, ``delta`` (frame starts) or ``cont``.

    ``descriptor`` defaults to a one-byte descriptor with S set for frame starts.
    """
    headers = {"key": VP8_KEY_HEADER, "delta": VP8_DELTA_HEADER, "cont": b""}
    if descriptor is None:
        descriptor = vp8_descriptor(start=kind != "cont")
    return descriptor + headers[kind] + body


def vp8_rtp(
    seq: int,
    ts: int,
    ssrc: int,
    kind: str,
    *,
    pt: int = VP8_PT,
    mid: bytes = b"pub-v",
    marker: bool = False,
    body: bytes | None = None,
) -> bytes:
    """A publisher's VP8 packet with its MID extension (id :data:`PUB_MID_EXT`)."""
    if body is None:
        body = struct.pack("!HI", seq & 0xFFFF, ssrc) + b"frame-data"
    return rtp(
        seq,
        ts,
        ssrc,
        pt,
        vp8_payload(kind, body),
        marker=marker,
        ext=one_byte_ext([(PUB_MID_EXT, mid)]),
    )


def opus_rtp(seq: int, ts: int, ssrc: int, level: int, *, vad: bool = True) -> bytes:
    """An Opus packet with an RFC 6464 audio level element (id :data:`PUB_AUDIO_LEVEL_EXT`)."""
    element = bytes([(0x80 if vad else 0) | level])
    return rtp(
        seq,
        ts,
        ssrc,
        OPUS_PT,
        b"\xfc" + struct.pack("!H", seq & 0xFFFF) + b"opus",
        ext=one_byte_ext([(PUB_AUDIO_LEVEL_EXT, element)]),
    )


def rtx_of(packet: bytes, rtx_pt: int, rtx_seq: int, rtx_ssrc: int) -> bytes:
    """RFC 4588 §4 retransmission of a plain packet (no CSRC, no padding)."""
    b0 = packet[0]
    x = b0 & 0x10
    offset = 12
    if x:
        offset += 4 + 4 * struct.unpack_from("!H", packet, 14)[0]
    osn = packet[2:4]
    ts = packet[4:8]
    b1 = (packet[1] & 0x80) | rtx_pt
    return (
        bytes([b0, b1])
        + struct.pack("!H", rtx_seq)
        + ts
        + struct.pack("!I", rtx_ssrc)
        + packet[12:offset]
        + osn
        + packet[offset:]
    )


# --------------------------------------------------------------------- H.264


def nal(nal_type: int, body: bytes = b"\x88\x84\x21", nri: int = 3) -> bytes:
    """One H.264 NAL unit: header (F=0, NRI, type) and body."""
    return bytes([(nri << 5) | nal_type]) + body


def stap_a(*nals: bytes) -> bytes:
    """RFC 6184 §5.7.1 STAP-A aggregating ``nals`` with 16-bit sizes."""
    return bytes([0x78]) + b"".join(struct.pack("!H", len(n)) + n for n in nals)


def fu_a(nal_type: int, *, start: bool, end: bool = False, body: bytes = b"\x01\x02") -> bytes:
    """RFC 6184 §5.8 FU-A fragment of a NAL unit of ``nal_type``."""
    indicator = (3 << 5) | 28
    header = (0x80 if start else 0) | (0x40 if end else 0) | nal_type
    return bytes([indicator, header]) + body
