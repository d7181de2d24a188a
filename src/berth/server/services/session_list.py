"""One page of an app's sessions, as the web instance list shows it: filtered (project, tag, dashboard status),
sorted (started, name, status), paginated, in a fixed number of queries whatever the page size (the rows and
their total here; `sessions.views` loads the names in batches)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from berth.schemas import App, SessionStatus
from berth.server.db.models import Project, Session, User

from . import access

Sort = Literal["started", "name", "status"]
SORTS: tuple[str, ...] = ("started", "name", "status")
# The dashboard's statuses in the order the list sorts them: what needs a look first.
DASHBOARD_ORDER = ("setting up", "active", "idle", "stopped", "failed")


@dataclass(frozen=True)
class Filters:
    project: str | None = None
    tag: str | None = None
    status: str | None = None  # a dashboard status: "setting up", "active", "idle", "stopped" or "failed"


@dataclass
class Page:
    rows: list[Session]
    total: int
    number: int
    size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))


def statuses_shown_as(dashboard: str) -> list[str]:
    return [s.value for s in SessionStatus if s.dashboard == dashboard]


async def page(db: AsyncSession, user: User, app: App, filters: Filters, *, sort: Sort = "started",
               descending: bool = True, number: int = 1, size: int = 25) -> Page:
    where = [Session.app == app.value]
    visible = await access.visible_project_ids(db, user)
    if visible is not None:
        where.append(Session.project_id.in_(visible))
    if filters.status:
        where.append(Session.status.in_(statuses_shown_as(filters.status)))
    if filters.project:
        where.append(Session.project_id.in_(select(Project.id).where(Project.name == filters.project)))
    if filters.tag:
        where.append(_has_tag(db, filters.tag))
    total = (await db.execute(select(func.count()).select_from(Session).where(*where))).scalar_one()
    order = _order(sort, descending)
    query = select(Session).where(*where).order_by(*order).limit(size).offset((number - 1) * size)
    return Page(rows=list((await db.execute(query)).scalars()), total=total, number=number, size=size)


def _has_tag(db: AsyncSession, tag: str):
    """Exact match on one element of the JSON tags list (not a substring of the JSON text)."""
    elements = "json_array_elements_text" if db.get_bind().dialect.name == "postgresql" else "json_each"
    values = getattr(func, elements)(Session.tags).table_valued("value").alias("tag")
    return select(values.c.value).where(values.c.value == tag).exists()


def _order(sort: Sort, descending: bool) -> list:
    started = func.coalesce(Session.started_at, Session.created_at)
    rank = {status.value: DASHBOARD_ORDER.index(status.dashboard) for status in SessionStatus}
    key = {"started": started, "name": Session.name, "status": case(rank, value=Session.status, else_=len(DASHBOARD_ORDER))}[sort]
    if sort == "started":  # ties by id in the same direction: ix_sessions_app_started serves the whole order
        return [started.desc(), Session.id.desc()] if descending else [started.asc(), Session.id.asc()]
    # Ties (same name or status) newest first, then by id, so pages never overlap.
    return [key.desc() if descending else key.asc(), started.desc(), Session.id.desc()]


async def running_counts(db: AsyncSession, user: User) -> dict[str, int]:
    """How many sessions of each app the user can see are running (queued to stopping), by app value."""
    running = [s.value for s in SessionStatus if not s.is_final]
    query = select(Session.app, func.count()).where(Session.status.in_(running)).group_by(Session.app)
    visible = await access.visible_project_ids(db, user)
    if visible is not None:
        query = query.where(Session.project_id.in_(visible))
    return {app: count for app, count in await db.execute(query)}
