"""End to end on loopback: a real aiortc publisher, the SFU, real decoding subscribers."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest
from aiortc import RTCSessionDescription

from bench.clients import Subscriber, publish
from bench.synthetic import PatternVideoTrack, ToneAudioTrack
from sfu.server import Sfu
from sfu.transport import ForwardingReceiver, ForwardingSender

WIDTH, HEIGHT = 320, 240


async def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())


def decoder_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.endswith("-decoder"))


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264"])
async def test_five_subscribers_decode_forwarded_audio_and_video(sfu: Sfu, codec: str) -> None:
    pub, producers = await publish(
        sfu, "pub", [PatternVideoTrack(WIDTH, HEIGHT), ToneAudioTrack()], video_codec=codec
    )
    assert [p.kind for p in producers] == ["video", "audio"]
    assert producers[0].codec.lower() == codec.lower()
    subs = [Subscriber(sfu, f"sub{i}") for i in range(5)]
    try:
        await asyncio.gather(*(s.connect([p.id for p in producers]) for s in subs))
        ok = await wait_for(
            lambda: all(
                s.track("video").frames >= 30 and s.track("audio").frames >= 50 for s in subs
            ),
            timeout=20,
        )
        assert ok, [(s.track("video").frames, s.track("audio").frames) for s in subs]
        for s in subs:
            video = s.track("video")
            assert (video.width, video.height) == (WIDTH, HEIGHT)
        # The SFU runs no encoder or decoder: its own senders/receivers are the
        # forwarding ones, and the only decoder threads are the subscribers'.
        for peer in sfu.peers.values():
            for transceiver in peer.pc.getTransceivers():
                assert isinstance(transceiver.sender, ForwardingSender)
                assert isinstance(transceiver.receiver, ForwardingReceiver)
                assert transceiver.receiver._RTCRtpReceiver__decoder_thread is None
                assert transceiver.sender._RTCRtpSender__encoder is None
        assert decoder_threads() == 2 * len(subs)
        # Every connection's media goes through the process's one shared UDP
        # port (sfu/udpmux.py); forwarded copies through its send batch.
        assert sfu.mux is not None and len(sfu.mux.sockets) == 1
        shared = sfu.mux.sockets[0]
        assert shared.batch is not None and shared.batch.datagrams > 0
        assert shared.counts()["connections"] == len(sfu.peers) == 6
        for peer in sfu.peers.values():
            media_socket = peer.sink._sock
            assert media_socket is shared.sock
            assert (
                peer.pc.getTransceivers()[0]
                .receiver.transport.transport._connection._nominated[1]
                .protocol.local_candidate.port
                == shared.address[1]
            )

        # One DTLS certificate for the whole process (sfu/certificate.py): the
        # same fingerprints in every connection's SDP.
        fingerprints = [
            sorted(
                x for x in p.pc.localDescription.sdp.splitlines() if x.startswith("a=fingerprint")
            )
            for p in sfu.peers.values()
        ]
        assert fingerprints[0] and all(f == fingerprints[0] for f in fingerprints)

        # Subscribers get sender reports translated from the publisher's: the
        # NTP time is current and the counts are those of their own stream.
        async def remote_outbound(sub: Subscriber) -> list[object]:
            found = []
            for receiver in sub.pc.getReceivers():
                report = await receiver.getStats()
                found += [r for r in report.values() if r.type == "remote-outbound-rtp"]
            return found

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(await remote_outbound(subs[0])) < 2:
            await asyncio.sleep(0.2)
        reports = await remote_outbound(subs[0])
        assert len(reports) == 2
        for report in reports:
            assert report.packetsSent > 0  # type: ignore[attr-defined]
            sent_at = report.remoteTimestamp.timestamp()  # type: ignore[attr-defined]
            assert abs(sent_at - time.time()) < 5
        # RFC 6464 audio levels pass through and are exposed per publisher.
        audio_id = producers[1].id
        assert await wait_for(lambda: sfu.active_speaker() == audio_id, timeout=3)
        levels = [p["audio_level_dbov"] for p in sfu.stats()["producers"] if p["id"] == audio_id]
        assert levels[0] is not None and -40 < levels[0] < 0
        # The SFU's uplink estimate reaches the publisher as REMB and drives its
        # encoder's target bitrate (aiortc clamps it to its codec's range).
        sender = next(t.sender for t in pub.getTransceivers() if t.kind == "video")
        video_producer = sfu.router.producers[producers[0].id]

        from aiortc.codecs import h264, vpx

        limits = h264 if codec == "video/H264" else vpx

        def encoder_follows_remb() -> bool:
            encoder = sender._RTCRtpSender__encoder
            remb = video_producer.remb_bitrate
            expected = max(limits.MIN_BITRATE, min(remb, limits.MAX_BITRATE))
            return encoder is not None and remb > 0 and encoder.target_bitrate == expected

        assert await wait_for(encoder_follows_remb, timeout=10)
        stats = sfu.stats()
        assert stats["subscribers"] == 5 and stats["publishers"] == 1
        for consumer in stats["consumers"]:
            assert consumer["packets"] > 0
    finally:
        for s in subs:
            await s.close()
        await pub.close()


def make_lossy(subscriber: Subscriber, rate: float, seed: int = 7) -> list[int]:
    """Drop ``rate`` of the SRTP (media) datagrams arriving at a subscriber.

    Wraps the subscriber's ICE transport receive, so DTLS and RTCP are kept and
    the loss happens before decryption, as on a real link. Returns a counter.
    """
    import random

    rng = random.Random(seed)
    dropped = [0]
    ice = subscriber.pc.getTransceivers()[0].receiver.transport.transport
    original = ice._recv

    async def lossy_recv() -> bytes:
        while True:
            data: bytes = await original()
            is_srtp = 127 < data[0] < 192
            is_rtcp = len(data) > 1 and 192 <= data[1] <= 223
            if is_srtp and not is_rtcp and rng.random() < rate:
                dropped[0] += 1
                continue
            return data

    ice._recv = lossy_recv
    return dropped


async def test_lossy_subscriber_recovers_by_nack_without_disturbing_others(sfu: Sfu) -> None:
    pub, producers = await publish(sfu, "pub", [PatternVideoTrack(WIDTH, HEIGHT)])
    clean = [Subscriber(sfu, f"clean{i}") for i in range(2)]
    lossy = Subscriber(sfu, "lossy")
    try:
        sources = [producers[0].id]
        await asyncio.gather(*(s.connect(sources) for s in clean))
        # The loss wrapper goes on once the transport exists, before it starts.
        offer, lossy.consumers = await sfu.subscribe(lossy.id, sources)
        await lossy.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        dropped = make_lossy(lossy, 0.05)
        await lossy.pc.setLocalDescription(await lossy.pc.createAnswer())
        await sfu.answer(lossy.id, lossy.pc.localDescription.sdp)
        # Bounded by count and time: at least 8 s and 20 drops (fewer packets
        # flow on a loaded machine), then a moment for the last repair.
        await asyncio.sleep(8)
        assert await wait_for(lambda: dropped[0] >= 20, timeout=30), dropped
        await asyncio.sleep(0.5)
        clean_tracks = [s.track("video") for s in clean]
        clean_frames = min(t.frames for t in clean_tracks)
        video = lossy.track("video")
        # Losses are repaired by retransmission, not by skipping to a new
        # keyframe: no keyframe was requested, and the lossy subscriber decoded
        # nearly as many frames as the clean ones (a few may still be held in
        # its jitter buffer, waiting for a repair, when the test stops).
        assert sfu.stats()["keyframe_requests_sent"] == 0
        assert video.frames >= 0.95 * clean_frames, (video.frames, clean_frames)
        # No freeze beyond what the clean subscribers saw (a loaded machine
        # stalls everyone alike). The subscriber NACKs a packet again while it
        # is missing (bench.clients.NackRetrier), so a lost retransmission
        # costs a retry interval, not a wait for the next loss.
        assert video.first_frame_at is not None
        clean_frozen = max(t.frozen_time(threshold=0.2) for t in clean_tracks)
        assert video.frozen_time(threshold=0.2) <= clean_frozen + 0.5, (
            video.frozen_time(threshold=0.2),
            clean_frozen,
        )
        stats = {c["id"]: c for c in sfu.stats()["consumers"]}
        lossy_stats = stats[lossy.consumers[0].id]
        assert lossy_stats["nacks"] > 0 and lossy_stats["retransmitted"] > 0
        for s in clean:
            clean_stats = stats[s.consumers[0].id]
            assert clean_stats["retransmitted"] == 0
            assert clean_stats["nacks"] == 0
    finally:
        for s in [*clean, lossy]:
            await s.close()
        await pub.close()


def count_plis(publisher_pc) -> list[int]:  # type: ignore[no-untyped-def]
    """Count the keyframe requests (PLI/FIR) that reach an aiortc publisher's video sender."""
    from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket

    count = [0]
    sender = next(t.sender for t in publisher_pc.getTransceivers() if t.kind == "video")
    original = sender._handle_rtcp_packet

    async def counting(packet):  # type: ignore[no-untyped-def]
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            count[0] += 1
        await original(packet)

    sender._handle_rtcp_packet = counting
    return count


