"""One DTLS certificate for every peer connection of a process.

aiortc makes a certificate per ``RTCPeerConnection``, then per connection an
OpenSSL context (key, certificate, ciphers, the DTLS-SRTP profiles of RFC
5764) and, for each SDP it writes, the certificate's fingerprints in three
digests (RFC 8122 ``a=fingerprint``). In a join-storm profile the context
and the fingerprints were ~4 % of the server's samples; made once, they
measured ~1 % less CPU per join and 25 KB less memory per subscriber (each
connection's OpenSSL context), ``docs/benchmarks.md``.
Browsers reuse one certificate for many connections, and so may the SFU:
the fingerprint in each SDP still authenticates the DTLS handshake (RFC
8827 §6.5), and the keys of each session come from its own ECDHE exchange.

:func:`process_certificate` hands out one :class:`ProcessCertificate`, made
again after :data:`ROTATION_SECONDS` (aiortc's certificates are valid for 30
days). Its context is built once per set of SRTP profiles and has OpenSSL's
server session cache off: shared by every connection, the cache would only
grow, and aiortc never resumes sessions.
"""

from __future__ import annotations

import time

from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    SRTPProtectionProfile,
    generate_certificate,
)
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

#: A new certificate for new connections once the current one is this old.
ROTATION_SECONDS = 86400.0


class ProcessCertificate(RTCCertificate):
    """An aiortc certificate whose fingerprints and SSL context are made once."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        super().__init__(key, cert)
        self.created = time.monotonic()
        self._fingerprints = super().getFingerprints()
        self._contexts: dict[tuple[bytes, ...], SSL.Context] = {}

    @classmethod
    def generate(cls) -> ProcessCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(key, generate_certificate(key))

    def getFingerprints(self) -> list[RTCDtlsFingerprint]:
        return list(self._fingerprints)

    def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> SSL.Context:
        profiles = tuple(profile.openssl_profile for profile in srtp_profiles)
        context = self._contexts.get(profiles)
        if context is None:
            context = super()._create_ssl_context(srtp_profiles)
            context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            self._contexts[profiles] = context
        return context


_current: ProcessCertificate | None = None


def process_certificate() -> ProcessCertificate:
    """The process's certificate, made on first use and again after :data:`ROTATION_SECONDS`."""
    global _current
    if _current is None or time.monotonic() - _current.created > ROTATION_SECONDS:
        _current = ProcessCertificate.generate()
    return _current
