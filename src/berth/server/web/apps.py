"""The apps page and each app's instance list (live rows through htmx polling)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from berth.errors import NotFound
from berth.fields import Line
from berth.schemas import App
from berth.server.api.deps import Db
from berth.server.services import accounts, session_list, sessions

from .browser import CurrentBrowser, check_csrf
from .templates import render

router = APIRouter(include_in_schema=False, dependencies=[Depends(check_csrf)])

APPS = {
    App.ssh_session: {"title": "SSH Session", "icon": "terminal",
                      "blurb": "A remote development environment you reach over SSH: your repository, packages and "
                               "workspace, restored where you left off."},
    App.remote_desktop: {"title": "Remote Desktop", "icon": "desktop",
                         "blurb": "A full graphical desktop in your browser, on a worker with the resources you need."},
}
ListStatus = Literal["setting up", "active", "idle", "stopped", "failed"]
POLL_S = 3


@router.get("/")
async def apps_page(request: Request, db: Db, browser: CurrentBrowser) -> Response:
    running = await session_list.running_counts(db, browser.user)
    return render(request, "apps.html", {"browser": browser, "apps": APPS, "running": running})


def _app(slug: str) -> App:
    try:
        return App(slug)
    except ValueError:
        raise NotFound(f"no app {slug!r}") from None


class ListQuery:
    """The list's query string: filters, sort and page (each checked; a bad value is a 422 naming it)."""

    def __init__(self, project: Line | None = Query(None, max_length=128), tag: Line | None = Query(None, max_length=64),
                 status: ListStatus | None = None, sort: session_list.Sort = "started",
                 order: Literal["asc", "desc"] = "desc", page: int = Query(1, ge=1, le=100_000),
                 size: int = Query(25, ge=5, le=100)):
        self.filters = session_list.Filters(project=project or None, tag=(tag or "").strip() or None, status=status)
        self.sort, self.order, self.page, self.size = sort, order, page, size

    def query(self, **change) -> str:
        values = {"project": self.filters.project, "tag": self.filters.tag, "status": self.filters.status,
                  "sort": self.sort, "order": self.order, "page": self.page, "size": self.size, **change}
        defaults = {"sort": "started", "order": "desc", "page": 1, "size": 25}
        return urlencode({k: v for k, v in values.items() if v is not None and defaults.get(k) != v})

    def sort_link(self, column: str) -> str:
        """Clicking a column header sorts by it; clicking it again flips the order."""
        order = ("asc" if self.order == "desc" else "desc") if self.sort == column else ("asc" if column == "name" else "desc")
        return self.query(sort=column, order=order, page=1)


async def _page(db, browser, slug: str, q: ListQuery) -> dict:
    app = _app(slug)
    page = await session_list.page(db, browser.user, app, q.filters, sort=q.sort, descending=q.order == "desc",
                                   number=q.page, size=q.size)
    return {"browser": browser, "app": app, "info": APPS[app], "q": q, "page": page, "poll_s": POLL_S,
            "views": await sessions.views(db, page.rows)}


@router.get("/apps/{slug}")
async def instance_list(request: Request, slug: str, db: Db, browser: CurrentBrowser, q: ListQuery = Depends()) -> Response:
    context = await _page(db, browser, slug, q)
    context["projects"] = [name for name, _role in await accounts.list_projects(db, browser.user)]
    context["statuses"] = session_list.DASHBOARD_ORDER
    return render(request, "instances.html", context)


@router.get("/apps/{slug}/rows")
async def instance_rows(request: Request, slug: str, db: Db, browser: CurrentBrowser, q: ListQuery = Depends()) -> Response:
    """The table body alone, polled by the list page (htmx) so statuses change without a reload."""
    return render(request, "_rows_poll.html", await _page(db, browser, slug, q))
