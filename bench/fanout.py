"""``telebridge microbench``: the cost of one forwarded packet copy, in process.

One producer fans 1,200-byte VP8 packets out to N consumers through the real
:class:`sfu.router.Router` and real :class:`sfu.transport.SrtpSink` objects:
per copy, the header rewrite, one libsrtp protect (AES128_CM_SHA1_80, which
Chromium picks where it is the DTLS server, on its publishing connection; on
the SFU's subscriber connections the SFU is the DTLS server and Chromium gets
AEAD_AES_256_GCM, which protects a 1,200-byte packet at about the same cost
on the development box) and one send on a loopback UDP socket. A child
process drains the receiving sockets so that the kernel really delivers.

The CPU time of the sending thread (``time.thread_time``) is divided by the
number of copies. Variants measured in the same run, for ratios:

* ``full``: rewrite + protect + sendto, all copies on one socket;
* ``own_socket``: the same with one unconnected socket per subscriber, as
  aiortc binds them (what the SFU did before it connected subscriber sockets);
* ``connected``: the same with each subscriber's socket connected to its
  receiver and ``send`` (the SFU's subscriber sinks with ``udp_mux = false``);
* ``batched``: all copies on one socket, protected into the slots of a
  :class:`sfu.sendbatch.SendBatch` and sent with one ``sendmmsg(2)`` per
  packet's fan-out (the SFU's sinks on its shared UDP port, the default);
* ``rewrite``: rewrite only (sinks discard), the core's share;
* ``floor``: protect + sendto of the same bytes per copy in a bare loop, the
  least any Python forwarder on this socket API can spend;
* ``aiortc_serialize``: per copy ``RtpPacket.parse`` + field changes +
  ``serialize`` + protect + sendto, the per-copy work of a forwarder built
  on aiortc's packet objects, for comparison;
* ``replay``: per copy of a join's replay, each subscriber joining after
  the same cached keyframe and the 129 packets since (``batched`` sinks).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import selectors
import socket
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from pylibsrtp import Policy, Session

from sfu.codecs import SUPPORTED
from sfu.router import Consumer, Layout, Producer, Router, RouterConfig
from sfu.rtp import URI_MID
from sfu.sendbatch import SendBatch
from sfu.transport import SrtpSink

PACKET_SIZE = 1200
RECEIVERS = 8
#: The cached GOP a ``replay`` joiner starts from: ~0.5 s of 720p at 2.5 Mbit/s.
REPLAY_PACKETS = 130


@dataclass
class MicrobenchResult:
    subscribers: int
    packets: int
    packet_size: int
    repeats: int
    us_per_copy: dict[str, float]
    spread: dict[str, tuple[float, float]]
    machine: str


class _NullSink:
    def send_rtp(self, packet: bytes) -> None:
        pass

    def send_rtcp(self, packet: bytes) -> None:
        pass


def _drain(ports_pipe: Connection, stop: Any) -> None:
    """Child process: bind receiving sockets, report their ports, read until stopped."""
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(RECEIVERS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
    ports_pipe.send([s.getsockname()[1] for s in socks])
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            with contextlib.suppress(BlockingIOError):
                while True:
                    sock.recv(2048)
        # Drain in batches a few ms apart, like real receivers: waking the
        # receiver for every datagram would bill the wake-ups to the sender.
        time.sleep(0.003)


def _sending_socket() -> socket.socket:
    """A non-blocking UDP socket with a large send buffer, as the SFU's sinks use."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.setblocking(False)
    return sock


def _session() -> Session:
    policy = Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND)
    policy.allow_repeat_tx = True
    return Session(policy)


def _vp8_stream(packets: int) -> list[bytes]:
    """``packets`` VP8 packets of PACKET_SIZE bytes with a MID extension, a keyframe first."""
    extmap = HeaderExtensionsMap()
    extmap.configure(
        RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=1, uri=URI_MID)])
    )
    stream = []
    for i in range(packets):
        packet = RtpPacket(
            payload_type=96, sequence_number=i & 0xFFFF, timestamp=i // 4 * 3000, ssrc=0x1234
        )
        packet.extensions.mid = "0"
        descriptor = bytes([0x10, 0x00 if i == 0 else 0x01])  # S=1 PID=0, then the P bit
        packet.payload = descriptor + bytes(PACKET_SIZE - 12 - 8 - len(descriptor))
        stream.append(bytes(packet.serialize(extmap)))
    return stream


