"""Webhook signatures: HMAC-SHA256 over the exact raw body, hex digest, ``sha256=<hex>``, constant-time compare.

DialNexa's documentation names the header ``x-nexa-signature`` (OpenAPI, authentication page) and
``x-dialnexa-signature`` (webhook reference, Mintlify); both are read. A bare hex digest (no ``sha256=``
prefix) is also accepted: it is the same 256-bit MAC with a different label, so it is exactly as hard
to forge, and a sender (or a relay) that drops the label still verifies. Anything else (another
algorithm label, a digest of another length, non-hex characters) never verifies.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

#: Header names DialNexa's documentation uses for the signature (compared case-insensitively).
SIGNATURE_HEADERS = ("x-nexa-signature", "x-dialnexa-signature")
_PREFIX = "sha256="
_HEX_DIGITS = frozenset("0123456789abcdef")
_HEX_LENGTH = 64
#: A header value longer than this is not a signature (it is not even parsed).
_MAX_HEADER_LENGTH = 512


def sign(body: bytes, secret: str) -> str:
    """The header value DialNexa sends for ``body``: ``sha256=<hex HMAC-SHA256(secret, body)>``."""
    return _PREFIX + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _digest(value: str) -> bytes | None:
    """The 32 MAC bytes a header value carries (``sha256=<hex>`` or bare ``<hex>``), else None."""
    value = value.strip()
    if len(value) > _MAX_HEADER_LENGTH:
        return None
    if value[: len(_PREFIX)].lower() == _PREFIX:
        value = value[len(_PREFIX) :]
    value = value.lower()
    if len(value) != _HEX_LENGTH or not _HEX_DIGITS.issuperset(value):
        return None
    return bytes.fromhex(value)


def verify(body: bytes, signatures: Iterable[str], secrets: Iterable[str]) -> bool:
    """True when one of ``signatures`` is the HMAC-SHA256 of ``body`` under one of ``secrets``.

    Every (signature, secret) pair is compared with ``hmac.compare_digest`` and the loop does not stop
    early, so the time taken does not depend on which pair (if any) matched.
    """
    digests = [digest for digest in map(_digest, signatures) if digest is not None]
    keys = [secret.encode("utf-8") for secret in secrets if secret]
    matched = False
    for key in keys:
        expected = hmac.new(key, body, hashlib.sha256).digest()
        for digest in digests:
            matched |= hmac.compare_digest(expected, digest)
    return matched
