"""Listing sessions costs the same number of SQL statements whatever the page size.

The app runs in this process (TestClient) so every statement its engine executes can be counted; with
BERTH_TEST_PG_URL set it runs on a fresh PostgreSQL database, else on SQLite.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from berth.server.app import create_app
from berth.settings import ServerSettings

ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex[:12]
AGENT_TOKEN = "ba_test_" + uuid.uuid4().hex


class StatementCounter:
    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, *_args) -> None:  # before_cursor_execute: the app runs in TestClient's own thread
        with self._lock:
            self.count += 1


@pytest.fixture(scope="module")
def client(tmp_path_factory, pg_admin_url):
    from conftest import make_database_url

    database_url = make_database_url(pg_admin_url)
    settings = ServerSettings(data_dir=tmp_path_factory.mktemp("list-queries"), database_url=database_url,
                              admin_password=ADMIN_PASSWORD, agent_token=AGENT_TOKEN, reaper_interval_s=3600)
    with TestClient(create_app(settings)) as c:
        yield c
    if database_url:
        from pg import drop_database

        drop_database(pg_admin_url, database_url)


def _token(client: TestClient, username: str, password: str) -> dict:
    r = client.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def _statements(client: TestClient, headers: dict, limit: int) -> tuple[int, int]:
    counter = StatementCounter()
    event.listen(Engine, "before_cursor_execute", counter)
    try:
        r = client.get("/api/v1/sessions", params={"limit": limit}, headers=headers)
    finally:
        event.remove(Engine, "before_cursor_execute", counter)
    assert r.status_code == 200, r.text
    return counter.count, len(r.json())


def test_listing_sessions_costs_a_fixed_number_of_statements(client):
    admin = _token(client, "admin", ADMIN_PASSWORD)
    for i in range(50):
        r = client.post("/api/v1/sessions", headers=admin, json={"app": "ssh-session", "config": {"name": f"q{i}"}})
        assert r.status_code == 201, r.text
    # a worker claims a few, so the page names workers too
    agent = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    r = client.post("/api/v1/workers/register", headers=agent,
                    json={"name": "w1", "hostname": "h1", "queues": ["default"], "cpus": 1, "memory_bytes": 1 << 30,
                          "gpus": [], "run_as": "root", "is_root": True})
    assert r.status_code == 200, r.text
    worker = r.json()
    claim_headers = {"Authorization": f"Bearer {worker['token']}"}
    for _ in range(3):
        assert client.post(f"/api/v1/workers/{worker['worker_id']}/claim", headers=claim_headers).status_code == 200
    client.post("/api/v1/users", headers=admin, json={"username": "lister", "password": "lister-password"})
    member = _token(client, "lister", "lister-password")

    for headers in (admin, member):
        few, few_rows = _statements(client, headers, 5)
        many, many_rows = _statements(client, headers, 50)
        assert (few_rows, many_rows) == (5, 50)
        assert few == many, f"listing 5 sessions took {few} statements, 50 took {many}"
        assert many <= 10
