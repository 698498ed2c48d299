"""Signaling settings and the whole configuration (``[sfu]``, ``[signaling]``, ``[recorder]``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from recorder.service import RecorderConfig
from sfu.config import ConfigError, apply_table, load_sfu_config, read_toml
from sfu.server import SfuConfig

#: Environment variable holding the token secret (wins over the config file).
SECRET_ENV = "TELEBRIDGE_SECRET"


@dataclass(slots=True)
class SignalingConfig:
    """The ``[signaling]`` table of the config file."""

    #: HS256 secret for tokens; TELEBRIDGE_SECRET overrides it. Empty: serve refuses to start.
    secret: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    #: Largest WebSocket message accepted (bytes); larger ones get "message-too-large".
    max_message_bytes: int = 65536
    #: Rooms that may exist at once on this node.
    max_rooms: int = 100
    #: Participants per room (all roles).
    max_participants: int = 1000
    #: Receiving members this node accepts, all rooms together (0: no limit).
    #: Set it from ``telebridge bench --find-max`` for the feed's bitrate.
    max_receivers: int = 0
    #: New receivers are refused while the main process (its timers or its
    #: input), or every media process, lags this much (ms; 0: never): an
    #: overloaded node turns newcomers away rather than degrade everyone.
    overload_lag_ms: float = 250.0
    #: A media process lagging that much for this long sheds its newest receivers
    #: (``server-busy``; they retry with backoff) until it keeps up (s; 0: never).
    shed_after_s: float = 2.0
    #: Messages per second per connection (token bucket refill) and burst size.
    rate_limit: float = 20.0
    rate_burst: int = 40
    #: Seconds a client has to send "join" after connecting.
    join_timeout: float = 10.0
    #: Room state store: "memory://" (one node) or "redis://host:port/db".
    store_url: str = "memory://"
    #: Presence time-to-live in the store; refreshed every third of it.
    presence_ttl: float = 30.0
    #: This node's id in the store's node registry (empty: hostname and port).
    node_id: str = ""


@dataclass(slots=True)
class Config:
    """Everything ``telebridge serve`` needs."""

    sfu: SfuConfig = field(default_factory=SfuConfig)
    signaling: SignalingConfig = field(default_factory=SignalingConfig)
    recorder: RecorderConfig = field(default_factory=RecorderConfig)


def load_config(path: str | Path | None = None) -> Config:
    """Embedded defaults, overridden by the file at ``path``, then by the environment."""
    config = Config(sfu=load_sfu_config(path), signaling=SignalingConfig())
    if path is not None:
        table = read_toml(path).get("signaling", {})
        if not isinstance(table, dict):
            raise ConfigError("[signaling] must be a table")
        apply_table(config.signaling, table, "signaling")
        recorder = read_toml(path).get("recorder", {})
        if not isinstance(recorder, dict):
            raise ConfigError("[recorder] must be a table")
        apply_table(config.recorder, recorder, "recorder")
    secret = os.environ.get(SECRET_ENV)
    if secret:
        config.signaling.secret = secret
    return config
