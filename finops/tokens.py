"""Bearer-token text, shared by every part that checks tokens (the dashboard API, the intake receiver).

A token is ``<prefix>_<token_id>_<secret>``: ``token_id`` (12 hex digits) is public and names the stored record,
``secret`` is 32 random bytes (url-safe base64). Only ``sha256(secret)`` is stored, so a leaked store or audit never
holds a usable token, and comparison is constant-time. Each part has its own prefix (``fo`` for the dashboard,
``fi`` for the intake), so a token of one is never accepted by the other. Storage stays with each part.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from schemas.errors import FinopsError

__all__ = ["TokenTextError", "compute_token_hash", "format_token", "hashes_match", "new_token", "parse_token"]

_ID_RE = r"[0-9a-f]{12}"
_SECRET_RE = r"[A-Za-z0-9_-]{20,128}"
#: The hash a missing record is compared against, so an unknown id costs the same time as a wrong secret.
ABSENT_HASH = "0" * 64


class TokenTextError(FinopsError):
    """A presented token is not of the expected shape. The message never echoes the token."""


def compute_token_hash(secret: str) -> str:
    """Hex sha256 of a token's secret part: what a token store keeps."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def format_token(token_id: str, secret: str, prefix: str = "fo") -> str:
    return f"{prefix}_{token_id}_{secret}"


def new_token(prefix: str) -> tuple[str, str, str]:
    """A fresh ``(token_text, token_id, secret_hash)``; the text is shown once and never stored."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return format_token(token_id, secret, prefix), token_id, compute_token_hash(secret)


def parse_token(token: str, prefix: str = "fo") -> tuple[str, str]:
    """Split a presented token into ``(token_id, secret)``; raise :class:`TokenTextError` if malformed."""
    match = re.fullmatch(f"{re.escape(prefix)}_({_ID_RE})_({_SECRET_RE})", token.strip())
    if match is None:
        raise TokenTextError("invalid or revoked token")
    return match.group(1), match.group(2)


def hashes_match(secret: str, stored_hash: str | None) -> bool:
    """Constant-time check of a presented secret against a stored hash (``None``: no such token, still hashed)."""
    presented = compute_token_hash(secret)
    return hmac.compare_digest(presented.encode(), (stored_hash or ABSENT_HASH).encode()) and stored_hash is not None
