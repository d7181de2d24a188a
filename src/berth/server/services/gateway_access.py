"""Who may reach a session through the gateway, and with what credentials.

Three credentials open `/s/<session-id>/...`:
- a bearer token (API or gateway token) in ``Authorization``, or, for programs that cannot set headers on a
  WebSocket, offered as the subprotocol ``berth.token.<token>`` (never echoed back);
- the session-scoped cookie the shareable browser link sets after a browser login: signed with the server's key,
  bound to that browser login (logging out or a password change ends it), valid for one session's path only and
  for ``gateway_cookie_minutes``.
Either way the user needs read access to the session's project; otherwise the answer is the 404 of a session
that does not exist.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from berth.errors import Conflict, Unauthorized
from berth.schemas import SessionStatus
from berth.server.db.models import ApiToken, Session, User, Worker, utcnow

from . import access, secretbox, security, web_sessions
from .accounts import authenticate

COOKIE = "berth_gw"
TOKEN_SUBPROTOCOL = "berth.token."
_PURPOSE = "gateway-cookie"


@dataclass(frozen=True)
class Credentials:
    bearer: str | None = None
    cookie: str | None = None

    @property
    def present(self) -> bool:
        return bool(self.bearer or self.cookie)


def credentials(headers, cookies, subprotocols: list[str] | None = None) -> Credentials:
    header = headers.get("authorization", "")
    bearer = header[7:].strip() if header[:7].lower() == "bearer " else None
    for offered in subprotocols or []:
        if bearer is None and offered.startswith(TOKEN_SUBPROTOCOL):
            bearer = offered[len(TOKEN_SUBPROTOCOL):]
    return Credentials(bearer=bearer or None, cookie=cookies.get(COOKIE) or None)


def accepted_subprotocol(subprotocols: list[str]) -> str | None:
    """The subprotocol we answer with: "binary" when offered (noVNC asks for it); never the token one."""
    return "binary" if "binary" in subprotocols else None


async def user_of(db: AsyncSession, creds: Credentials, session_id: str) -> User:
    """The user behind the credentials; Unauthorized (401) when there are none or they are not valid."""
    if creds.bearer:
        principal = await authenticate(db, creds.bearer)
        if principal.kind != "user":
            raise Unauthorized("this token does not open sessions: use an API or gateway token")
        return principal.user
    if creds.cookie:
        return await _cookie_user(db, creds.cookie, session_id)
    raise Unauthorized("authentication required: open the session's browser link, or send "
                       "Authorization: Bearer <gateway token>")


async def reachable_session(db: AsyncSession, user: User, session_id: str) -> tuple[Session, Worker]:
    """The session (404 unless the user may read it) and its worker, if it is running."""
    row = await access.session_for_user(db, user, session_id)
    status = SessionStatus(row.status)
    if status not in (SessionStatus.active, SessionStatus.idle) or row.worker_id is None:
        raise Conflict(f"session {session_id} is {status.value}: there is nothing to connect to"
                       + (" yet" if not status.is_final else ""))
    worker = await db.get(Worker, row.worker_id)
    return row, worker


# --- the session-scoped cookie ------------------------------------------------------------------

async def mint_cookie(db: AsyncSession, web_secret: str, session_id: str, minutes: float) -> tuple[str, User]:
    """A cookie for `session_id` from a browser login (its web cookie's secret); the user it stands for.
    Unauthorized when the browser login is not valid; the caller checks access to the session."""
    user = await web_sessions.user_of(db, web_secret)
    token_id = (await db.execute(select(ApiToken.id).where(
        ApiToken.token_hash == security.hash_token(web_secret), ApiToken.kind == web_sessions.KIND))).scalar_one()
    expires = int(time.time() + minutes * 60)
    value = f"{token_id}.{expires}"
    return f"{value}.{secretbox.box(db).mac(_PURPOSE, f'{session_id}|{value}')}", user


async def _cookie_user(db: AsyncSession, cookie: str, session_id: str) -> User:
    parts = cookie.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        raise Unauthorized("the session cookie is not valid: open the session's browser link again")
    token_id, expires, signature = parts
    if not security.same_secret(secretbox.box(db).mac(_PURPOSE, f"{session_id}|{token_id}.{expires}"), signature):
        raise Unauthorized("the session cookie is not valid: open the session's browser link again")
    if int(expires) < time.time():
        raise Unauthorized("the session cookie expired: open the session's browser link again")
    row = (await db.execute(select(ApiToken.user_id, ApiToken.expires_at, ApiToken.revoked_at).where(
        ApiToken.id == token_id, ApiToken.kind == web_sessions.KIND))).first()
    if row is None or row.revoked_at is not None or (row.expires_at and row.expires_at < utcnow()):
        raise Unauthorized("your browser login ended: open the session's browser link again")
    user = await db.get(User, row.user_id)
    if user is None:
        raise Unauthorized("your browser login ended: open the session's browser link again")
    return user
