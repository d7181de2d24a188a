"""Failed-login limits per username and per client address, counted in the database (shared by replicas).

Sliding window: a key is locked while it has `limit` failures younger than the window, so a lockout ends at
the latest one window after the failures that caused it, and refused attempts (never verified) do not
extend it. The per-username limit is higher than the per-address one and does not apply from an address
where the user logged in recently, so an attacker elsewhere cannot lock the owner out of their account.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from berth.errors import TooManyRequests
from berth.server.db.models import LoginAttempt
from berth.settings import ServerSettings

_KEY_CHARS = 150  # a username is free text here (the login request): bound what is stored


@dataclass(frozen=True)
class Limits:
    window_ms: int
    per_address: int
    per_user: int
    trusted_ms: int

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> Limits:
        return cls(window_ms=int(settings.login_window_s * 1000), per_address=settings.login_max_failures_per_address,
                   per_user=settings.login_max_failures_per_user, trusted_ms=int(settings.login_trusted_address_days * 86_400_000))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _user_key(username: str) -> str:
    return "user:" + username[:_KEY_CHARS]


def _address_key(address: str) -> str:
    return "addr:" + address[:_KEY_CHARS]


def _ok_key(username: str, address: str) -> str:
    return f"ok:{address[:45]} {username[:_KEY_CHARS]}"


async def _retry_after_s(db: AsyncSession, key: str, limit: int, limits: Limits, now: int) -> int | None:
    """Seconds until `key` has fewer than `limit` failures in the window; None when it has fewer now."""
    if limit <= 0:
        return None
    rows = (await db.execute(select(LoginAttempt.ts_ms).where(LoginAttempt.key == key, LoginAttempt.ts_ms > now - limits.window_ms)
                             .order_by(LoginAttempt.ts_ms.desc()).limit(limit))).scalars().all()
    if len(rows) < limit:
        return None
    return max(1, math.ceil((rows[-1] + limits.window_ms - now) / 1000))  # when the limit-th newest ages out


async def _trusted(db: AsyncSession, username: str, address: str, limits: Limits, now: int) -> bool:
    if limits.trusted_ms <= 0:
        return False
    return (await db.execute(select(LoginAttempt.id).where(
        LoginAttempt.key == _ok_key(username, address), LoginAttempt.ts_ms > now - limits.trusted_ms).limit(1))).first() is not None


async def check(db: AsyncSession, limits: Limits, username: str, address: str) -> None:
    """Refuse (429) before any password is verified when the address or the username is locked."""
    now = _now_ms()
    wait = await _retry_after_s(db, _address_key(address), limits.per_address, limits, now)
    if wait is None and not await _trusted(db, username, address, limits, now):
        wait = await _retry_after_s(db, _user_key(username), limits.per_user, limits, now)
    if wait is not None:
        raise TooManyRequests(f"too many failed logins: try again in {wait} s", retry_after_s=wait,
                              log_message=f"login throttled for {username[:64]!r} from {address}")


async def record_failure(db: AsyncSession, limits: Limits, username: str, address: str) -> None:
    now = _now_ms()
    db.add_all([LoginAttempt(key=_user_key(username), ts_ms=now), LoginAttempt(key=_address_key(address), ts_ms=now)])
    # Failures older than the window count for nothing; trusted-address rows are pruned on success.
    await db.execute(delete(LoginAttempt).where(LoginAttempt.ts_ms < now - limits.window_ms, ~LoginAttempt.key.startswith("ok:")))


async def record_success(db: AsyncSession, limits: Limits, username: str, address: str) -> None:
    if limits.trusted_ms <= 0:
        return
    now = _now_ms()
    key = _ok_key(username, address)
    await db.execute(delete(LoginAttempt).where(
        (LoginAttempt.key == key) | (LoginAttempt.key.startswith("ok:") & (LoginAttempt.ts_ms < now - limits.trusted_ms))))
    db.add(LoginAttempt(key=key, ts_ms=now))
