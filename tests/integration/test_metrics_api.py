"""Metrics over the real HTTP API: ingestion, downsampling, access, extension, retention, Prometheus."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

METRICS_TOKEN = "bm_test_" + uuid.uuid4().hex
QUEUE = "metrics-q"


@pytest.fixture(scope="module", autouse=True)
def _server_env():
    """Settings for the module's server (autouse module fixtures are set up before server_only)."""
    saved = {k: os.environ.get(k) for k in ("BERTH_METRICS_TOKEN", "BERTH_METRICS_RETENTION_INTERVAL_S")}
    os.environ.update(BERTH_METRICS_TOKEN=METRICS_TOKEN, BERTH_METRICS_RETENTION_INTERVAL_S="1")
    yield
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _post(url: str, token: str, **kw) -> httpx.Response:
    return httpx.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=30, **kw)


def _get(url: str, token: str, **kw) -> httpx.Response:
    return httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30, **kw)


@pytest.fixture(scope="module")
def env(server_only):
    """A session claimed by a registered worker (kept online by heartbeats): its session token, the worker's
    token, a stranger's token."""
    s = server_only
    reg = _post(s.url + "/api/v1/workers/register", s.agent_token, json={
        "name": "w-metrics", "hostname": "h", "queues": [QUEUE], "cpus": 2, "memory_bytes": 2**30, "run_as": "root", "is_root": True})
    assert reg.status_code == 200, reg.text
    worker = reg.json()
    view = s.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"project": "metricsproj", "queue": QUEUE}})
    claim = _post(f"{s.url}/api/v1/workers/{worker['worker_id']}/claim", worker["token"])
    assert claim.status_code == 200 and claim.json()["session_id"] == view["id"], claim.text
    s.api("POST", "/api/v1/users", json={"username": "mallory", "password": "mallory-password"})
    stranger = httpx.post(s.url + "/api/v1/auth/login", json={"username": "mallory", "password": "mallory-password"}).json()["token"]
    stop = threading.Event()

    def heartbeat():  # the server fails the sessions of a worker that goes quiet for 6 s
        while not stop.wait(1.0):
            with contextlib.suppress(httpx.HTTPError):
                _post(f"{s.url}/api/v1/workers/{worker['worker_id']}/heartbeat", worker["token"])

    beats = threading.Thread(target=heartbeat, daemon=True)
    beats.start()
    yield {"sid": view["id"], "session_token": claim.json()["session_token"], "worker_id": worker["worker_id"],
            "worker_token": worker["token"], "stranger": stranger}
    stop.set()
    beats.join()


T0 = (datetime.now(timezone.utc) - timedelta(hours=1)).replace(second=0, microsecond=0)


def _samples(n: int, t0: datetime = T0, step_s: float = 1.0) -> list[dict]:
    return [{"ts": (t0 + timedelta(seconds=i * step_s)).isoformat(), "cpu": float(i), "mem_mb": 2.0 * i, "disk_read_mbs": 0.5,
             "disk_write_mbs": 1.0, "net_rx_mbs": 0.01 * i, "net_tx_mbs": 0.0, "processes": 3} for i in range(n)]


@pytest.fixture(scope="module")
def ingested(server_only, env):
    r = _post(f"{server_only.url}/api/v1/sessions/{env['sid']}/supervisor/metrics", env["session_token"],
              json={"samples": _samples(100)})
    assert r.status_code == 200, r.text
    assert r.json() == {"samples": 100, "points": 600}  # 6 non-null series values per sample
    return env


def _query(s, sid: str, token: str | None = None, **params) -> httpx.Response:
    return _get(f"{s.url}/api/v1/sessions/{sid}/metrics", token or s.token, params=params)


