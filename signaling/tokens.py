"""Access tokens: HS256 JSON Web Tokens (RFC 7519, RFC 7518 §3.2) with room grants.

Claims: ``room`` (a room id, ``"*"`` for admin tokens), ``role``, ``name``,
``exp`` (expiry, seconds since the epoch), ``iat`` and optionally ``sub``
(a stable identity; defaults to the name).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

ROLES = ("moderator", "presenter", "participant", "viewer")
ADMIN_ROLE = "admin"
ALGORITHM = "HS256"


class TokenError(Exception):
    """A token that cannot be used; ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows."""

    room: str
    role: str
    name: str
    subject: str
    expires: float


def issue_token(
    secret: str,
    room: str,
    role: str,
    name: str | None = None,
    ttl: float = 3600.0,
    subject: str | None = None,
    now: float | None = None,
) -> str:
    """A signed token for ``role`` in ``room`` valid for ``ttl`` seconds."""
    if not secret:
        raise ValueError("no token secret configured (set TELEBRIDGE_SECRET)")
    if role not in (*ROLES, ADMIN_ROLE):
        raise ValueError(f"unknown role {role!r}")
    if role == ADMIN_ROLE:
        room = "*"
    issued = time.time() if now is None else now
    claims = {
        "room": room,
        "role": role,
        "name": name or role,
        "sub": subject or name or role,
        "iat": int(issued),
        "exp": int(issued + ttl),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: object) -> Grant:
    """Check signature, expiry and claims; raises :class:`TokenError`."""
    if not isinstance(token, str) or not token:
        raise TokenError("invalid-token", "a token is required")
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "room", "role"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("token-expired", "the token has expired") from exc
    except jwt.PyJWTError as exc:
        raise TokenError("invalid-token", f"the token is not valid: {exc}") from exc
    room, role, name = claims.get("room"), claims.get("role"), claims.get("name", "")
    if not isinstance(room, str) or not room or role not in (*ROLES, ADMIN_ROLE):
        raise TokenError("invalid-token", "the token's room or role is not valid")
    if not isinstance(name, str):
        raise TokenError("invalid-token", "the token's name is not valid")
    subject = claims.get("sub") or name or role
    return Grant(room, str(role), name[:64] or str(role), str(subject), float(claims["exp"]))
