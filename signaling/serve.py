"""``telebridge serve``: run signaling and the SFU in one process until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from signaling.app import create_app
from signaling.config import Config
from signaling.tokens import issue_token

logger = logging.getLogger(__name__)


async def serve(
    config: Config, demo_room: str | None = None, link_ttl: float = 86400.0, stereo: bool = False
) -> int:
    """Serve until SIGINT/SIGTERM; with ``demo_room``, also run the synthetic presenter there.

    ``stereo``: the presenter sends the side-by-side 3D test card.
    """
    signaling = config.signaling
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, signaling.host, signaling.port)
    await site.start()
    base = f"http://{signaling.host}:{signaling.port}"
    print(
        f"Telebridge listening on {base} (SFU candidates: {config.sfu.candidate_addresses}, "
        f"media workers: {config.sfu.workers or 'none, one process'})"
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
