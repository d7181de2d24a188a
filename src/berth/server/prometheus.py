"""Prometheus exposition for GET /metrics: API latency (measured here) and state read from the database.

Each app gets its own registry (tests start many apps in one process). The gauges are read from the
database at scrape time, so every replica reports the same platform-wide figures; the latency histogram
is per replica (Prometheus tells replicas apart by their `instance` label).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from berth.schemas import SessionStatus, WorkerStatus
from berth.server.db.models import Queue, Session, Worker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# long polls (claim, watch, logs --follow) are held up to 25 s by design: the top buckets show them
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class PlatformMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram("berth_http_request_duration_seconds", "API request latency",
                                 ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ingested = Counter("berth_metric_samples_ingested", "Resource metric samples stored", ["kind"],
                                registry=self.registry)
        self._families: list[Any] = []
        self.registry.register(self)

    def collect(self):  # prometheus_client's custom collector protocol
        yield from self._families

    async def render(self, db: AsyncSession) -> bytes:
        sessions = GaugeMetricFamily("berth_sessions", "Sessions by status and app", labels=["status", "app"])
        by_status = select(Session.status, Session.app, func.count()).group_by(Session.status, Session.app)
        counts = {(s, a): n for s, a, n in await db.execute(by_status)}
        apps = sorted({a for _, a in counts} | {"ssh-session"})
        for status in SessionStatus:
            for app in apps:
                sessions.add_metric([status.value, app], counts.get((status.value, app), 0))
        depth = GaugeMetricFamily("berth_queue_depth", "Queued sessions per queue", labels=["queue"])
        queued = dict((await db.execute(select(Session.queue_id, func.count()).where(Session.status == SessionStatus.queued.value)
                                        .group_by(Session.queue_id))).all())
        for qid, name in await db.execute(select(Queue.id, Queue.name).order_by(Queue.name)):
            depth.add_metric([name], queued.get(qid, 0))
        online = (await db.execute(select(func.count()).select_from(Worker)
                                   .where(Worker.status == WorkerStatus.online.value))).scalar_one()
        workers = GaugeMetricFamily("berth_workers_online", "Workers with a recent heartbeat", value=online)
        # one scrape at a time per event loop: render() does not await between setting and reading
        self._families = [sessions, depth, workers]
        try:
            return generate_latest(self.registry)
        finally:
            self._families = []


class LatencyMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: that would buffer long polls). Labels use the route template
    (/api/v1/sessions/{session_id}), never the raw path, so label cardinality stays bounded."""

    def __init__(self, app, metrics: PlatformMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.latency.labels(scope["method"], route, str(status)).observe(time.perf_counter() - start)


def install(app) -> PlatformMetrics:
    metrics = PlatformMetrics()
    app.state.prometheus = metrics
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    return metrics
