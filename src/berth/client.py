"""Typed async client of the REST API, used by the CLI, the agent and the supervisors."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from berth.errors import BerthError, ServerUnavailable, from_http
from berth.metrics import Ingested, MetricsBatch, MetricSample, MetricsView
from berth.schemas import (
    Assignment, ConsoleEvent, EventIn, LaunchRequest, LoginResponse, SessionView, SupervisorControl, SupervisorStatus,
    TokenCreated, TokenView, UserView, WorkerRegister, WorkerRegistered, WorkerView,
)


class BerthClient:
    def __init__(self, server: str, token: str | None = None, *, timeout: float = 30.0):
        self.server = server.rstrip("/")
        self.token = token  # also used by berth.workspace.transfer for bulk bytes
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Loading the CA bundle costs ~50 ms per client (every CLI command, every supervisor): only for https.
        # Redirects are not followed, so a plain-http client never talks TLS.
        verify = self.server.startswith("https://")
        self._http = httpx.AsyncClient(base_url=self.server, headers=headers, timeout=timeout, verify=verify)

    async def __aenter__(self) -> BerthClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, *, long_poll: float = 0, **kwargs) -> httpx.Response:
        if long_poll:
            kwargs["timeout"] = long_poll + 30
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"cannot reach the berth server at {self.server}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            raise from_http(response.status_code, body)
        return response

    async def _json(self, method: str, path: str, **kwargs) -> Any:
        response = await self.request(method, path, **kwargs)
        return None if response.status_code == 204 else response.json()

    # --- users and tokens ----------------------------------------------------------------------
    async def login(self, username: str, password: str) -> LoginResponse:
        return LoginResponse.model_validate(await self._json("POST", "/api/v1/auth/login", json={"username": username, "password": password}))

    async def me(self) -> UserView:
        return UserView.model_validate(await self._json("GET", "/api/v1/users/me"))

    async def create_user(self, username: str, password: str, is_admin: bool = False) -> UserView:
        return UserView.model_validate(await self._json("POST", "/api/v1/users", json={"username": username, "password": password, "is_admin": is_admin}))

    async def add_ssh_keys(self, keys: list[str]) -> list[str]:
        return (await self._json("POST", "/api/v1/users/me/ssh-keys", json={"keys": keys}))["keys"]

    async def create_token(self, label: str, kind: str = "api", expires_days: float | None = None) -> TokenCreated:
        body = {"label": label, "kind": kind, "expires_days": expires_days}
        return TokenCreated.model_validate(await self._json("POST", "/api/v1/tokens", json=body))

    async def list_tokens(self) -> list[TokenView]:
        return [TokenView.model_validate(t) for t in await self._json("GET", "/api/v1/tokens")]

    async def revoke_token(self, token_id: str) -> TokenView:
        return TokenView.model_validate(await self._json("DELETE", f"/api/v1/tokens/{token_id}"))

    async def create_project(self, name: str) -> dict:
        return await self._json("POST", "/api/v1/projects", json={"name": name})

    async def set_member(self, project: str, username: str, role: str | None) -> None:
        await self._json("PUT", f"/api/v1/projects/{project}/members", json={"username": username, "role": role})

    # --- sessions ------------------------------------------------------------------------------
    async def launch(self, request: LaunchRequest) -> SessionView:
        return SessionView.model_validate(await self._json("POST", "/api/v1/sessions", json=request.model_dump(mode="json")))

    async def sessions(self, *, status: list[str] | None = None, project: str | None = None, app: str | None = None) -> list[SessionView]:
        params: dict[str, Any] = {k: v for k, v in {"status": status, "project": project, "app": app}.items() if v}
        return [SessionView.model_validate(s) for s in await self._json("GET", "/api/v1/sessions", params=params)]

    async def session(self, session_id: str) -> SessionView:
        return SessionView.model_validate(await self._json("GET", f"/api/v1/sessions/{session_id}"))

    async def stop(self, session_id: str) -> SessionView:
        return SessionView.model_validate(await self._json("POST", f"/api/v1/sessions/{session_id}/stop"))

    async def clone(self, session_id: str, overrides: dict[str, Any], secrets: dict | None = None) -> SessionView:
        body = {"overrides": overrides, "secrets": secrets or {}}
        return SessionView.model_validate(await self._json("POST", f"/api/v1/sessions/{session_id}/clone", json=body))

    async def request_sync(self, session_id: str) -> SessionView:
        return SessionView.model_validate(await self._json("POST", f"/api/v1/sessions/{session_id}/sync"))

    async def export(self, session_id: str) -> dict:
        return await self._json("GET", f"/api/v1/sessions/{session_id}/export")

    async def validate_config(self, document: dict) -> dict:
        return await self._json("POST", "/api/v1/configs/validate", json=document)

    async def events(self, session_id: str, after: int = 0, wait: float = 0) -> list[ConsoleEvent]:
        data = await self._json("GET", f"/api/v1/sessions/{session_id}/events", params={"after": after, "wait": wait}, long_poll=wait)
        return [ConsoleEvent.model_validate(e) for e in data]

    async def workers(self) -> list[WorkerView]:
        return [WorkerView.model_validate(w) for w in await self._json("GET", "/api/v1/workers")]

    # --- agent ---------------------------------------------------------------------------------
    async def register_worker(self, info: WorkerRegister) -> WorkerRegistered:
        return WorkerRegistered.model_validate(await self._json("POST", "/api/v1/workers/register", json=info.model_dump(mode="json")))

    async def heartbeat(self, worker_id: str) -> list[str]:
        return (await self._json("POST", f"/api/v1/workers/{worker_id}/heartbeat"))["sessions"]

    async def abandon(self, worker_id: str, session_ids: list[str]) -> list[str]:
        data = await self._json("POST", f"/api/v1/workers/{worker_id}/abandon", json={"sessions": session_ids})
        return data["failed"]

    async def claim(self, worker_id: str, wait: float) -> Assignment | None:
        data = await self._json("POST", f"/api/v1/workers/{worker_id}/claim", params={"wait": wait}, long_poll=wait)
        return Assignment.model_validate(data) if data else None

    # --- supervisor ----------------------------------------------------------------------------
    async def report(self, session_id: str, status: SupervisorStatus) -> SupervisorControl:
        data = await self._json("POST", f"/api/v1/sessions/{session_id}/supervisor/status", json=status.model_dump(mode="json"))
        return SupervisorControl.model_validate(data)

    async def post_events(self, session_id: str, events: list[EventIn]) -> None:
        await self._json("POST", f"/api/v1/sessions/{session_id}/supervisor/events", json=[e.model_dump(mode="json") for e in events])

    async def watch(self, session_id: str, wait: float, known_extend: datetime | None = None,
                    known_sync: datetime | None = None) -> SupervisorControl:
        params = {"wait": wait, **{k: v.isoformat() for k, v in (("known_extend", known_extend), ("known_sync", known_sync)) if v}}
        data = await self._json("POST", f"/api/v1/sessions/{session_id}/supervisor/watch", params=params, long_poll=wait)
        return SupervisorControl.model_validate(data)

    # --- resource metrics ----------------------------------------------------------------------
    async def post_metrics(self, session_id: str, samples: list[MetricSample]) -> Ingested:
        body = MetricsBatch(samples=samples).model_dump(mode="json", exclude_none=True)
        return Ingested.model_validate(await self._json("POST", f"/api/v1/sessions/{session_id}/supervisor/metrics", json=body))

    async def post_worker_metrics(self, worker_id: str, samples: list[MetricSample]) -> Ingested:
        body = MetricsBatch(samples=samples).model_dump(mode="json", exclude_none=True)
        return Ingested.model_validate(await self._json("POST", f"/api/v1/workers/{worker_id}/metrics", json=body))

    async def session_metrics(self, session_id: str, *, start: datetime | None = None, end: datetime | None = None,
                              points: int = 1000) -> MetricsView:
        params = {k: v.isoformat() for k, v in {"start": start, "end": end}.items() if v is not None} | {"points": points}
        return MetricsView.model_validate(await self._json("GET", f"/api/v1/sessions/{session_id}/metrics", params=params))

    async def worker_metrics(self, worker_id: str, *, start: datetime | None = None, end: datetime | None = None,
                             points: int = 1000) -> MetricsView:
        params = {k: v.isoformat() for k, v in {"start": start, "end": end}.items() if v is not None} | {"points": points}
        return MetricsView.model_validate(await self._json("GET", f"/api/v1/workers/{worker_id}/metrics", params=params))

    async def extend(self, session_id: str, hours: float) -> SessionView:
        return SessionView.model_validate(await self._json("POST", f"/api/v1/sessions/{session_id}/extend", json={"hours": hours}))


__all__ = ["BerthClient", "BerthError"]
