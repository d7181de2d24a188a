"""Login, the current user, users (admin), SSH public keys, API tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from berth.fields import Line, Text, WireModel
from berth.schemas import LoginRequest, LoginResponse, TokenCreated, TokenView, UserView
from berth.server.services import accounts, login_throttle

from .deps import Admin, CurrentUser, Db, errors

router = APIRouter(prefix="/api/v1", tags=["auth"])


@router.post("/auth/login", response_model=LoginResponse, responses=errors(401, 422, 429))
async def login(body: LoginRequest, db: Db, request: Request) -> LoginResponse:
    """Failed logins are limited per username and per client address: 429 with Retry-After."""
    settings = request.app.state.settings
    # The connection's address: uvicorn rewrites it from X-Forwarded-For only for BERTH_TRUSTED_PROXIES.
    address = request.client.host if request.client else "unknown"
    token, user = await accounts.login(db, body.username, body.password, settings.token_days, address=address,
                                       limits=login_throttle.Limits.from_settings(settings))
    return LoginResponse(token=token, username=user.username, is_admin=user.is_admin)


@router.get("/users/me", response_model=UserView, responses=errors(401))
async def me(user: CurrentUser) -> UserView:
    return UserView(username=user.username, is_admin=user.is_admin)


class NewUser(WireModel):
    username: Line = Field(max_length=64)
    password: Text = Field(min_length=accounts.PASSWORD_MIN, max_length=accounts.PASSWORD_MAX)
    is_admin: bool = False


@router.get("/users", response_model=list[UserView], responses=errors(401, 403))
async def list_users(db: Db, admin: Admin) -> list[UserView]:
    return [UserView(username=u.username, is_admin=u.is_admin) for u in await accounts.list_users(db, admin)]


class PasswordChange(WireModel):
    current_password: Text = Field(max_length=accounts.PASSWORD_MAX)
    new_password: Text = Field(min_length=accounts.PASSWORD_MIN, max_length=accounts.PASSWORD_MAX)


class PasswordChanged(BaseModel):
    ended: int = Field(description="Other browser sessions and API/gateway tokens ended by the change")


@router.post("/users/me/password", response_model=PasswordChanged, responses=errors(401, 422, 429))
async def change_password(body: PasswordChange, db: Db, user: CurrentUser, request: Request) -> PasswordChanged:
    """Needs the current password (wrong guesses are throttled like logins). Ends every browser session and
    revokes every API and gateway token of yours except the token making this request."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    settings = request.app.state.settings
    ended = await accounts.change_password(
        db, user, body.current_password, body.new_password, keep_secret=token.strip() if scheme.lower() == "bearer" else None,
        address=request.client.host if request.client else "unknown", limits=login_throttle.Limits.from_settings(settings))
    return PasswordChanged(ended=ended)


@router.post("/users", response_model=UserView, status_code=201, responses=errors(401, 403, 409, 422))
async def create_user(body: NewUser, db: Db, _admin: Admin) -> UserView:
    user = await accounts.create_user(db, body.username, body.password, is_admin=body.is_admin)
    return UserView(username=user.username, is_admin=user.is_admin)


class SshKeys(WireModel):
    keys: list[Annotated[Line, Field(max_length=16384)]] = Field(max_length=32, description="OpenSSH public key lines accepted by your sessions")


@router.get("/users/me/ssh-keys", response_model=SshKeys, responses=errors(401))
async def list_ssh_keys(user: CurrentUser) -> SshKeys:
    return SshKeys(keys=list(user.ssh_keys or []))


@router.post("/users/me/ssh-keys", response_model=SshKeys, responses=errors(401, 422))
async def add_ssh_keys(body: SshKeys, user: CurrentUser) -> SshKeys:
    """Add public keys (kept once each, newest 32) that every session you launch will accept."""
    return SshKeys(keys=accounts.add_ssh_keys(user, body.keys))


class NewToken(WireModel):
    label: Line = Field("", max_length=128)
    kind: Line = Field("api", max_length=16, description="api, gateway, or agent (admins: registers agents)")
    expires_days: float | None = Field(None, gt=0, le=100 * 365, description="Lifetime in days; none = never expires")


def _view(row) -> dict:
    return dict(id=row.id, label=row.label, kind=row.kind, created_at=row.created_at, expires_at=row.expires_at,
                revoked=row.revoked_at is not None)


@router.post("/tokens", response_model=TokenCreated, status_code=201, responses=errors(401, 403, 422))
async def create_token(body: NewToken, db: Db, user: CurrentUser) -> TokenCreated:
    row, secret = await accounts.create_token(db, user, kind=body.kind, label=body.label, expires_days=body.expires_days)
    return TokenCreated(token=secret, **_view(row))


@router.get("/tokens", response_model=list[TokenView], responses=errors(401))
async def list_tokens(db: Db, user: CurrentUser) -> list[TokenView]:
    return [TokenView(**_view(r)) for r in await accounts.list_tokens(db, user)]


@router.delete("/tokens/{token_id}", response_model=TokenView, responses=errors(401, 404))
async def revoke_token(token_id: str, db: Db, user: CurrentUser) -> TokenView:
    return TokenView(**_view(await accounts.revoke_token(db, user, token_id)))
