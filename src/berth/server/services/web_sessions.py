"""Browser sessions: the cookie holds a token of kind "web" (a row in api_tokens, only its SHA-256 stored, like
API tokens), accepted by the web pages only; the API never takes it, so a page cannot be used to forge API calls.

Each session has its own CSRF token, derived from the cookie's secret: the page that knows it was served to
that browser, and no other site can read the cookie (HttpOnly) to derive it.
"""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from berth.errors import Unauthorized
from berth.server.db.models import ApiToken, User, utcnow

from . import accounts, login_throttle, security

KIND = "web"


async def start(db: AsyncSession, username: str, password: str, *, hours: float, address: str,
                limits: login_throttle.Limits) -> tuple[str, User]:
    """Log in (throttled like the API's login): the cookie's secret and the user."""
    return await accounts.login(db, username, password, hours / 24, address=address, limits=limits, kind=KIND)


async def user_of(db: AsyncSession, secret: str | None) -> User:
    """The user a browser session belongs to; Unauthorized when there is none, or it ended or expired."""
    if not secret or security.token_kind(secret) != KIND:
        raise Unauthorized("log in to continue")
    row = (await db.execute(select(ApiToken.user_id, ApiToken.expires_at, ApiToken.revoked_at).where(
        ApiToken.token_hash == security.hash_token(secret), ApiToken.kind == KIND))).first()
    if row is None or row.revoked_at is not None or (row.expires_at and row.expires_at < utcnow()):
        raise Unauthorized("your session ended: log in again")
    user = await db.get(User, row.user_id)
    if user is None:
        raise Unauthorized("log in to continue")
    return user


async def end(db: AsyncSession, secret: str | None) -> None:
    """Log out: the row goes, so the old cookie no longer opens anything (wherever a copy of it is)."""
    if secret and security.token_kind(secret) == KIND:
        await db.execute(delete(ApiToken).where(ApiToken.token_hash == security.hash_token(secret), ApiToken.kind == KIND))


def csrf_token(secret: str) -> str:
    return hmac.new(secret.encode(), b"berth-csrf", hashlib.sha256).hexdigest()


def csrf_ok(secret: str | None, presented: str | None) -> bool:
    return bool(secret and presented) and security.same_secret(csrf_token(secret), presented)