def test_downsampling_min_mean_max(server_only, ingested):
    # 100 s in at most 10 buckets: width >= 100/9 s, so 12 s from the ladder, aligned on the epoch (T0 is)
    r = _query(server_only, ingested["sid"], start=T0.isoformat(), end=(T0 + timedelta(seconds=100)).isoformat(), points=10)
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["bucket_s"] == 12 and view["samples"] == 100 and view["n"] == [12] * 8 + [4]
    assert [datetime.fromisoformat(t) for t in view["t"]] == [T0 + timedelta(seconds=12 * k) for k in range(9)]
    cpu = view["series"]["cpu"]
    assert cpu["unit"] == "%"
    assert cpu["min"] == [12.0 * k for k in range(9)]
    assert cpu["max"] == [12.0 * k + 11 for k in range(8)] + [99.0]
    assert cpu["mean"] == pytest.approx([12.0 * k + 5.5 for k in range(8)] + [97.5])
    assert view["series"]["mem_mb"]["max"][-1] == 198.0
    assert view["series"]["gpu_util"]["mean"] == [None] * 9  # no GPU: the series is there, without values
    assert view["latest"]["cpu"] == 99.0 and view["latest"]["gpu_available"] is False
    assert view["network_scope"] == "host"


def test_bucket_edges_are_exact(server_only, ingested):
    sid = ingested["sid"]
    # a sample exactly on an edge opens the next bucket; `end` is exclusive; the first bucket is clipped to `start`
    view = _query(server_only, sid, start=(T0 + timedelta(seconds=5)).isoformat(), end=(T0 + timedelta(seconds=99)).isoformat(),
                  points=10).json()
    assert view["bucket_s"] == 12 and view["n"] == [7] + [12] * 7 + [3]
    assert view["series"]["cpu"]["min"] == [5.0] + [12.0 * k for k in range(1, 9)]
    assert view["series"]["cpu"]["max"] == [12.0 * k + 11 for k in range(8)] + [98.0]
    # under a second per bucket: whole milliseconds, aligned on the epoch
    view = _query(server_only, sid, start=(T0 + timedelta(seconds=50)).isoformat(), end=(T0 + timedelta(seconds=60)).isoformat(),
                  points=1000).json()
    assert view["bucket_s"] == 0.011 and view["n"] == [1] * 10 and view["series"]["cpu"]["min"] == [50.0 + k for k in range(10)]
    assert all(int(datetime.fromisoformat(t).timestamp() * 1000) % 11 == 0 for t in view["t"])
    # one bucket: exactly [start, end)
    start = T0 + timedelta(seconds=10, milliseconds=500)
    view = _query(server_only, sid, start=start.isoformat(), end=(T0 + timedelta(seconds=50)).isoformat(), points=1).json()
    assert view["n"] == [39] and datetime.fromisoformat(view["t"][0]) == start
    assert (view["series"]["cpu"]["min"], view["series"]["cpu"]["max"]) == ([11.0], [49.0])
    assert view["series"]["cpu"]["mean"] == [pytest.approx(30.0)]


T1 = T0 - timedelta(hours=3)
HOUR = [{"ts": (T1 + timedelta(seconds=2 * i)).isoformat(), "cpu": float(i % 97), "mem_mb": float(i),
         "net_rx_mbs": None if i % 5 else 1.0 * i} for i in range(1800)]


