"""HTTP routes of the gateway: the shareable browser link `/s/<session-id>/`.

The link answers, in this order:
- a session-scoped cookie (`gateway_access.COOKIE`) or `Authorization: Bearer` -> the session's page: the desktop
  (noVNC, `static/desktop.js`) for a remote desktop of type desktop, how to connect for the others;
- a browser login (`berth_web`) with read access -> a new session-scoped cookie, and 303 back to the link;
- else 303 to the login page, which sends the browser back here.
Other HTTP paths under `/s/<id>/` that no gateway route serves answer 401 without credentials (never a redirect)
and 404 with them. Redirects
are built from the path only: nothing here reads Host or X-Forwarded-Host/-Uri.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from berth.errors import Conflict, NotFound, Unauthorized
from berth.server.api.deps import Db, public_base
from berth.server.db.models import User
from berth.server.services import access, gateway_access, sessions
from berth.server.web import browser
from berth.server.web.templates import render

from .routes import RAW_SERVICES

log = logging.getLogger("berth.gateway")
router = APIRouter(tags=["gateway"], include_in_schema=False)

# What a session id can be (ids.new_id: hex); anything else is no session, and never reaches a header.
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NO_STORE = {"Cache-Control": "no-store"}  # per-user pages and their cookies are kept by no cache
_SUB_PATH_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def entry_path(session_id: str) -> str:
    return f"/s/{session_id}/"


def _checked(session_id: str) -> str:
    if not _SESSION_ID.match(session_id):
        raise NotFound(f"no session {session_id!r}")
    return session_id


@router.get("/s/{session_id}")
async def without_slash(session_id: str) -> Response:
    return RedirectResponse(f"/s/{quote(session_id, safe='')}/", status_code=308)


@router.get("/s/{session_id}/")
async def entry(request: Request, session_id: str, db: Db) -> Response:
    """The shareable browser link."""
    session_id = _checked(session_id)
    user = await _gateway_user(db, gateway_access.credentials(request.headers, request.cookies), session_id)
    if user is None:
        return await _from_browser_login(request, db, session_id)
    try:
        await gateway_access.reachable_session(db, user, session_id)
    except Conflict as exc:  # readable but not running: say so, and where its dashboard is
        row = await access.session_for_user(db, user, session_id)
        return render(request, "session_info.html", {"view": await sessions.view(db, row), "closed": exc.message},
                      status_code=exc.http_status, headers=_NO_STORE)
    row = await access.session_for_user(db, user, session_id)
    view = await sessions.view(db, row, public_base(request))
    template = "desktop.html" if sessions.is_desktop(row) else "session_info.html"
    return render(request, template, {"view": view, "closed": None}, headers=_NO_STORE)


@router.api_route("/s/{session_id}/{rest:path}", methods=_SUB_PATH_METHODS)
async def sub_path(request: Request, session_id: str, rest: str, db: Db) -> Response:
    """Paths under a session's link that no gateway route serves (registered last): 401 without credentials,
    like every gateway path; with them, the same 404 whether or not the session exists."""
    user = await gateway_access.user_of(db, gateway_access.credentials(request.headers, request.cookies), session_id)
    await access.session_for_user(db, user, _checked(session_id))
    if rest in RAW_SERVICES:
        raise NotFound(f"/s/{session_id}/{rest} is a WebSocket: open it with a WebSocket client")
    raise NotFound(f"no such gateway path: /s/{session_id}/{rest}")


async def _gateway_user(db, creds: gateway_access.Credentials, session_id: str) -> User | None:
    """The user of a bearer token or of the session's cookie. A bad token is refused (401: a program sent it);
    a bad or expired cookie is ignored, so the browser login below can set a new one."""
    if creds.bearer:
        return await gateway_access.user_of(db, creds, session_id)
    if creds.cookie:
        try:
            return await gateway_access.user_of(db, creds, session_id)
        except Unauthorized:
            return None
    return None


async def _from_browser_login(request: Request, db, session_id: str) -> Response:
    """A logged-in browser with read access gets the session's cookie; any other goes to the login page, which
    sends it back here (the query string is dropped: `next` is the link itself)."""
    path = entry_path(session_id)
    to_login = RedirectResponse(f"/login?next={quote(path, safe='')}", status_code=303, headers=_NO_STORE)
    web_secret = request.cookies.get(browser.COOKIE)
    if not web_secret:
        return to_login
    settings = request.app.state.settings
    try:
        cookie, user = await gateway_access.mint_cookie(db, web_secret, session_id, settings.gateway_cookie_minutes)
    except Unauthorized:
        return to_login
    await access.session_for_user(db, user, session_id)  # an outsider gets the 404 and no cookie
    log.info("gateway: %s opens the browser link of session %s", user.username, session_id)
    response = RedirectResponse(path, status_code=303, headers=_NO_STORE)
    response.set_cookie(gateway_access.COOKIE, cookie, max_age=int(settings.gateway_cookie_minutes * 60), path=path,
                        httponly=True, samesite="lax", secure=browser.secure_cookies(request))
    return response
