"""The web pages with the app in this process (TestClient), where what the real-server tests cannot see is
visible: the SQL statements a page costs, an https request's cookie, the login throttle with small limits.
With BERTH_TEST_PG_URL set it runs on a fresh PostgreSQL database, else on SQLite."""

from __future__ import annotations

import re
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import Engine
from test_session_list_queries import StatementCounter
from webclient import page_csrf

from berth.server.app import create_app
from berth.settings import ServerSettings

ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def app(tmp_path_factory, pg_admin_url):
    from conftest import make_database_url

    database_url = make_database_url(pg_admin_url)
    settings = ServerSettings(data_dir=tmp_path_factory.mktemp("web"), database_url=database_url, admin_password=ADMIN_PASSWORD,
                              reaper_interval_s=3600, login_max_failures_per_address=3, login_max_failures_per_user=100)
    app = create_app(settings)
    with TestClient(app):  # runs the lifespan (migrations, bootstrap) once for the module
        yield app
    if database_url:
        from pg import drop_database

        drop_database(pg_admin_url, database_url)


def _browser(app, username: str, password: str, base_url: str = "http://testserver") -> TestClient:
    client = TestClient(app, base_url=base_url, follow_redirects=False)
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    r = client.post("/login", data={"username": username, "password": password, "csrf_token": token})
    assert r.status_code == 303, r.text
    return client


def _statements(client: TestClient, path: str, **params) -> tuple[int, str]:
    counter = StatementCounter()
    event.listen(Engine, "before_cursor_execute", counter)
    try:
        r = client.get(path, params=params)
    finally:
        event.remove(Engine, "before_cursor_execute", counter)
    assert r.status_code == 200, r.text
    return counter.count, r.text


def test_the_instance_list_costs_a_fixed_number_of_statements(app):
    admin = _browser(app, "admin", ADMIN_PASSWORD)
    api = TestClient(app)
    headers = {"Authorization": "Bearer " + api.post("/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}).json()["token"]}
    api.post("/api/v1/users", headers=headers, json={"username": "lister", "password": "lister-password"})
    for i in range(60):
        config = {"name": f"q{i}", "tags": ["even"] if i % 2 == 0 else ["odd", "x\"y"], "project": "Interactive Session" if i % 3 else "third"}
        assert api.post("/api/v1/sessions", headers=headers, json={"app": "ssh-session", "config": config}).status_code == 201
    lister = _browser(app, "lister", "lister-password")
    for client, shown in ((admin, 60), (lister, 40)):  # lister is a member of the default project only
        for path in ("/apps/ssh-session", "/apps/ssh-session/rows"):
            few, few_html = _statements(client, path, size=5)
            many, many_html = _statements(client, path, size=50)
            assert (few_html.count("<tr data-session"), many_html.count("<tr data-session")) == (5, min(50, shown))
            assert few == many, f"{path}: 5 rows took {few} statements, 50 took {many}"
            assert many <= 14, many
        count, html = _statements(client, "/apps/ssh-session", tag="odd", status="setting up", sort="name", order="asc", size=100)
        assert html.count("<tr data-session") == shown // 2
        assert count <= 14


def test_filters_sort_and_pages(app):
    admin = _browser(app, "admin", ADMIN_PASSWORD)

    def names(**params) -> list[str]:
        html = admin.get("/apps/ssh-session/rows", params=params).text
        return re.findall(r'<a href="/sessions/[0-9a-f]+">([^<]+)</a>', html)

    assert len(names(tag="even", size=100)) == 30
    assert len(names(tag='x"y', size=100)) == 30 and names(tag='x"', size=100) == [] and names(tag="ev", size=100) == []
    assert len(names(project="third", size=100)) == 20
    by_name = names(sort="name", order="asc", size=100)
    assert by_name == sorted(by_name)
    assert names(sort="name", order="desc", size=10) == sorted(by_name, reverse=True)[:10]
    pages = [names(sort="name", order="asc", size=25, page=p) for p in (1, 2, 3)]
    assert sum(pages, []) == by_name and names(page=9, size=25) == []
    assert names(status="active") == []


def test_the_cookie_is_secure_under_https(app):
    client = TestClient(app, base_url="https://testserver", follow_redirects=False)
    form = client.get("/login")
    assert "secure" in form.headers["set-cookie"].lower()
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    r = client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": token})
    cookie = next(v for v in r.headers.get_list("set-cookie") if v.startswith("berth_web="))
    assert {"secure", "httponly", "samesite=lax"} <= {a.strip().lower() for a in cookie.split(";")}


def test_web_logins_are_throttled_like_the_apis(app):
    client = TestClient(app, follow_redirects=False, client=("192.0.2.7", 5000))
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    for _ in range(3):
        r = client.post("/login", data={"username": "admin", "password": "wrong-password", "csrf_token": token})
        assert r.status_code == 401
    r = client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": token})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0 and "Too many failed logins: try again in" in r.text
    assert "berth_web=" not in " ".join(r.headers.get_list("set-cookie"))
    # the API's login from the same address is refused too: one count
    r = client.post("/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert r.status_code == 429


def test_a_viewer_sees_the_session_but_cannot_stop_it(app):
    api = TestClient(app)
    admin = {"Authorization": "Bearer " + api.post("/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}).json()["token"]}
    api.post("/api/v1/users", headers=admin, json={"username": "vera", "password": "vera-password"})
    view = api.post("/api/v1/sessions", headers=admin, json={"app": "ssh-session", "config": {"project": "watched"}}).json()
    api.put("/api/v1/projects/watched/members", headers=admin, json={"username": "vera", "role": "viewer"})
    vera = _browser(app, "vera", "vera-password")
    page = vera.get(f"/sessions/{view['id']}")
    assert page.status_code == 200 and view["name"] in page.text and 'id="stop"' not in page.text
    r = vera.post(f"/sessions/{view['id']}/stop", headers={"X-CSRF-Token": page_csrf(page.text)})
    assert r.status_code == 403 and "member role in project" in r.text
    assert api.get(f"/api/v1/sessions/{view['id']}", headers=admin).json()["status"] == "queued"