def _setup(
    subscribers: int, ports: list[int], null: bool, sockets: str = "shared"
) -> tuple[Router, Producer, list[socket.socket], SendBatch | None]:
    """A router fanning out to ``subscribers`` sinks.

    ``sockets``: ``shared`` (one socket for all), ``own_socket``, ``connected``
    or ``batched`` (one socket and a send batch, flushed by the caller).
    """
    router = Router(RouterConfig(video_cache_packets=4096))
    producer = Producer("pub:0", SUPPORTED["video/vp8"], 96, 0x1234, _NullSink(), 1, router.config)
    router.add_producer(producer)
    opened = [_sending_socket()]
    batch = SendBatch(opened[0], lambda callback: None) if sockets == "batched" else None
    for i in range(subscribers):
        _subscribe(router, i, ports, null, sockets, opened, batch, 0.0)
    return router, producer, opened, batch


def _subscribe(
    router: Router,
    i: int,
    ports: list[int],
    null: bool,
    sockets: str,
    opened: list[socket.socket],
    batch: SendBatch | None,
    now: float,
) -> Consumer:
    """Subscriber ``i`` of :func:`_setup`'s router joins at ``now``."""
    sink: Any
    if null:
        sink = _NullSink()
    else:
        sink = SrtpSink()
        addr = ("127.0.0.1", ports[i % len(ports)])
        sock = opened[0]
        if sockets not in ("shared", "batched"):
            sock = _sending_socket()
            opened.append(sock)
            if sockets == "connected":
                sock.connect(addr)
        sink.attach(_session(), sock, addr, connected=sockets == "connected", batch=batch)
    layout = Layout(96, "0", 1, None, None)
    consumer = Consumer(f"s{i}:0", "video", 0x10000 + i, sink, layout, i * 7, i * 11)
    router.add_consumer(consumer, "pub:0", now)
    return consumer


def _run_setup(
    subscribers: int, ports: list[int], packets: list[bytes], null: bool, sockets: str = "shared"
) -> float:
    """µs per copy through the router for one :func:`_setup`."""
    router, producer, opened, batch = _setup(subscribers, ports, null, sockets)
    try:
        elapsed = _run_router(router, producer, packets, batch)
        return elapsed / (subscribers * len(packets)) * 1e6
    finally:
        for sock in opened:
            sock.close()


def _run_router(
    router: Router, producer: Producer, packets: list[bytes], batch: SendBatch | None = None
) -> float:
    """CPU seconds for the fan-out of ``packets``; the sinks' send ``batch`` (if
    any) is flushed after each, where the event loop's tick would end."""
    start = time.thread_time()
    now = 1.0
    for packet in packets:
        router.on_rtp(producer, packet, now)
        if batch is not None:
            batch.flush()
        now += 0.0035
        time.sleep(0)  # let the drain process run on a 2-core box
    return time.thread_time() - start


def _run_replay(subscribers: int, ports: list[int], packets: list[bytes]) -> float:
    """µs per replayed copy: ``subscribers`` join one by one after ``packets`` (a
    keyframe first) and each starts from the cache, as joiners of a storm do;
    shared socket and send batch, flushed after each join."""
    router, producer, opened, batch = _setup(0, ports, null=False, sockets="batched")
    assert batch is not None
    try:
        for packet in packets:
            router.on_rtp(producer, packet, 1.0)
        joined = []
        start = time.thread_time()
        for i in range(subscribers):
            joined.append(_subscribe(router, i, ports, False, "batched", opened, batch, 1.0))
            batch.flush()
            time.sleep(0)
        elapsed = time.thread_time() - start
        if any(consumer.stats.packets != len(packets) for consumer in joined):
            raise RuntimeError("a replay joiner did not start from the cached keyframe")
        return elapsed / (subscribers * len(packets)) * 1e6
    finally:
        for sock in opened:
            sock.close()


