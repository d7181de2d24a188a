"""One session's page (status, IDs, connection details, Stop); the full dashboard builds on it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response

from berth.schemas import Role, SessionView
from berth.server.api.deps import Db
from berth.server.services import access, sessions

from .apps import APPS, POLL_S
from .browser import CurrentBrowser, check_csrf
from .templates import render

router = APIRouter(include_in_schema=False, dependencies=[Depends(check_csrf)])


def live_key(view: SessionView) -> str:
    """What the live part of the page shows: the page polls with it and gets 204 (nothing to swap) until it
    changes, so a revealed password stays revealed while nothing changed."""
    return f"{view.status.value}:{int(view.idle_seconds // 60)}:{bool(view.ssh)}"


async def _context(db, browser, session_id: str) -> dict:
    row = await access.session_for_user(db, browser.user, session_id)
    view = await sessions.view(db, row)
    role = await access.role_in(db, browser.user, row.project_id)
    return {"browser": browser, "view": view, "info": APPS[view.app], "may_stop": role is not None and role.rank >= Role.member.rank,
            "live_key": live_key(view), "poll_s": POLL_S}


@router.get("/sessions/{session_id}")
async def instance_page(request: Request, session_id: str, db: Db, browser: CurrentBrowser) -> Response:
    return render(request, "instance.html", await _context(db, browser, session_id))


@router.get("/sessions/{session_id}/live")
async def instance_live(request: Request, session_id: str, db: Db, browser: CurrentBrowser,
                        known: str = Query("", max_length=100)) -> Response:
    context = await _context(db, browser, session_id)
    if known == context["live_key"]:
        return Response(status_code=204)
    return render(request, "_instance_live.html", context)


@router.post("/sessions/{session_id}/stop")
async def stop(session_id: str, db: Db, browser: CurrentBrowser) -> Response:
    row = await access.session_for_user(db, browser.user, session_id, Role.member)
    await sessions.request_stop(db, row, f"requested by {browser.user.username} (web)")
    return RedirectResponse(f"/sessions/{row.id}", status_code=303)