def expected(lo: datetime, hi: datetime, width_ms: int | None) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for s in HOUR:
        ts = datetime.fromisoformat(s["ts"])
        if lo <= ts < hi:
            ms = int(ts.timestamp() * 1000)
            out.setdefault(ms // width_ms if width_ms else 0, []).append(s)
    return out


def test_long_ranges_come_from_rollups_and_match_the_samples(server_only, ingested):
    """An hour of 2 s samples, posted in batches that split minutes; queried across partial minutes at both ends."""
    url = f"{server_only.url}/api/v1/sessions/{ingested['sid']}/supervisor/metrics"
    for i in range(0, len(HOUR), 700):
        assert _post(url, ingested["session_token"], json={"samples": HOUR[i:i + 700]}).status_code == 200
    lo, hi = T1 + timedelta(seconds=31), T1 + timedelta(minutes=59, seconds=29)
    for points, width in ((20, 240_000), (1, None)):  # 4-minute buckets from rollups + raw edges; one bucket
        view = _query(server_only, ingested["sid"], start=lo.isoformat(), end=hi.isoformat(), points=points).json()
        want = expected(lo, hi, width)
        assert view["n"] == [len(want[k]) for k in sorted(want)] and len(view["t"]) <= points
        for name in ("cpu", "mem_mb", "net_rx_mbs"):
            values = [[s[name] for s in want[k] if s[name] is not None] for k in sorted(want)]
            assert view["series"][name]["min"] == [min(v) for v in values], name
            assert view["series"][name]["max"] == [max(v) for v in values], name
            assert view["series"][name]["mean"] == pytest.approx([sum(v) / len(v) for v in values]), name
        if width:
            assert [datetime.fromisoformat(t) for t in view["t"]] == [datetime.fromtimestamp(k * width / 1000, timezone.utc)
                                                                       for k in sorted(want)]


def test_empty_ranges(server_only, ingested):
    sid = ingested["sid"]
    view = _query(server_only, sid, start=T0.isoformat(), end=T0.isoformat()).json()
    assert view["samples"] == 0 and view["t"] == [] and view["series"]["cpu"]["min"] == [] and view["latest"] is None
    later = T0 + timedelta(days=3)
    view = _query(server_only, sid, start=later.isoformat(), end=(later + timedelta(hours=1)).isoformat()).json()
    assert view["samples"] == 0 and view["t"] == []


@pytest.mark.parametrize(("params", "field", "words"), [
    ({"start": (T0 + timedelta(seconds=5)).isoformat(), "end": T0.isoformat()}, "start", "after end"),
    ({"points": 0}, "points", "between 1 and 10000"),
    ({"points": 10001}, "points", "between 1 and 10000"),
    ({"start": "yesterday"}, "start", "datetime"),
])
def test_bad_ranges_are_422(server_only, ingested, params, field, words):
    r = _query(server_only, ingested["sid"], **params)
    assert r.status_code == 422
    assert r.json()["field"] == field and words in r.json()["detail"]


def test_default_range_is_the_session_life(server_only, ingested):
    view = _query(server_only, ingested["sid"]).json()  # created just now: the samples an hour ago are before it
    assert view["samples"] == 0
    view = _query(server_only, ingested["sid"], start=T0.isoformat()).json()  # from start until now
    assert view["samples"] == 100 and len(view["t"]) <= 1000 and view["latest"]["cpu"] == 99.0


def test_other_project_user_gets_404_as_for_a_missing_session(server_only, ingested):
    r = _query(server_only, ingested["sid"], token=ingested["stranger"])
    assert r.status_code == 404 and r.json()["detail"] == f"no session {ingested['sid']!r}"
    r = _post(f"{server_only.url}/api/v1/sessions/{ingested['sid']}/extend", ingested["stranger"], json={"hours": 1})
    assert r.status_code == 404 and r.json()["detail"] == f"no session {ingested['sid']!r}"


def test_only_the_sessions_own_supervisor_may_ingest(server_only, ingested):
    url = f"{server_only.url}/api/v1/sessions/{ingested['sid']}/supervisor/metrics"
    for token in (server_only.token, ingested["worker_token"], ingested["stranger"]):
        assert _post(url, token, json={"samples": _samples(1)}).status_code == 403
    assert _post(url, "bs_not-a-token", json={"samples": _samples(1)}).status_code == 401
    bad = _post(url, ingested["session_token"], json={"samples": [{"ts": T0.isoformat(), "cpu": -1}]})
    assert bad.status_code == 422 and "cpu" in bad.json()["detail"]
    too_many = _post(url, ingested["session_token"], json={"samples": _samples(1001)})
    assert too_many.status_code == 422


def test_worker_metrics(server_only, ingested):
    url = f"{server_only.url}/api/v1/workers/{ingested['worker_id']}/metrics"
    now = datetime.now(timezone.utc)
    samples = [{"ts": (now - timedelta(seconds=10 - i)).isoformat(), "cpu": 150.0, "mem_mb": 1000.0,
                "gpus": [{"index": 0, "util": 50.0, "mem_used_mb": 10.0, "mem_total_mb": 80.0}], "gpu_util": 50.0,
                "gpu_available": True} for i in range(5)]
    assert _post(url, ingested["session_token"], json={"samples": samples}).status_code == 403
    r = _post(url, ingested["worker_token"], json={"samples": samples})
    assert r.status_code == 200 and r.json()["samples"] == 5
    view = _get(url, server_only.token).json()
    assert view["samples"] == 5 and view["series"]["cpu"]["max"][-1] == 150.0
    assert view["latest"]["gpus"][0]["util"] == 50.0 and view["latest"]["gpu_available"] is True


def test_extend_and_supervisor_sees_it(server_only, ingested):
    s, sid = server_only, ingested["sid"]
    before = datetime.now(timezone.utc)
    view = s.api("POST", f"/api/v1/sessions/{sid}/extend", json={"hours": 1.5})
    until = datetime.fromisoformat(view["idle_extended_until"])
    assert timedelta(hours=1.5) <= until - before <= timedelta(hours=1.5, seconds=30)
    view = s.api("POST", f"/api/v1/sessions/{sid}/extend", json={"hours": 0.25})  # adds to the earlier extension
    assert datetime.fromisoformat(view["idle_extended_until"]) - until == timedelta(hours=0.25)
    control = _post(f"{s.url}/api/v1/sessions/{sid}/supervisor/watch?wait=0", ingested["session_token"]).json()
    assert datetime.fromisoformat(control["extend_until"]) == datetime.fromisoformat(view["idle_extended_until"])
    for hours in (0, -1, "soon"):
        r = _post(f"{s.url}/api/v1/sessions/{sid}/extend", s.token, json={"hours": hours})
        assert r.status_code == 422 and r.json()["field"] == "hours"


def test_kept_alive_by_is_stored_from_the_status_report(server_only, ingested):
    s, sid = server_only, ingested["sid"]
    r = _post(f"{s.url}/api/v1/sessions/{sid}/supervisor/status", ingested["session_token"],
              json={"status": "active", "idle_seconds": 0, "kept_alive_by": ["cpu 54% > 10%", "ssh input 12 s ago"]})
    assert r.status_code == 200, r.text
    assert "extend_until" in r.json()
    assert s.api("GET", f"/api/v1/sessions/{sid}")["kept_alive_by"] == ["cpu 54% > 10%", "ssh input 12 s ago"]


def test_retention_deletes_old_samples(server_only, ingested):
    old = datetime.now(timezone.utc) - timedelta(days=8)
    url = f"{server_only.url}/api/v1/sessions/{ingested['sid']}/supervisor/metrics"
    assert _post(url, ingested["session_token"], json={"samples": _samples(5, t0=old)}).status_code == 200
    params = {"start": (old - timedelta(minutes=1)).isoformat(), "end": (old + timedelta(minutes=1)).isoformat()}
    deadline = time.monotonic() + 15  # the loop runs every second in this module's server
    while _query(server_only, ingested["sid"], **params).json()["samples"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _query(server_only, ingested["sid"], **params).json()["samples"] == 0
    assert _query(server_only, ingested["sid"], start=T0.isoformat()).json()["samples"] == 100  # recent ones stay


def test_prometheus_exposition(server_only, ingested):
    s = server_only
    s.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"project": "metricsproj", "queue": QUEUE}})
    assert httpx.get(s.url + "/metrics").status_code == 401
    assert _get(s.url + "/metrics", ingested["stranger"]).status_code == 403
    assert _get(s.url + "/metrics", s.token).status_code == 200  # admins may read it too
    r = _get(s.url + "/metrics", METRICS_TOKEN)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in ("berth_sessions", "berth_queue_depth", "berth_workers_online", "berth_http_request_duration_seconds",
                 "berth_metric_samples_ingested"):
        assert name in families, sorted(families)
    value = {(f.name, tuple(sorted(m.labels.items()))): m.value for f in families.values() for m in f.samples}
    assert value[("berth_queue_depth", (("queue", QUEUE),))] == 1
    assert value[("berth_sessions", (("app", "ssh-session"), ("status", "queued")))] == 1
    running = [value[("berth_sessions", (("app", "ssh-session"), ("status", st)))] for st in ("starting", "active")]
    assert sum(running) == 1 and value[("berth_sessions", (("app", "ssh-session"), ("status", "failed")))] == 0
    assert value[("berth_workers_online", ())] == 1
    routes = {m.labels.get("route") for m in families["berth_http_request_duration_seconds"].samples}
    assert "/api/v1/sessions/{session_id}/metrics" in routes and not any(ingested["sid"] in (r or "") for r in routes)


