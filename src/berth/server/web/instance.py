"""One session's page, the dashboard: status, idle clock, IDs, connection details, snapshots (each a tar download);
Stop, Extend and Sync now for members. Charts and console read `streams.py`; what is computed for display is in `dashboard.py`."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response

from berth.errors import InvalidInput, NotFound
from berth.schemas import Role, SessionView
from berth.server.api.deps import Db, public_base
from berth.server.api.workspaces import tar_response, workspace_store
from berth.server.services import access, sessions, snapshot_tar
from berth.server.services.access import Principal

from . import dashboard, forms, headers
from .apps import APPS, POLL_S
from .browser import CurrentBrowser, check_csrf
from .streams import RANGES_S
from .templates import render

router = APIRouter(include_in_schema=False, dependencies=[Depends(check_csrf)])


def live_key(view: SessionView, clock: dashboard.IdleClock | None, snapshots: int) -> str:
    """What the live part of the page shows: the page polls with it and gets 204 (nothing to swap) until it
    changes, so a revealed password stays revealed while nothing changed."""
    alive = ",".join(view.kept_alive_by or [])
    links = bool(view.links and view.links.browser)
    return f"{view.status.value}:{int(view.idle_seconds // 60)}:{bool(view.ssh)}:{links}:{clock and clock.key}:{snapshots}:{alive}"


async def _context(request: Request, db, browser, session_id: str) -> dict:
    row = await access.session_for_user(db, browser.user, session_id)
    view = await sessions.view(db, row, public_base(request))
    role = await access.role_in(db, browser.user, row.project_id)
    clock = dashboard.idle_clock(view)
    snapshots = await dashboard.snapshots(db, browser.user, row.id)
    return {"browser": browser, "view": view, "info": APPS[view.app], "may_stop": role is not None and role.rank >= Role.member.rank,
            "live_key": live_key(view, clock, len(snapshots)), "poll_s": POLL_S, "clock": clock, "snapshots": snapshots,
            "vscode_url": dashboard.vscode_url(view), "extend_hours": dashboard.EXTEND_HOURS, "ranges": list(RANGES_S),
            "size": dashboard.size}


@router.get("/sessions/{session_id}")
async def instance_page(request: Request, session_id: str, db: Db, browser: CurrentBrowser) -> Response:
    style_nonce = secrets.token_urlsafe(18)  # for the browser terminal's xterm.js <style> elements (terminal.js)
    return render(request, "instance.html", {**await _context(request, db, browser, session_id), "style_nonce": style_nonce},
                  headers={"content-security-policy": headers.csp(style_nonce=style_nonce)})


@router.get("/sessions/{session_id}/live")
async def instance_live(request: Request, session_id: str, db: Db, browser: CurrentBrowser,
                        known: str = Query("", max_length=100)) -> Response:
    context = await _context(request, db, browser, session_id)
    if known == context["live_key"]:
        return Response(status_code=204)
    return render(request, "_instance_live.html", context)


@router.get("/sessions/{session_id}/snapshots/{snapshot_id}/download")
async def download_snapshot(request: Request, session_id: str, snapshot_id: str, db: Db, browser: CurrentBrowser) -> Response:
    """The snapshot as a tar, by the API's rule (project viewers may download); another session's snapshot under
    this session's URL is answered as a missing one."""
    snap = await access.readable_snapshot(db, Principal(kind="user", user=browser.user), snapshot_id)
    if snap.session_id != session_id:
        raise NotFound(f"no snapshot {snapshot_id!r}")
    return tar_response(await snapshot_tar.snapshot_tar(db, workspace_store(request), snap))


@router.post("/sessions/{session_id}/stop")
async def stop(session_id: str, db: Db, browser: CurrentBrowser) -> Response:
    row = await access.session_for_user(db, browser.user, session_id, Role.member)
    await sessions.request_stop(db, row, f"requested by {browser.user.username} (web)")
    return RedirectResponse(f"/sessions/{row.id}", status_code=303)


@router.post("/sessions/{session_id}/extend")
async def extend(request: Request, session_id: str, db: Db, browser: CurrentBrowser) -> Response:
    row = await access.session_for_user(db, browser.user, session_id, Role.member)
    hours = _hours((await forms.fields(request)).get("hours", ""))
    await sessions.extend(db, row, hours, f"{browser.user.username} (web)")
    return RedirectResponse(f"/sessions/{row.id}", status_code=303)


@router.post("/sessions/{session_id}/sync")
async def sync_now(session_id: str, db: Db, browser: CurrentBrowser) -> Response:
    row = await access.session_for_user(db, browser.user, session_id, Role.member)
    await sessions.request_sync(db, row, f"{browser.user.username} (web)")
    return RedirectResponse(f"/sessions/{row.id}", status_code=303)


def _hours(text: str) -> float:
    """The API's rule (ExtendRequest.hours: more than 0, at most a year), with the field named."""
    try:
        hours = float(text)
    except ValueError:
        raise InvalidInput("hours: a number of hours, e.g. 4", field="hours") from None
    if not 0 < hours <= 24 * 365:
        raise InvalidInput("hours: more than 0 and at most 8760 (a year)", field="hours")
    return hours
