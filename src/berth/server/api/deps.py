"""Dependencies shared by the routers: a database transaction per request and who is asking."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from berth.errors import BerthError, Conflict, Unauthorized
from berth.server.db.models import User
from berth.server.services import access
from berth.server.services.access import Principal
from berth.server.services.accounts import authenticate
from berth.server.services.notify import Poll

_bearer = HTTPBearer(auto_error=False, description="API token from `berth login` or `berth tokens create`")


class ErrorBody(BaseModel):
    detail: str
    field: str | None = None


def errors(*codes: int) -> dict:
    """OpenAPI `responses` for the 4xx answers a route can give."""
    text = {400: "Bad request", 401: "Not authenticated", 403: "Not allowed", 404: "Not found", 409: "Conflict",
            422: "Invalid input (the field is named)", 429: "Too many failed logins (see Retry-After)"}
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request, committed BEFORE the response is sent (scope="function" below: FastAPI's
    default runs a yield dependency's exit after the response, so a 200 could precede the commit, or a failed
    commit go unseen). A database error, in the route or at the commit, answers as an error here."""
    async with request.app.state.sessionmaker() as db:
        try:
            yield db
            await db.commit()
        except SQLAlchemyError as exc:
            await db.rollback()
            raise _not_saved(request, exc) from exc
        except BaseException:
            await db.rollback()
            raise


def _not_saved(request: Request, exc: SQLAlchemyError) -> BerthError:
    # The driver's first line names the constraint or the failure; SQLAlchemy's full text would add the
    # statement's parameters (hashes, sealed secrets) to the log.
    cause = str(getattr(exc, "orig", None) or type(exc).__name__).splitlines()[0][:300]
    log_message = f"{request.method} {request.url.path}: nothing saved: {type(exc).__name__}: {cause}"
    if isinstance(exc, IntegrityError):  # lost a race with a concurrent request (same name, same member, ...)
        return Conflict("this change conflicts with one made at the same time; nothing was saved: try again",
                        log_message=log_message)
    return BerthError("the server could not save this change (database error); nothing was saved: try again",
                      log_message=log_message)


Db = Annotated[AsyncSession, Depends(get_db, scope="function")]


async def get_principal(request: Request, db: Db,
                        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    # Bearer only: a cookie would let any site's form act with the user's API rights (CSRF); pages use their own.
    return await authenticate(db, creds.credentials if creds else None, agent_token=request.app.state.settings.agent_token)


Caller = Annotated[Principal, Depends(get_principal)]


async def get_user(principal: Caller) -> User:
    return principal.require_user()


CurrentUser = Annotated[User, Depends(get_user)]


async def get_admin(user: CurrentUser) -> User:
    return access.require_admin(user)


Admin = Annotated[User, Depends(get_admin)]

_scrape_bearer = HTTPBearer(auto_error=False, description="BERTH_METRICS_TOKEN, or an admin API token")


async def get_scraper(request: Request, db: Db,
                      creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_scrape_bearer)]) -> None:
    """GET /metrics: the metrics token, or an admin's API token."""
    token = creds.credentials if creds else None
    if access.is_metrics_token(token, request.app.state.settings.metrics_token):
        return
    if not token:
        raise Unauthorized("GET /metrics needs Authorization: Bearer <BERTH_METRICS_TOKEN or an admin API token>")
    access.require_scraper(await authenticate(db, token))


Scraper = Depends(get_scraper)


def long_poll(request: Request, wait: float) -> Poll:
    """A long poll of `wait` seconds, capped by the server's BERTH_LONG_POLL_S."""
    settings = request.app.state.settings
    return Poll(request.app.state.notifier, min(wait, settings.long_poll_s), settings.poll_interval_s)


def public_base(request: Request) -> str:
    """The server as users reach it, for the links a view carries: BERTH_PUBLIC_URL, else this request's own
    base URL (its scheme as uvicorn saw it, through BERTH_TRUSTED_PROXIES only)."""
    return (request.app.state.settings.public_url or str(request.base_url)).rstrip("/")


PublicBase = Annotated[str, Depends(public_base)]