def test_cli_metrics_extend_and_workers(server_only, ingested):
    s, sid = server_only, ingested["sid"]
    out = s.cli("sessions", "metrics", sid, "--since", "5h").stdout
    assert "CPU (% of one core)" in out and "memory (RSS)" in out and "GPU" not in out  # no GPU series: no rows
    cpu_row = [cell.strip() for cell in next(line for line in out.splitlines() if "CPU" in line).split("│")]
    mean = (sum(range(100)) + sum(i % 97 for i in range(1800))) / 1900
    assert cpu_row[3:7] == ["99.0", "0.0", f"{mean:.1f}", "99.0"]  # latest, min, mean, max
    view = json.loads(s.cli("sessions", "metrics", sid, "--since", "5h", "--json", "--points", "50").stdout)
    assert 0 < len(view["t"]) <= 50 and view["samples"] == 1900
    bad = s.cli("sessions", "metrics", sid, "--since", "soon", check=False)
    assert bad.returncode == 1 and "--since" in bad.stderr
    before = s.api("GET", f"/api/v1/sessions/{sid}")["idle_extended_until"]
    result = s.cli("sessions", "extend", sid, "--hours", "0.5")
    assert "no idle shutdown before" in result.stderr
    after = s.api("GET", f"/api/v1/sessions/{sid}")["idle_extended_until"]
    assert datetime.fromisoformat(after) - datetime.fromisoformat(before) == timedelta(minutes=30)
    workers = s.cli("workers", "list").stdout
    assert "w-metrics" in workers and "online" in workers and "1.0 GiB" in workers


