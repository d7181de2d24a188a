"""A route answers only after its change is committed; a change that cannot be saved is an error to the client."""

from __future__ import annotations

import threading

import httpx


def _user(s, name: str) -> str:
    """A user who is not an admin and has a project of their own."""
    s.api("POST", "/api/v1/users", json={"username": name, "password": name + "-password"})
    token = httpx.post(s.url + "/api/v1/auth/login", json={"username": name, "password": name + "-password"}).json()["token"]
    s.api("POST", "/api/v1/projects", token=token, json={"name": name + "-proj"})
    return token


def test_revoked_token_is_refused_by_the_very_next_request(server_only):
    s = server_only
    owner = _user(s, "revoker")
    with httpx.Client(base_url=s.url) as http:
        for i in range(30):
            created = s.api("POST", "/api/v1/tokens", token=owner, json={"label": f"t{i}"})
            secret = {"Authorization": f"Bearer {created['token']}"}
            assert http.get("/api/v1/users/me", headers=secret).status_code == 200
            r = http.delete(f"/api/v1/tokens/{created['id']}", headers={"Authorization": f"Bearer {owner}"})
            assert r.status_code == 200 and r.json()["revoked"]
            assert http.get("/api/v1/users/me", headers=secret).status_code == 401, f"revoked token accepted (round {i})"


def test_a_change_that_cannot_be_saved_is_not_answered_as_saved(server_only):
    """Concurrent creates of one queue name: the losers' insert fails at commit (unique name). Each request that
    was told 201 must have its queue stored, and every other one must get an error."""
    s = server_only
    for round_ in range(6):
        name = f"race-{round_}"
        codes: list[int] = []
        bodies: list[dict] = []
        start = threading.Barrier(6)

        def create():
            with httpx.Client(base_url=s.url, timeout=60) as http:
                start.wait()
                r = http.post("/api/v1/queues", json={"name": name}, headers={"Authorization": f"Bearer {s.token}"})
                codes.append(r.status_code)
                bodies.append(r.json())

        threads = [threading.Thread(target=create) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes.count(201) == 1, (round_, codes, bodies)
        assert all(c == 409 for c in codes if c != 201), (codes, bodies)
        assert all(b["detail"] for b, c in zip(bodies, codes) if c != 201), bodies
        assert [q["name"] for q in s.api("GET", "/api/v1/queues")].count(name) == 1
