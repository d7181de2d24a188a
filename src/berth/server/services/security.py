"""Passwords (argon2) and tokens (256-bit random secrets, only their SHA-256 is stored)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from berth.ids import new_id, new_password  # noqa: F401  (re-exported for services)

_hasher = PasswordHasher()

# Token prefixes tell which table to look in: user API, gateway, agent registration, worker, session supervisor.
TOKEN_KINDS = {"bu_": "api", "bg_": "gateway", "ba_": "agent", "bw_": "worker", "bs_": "session"}
_PREFIX_OF = {kind: prefix for prefix, kind in TOKEN_KINDS.items()}


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_token(kind: str) -> str:
    return _PREFIX_OF[kind] + secrets.token_urlsafe(32)


def token_kind(token: str) -> str | None:
    return TOKEN_KINDS.get(token[:3])


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())