async def test_watchdog_posts_samples_reports_and_stops_when_idle(server_only, ingested):
    """The supervisor's loop end to end: a busy process keeps the session alive, then idle time runs out."""
    import subprocess
    import sys

    from berth.agent.idle import IdleTracker
    from berth.agent.monitor import SessionSampler
    from berth.agent.watchdog import SessionWatchdog
    from berth.client import BerthClient
    from berth.schemas import SupervisorStatus

    sid, marker = ingested["sid"], "wd" + uuid.uuid4().hex[:10]
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"], env=dict(os.environ, BERTH_SESSION_ID=marker))
    lines, reports = [], []
    async with BerthClient(server_only.url, ingested["session_token"]) as client:
        async def report(state):
            reports.append(state)
            await client.report(sid, SupervisorStatus(status="idle" if state.show_idle else "active",
                                                      idle_seconds=state.idle_seconds, kept_alive_by=state.kept_alive_by))

        tracker = IdleTracker(3.0, cpu_threshold=10, net_threshold_mb=1000, warn_before_s=1, idle_status_after_s=1)
        dog = SessionWatchdog(client, sid, SessionSampler(marker, gpus=False), tracker, console=lines.append, report=report,
                              interval_s=0.5, post_every_s=1.0, report_every_s=60)
        started = datetime.now(timezone.utc)
        try:
            for _ in range(4):
                await asyncio.sleep(0.5)
                state = await dog.step()
            assert not state.idle and state.kept_alive_by[0].startswith("cpu ")
            assert server_only.api("GET", f"/api/v1/sessions/{sid}")["kept_alive_by"][0].startswith("cpu ")
        finally:
            burner.kill()
            burner.wait()
        reason = await asyncio.wait_for(dog.run(), 30)
    assert reason.startswith("idle for 3 s") and any("GPU threshold" in line for line in lines)
    assert any(line.startswith("idle: this session has been idle") for line in lines)  # the one warning
    assert server_only.api("GET", f"/api/v1/sessions/{sid}")["status"] == "idle"
    view = _query(server_only, sid, start=started.isoformat()).json()
    assert view["samples"] >= 8 and max(v for v in view["series"]["cpu"]["max"] if v is not None) > 50
