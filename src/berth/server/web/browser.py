"""Who the browser is (its cookie session) and the CSRF check every state-changing request passes."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response

from berth.errors import Forbidden
from berth.server.api.deps import Db
from berth.server.db.models import User
from berth.server.services import security, web_sessions

from . import forms

COOKIE = "berth_web"
LOGIN_CSRF_COOKIE = "berth_login_csrf"  # before a session exists: the login form's double-submit token
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"  # htmx sends it from hx-headers on <body>
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Browser:
    user: User
    secret: str

    @property
    def csrf(self) -> str:
        return web_sessions.csrf_token(self.secret)


async def get_browser(request: Request, db: Db) -> Browser:
    secret = request.cookies.get(COOKIE, "")
    return Browser(user=await web_sessions.user_of(db, secret), secret=secret)


CurrentBrowser = Annotated[Browser, Depends(get_browser)]


async def check_csrf(request: Request) -> None:
    """Every page router depends on this: a POST/PUT/PATCH/DELETE carries the session's CSRF token (form field
    or header); the login form, before there is a session, carries the token of its own cookie."""
    if request.method in _SAFE_METHODS:
        return
    refused = Forbidden("this form's security token is missing or out of date: reload the page and try again",
                        log_message=f"{request.method} {request.url.path}: CSRF check failed")
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise refused
    presented = request.headers.get(CSRF_HEADER) or (await forms.fields(request)).get(CSRF_FIELD)
    if web_sessions.csrf_ok(request.cookies.get(COOKIE), presented):
        return
    login_token = request.cookies.get(LOGIN_CSRF_COOKIE)
    if request.url.path == "/login" and login_token and presented and security.same_secret(login_token, presented):
        return
    raise refused


def secure_cookies(request: Request) -> bool:
    return request.url.scheme == "https" or request.app.state.settings.web_cookie_secure


def login_csrf(request: Request) -> str:
    """The login form's token: the one its cookie already holds, or a new one (`set_login_csrf` stores it)."""
    token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    return token if len(token) == 43 else secrets.token_urlsafe(32)


def set_login_csrf(request: Request, response: Response, token: str) -> None:
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=secure_cookies(request),
                        path="/login")


def set_session_cookie(request: Request, response: Response, secret: str) -> None:
    hours = request.app.state.settings.web_session_hours
    response.set_cookie(COOKIE, secret, max_age=int(hours * 3600), httponly=True, samesite="lax",
                        secure=secure_cookies(request), path="/")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax", secure=secure_cookies(request))
