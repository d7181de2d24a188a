"""Random identifiers and passwords (shared by server and agent)."""

from __future__ import annotations

import secrets


def new_id(nbytes: int = 6) -> str:
    return secrets.token_hex(nbytes)


def new_password() -> str:
    """A session or bootstrap password: 24 url-safe characters, 144 bits of randomness."""
    return secrets.token_urlsafe(18)


def is_id(value: str) -> bool:
    """Whether `value` looks like an id berth made (hex, bounded): safe as a path component."""
    return 0 < len(value) <= 32 and all(c in "0123456789abcdef" for c in value)
