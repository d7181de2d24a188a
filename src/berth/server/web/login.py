"""Login and logout pages: a cookie session (services/web_sessions), throttled like the API's login."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from berth.errors import TooManyRequests, Unauthorized
from berth.schemas import LoginRequest
from berth.server.api.deps import Db
from berth.server.services import login_throttle, web_sessions

from . import browser, forms
from .redirects import safe_next
from .templates import render

router = APIRouter(include_in_schema=False, dependencies=[Depends(browser.check_csrf)])


@router.get("/login")
async def login_page(request: Request, db: Db, next: str = "/") -> Response:
    target = safe_next(next)
    try:
        await web_sessions.user_of(db, request.cookies.get(browser.COOKIE))
        return RedirectResponse(target, status_code=303)  # already logged in
    except Unauthorized:
        pass
    return _form(request, target)


@router.post("/login")
async def login(request: Request, db: Db) -> Response:
    form = await forms.fields(request)
    username, password, target = form.get("username", "").strip(), form.get("password", ""), safe_next(form.get("next"))
    if not username or not password:
        return _form(request, target, username=username, error="Enter your username and password.", status_code=422)
    try:  # the API's login model: the same limits on both
        LoginRequest(username=username, password=password)
    except ValidationError as exc:
        first = exc.errors()[0]
        return _form(request, target, error=f"{first['loc'][0]}: {first['msg']}.", status_code=422)
    settings = request.app.state.settings
    address = request.client.host if request.client else "unknown"
    try:
        secret, _user = await web_sessions.start(db, username, password, hours=settings.web_session_hours,
                                                 address=address, limits=login_throttle.Limits.from_settings(settings))
    except TooManyRequests as exc:
        return _form(request, target, username=username, error=_sentence(exc.message), status_code=429,
                     headers=exc.headers())
    except Unauthorized as exc:
        return _form(request, target, username=username, error=_sentence(exc.message), status_code=401)
    response = RedirectResponse(target, status_code=303)
    browser.set_session_cookie(request, response, secret)
    return response


@router.post("/logout")
async def logout(request: Request, db: Db) -> Response:
    await web_sessions.end(db, request.cookies.get(browser.COOKIE))
    response = RedirectResponse("/login", status_code=303)
    browser.clear_session_cookie(request, response)
    return response


def _sentence(message: str) -> str:
    return message[:1].upper() + message[1:] + ("" if message.endswith(".") else ".")


def _form(request: Request, target: str, *, username: str = "", error: str | None = None, status_code: int = 200,
          headers: dict[str, str] | None = None) -> Response:
    token = browser.login_csrf(request)
    response = render(request, "login.html", {"next": target, "username": username, "error": error, "csrf": token},
                      status_code=status_code, headers=headers)
    browser.set_login_csrf(request, response, token)
    return response
