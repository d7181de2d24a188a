"""The web pages: server-rendered Jinja2 + htmx, over the same services and the same authorization module
(services/access.py) as the API. A cookie session per browser (services/web_sessions.py), a CSRF token on
every state-changing request, security headers on every answer.

Route modules stay thin: `login` (login, logout), `apps` (apps page, instance lists), `instance` (one session's dashboard),
`streams` (its charts' JSON, its console as server-sent events),
`launch` (the launch form: new, clone, import, export), `settings` (profile, password, SSH keys, tokens),
`admin` (projects and members, users, workers and queues),
`assets` (static files). `error_page` is what the app's one error handler answers for a page.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from berth.errors import BerthError, Unauthorized

from .headers import SecurityHeaders
from .templates import render

_GATEWAY_ENTRY = re.compile(r"^/s/[^/]+/?$")
_PAGE_PREFIXES = ("/login", "/logout", "/apps/", "/sessions/", "/static/", "/settings", "/projects", "/users", "/workers")


def install(app: FastAPI) -> None:
    from . import admin, apps, assets, instance, launch, login, settings, streams

    app.add_middleware(SecurityHeaders)
    for module in (login, apps, launch, instance, streams, settings, admin, assets):
        app.include_router(module.router)


def owns(path: str) -> bool:
    """Paths the pages answer (errors there are pages too); the API lives under /api/. Of the gateway's paths,
    only a session's browser link is a page: its other paths answer programs."""
    return path == "/" or path.startswith(_PAGE_PREFIXES) or bool(_GATEWAY_ENTRY.match(path))


def error_page(request: Request, exc: BerthError) -> Response:
    """A page's error: not logged in -> the login page (then back here); else the message on a page, with the
    status the API would give (the same 404 for a session one cannot see as for a missing one)."""
    if isinstance(exc, Unauthorized) and request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        login = f"/login?next={quote(target, safe='')}" if target != "/" else "/login"
        if request.headers.get("hx-request"):  # a polled fragment: htmx moves the whole page
            return Response(status_code=401, headers={"HX-Redirect": login})
        return RedirectResponse(login, status_code=303)
    return render(request, "error.html", {"status": exc.http_status, "message": exc.message},
                  status_code=exc.http_status, headers=exc.headers())
