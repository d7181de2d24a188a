"""Resource metrics: ingestion (supervisors, agents), charts (users), Prometheus scrape."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from berth.metrics import Ingested, MetricsBatch, MetricsView
from berth.server.db.models import utcnow
from berth.server.prometheus import CONTENT_TYPE
from berth.server.services import access
from berth.server.services import metrics as svc
from berth.server.services import workers as worker_svc

from .deps import Caller, CurrentUser, Db, Scraper, errors

router = APIRouter(prefix="/api/v1", tags=["metrics"])
_MS = timedelta(milliseconds=1)


def _json(view: MetricsView) -> Response:
    """Serialised once: letting FastAPI validate ~20,000 numbers again against response_model costs more than the query."""
    return Response(view.model_dump_json(), media_type="application/json")


def _utc(ts: datetime | None) -> datetime | None:
    return ts.replace(tzinfo=timezone.utc) if ts is not None and ts.tzinfo is None else ts


@router.post("/sessions/{session_id}/supervisor/metrics", response_model=Ingested, responses=errors(401, 403, 422))
async def ingest_session(session_id: str, body: MetricsBatch, db: Db, principal: Caller, request: Request) -> Ingested:
    """A batch of the session's samples, from its supervisor (session token)."""
    access.require_supervisor(principal, session_id)
    result = await svc.ingest(db, svc.SESSIONS, session_id, body.samples)
    request.app.state.prometheus.ingested.labels("session").inc(result.samples)
    return result


@router.post("/workers/{worker_id}/metrics", response_model=Ingested, responses=errors(401, 403, 422))
async def ingest_worker(worker_id: str, body: MetricsBatch, db: Db, principal: Caller, request: Request) -> Ingested:
    """A batch of host samples, from the worker's agent (worker token)."""
    access.require_worker(principal, worker_id)
    result = await svc.ingest(db, svc.WORKERS, worker_id, body.samples)
    request.app.state.prometheus.ingested.labels("worker").inc(result.samples)
    return result


def _points(points: int = 1000) -> int:
    """Checked before any lookup (a bad number is 422 whatever the id), with the service's one message."""
    return svc.check_points(points)


Points = Annotated[int, Depends(_points)]


@router.get("/sessions/{session_id}/metrics", response_model=MetricsView, responses=errors(401, 403, 404, 422))
async def session_metrics(session_id: str, db: Db, user: CurrentUser, points: Points, start: datetime | None = None,
                          end: datetime | None = None) -> Response:
    """Samples in [start, end) in at most `points` epoch-aligned buckets (min/mean/max per series; the first and
    last are clipped to the range). Defaults: the session's whole life (created until stopped, or now); with
    only `start`, until now."""
    row = await access.session_for_user(db, user, session_id)
    start, end = _utc(start), _utc(end)
    if end is None:
        end = row.stopped_at + _MS if row.stopped_at and start is None else utcnow() + _MS
    return _json(await svc.query(db, svc.SESSIONS, session_id, start or row.created_at, end, points))


@router.get("/workers/{worker_id}/metrics", response_model=MetricsView, responses=errors(401, 404, 422))
async def worker_metrics(worker_id: str, db: Db, _user: CurrentUser, points: Points, start: datetime | None = None,
                         end: datetime | None = None) -> Response:
    """Host samples of a worker (any user may see workers). Defaults: the last hour."""
    await worker_svc.get_worker(db, worker_id)
    end = _utc(end) or utcnow() + _MS
    return _json(await svc.query(db, svc.WORKERS, worker_id, _utc(start) or end - timedelta(hours=1), end, points))


prometheus_router = APIRouter(tags=["meta"])


@prometheus_router.get("/metrics", response_class=Response, dependencies=[Scraper],
                       responses={**errors(401, 403), 200: {"content": {CONTENT_TYPE: {}}}})
async def prometheus(request: Request, db: Db) -> Response:
    """Prometheus exposition. Scrape with `Authorization: Bearer $BERTH_METRICS_TOKEN`; admin API tokens work too."""
    return Response(await request.app.state.prometheus.render(db), media_type=CONTENT_TYPE)
