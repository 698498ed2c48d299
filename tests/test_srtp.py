"""The in-place SRTP path gives exactly what pylibsrtp's public protect gives."""

from __future__ import annotations

import os
import random
import socket
import struct

import pytest
from pylibsrtp import Policy, Session

from sfu.srtp import InPlaceProtector
from sfu.transport import SrtpSink

PROFILES = [
    (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30),
    (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28),
    (Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44),
]


def session(key: bytes, profile: int, direction: int) -> Session:
    return Session(Policy(key=key, ssrc_type=direction, srtp_profile=profile))


@pytest.mark.parametrize(("profile", "key_length"), PROFILES)
def test_in_place_protect_matches_session_protect(profile: int, key_length: int) -> None:
    key = os.urandom(key_length)
    public = session(key, profile, Policy.SSRC_ANY_OUTBOUND)
    fast = InPlaceProtector(session(key, profile, Policy.SSRC_ANY_OUTBOUND))
    rng = random.Random(5)
    seq = 0xFFF0  # crosses the 16-bit wrap (the rollover counter changes)
    for _ in range(64):
        b0, b1 = 0x90, 0x60 | (rng.random() < 0.2) << 7
        tail = bytes([0xBE, 0xDE, 0, 1, 0x10, 0x33, 0, 0]) + os.urandom(rng.randrange(1, 1300))
        ts, ssrc = rng.getrandbits(32), 0x1234ABCD
        expected = public.protect(struct.pack("!BBHII", b0, b1, seq, ts, ssrc) + tail)
        got = fast.protect(b0, b1, seq, ts, ssrc, tail)
        assert got is not None and bytes(got) == expected
        seq = (seq + 1) & 0xFFFF
    # Too long for the buffer and its trailer: refused, like Session.protect.
    assert fast.protect(0x80, 0x60, seq, 0, 1, bytes(1400)) is None
    with pytest.raises(ValueError):
        public.protect(bytes(12 + 1400))


def test_protectors_sharing_the_scratch_buffer_each_produce_their_own_packets() -> None:
    """Many subscribers' protectors, one buffer: interleaved, each output is exact."""
    profile, key_length = PROFILES[2]
    keys = [os.urandom(key_length) for _ in range(3)]
    public = [session(key, profile, Policy.SSRC_ANY_OUTBOUND) for key in keys]
    fast = [InPlaceProtector(session(key, profile, Policy.SSRC_ANY_OUTBOUND)) for key in keys]
    for seq in range(20):
        tail = os.urandom(100 + 37 * seq)
        for index in range(3):
            header = struct.pack("!BBHII", 0x80, 0x60, seq, 3000 * seq, 0x100 + index)
            got = fast[index].protect(0x80, 0x60, seq, 3000 * seq, 0x100 + index, tail)
            assert got is not None and bytes(got) == public[index].protect(header + tail)


def test_sink_sends_in_place_protected_packets_a_receiver_can_read() -> None:
    key = os.urandom(30)
    profile = Policy.SRTP_PROFILE_AES128_CM_SHA1_80
    receiver = session(key, profile, Policy.SSRC_ANY_INBOUND)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(2)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink = SrtpSink()
        sink.attach(session(key, profile, Policy.SSRC_ANY_OUTBOUND), tx, rx.getsockname())
        tail = b"payload" * 100
        for seq in range(5):
            sink.send_rtp_header(0x80, 96, seq, 3000 * seq, 42, tail)
            plain = receiver.unprotect(rx.recv(2048))
            assert plain == struct.pack("!BBHII", 0x80, 96, seq, 3000 * seq, 42) + tail
        assert (sink.dropped, sink.errors) == (0, 0)
        sink.close()
        sink.send_rtp_header(0x80, 96, 9, 0, 42, tail)  # closed: counted, not raised
        assert sink.dropped == 1
