"""Failed logins are limited per client address and per username (429 + Retry-After), counted in the database;
the address is the connection's unless a configured proxy forwards it."""

from __future__ import annotations

import contextlib
import os
import time

import httpx
import pytest
from conftest import Stack, make_database_url

WINDOW_S = 5  # long enough for the failures of a test to happen within it on a loaded machine (a failed login
# costs milliseconds: the tests' servers hash cheaply, tests/conftest.py), short for the waits on the lock's end


@contextlib.contextmanager
def _environ(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _server(tmp_path_factory, pg_admin_url, **env: str):
    s = Stack(tmp_path_factory.mktemp("throttle"), make_database_url(pg_admin_url))
    try:
        with _environ(BERTH_LOGIN_WINDOW_S=str(WINDOW_S), BERTH_LOGIN_MAX_FAILURES_PER_ADDRESS="3",
                      BERTH_LOGIN_MAX_FAILURES_PER_USER="5", **env):
            s.start_server()
        s.login()
        for name in ("pat", "victim"):  # users who are not admins, each with a project of their own
            s.api("POST", "/api/v1/users", json={"username": name, "password": f"{name}-password"})
            s.api("POST", "/api/v1/projects", token=_login(s, "127.0.0.1", name).json()["token"], json={"name": f"{name}-proj"})
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def throttled(tmp_path_factory, pg_admin_url):
    yield from _server(tmp_path_factory, pg_admin_url)


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory, pg_admin_url):
    yield from _server(tmp_path_factory, pg_admin_url, BERTH_TRUSTED_PROXIES='["127.0.0.1"]')


def _login(s, address: str, username: str, password: str | None = None, headers: dict | None = None) -> httpx.Response:
    """A login from `address` (a loopback source address: a client of its own for the server)."""
    with httpx.Client(base_url=s.url, transport=httpx.HTTPTransport(local_address=address), timeout=60) as http:
        return http.post("/api/v1/auth/login", headers=headers or {},
                         json={"username": username, "password": password or f"{username}-password"})


def _assert_throttled(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    wait = int(r.headers["Retry-After"])
    assert 1 <= wait <= WINDOW_S and "too many failed logins" in r.json()["detail"]
    return wait


def test_failed_logins_per_address_get_429_then_the_lock_ends(throttled):
    s = throttled
    for i in range(3):  # distinct usernames: only the address limit applies
        assert _login(s, "127.0.0.2", f"guess{i}", "wrong-password").status_code == 401
    wait = _assert_throttled(_login(s, "127.0.0.2", "guess9", "wrong-password"))
    _assert_throttled(_login(s, "127.0.0.2", "pat"))  # the right password is refused too while locked
    assert _login(s, "127.0.0.3", "pat").status_code == 200  # another address is not locked
    time.sleep(wait + 0.2)
    assert _login(s, "127.0.0.2", "pat").status_code == 200


def test_forwarded_for_is_ignored_without_a_configured_proxy(throttled):
    s = throttled
    for i in range(3):
        assert _login(s, "127.0.0.1", f"spoof{i}", "wrong-password", {"X-Forwarded-For": f"10.0.0.{i}"}).status_code == 401
    _assert_throttled(_login(s, "127.0.0.1", "pat", headers={"X-Forwarded-For": "10.0.0.99"}))
    time.sleep(WINDOW_S + 0.2)


def test_failed_logins_per_username_from_many_addresses(throttled):
    s = throttled
    assert _login(s, "127.0.0.30", "victim").status_code == 200  # the owner's usual address
    for i in range(5):  # one failure per address: no address limit is reached
        assert _login(s, f"127.0.0.{40 + i}", "victim", "wrong-password").status_code == 401
    wait = _assert_throttled(_login(s, "127.0.0.60", "victim"))  # right password, new address: locked
    # ...but not from where the owner logged in before: failures elsewhere cannot lock the owner out
    assert _login(s, "127.0.0.30", "victim").status_code == 200
    assert _login(s, "127.0.0.60", "pat").status_code == 200  # other users are not affected
    time.sleep(wait + 0.2)
    assert _login(s, "127.0.0.60", "victim").status_code == 200


def test_the_count_lives_in_the_database(throttled):
    s = throttled
    assert _login(s, "127.0.0.70", "nobody", "wrong-password").status_code == 401
    keys = {k for (k,) in s.sql("SELECT key FROM login_attempts")}
    assert {"user:nobody", "addr:127.0.0.70"} <= keys
    assert not any("wrong-password" in k for k in keys)


def test_a_configured_proxy_names_the_client(behind_proxy):
    s = behind_proxy
    for i in range(3):
        assert _login(s, "127.0.0.1", f"p{i}", "wrong-password", {"X-Forwarded-For": "10.0.0.1"}).status_code == 401
    _assert_throttled(_login(s, "127.0.0.1", "pat", headers={"X-Forwarded-For": "10.0.0.1"}))
    assert _login(s, "127.0.0.1", "pat", headers={"X-Forwarded-For": "10.0.0.2"}).status_code == 200
    # a client that is not the proxy cannot choose its address
    for i in range(3):
        _login(s, "127.0.0.5", f"q{i}", "wrong-password", {"X-Forwarded-For": f"10.1.0.{i}"})
    _assert_throttled(_login(s, "127.0.0.5", "pat", headers={"X-Forwarded-For": "10.1.0.99"}))