def _run_aiortc(subscribers: int, ports: list[int], packets: list[bytes]) -> float:
    sessions = [_session() for _ in range(subscribers)]
    sock = _sending_socket()
    addrs = [("127.0.0.1", ports[i % len(ports)]) for i in range(subscribers)]
    start = time.thread_time()
    for n, data in enumerate(packets):
        for i in range(subscribers):
            packet = RtpPacket.parse(data)
            packet.ssrc = 0x10000 + i
            packet.sequence_number = (n + i * 7) & 0xFFFF
            packet.timestamp = (packet.timestamp + i * 11) & 0xFFFFFFFF
            with contextlib.suppress(BlockingIOError):
                sock.sendto(sessions[i].protect(packet.serialize()), addrs[i])
        time.sleep(0)
    return time.thread_time() - start


def _run_floor(subscribers: int, ports: list[int], packets: list[bytes]) -> float:
    """The floor: protect + sendto of the same packet per copy, no rewrite at all."""
    sessions = [_session() for _ in range(subscribers)]
    sock = _sending_socket()
    targets = [(s.protect, ("127.0.0.1", ports[i % len(ports)])) for i, s in enumerate(sessions)]
    sendto = sock.sendto
    start = time.thread_time()
    for data in packets:
        for protect, addr in targets:
            with contextlib.suppress(BlockingIOError):
                sendto(protect(data), addr)
        time.sleep(0)
    return time.thread_time() - start


def run_microbench(subscribers: int, packets: int, repeats: int) -> MicrobenchResult:
    """Measure each variant ``repeats`` times, interleaved; report medians."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    drain = ctx.Process(target=_drain, args=(child, stop), daemon=True)
    drain.start()
    try:
        ports: list[int] = parent.recv()
        stream = _vp8_stream(packets)
        samples: dict[str, list[float]] = {
            "full": [],
            "own_socket": [],
            "connected": [],
            "batched": [],
            "rewrite": [],
            "floor": [],
            "aiortc_serialize": [],
            "replay": [],
        }
        copies = subscribers * packets
        for _ in range(repeats):
            samples["full"].append(_run_setup(subscribers, ports, stream, null=False))
            for sockets in ("own_socket", "connected", "batched"):
                sample = _run_setup(subscribers, ports, stream, null=False, sockets=sockets)
                samples[sockets].append(sample)
            samples["rewrite"].append(_run_setup(subscribers, ports, stream, null=True))
            samples["floor"].append(_run_floor(subscribers, ports, stream) / copies * 1e6)
            samples["aiortc_serialize"].append(
                _run_aiortc(subscribers, ports, stream) / copies * 1e6
            )
            samples["replay"].append(_run_replay(subscribers, ports, stream[:REPLAY_PACKETS]))
    finally:
        stop.set()
        drain.join(timeout=5)
    return MicrobenchResult(
        subscribers=subscribers,
        packets=packets,
        packet_size=PACKET_SIZE,
        repeats=repeats,
        us_per_copy={k: round(statistics.median(v), 2) for k, v in samples.items()},
        spread={k: (round(min(v), 2), round(max(v), 2)) for k, v in samples.items()},
        machine=f"{os.cpu_count()} CPUs, {os.uname().machine}, Python {sys.version.split()[0]}",
    )


def main(
    subscribers: int,
    packets: int,
    repeats: int,
    json_path: str | None,
) -> int:
    result = run_microbench(subscribers, packets, repeats)
    for name, value in result.us_per_copy.items():
        low, high = result.spread[name]
        print(f"{name:>18}: {value:6.2f} us per copy (min {low:.2f}, max {high:.2f})")
    full = result.us_per_copy["full"]
    floor = result.us_per_copy["floor"]
    ratio = result.us_per_copy["aiortc_serialize"] / full
    print(
        f"{result.subscribers} subscribers x {result.packets} packets of {PACKET_SIZE} bytes: "
        f"full path = {full / floor:.2f}x the bare protect+sendto floor; "
        f"aiortc-style per-copy serialize costs {ratio:.2f}x the full path"
    )
    batched, connected = result.us_per_copy["batched"], result.us_per_copy["connected"]
    print(f"shared socket + sendmmsg per fan-out = {batched / connected:.2f}x connected sockets")
    replay = result.us_per_copy["replay"]
    print(f"a joiner's replay from the cache = {replay / batched:.2f}x a live fan-out copy")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(asdict(result), f, indent=2)
    return 0
