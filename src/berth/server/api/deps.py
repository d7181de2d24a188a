"""Dependencies shared by the routers: a database transaction per request and who is asking."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from berth.errors import Forbidden
from berth.server.db.models import User
from berth.server.services.accounts import Principal, authenticate

_bearer = HTTPBearer(auto_error=False, description="API token from `berth login` or `berth tokens create`")


class ErrorBody(BaseModel):
    detail: str
    field: str | None = None


def errors(*codes: int) -> dict:
    """OpenAPI `responses` for the 4xx answers a route can give."""
    text = {400: "Bad request", 401: "Not authenticated", 403: "Not allowed", 404: "Not found", 409: "Conflict",
            422: "Invalid input (the field is named)"}
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessionmaker() as db:
        try:
            yield db
            await db.commit()
        except BaseException:
            await db.rollback()
            raise


Db = Annotated[AsyncSession, Depends(get_db)]


async def get_principal(request: Request, db: Db,
                        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    token = creds.credentials if creds else request.cookies.get("berth_token")
    return await authenticate(db, token, agent_token=request.app.state.settings.agent_token)


Caller = Annotated[Principal, Depends(get_principal)]


async def get_user(principal: Caller) -> User:
    return principal.require_user()


CurrentUser = Annotated[User, Depends(get_user)]


async def get_admin(user: CurrentUser) -> User:
    if not user.is_admin:
        raise Forbidden("admin only")
    return user


Admin = Annotated[User, Depends(get_admin)]