async def test_late_joiner_starts_fast_and_join_storm_is_coalesced(sfu: Sfu) -> None:
    pub, producers = await publish(sfu, "pub", [PatternVideoTrack(160, 120)])
    plis = count_plis(pub)
    sources = [producers[0].id]
    first = Subscriber(sfu, "first")
    subs: list[Subscriber] = [first]
    try:
        await first.connect(sources)
        assert await wait_for(lambda: first.track("video").frames > 10, timeout=10)
        # aiortc's VP8 encoder makes a keyframe every 3000 frames (100 s): after
        # 2 s the cached keyframe is too old, so a late joiner needs a new one.
        await asyncio.sleep(2.0)
        late = Subscriber(sfu, "late")
        subs.append(late)
        before = plis[0]
        await late.connect(sources)
        assert await wait_for(lambda: late.track("video").frames > 0, timeout=5)
        assert late.track("video").first_frame_at is not None
        assert late.track("video").first_frame_at - late.started_at < 1.0
        assert plis[0] - before <= 1
        # 50 subscribers at once: the first keyframe request is answered, the
        # joiners after it start from that cached keyframe.
        await asyncio.sleep(1.5)
        before = plis[0]
        storm = [Subscriber(sfu, f"storm{i}") for i in range(50)]
        subs.extend(storm)
        await asyncio.gather(*(s.connect(sources) for s in storm))
        assert await wait_for(lambda: all(s.track("video").frames > 0 for s in storm), timeout=30)
        await asyncio.sleep(0.5)
        assert plis[0] - before <= 3, plis[0] - before
        assert sfu.stats()["keyframe_requests_sent"] <= plis[0]
    finally:
        for s in subs:
            await s.close()
        await pub.close()


