"""Shared fixtures: an SFU on loopback with fast timers, and event-loop hygiene."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from sfu.router import RouterConfig
from sfu.server import Sfu, SfuConfig


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP/WebSocket client session for a test."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def sfu() -> AsyncIterator[Sfu]:
    config = SfuConfig(candidate_addresses=["127.0.0.1"], router=RouterConfig())
    async with Sfu(config) as server:
        yield server
