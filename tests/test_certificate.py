"""One DTLS certificate per process (sfu/certificate.py): made once, rotated, context shared."""

from __future__ import annotations

import pytest
from aiortc.rtcdtlstransport import SRTP_PROFILES
from OpenSSL import SSL

from sfu import certificate


def test_one_certificate_with_its_context_and_fingerprints_made_once() -> None:
    first = certificate.process_certificate()
    assert certificate.process_certificate() is first
    fingerprints = first.getFingerprints()
    assert fingerprints == first.getFingerprints() and len(fingerprints) == 3
    context = first._create_ssl_context(SRTP_PROFILES)
    assert first._create_ssl_context(list(SRTP_PROFILES)) is context
    assert first._create_ssl_context(SRTP_PROFILES[:1]) is not context
    # Shared by every connection, a server session cache would only grow.
    assert context.get_session_cache_mode() == SSL.SESS_CACHE_OFF
    # Connections made from it complete a DTLS-capable set-up.
    SSL.Connection(context).set_accept_state()


def test_a_new_certificate_once_the_current_one_is_old(monkeypatch: pytest.MonkeyPatch) -> None:
    first = certificate.process_certificate()
    monkeypatch.setattr(first, "created", first.created - certificate.ROTATION_SECONDS - 1)
    second = certificate.process_certificate()
    assert second is not first
    assert second.getFingerprints() != first.getFingerprints()
    assert certificate.process_certificate() is second