async def test_sockets_of_their_own_when_the_shared_port_is_off() -> None:
    """``udp_mux = false``: aiortc's socket per connection, subscribers' connected."""
    from sfu.server import SfuConfig

    async with Sfu(SfuConfig(candidate_addresses=["127.0.0.1"], udp_mux=False)) as sfu:
        pub, producers = await publish(sfu, "pub", [PatternVideoTrack(160, 120)])
        subs = [Subscriber(sfu, f"s{i}") for i in range(2)]
        try:
            await asyncio.gather(*(s.connect([p.id for p in producers]) for s in subs))
            assert await wait_for(lambda: all(s.track("video").frames > 10 for s in subs), 15)
            ports = set()
            # Subscriber connections (the SFU offers and controls ICE) send on a
            # socket connected to the nominated remote; the publisher's, where
            # the other side may nominate another pair, stays unconnected.
            for peer in sfu.peers.values():
                pair = peer.pc.getTransceivers()[
                    0
                ].receiver.transport.transport._connection._nominated[1]
                media_socket = peer.sink._sock
                assert media_socket is not None
                ports.add(media_socket.getsockname()[1])
                if peer.role == "subscriber":
                    assert media_socket.getpeername() == pair.remote_addr
                else:
                    with pytest.raises(OSError):
                        media_socket.getpeername()
            assert len(ports) == 3
        finally:
            for s in subs:
                await s.close()
            await pub.close()


