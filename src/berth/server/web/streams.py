"""The dashboard's live data: chart series (JSON the page polls) and the console (server-sent events). Same
services and same authorization as the API's `GET /sessions/{id}/metrics` and `/events`: an outsider gets the
same 404 as for a missing session."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from berth.schemas import SessionStatus
from berth.server.api.deps import Db
from berth.server.db.models import Session, utcnow
from berth.server.services import access, metrics, sessions
from berth.server.services.notify import Poll

from .browser import CurrentBrowser, check_csrf

router = APIRouter(include_in_schema=False, dependencies=[Depends(check_csrf)])

RANGES_S = {"15m": 900, "1h": 3600, "6h": 21600, "24h": 86400}  # the time-range picker
CHART_POINTS = 720  # buckets per range: finer than the charts' width needs
STREAM_WAIT_S = 15.0  # a comment line at least this often keeps proxies from closing an idle stream
_BATCH = 500


@router.get("/sessions/{session_id}/metrics.json")
async def chart_data(session_id: str, db: Db, browser: CurrentBrowser,
                     span: str = Query("1h", alias="range", pattern="^(15m|1h|6h|24h)$")) -> Response:
    """Mean per bucket of each series, times in epoch seconds (what uPlot draws), and whether the worker has a GPU."""
    row = await access.session_for_user(db, browser.user, session_id)
    end = (row.stopped_at or utcnow()) + timedelta(milliseconds=1)
    view = await metrics.query(db, metrics.SESSIONS, session_id, end - timedelta(seconds=RANGES_S[span]), end, CHART_POINTS)
    latest = view.latest
    body = {
        "range": span, "start": view.start.timestamp(), "end": view.end.timestamp(), "bucket_s": view.bucket_s,
        "t": [round(t.timestamp(), 3) for t in view.t],
        "series": {name: s.mean for name, s in view.series.items()},
        "gpu": bool(latest and latest.gpu_available and latest.gpus),
        "network_scope": view.network_scope,
    }
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json",
                    headers={"Cache-Control": "no-store"})


def _event(row) -> str:
    data = json.dumps({"id": row.id, "ts": row.ts.isoformat(), "level": row.level, "message": row.message})
    return f"id: {row.id}\ndata: {data}\n\n"


async def _ended(db: AsyncSession, session_id: str) -> bool:
    status = await db.scalar(select(Session.status).where(Session.id == session_id))
    return status is None or SessionStatus(status).is_final


async def _console(request: Request, session_id: str, after: int) -> AsyncIterator[str]:
    """Console lines as they reach the server, on the same long poll as `berth sessions logs --follow`. Ends when
    the server shuts down (the notifier answers every wait at once), when the browser goes, or once the session
    has ended and every line is out (`event: end`, so EventSource does not reconnect)."""
    state = request.app.state
    poll = Poll(state.notifier, STREAM_WAIT_S, state.settings.poll_interval_s)
    no_wait = Poll(state.notifier, 0.0, state.settings.poll_interval_s)
    yield "retry: 3000\n\n"
    while not state.notifier.closing and not await request.is_disconnected():
        async with state.sessionmaker() as db:
            # Once ended (seen before reading), no line is coming: read what is there and end without holding on.
            ended = await _ended(db, session_id)
            rows = await sessions.wait_for_events(db, session_id, after, _BATCH, no_wait if ended else poll)
            if not rows and not ended:
                ended = await _ended(db, session_id)
        if rows:
            after = rows[-1].id
            yield "".join(_event(r) for r in rows)
        elif ended:
            yield "event: end\ndata: {}\n\n"
            return
        elif not state.notifier.closing:
            yield ": waiting\n\n"


@router.get("/sessions/{session_id}/console/stream")
async def console_stream(request: Request, session_id: str, db: Db, browser: CurrentBrowser,
                         after: int = Query(0, ge=0, le=2**31 - 1)) -> StreamingResponse:
    await access.session_for_user(db, browser.user, session_id)
    resume = request.headers.get("last-event-id", "")
    if resume.isdigit() and len(resume) < 11:  # EventSource reconnecting: continue after the last line it got
        after = max(after, int(resume))
    return StreamingResponse(_console(request, session_id, after), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
