"""``telebridge serve``: run signaling and the SFU in one process until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal

from aiohttp import web

from signaling.app import create_app
from signaling.config import Config
from signaling.tokens import issue_token

logger = logging.getLogger(__name__)


def raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one (Linux often starts at 1,024).

    Each member holds a WebSocket, and without ``[sfu] udp_mux`` a UDP socket
    (two descriptors) too: 1,000 endpoints need several thousand.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logger.info("open files limit: %d", resource.getrlimit(resource.RLIMIT_NOFILE)[0])


async def serve(
    config: Config, demo_room: str | None = None, link_ttl: float = 86400.0, stereo: bool = False
) -> int:
    """Serve until SIGINT/SIGTERM; with ``demo_room``, also run the synthetic presenter there.

    ``stereo``: the presenter sends the side-by-side 3D test card.
    """
    signaling = config.signaling
    raise_open_file_limit()
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, signaling.host, signaling.port)
    await site.start()
    base = f"http://{signaling.host}:{signaling.port}"
    sfu = config.sfu
    media = "a port per connection"
    if sfu.udp_mux:
        media = f"UDP port {sfu.udp_port}" if sfu.udp_port else "one UDP port the system picked"
        if sfu.udp_port and sfu.workers:
            media += f", workers {sfu.udp_port + 1}-{sfu.udp_port + sfu.workers}"
    candidates = str(sfu.candidate_addresses)
    if sfu.announced_addresses:
        candidates += f" announced as {sfu.announced_addresses}"
    print(
        f"Telebridge listening on {base} (SFU candidates: {candidates}, "
        f"{media}; media workers: {sfu.workers or 'none, one process'})"
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    presenter: asyncio.Task[None] | None = None
    try:
        if demo_room is not None:
            from bench.presenter import run_presenter

            token = issue_token(
                signaling.secret, demo_room, "presenter", "Synthetic presenter", link_ttl
            )
            presenter = loop.create_task(run_presenter(base, token, stereo=stereo))
            print(f"Synthetic presenter publishing into room {demo_room!r}. Open:")
            for role, name in (
                ("viewer", "District hospital"),
                ("moderator", "Moderator"),
                ("participant", "Island station"),
                ("presenter", "Central hospital"),
            ):
                link_token = issue_token(signaling.secret, demo_room, role, name, link_ttl)
                print(f"  {role:>11}: {base}/room/{demo_room}?token={link_token}&autojoin=1")
            admin = issue_token(signaling.secret, "*", "admin", "Archive reviewer", link_ttl)
            print(f"  {'archive':>11}: {base}/archive?token={admin}")
        await stop.wait()
    finally:
        if presenter is not None:
            presenter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await presenter
        await runner.cleanup()
    return 0