async def test_a_publisher_read_late_is_not_taken_for_silent() -> None:
    """An overloaded node must not close its presenter for the input it has not read yet."""
    from sfu.server import SfuConfig

    config = SfuConfig(candidate_addresses=["127.0.0.1"], peer_timeout=2.0)
    async with Sfu(config) as sfu:
        pub, _ = await publish(sfu, "pub", [PatternVideoTrack(160, 120)])
        try:
            peer = sfu.peers["pub"]
            assert await wait_for(lambda: peer.pc.connectionState == "connected", timeout=10)
            now = sfu.now()
            peer.last_activity = now - 3.0  # nothing read from it for 3 s,
            sfu.load.lag = 5.0  # because the input waits 5 s in the socket
            sfu._reap(now)
            assert not sfu._closing and not peer.closing
            sfu.load.lag = 0.0  # read on time: 3 s of nothing is silence
            sfu._reap(now)
            assert await wait_for(lambda: "pub" not in sfu.peers, timeout=5)
        finally:
            await pub.close()


async def test_leaving_crashing_and_publisher_leaving_release_resources() -> None:
    from sfu.server import SfuConfig

    config = SfuConfig(candidate_addresses=["127.0.0.1"], peer_timeout=2.0, rtcp_interval=0.3)
    async with Sfu(config) as sfu:
        tasks_before = len(asyncio.all_tasks())
        pub, producers = await publish(sfu, "pub", [PatternVideoTrack(160, 120), ToneAudioTrack()])
        sources = [p.id for p in producers]
        subs = [Subscriber(sfu, f"s{i}") for i in range(4)]
        await asyncio.gather(*(s.connect(sources) for s in subs))
        assert await wait_for(lambda: all(s.track("video").frames > 5 for s in subs), timeout=10)
        assert len(sfu.peers) == 5 and len(sfu.router.consumers) == 8

        # A subscriber leaves cleanly.
        await subs[0].close()
        assert await wait_for(lambda: "s0" not in sfu.peers, timeout=5)
        # A subscriber crashes: its sockets vanish, no DTLS close, no BYE.
        crashed = subs[1]
        for transceiver in crashed.pc.getTransceivers()[:1]:
            connection = transceiver.receiver.transport.transport._connection
            for protocol in connection._protocols:
                protocol.transport.close()
        assert await wait_for(lambda: "s1" not in sfu.peers, timeout=8)
        assert len(sfu.router.consumers) == 4
        # The others keep receiving.
        frames = [s.track("video").frames for s in subs[2:]]
        await asyncio.sleep(1.0)
        assert all(s.track("video").frames > f + 10 for s, f in zip(subs[2:], frames, strict=True))

        # The publisher leaves: its producers go, subscribers' tracks stay idle.
        await pub.close()
        assert await wait_for(lambda: "pub" not in sfu.peers, timeout=5)
        assert sfu.router.producers == {}
        assert all(c.source is None for c in sfu.router.consumers.values())

        for s in subs[1:]:
            await s.close()
        assert await wait_for(lambda: not sfu.peers, timeout=5)
        assert sfu.router.consumers == {}
        await asyncio.sleep(0.5)
        # No task of the SFU or its peers outlives them (the SFU timer remains).
        assert len(asyncio.all_tasks()) <= tasks_before


