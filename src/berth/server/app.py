"""FastAPI application factory: routers, the one error handler, startup (migrations, bootstrap, reaper)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from berth import __version__
from berth.errors import BerthError, InvalidInput
from berth.settings import ServerSettings

from . import datadir, prometheus, web
from .limits import RequestLimits
from .gateway.tunnels import TunnelRegistry, default_replica_name
from .gateway.grants import GrantCache
from .gateway.replicas import router as replica_router
from .gateway.terminal import router as terminal_router  # before gateway_router: /s/{id}/terminal is not a raw service
from .gateway.app_routes import router as gateway_app_router  # before the pages' /s/{id}/{rest:path}
from .gateway.routes import router as gateway_router
from .gateway.pages import router as gateway_pages_router
from .gateway.tunnels import router as tunnel_router
from .db.engine import make_engine, migrate, sessionmaker
from .db.models import utcnow
from .services import accounts, security, workers
from .services import metrics as metrics_svc
from .services.notify import Notifier
from .services.secretbox import SecretBox

log = logging.getLogger("berth.server")


async def _reaper(app: FastAPI, started) -> None:
    settings: ServerSettings = app.state.settings
    while True:
        await asyncio.sleep(settings.reaper_interval_s)
        try:
            async with app.state.sessionmaker() as db:
                await workers.reap_lost(db, settings.heartbeat_timeout_s, started)
                await db.commit()
        except Exception:  # keep reaping; a database hiccup must not end the loop
            log.exception("reaper pass failed")


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    security.configure_password_hashing(settings.password_hash_time_cost, settings.password_hash_memory_kib)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        datadir.prepare(settings)  # 0700/0600 before the database and key files are opened
        engine = make_engine(settings.resolved_database_url(), pool_size=settings.db_pool_size,
                             max_overflow=settings.db_max_overflow, pre_ping=settings.db_pool_pre_ping)
        await migrate(engine)
        secret_box = SecretBox.from_settings(settings.secret_key.get_secret_value() if settings.secret_key else None,
                                             settings.data_dir)
        app.state.tunnels.box = secret_box  # signs gateway hops between replicas
        # services reach these through db.info: sealing secrets, waking long polls after a commit, the launch policy
        app.state.sessionmaker = sessionmaker(engine, info={"secret_box": secret_box, "notifier": app.state.notifier,
                                                            "container_args_allowed": frozenset(settings.container_args_allowed)})
        async with app.state.sessionmaker() as db:
            generated = await accounts.bootstrap(db, settings.admin_password)
            await db.commit()
        if generated:
            # Printed once, to the operator's terminal only (never to the log file).
            print(f"berth: created user 'admin' with password: {generated}", flush=True)
        reaper = asyncio.create_task(_reaper(app, utcnow()))
        retention = asyncio.create_task(metrics_svc.retention_loop(app))
        try:
            yield
        finally:
            app.state.tunnels.close_all()
            for task in (reaper, retention):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await engine.dispose()

    app = FastAPI(title="berth", version=__version__, lifespan=lifespan,
                  description="Self-hosted interactive remote sessions: SSH dev environments and remote desktops.")
    app.state.settings = settings
    app.state.notifier = Notifier()
    app.state.gateway_grants = GrantCache(settings.gateway_grant_cache_s)
    app.state.tunnels = TunnelRegistry(settings.replica_name or default_replica_name(), settings.replica_url)
    prometheus.install(app)
    app.add_middleware(RequestLimits, settings=settings)  # body size and URL checks, before any route

    @app.exception_handler(BerthError)
    async def _berth_error(request: Request, exc: BerthError) -> Response:
        if exc.http_status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc.log_message)
        elif exc.log_message != exc.message:
            log.info("%s %s: %s", request.method, request.url.path, exc.log_message)
        if web.owns(request.url.path):  # the pages answer with a page (or the login page)
            return web.error_page(request, exc)
        return JSONResponse(exc.to_body(), status_code=exc.http_status, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": [], "msg": "invalid request"}
        field = ".".join(str(p) for p in first.get("loc", []) if p not in ("body", "query", "path"))
        msg = "unknown field" if first.get("type") == "extra_forbidden" else first.get("msg")
        if web.owns(request.url.path):
            return web.error_page(request, InvalidInput(f"{field}: {msg}" if field else str(msg), field=field or None))
        return JSONResponse({"detail": f"{field}: {msg}" if field else str(msg), "field": field or None}, status_code=422)

    from .api import auth, metrics as metrics_api, projects, sessions, workers as workers_api, workspaces as workspaces_api

    for router in (auth.router, projects.router, sessions.router, sessions.config_router, workers_api.router,
                   metrics_api.router, metrics_api.prometheus_router, workspaces_api.router, tunnel_router, replica_router,
                   terminal_router, gateway_app_router, gateway_router, gateway_pages_router):
        app.include_router(router)

    @app.get("/healthz", tags=["meta"])
    async def healthz() -> dict:
        return {"ok": True, "version": __version__}

    web.install(app)  # the pages (/, /login, /apps/..., /sessions/...), their assets and the security headers
    return app
