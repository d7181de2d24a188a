"""Passwords (argon2) and tokens (256-bit random secrets, only their SHA-256 is stored)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from berth.ids import new_id, new_password  # noqa: F401  (re-exported for services)

_hasher = PasswordHasher()


def configure_password_hashing(time_cost: int, memory_kib: int) -> None:
    """The server's argon2 costs (``ServerSettings.password_hash_*``), for the hashes made from now on; any
    existing hash verifies whatever they are (it records its own)."""
    global _hasher
    _hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib)


def _lower_priority() -> None:
    with contextlib.suppress(OSError):  # Linux: niceness is per thread; the event loop thread wins the CPU
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


# argon2 costs ~0.1-0.3 s of CPU by design: it runs in these threads (the C code releases the GIL), at most one
# per core but one, at a lower priority, so every other request stays fast during a burst of (failed) logins.
_HASH_THREADS = ThreadPoolExecutor(max_workers=max(1, len(os.sched_getaffinity(0)) - 1), thread_name_prefix="argon2",
                                   initializer=_lower_priority)


async def _off_loop(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(_HASH_THREADS, fn, *args)

# Token prefixes tell which table to look in: user API, gateway, agent registration, worker, session supervisor,
# web (the browser's cookie session: a row in api_tokens like API tokens, accepted by the web pages only).
TOKEN_KINDS = {"bu_": "api", "bg_": "gateway", "ba_": "agent", "bw_": "worker", "bs_": "session", "bc_": "web"}
_PREFIX_OF = {kind: prefix for prefix, kind in TOKEN_KINDS.items()}


async def hash_password(password: str) -> str:
    return await _off_loop(_hasher.hash, password)


async def verify_password(password_hash: str, password: str) -> bool:
    try:
        return await _off_loop(_hasher.verify, password_hash, password)
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