async def test_bad_input_is_counted_and_dropped(sfu: Sfu) -> None:
    import socket
    import struct

    pub, producers = await publish(sfu, "pub", [PatternVideoTrack(160, 120), ToneAudioTrack()])
    subs = [Subscriber(sfu, f"s{i}") for i in range(2)]
    try:
        await asyncio.gather(*(s.connect([p.id for p in producers]) for s in subs))
        assert await wait_for(lambda: all(s.track("video").frames > 5 for s in subs), timeout=10)
        video_ssrc = next(t.sender._ssrc for t in pub.getTransceivers() if t.kind == "video")
        dtls = pub.getTransceivers()[0].sender.transport
        send = dtls.transport._send

        # Ahead of the stream, so that SRTP's replay protection lets them out.
        seq = (sfu.router.producers[producers[0].id].cache.highest + 200) & 0xFFFF

        def rtp(ssrc: int, pt: int, payload: bytes, b0: int = 0x80) -> bytes:
            nonlocal seq
            seq = (seq + 1) & 0xFFFF  # distinct, or the SFU's SRTP replay check drops it
            return struct.pack("!BBHII", b0, pt, seq, 5678, ssrc) + payload

        # Encrypted by the publisher's real SRTP session, so they reach the router.
        bad_rtp = [
            rtp(0xDEADBEEF, 77, b"\x00" * 40),  # unknown SSRC and payload type
            rtp(video_ssrc, 96, b"\x00" * 20 + b"\xff", b0=0xA0),  # padding longer than payload
            rtp(video_ssrc, 96, b"\xbe\xde\x00\x01\x2f\x00\x00\x00", b0=0x90),  # element overrun
        ]
        for packet in bad_rtp:
            await send(dtls._tx_srtp.protect(packet))
        bad_rtcp = [
            struct.pack("!BBHI", 0x81, 201, 7, 1) + b"\x00" * 8,  # RR whose block is truncated
            struct.pack("!BBHI", 0x81, 205, 2, 1) + b"\x00" * 4,  # NACK without FCI
            struct.pack("!BBH", 0x80, 200, 0xFFFF) + b"\x00" * 4,  # length beyond the datagram
        ]
        for packet in bad_rtcp:
            await send(dtls._tx_srtp.protect_rtcp(packet))
        # Plain garbage straight at the SFU's sockets (fails SRTP/DTLS/STUN).
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for peer in sfu.peers.values():
            ice = peer.pc.getTransceivers()[0].receiver.transport.transport
            local = ice._connection._nominated[1].local_candidate
            junks = (b"\x80" * 3, b"\x90" + bytes(range(200)), b"\x16\xfe\xfd" + b"\x01" * 50, b"")
            for junk in junks:
                raw.sendto(junk, (local.host, local.port))
        raw.close()
        await asyncio.sleep(0.5)
        stats = sfu.stats()
        malformed_rtp = sum(p["malformed"] for p in stats["producers"])
        assert stats["unknown_ssrc"] >= 1
        assert malformed_rtp >= 2
        assert stats["malformed_rtcp"] >= 3
        # Nobody was disturbed.
        frames = [s.track("video").frames for s in subs]
        await asyncio.sleep(1.0)
        assert all(s.track("video").frames > f + 10 for s, f in zip(subs, frames, strict=True))
        assert len(sfu.peers) == 3
    finally:
        for s in subs:
            await s.close()
        await pub.close()


async def test_publisher_reconnect_keeps_subscriber_stream_continuous(sfu: Sfu) -> None:
    """A subscriber's track switches source at a keyframe: same SSRC, seq+1, ts forward."""
    pub, producers = await publish(sfu, "cam1", [PatternVideoTrack(160, 120)])
    sub = Subscriber(sfu, "viewer")
    received: list[tuple[int, int, int]] = []
    try:
        await sub.connect([producers[0].id])
        receiver = sub.pc.getReceivers()[0]
        original = receiver._handle_rtp_packet

        async def record(packet, arrival_time_ms):  # type: ignore[no-untyped-def]
            received.append((packet.ssrc, packet.sequence_number, packet.timestamp))
            await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = record
        assert await wait_for(lambda: sub.track("video").frames > 10, timeout=10)
        # The publisher drops out and comes back as a new peer.
        await pub.close()
        await asyncio.sleep(0.3)
        frozen_at = sub.track("video").frames
        switch_index = len(received)
        pub, producers = await publish(sfu, "cam1-again", [PatternVideoTrack(160, 120)])
        sfu.set_source(sub.consumers[0].id, producers[0].id)
        assert await wait_for(lambda: sub.track("video").frames > frozen_at + 20, timeout=10)
        # One SSRC throughout, sequence numbers consecutive across the switch,
        # timestamps moving forward by about the time the source was away.
        assert len({ssrc for ssrc, _, _ in received}) == 1
        seqs = [seq for _, seq, _ in received]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
        before, after = received[switch_index - 1], received[switch_index]
        jump = (after[2] - before[2]) & 0xFFFFFFFF
        assert 0.2 * 90000 < jump < 5 * 90000
        assert sub.pc.connectionState == "connected"
    finally:
        await sub.close()
        await pub.close()
