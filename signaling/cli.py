"""The ``telebridge`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from sfu import __version__


def _size(value: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("size must look like 640x360") from None
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError("size must be positive and even")
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="telebridge",
        description="Telebridge: a WebRTC selective forwarding unit for telehealth bridges.",
    )
    parser.add_argument("--version", action="version", version=f"telebridge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="forward a synthetic feed to decoding subscribers on loopback",
        description="Publisher -> SFU -> subscribers in one process, on 127.0.0.1.",
    )
    demo.add_argument("--config", help="TOML config file (default: embedded defaults)")
    demo.add_argument("--subscribers", type=int, default=3, help="number of subscribers")
    demo.add_argument("--duration", type=float, default=10.0, help="seconds to run")
    demo.add_argument("--codec", choices=["vp8", "h264"], default="vp8")
    demo.add_argument("--size", type=_size, default=(640, 360), help="WIDTHxHEIGHT")
    serve = commands.add_parser(
        "serve",
        help="run signaling, the browser client and the SFU (with media workers)",
        description="Serve rooms on HOST:PORT until interrupted (embedded defaults).",
    )
    serve.add_argument("--config", help="TOML config file (default: embedded defaults)")
    serve.add_argument("--host", help="listen address (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default from config: 8080)")
    serve.add_argument(
        "--record", action="store_true", help="record every room (config: [recorder] auto_record)"
    )
    serve.add_argument("--recordings", help="recordings directory (config: [recorder] directory)")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes holding the subscribers (default: [sfu] workers, "
        "else one per CPU core; 0: everything in one process)",
    )
    serve.add_argument(
        "--demo-presenter",
        metavar="ROOM",
        help="also publish a synthetic test feed into ROOM and print join links",
    )
    serve.add_argument(
        "--demo-stereo",
        action="store_true",
        help="the demo presenter sends a side-by-side 3D test card (1920x1080, 6 Mbit/s)",
    )
    token = commands.add_parser(
        "token",
        help="print an access token",
        description="Print an HS256 JWT signed with the configured secret (TELEBRIDGE_SECRET).",
    )
    token.add_argument("--config", help="TOML config file holding [signaling] secret")
    token.add_argument("--room", help="room id (not needed for --role admin)")
    token.add_argument(
        "--role",
        required=True,
        choices=["moderator", "presenter", "participant", "viewer", "admin"],
    )
    token.add_argument("--name", help="display name (default: the role)")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds of validity")
    bench = commands.add_parser(
        "bench",
        help="load-test a server with N WebRTC subscribers and report the verdict",
        description="Capacity bench: synthetic presenter, lightweight subscribers, "
        "loss/latency/CPU figures, JSON and HTML reports (bench/SCHEMA.md).",
    )
    target = bench.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8080")
    target.add_argument("--spawn", action="store_true", help="start a server and measure it")
    bench.add_argument("--subscribers", type=int, required=True)
    bench.add_argument("--bitrate", type=_bitrate, default=2_500_000, help="e.g. 2.5M")
    bench.add_argument("--size", type=_size, default=(1280, 720), help="WIDTHxHEIGHT")
    bench.add_argument("--fps", type=int, default=30)
    bench.add_argument("--codec", choices=["vp8", "h264"], default="vp8")
    bench.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    bench.add_argument("--ramp", type=float, default=50.0, help="subscribers joining per second")
    bench.add_argument(
        "--impair", help="FRACTION:delay=150ms,jitter=20ms,loss=3%%[,burst=4][,rate=2M]"
    )
    bench.add_argument("--client-processes", type=int, default=2)
    bench.add_argument("--find-max", action="store_true", help="grow the load until the SLO breaks")
    bench.add_argument("--max-subscribers", type=int, default=2000, help="find-max upper bound")
    bench.add_argument("--slo", help="e.g. loss=0.5,p99_ms=150")
    bench.add_argument(
        "--baseline",
        choices=["mediarelay"],
        help="also run the load through aiortc's MediaRelay (re-encodes per subscriber)",
    )
    bench.add_argument(
        "--baseline-subscribers",
        type=int,
        default=4,
        help="subscribers for the baseline run (it melts early)",
    )
    bench.add_argument(
        "--server-cpus",
        type=_cpus,
        help="with --spawn: pin the server to these CPUs (e.g. 0) and the bench to the rest",
    )
    bench.add_argument(
        "--server-workers",
        type=int,
        metavar="N",
        help="with --spawn: serve --workers N (default: serve's, one per core; 0: one process)",
    )
    bench.add_argument(
        "--server-setting",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="with --spawn: a config setting for the server, VALUE in TOML (sfu.udp_mux=false)",
    )
    bench.add_argument(
        "--no-pacing",
        action="store_true",
        help="the presenter sends each frame in one burst (aiortc), not paced like a browser",
    )
    bench.add_argument(
        "--stereo",
        action="store_true",
        help="the presenter sends the side-by-side 3D card (e.g. --size 1920x1080 --bitrate 6M)",
    )
    bench.add_argument(
        "--record",
        metavar="DIR",
        help="with --spawn: the server records the bench room into DIR (recorder cost)",
    )
    bench.add_argument("--json", help="write the JSON report here")
    bench.add_argument("--report", help="write the HTML report here")
    micro = commands.add_parser(
        "microbench",
        help="measure the CPU cost of one forwarded packet copy (rewrite+protect+send)",
        description="In-process fan-out micro-benchmark on loopback UDP (see docs/benchmarks.md).",
    )
    micro.add_argument("--subscribers", type=int, default=200)
    micro.add_argument("--packets", type=int, default=1000, help="packets fanned out per run")
    micro.add_argument("--repeats", type=int, default=5, help="runs per variant (median kept)")
    micro.add_argument("--json", help="write the result as JSON to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # aioice logs every candidate pair check at INFO: noise with hundreds of peers.
        logging.getLogger("aioice").setLevel(logging.WARNING)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        from bench.demo import run_demo
        from sfu.config import ConfigError, load_sfu_config

        try:
            config = load_sfu_config(args.config)
        except ConfigError as exc:
            parser.error(str(exc))
        if args.subscribers < 1 or args.duration <= 0:
            parser.error("--subscribers and --duration must be positive")
        return _run(run_demo(config, args.subscribers, args.duration, args.codec, *args.size))
    if args.command in ("serve", "token"):
        from sfu.config import ConfigError
        from signaling.config import load_config

        try:
            full = load_config(args.config)
        except ConfigError as exc:
            parser.error(str(exc))
        if not full.signaling.secret:
            parser.error("no token secret: set TELEBRIDGE_SECRET or [signaling] secret")
        if args.command == "token":
            from signaling.tokens import issue_token

            if args.role != "admin" and not args.room:
                parser.error("--room is required")
            if args.ttl <= 0:
                parser.error("--ttl must be positive")
            print(
                issue_token(full.signaling.secret, args.room or "*", args.role, args.name, args.ttl)
            )
            return 0
        from signaling.serve import serve

        if args.host:
            full.signaling.host = args.host
        if args.port is not None:
            full.signaling.port = args.port
        if args.record:
            full.recorder.auto_record = ["*"]
        if args.recordings:
            full.recorder.directory = args.recordings
        if args.workers is not None:
            if args.workers < 0:
                parser.error("--workers must be 0 or more")
            full.sfu.workers = args.workers
        elif full.sfu.workers == 0:
            full.sfu.workers = os.cpu_count() or 1
        return _run(serve(full, args.demo_presenter, stereo=args.demo_stereo))
    if args.command == "bench":
        return _bench(parser, args)
    if args.command == "microbench":
        from bench.fanout import main as microbench

        if min(args.subscribers, args.packets, args.repeats) < 1:
            parser.error("--subscribers, --packets and --repeats must be positive")
        return microbench(args.subscribers, args.packets, args.repeats, args.json)
    return 2


def _cpus(value: str) -> list[int]:
    """``0`` or ``0,1`` or ``0-3``: CPU numbers for sched_setaffinity."""
    cpus: set[int] = set()
    try:
        for part in value.split(","):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a CPU list: {value!r}") from None
    if not cpus or min(cpus) < 0:
        raise argparse.ArgumentTypeError(f"not a CPU list: {value!r}")
    return sorted(cpus)


def _bitrate(value: str) -> int:
    units = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}
    try:
        scale = units.get(value[-1:].lower(), 1)
        number = float(value[:-1] if scale != 1 else value) * scale
    except ValueError:
        raise argparse.ArgumentTypeError("bitrate must look like 2.5M or 800k") from None
    if number <= 0:
        raise argparse.ArgumentTypeError("bitrate must be positive")
    return int(number)


def _bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import os
    import shlex

    from bench.impair import parse_impairment
    from bench.load import BenchOptions, bench_command

    secret = os.environ.get("TELEBRIDGE_SECRET", "")
    if args.spawn and not secret:
        import secrets

        secret = secrets.token_hex(32)
    if not secret:
        parser.error("--url needs TELEBRIDGE_SECRET (the server's) to mint tokens")
    if args.subscribers < 1 or args.duration <= 0 or args.ramp <= 0 or args.fps <= 0:
        parser.error("--subscribers, --duration, --ramp and --fps must be positive")
    options = BenchOptions(
        subscribers=args.subscribers,
        url=args.url.rstrip("/") if args.url else None,
        spawn=args.spawn,
        bitrate=args.bitrate,
        width=args.size[0],
        height=args.size[1],
        fps=args.fps,
        codec=args.codec,
        duration=args.duration,
        ramp=args.ramp,
        client_processes=max(1, args.client_processes),
        secret=secret,
        command="telebridge " + shlex.join(sys.argv[1:]),
    )
    if args.impair:
        try:
            options.impair_fraction, options.impairment = parse_impairment(args.impair)
        except ValueError as exc:
            parser.error(f"--impair: {exc}")
    if args.slo or args.find_max:
        slo = dict(item.split("=", 1) for item in (args.slo or "loss=0.5,p99_ms=150").split(","))
        try:
            options.slo_loss_pct = float(slo.pop("loss")) if "loss" in slo else None
            options.slo_p99_ms = float(slo.pop("p99_ms")) if "p99_ms" in slo else None
        except ValueError:
            parser.error("--slo values must be numbers")
        if slo:
            parser.error(f"--slo: unknown keys {sorted(slo)}")
    limit = args.max_subscribers if args.find_max else None
    options.stereo = args.stereo
    options.pacing = not args.no_pacing
    if args.server_cpus:
        if not args.spawn:
            parser.error("--server-cpus needs --spawn")
        options.server_cpus = args.server_cpus
    if args.record:
        if not args.spawn:
            parser.error("--record needs --spawn")
        options.record_dir = args.record
    if args.server_workers is not None:
        if not args.spawn or args.server_workers < 0:
            parser.error("--server-workers needs --spawn and 0 or more")
        options.server_workers = args.server_workers
    for setting in args.server_setting:
        name, equals, value = setting.partition("=")
        table, dot, key = name.strip().rpartition(".")
        if not (equals and dot and table and key and value.strip()) or not args.spawn:
            parser.error(f"--server-setting {setting!r}: needs --spawn and TABLE.KEY=VALUE")
        options.server_settings.setdefault(table, {})[key] = value.strip()
    if args.baseline and not args.spawn:
        parser.error("--baseline needs --spawn (the baseline server runs here)")
    baseline = max(1, args.baseline_subscribers) if args.baseline else None
    return _run(bench_command(options, args.json, args.report, limit, baseline))


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run the command's coroutine on uvloop when available."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


if __name__ == "__main__":
    sys.exit(main())
