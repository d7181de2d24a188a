"""Projects (members and roles, managed by project admins), users (admins only) and workers and queues. Each
page asks the same service and authorization rules as the API; a page one may not open is the 404 of a
missing one."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from berth.errors import BerthError, NotFound
from berth.schemas import Role
from berth.server.api.auth import NewUser
from berth.server.api.projects import Membership
from berth.server.api.deps import Db
from berth.server.services import accounts, fleet, queues

from . import forms
from .browser import Browser, CurrentBrowser, check_csrf
from .templates import render

router = APIRouter(include_in_schema=False, dependencies=[Depends(check_csrf)])
ROLES = [r.value for r in Role]


def _admin_page(browser: Browser, path: str) -> None:
    """Admin pages answer others exactly as a page that does not exist."""
    if not browser.user.is_admin:
        raise NotFound(f"no page {path}")


@router.get("/projects")
async def projects_page(request: Request, db: Db, browser: CurrentBrowser) -> Response:
    return render(request, "projects.html", {"browser": browser, "projects": await accounts.list_projects(db, browser.user)})


async def _project(request: Request, db, browser: Browser, name: str, *, errors: dict | None = None,
                   values: dict | None = None, status_code: int = 200) -> Response:
    role, members = await accounts.project_members(db, browser.user, name)
    return render(request, "project.html", {
        "browser": browser, "name": name, "role": role, "members": members, "roles": ROLES,
        "manage": role == Role.admin, "errors": errors or {}, "values": values or {},
        "saved": request.query_params.get("saved") == "1"}, status_code=status_code)


@router.get("/projects/{name}")
async def project_page(request: Request, name: str, db: Db, browser: CurrentBrowser) -> Response:
    return await _project(request, db, browser, name)


@router.post("/projects/{name}/members")
async def set_member(request: Request, name: str, db: Db, browser: CurrentBrowser) -> Response:
    """Add a member, change a role, or remove (role "remove"): `PUT /projects/{name}/members`'s service."""
    form = await forms.fields(request)
    values = {"username": form.get("username", "").strip(), "role": form.get("role", "")}
    body, errors = forms.check(Membership, {"username": values["username"],
                                            "role": None if values["role"] == "remove" else values["role"]})
    if body is not None and not body.username:
        errors = {"username": "enter a username"}
    if body is None or errors:
        await accounts.project_members(db, browser.user, name)  # an outsider learns nothing from a bad form either
        return await _project(request, db, browser, name, errors=errors, values=values, status_code=422)
    try:
        await accounts.set_member(db, browser.user, name, body.username, body.role)
    except NotFound as exc:
        if "no user" not in exc.message:
            raise  # the project: the page's own 404
        return await _project(request, db, browser, name, errors={"username": exc.message}, values=values,
                              status_code=404)
    return RedirectResponse(f"/projects/{quote(name, safe='')}?saved=1", status_code=303)


async def _users(request: Request, db, browser: Browser, *, errors: dict | None = None, values: dict | None = None,
                 status_code: int = 200) -> Response:
    return render(request, "users.html", {"browser": browser, "users": await accounts.list_users(db, browser.user),
                                          "errors": errors or {}, "values": values or {},
                                          "created": request.query_params.get("created"),
                                          "password_min": accounts.PASSWORD_MIN}, status_code=status_code)


@router.get("/users")
async def users_page(request: Request, db: Db, browser: CurrentBrowser) -> Response:
    _admin_page(browser, "/users")
    return await _users(request, db, browser)


@router.post("/users")
async def create_user(request: Request, db: Db, browser: CurrentBrowser) -> Response:
    _admin_page(browser, "/users")
    form = await forms.fields(request)
    values = {"username": form.get("username", "").strip(), "is_admin": form.get("is_admin", "")}
    body, errors = forms.check(NewUser, {"username": values["username"], "password": form.get("password", ""),
                                         "is_admin": values["is_admin"] == "on"})
    if body is not None and not errors:
        try:
            user = await accounts.create_user(db, body.username, body.password, is_admin=body.is_admin)
            return RedirectResponse(f"/users?created={user.username}", status_code=303)
        except BerthError as exc:
            if exc.http_status >= 500:
                raise
            errors = {exc.field or "username": exc.message.split(": ", 1)[-1] if exc.field else exc.message}
    return await _users(request, db, browser, errors=errors, values=values, status_code=422)


@router.get("/workers")
async def workers_page(request: Request, db: Db, browser: CurrentBrowser) -> Response:
    """Admins: every worker with its resources, running sessions and latest host metrics. Others: the queues
    and how many online workers serve each (what they need to pick one), not the machines behind them."""
    rows = await fleet.overview(db, browser.user) if browser.user.is_admin else None
    return render(request, "workers.html", {"browser": browser, "queues": await queues.with_workers(db), "rows": rows})
