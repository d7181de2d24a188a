"""Web pages' server time with 10,000 sessions in the database, next to the JSON API doing the same page.

    .venv/bin/python bench/web.py [--sessions 10000] [--requests 200] [--pg ADMIN_URL]

A real server (the tests' Stack: `berth server`, one uvicorn process) on SQLite (or PostgreSQL with --pg).
One session is launched through the API, then copied in SQL to `--sessions` rows (half of them stopped, in
two projects' worth of names). Timed from this process over a kept-alive loopback connection, one request at
a time: the instance list (first page, 25 rows, and a filtered page of 100), its live rows fragment, and the
instance page; the reference is `GET /api/v1/sessions?limit=25` (what `berth sessions list` asks for) on the
same data in the same run. Targets (issue #9): list p95 <= 50 ms, instance page p95 <= 50 ms.
Console latency: this process plays a worker (registers with the agent token, heartbeats, claims the session)
and posts console lines with the session's token, one at a time; timed until the line arrives on the dashboard's
event stream (`/sessions/{id}/console/stream`, as the open page gets it), next to the API's long poll
(`GET /sessions/{id}/events?wait=20`, what `berth sessions logs --follow` uses). Target: within 1 s.
Chart drawing is measured in the page by tests/browser/test_dashboard.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import ADMIN_PASSWORD, Stack, make_database_url  # noqa: E402  (the same real server the tests use)
from webclient import web_login  # noqa: E402

COPY_COLUMNS = ("app", "project_id", "owner_id", "queue_id", "tags", "config", "secrets", "error", "worker_id",
                "restored_from", "stop_requested", "endpoints", "idle_seconds", "kept_alive_by", "created_at",
                "started_at", "stopped_at", "updated_at")


def execute(stack: Stack, statement: str) -> None:
    """A write straight to the server's database (Stack.sql reads only: it does not commit)."""
    if stack.database_url:
        import psycopg
        from pg import to_libpq_url

        with psycopg.connect(to_libpq_url(stack.database_url)) as conn:
            conn.execute(statement)
        return
    import sqlite3

    conn = sqlite3.connect(stack.tmp / "data" / "berth.db")
    try:
        conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def fill(stack: Stack, source_id: str, count: int) -> None:
    cols = ", ".join(COPY_COLUMNS)
    execute(stack, f"""
        WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {count - 1})
        INSERT INTO sessions (id, name, status, {cols})
        SELECT 'bench' || n, 'bench-session-' || n, CASE WHEN n % 2 = 0 THEN 'stopped' ELSE 'queued' END, {cols}
        FROM sessions, seq WHERE sessions.id = '{source_id}'""")


def timed(http: httpx.Client, path: str, runs: int) -> list[float]:
    http.get(path).raise_for_status()  # warm: the first request pays for imports and template compiles
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        response = http.get(path)
        out.append((time.perf_counter() - t0) * 1000)
        response.raise_for_status()
    return out


class Worker:
    """This process as the session's worker: registered, heartbeating (else the reaper fails the session)."""

    def __init__(self, stack: Stack):
        self.url = stack.url
        reg = stack.api("POST", "/api/v1/workers/register", token=stack.agent_token, json={
            "name": "bench-worker", "hostname": "bench", "queues": ["default"], "cpus": 1, "memory_bytes": 1 << 30,
            "run_as": "root", "is_root": True})
        self.id, self.token = reg["worker_id"], reg["token"]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.done.wait(1.0):
            try:
                httpx.post(f"{self.url}/api/v1/workers/{self.id}/heartbeat", headers={"Authorization": f"Bearer {self.token}"},
                           timeout=5)
            except httpx.HTTPError:
                pass

    def claim(self) -> tuple[str, str]:
        r = httpx.post(f"{self.url}/api/v1/workers/{self.id}/claim", params={"wait": 10},
                       headers={"Authorization": f"Bearer {self.token}"}, timeout=30)
        r.raise_for_status()
        return r.json()["session_id"], r.json()["session_token"]

    def stop(self) -> None:
        self.done.set()
        self.thread.join(5)


def console_latency(url: str, session_id: str, session_token: str, follow, runs: int) -> list[float]:
    """ms from posting a console line (as the supervisor) until `follow` (a generator of received text) shows it."""
    out = []
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {session_token}"}) as supervisor:
        for _ in range(runs):
            marker = f"bench-line-{uuid.uuid4().hex}"
            seen = threading.Event()

            def watch() -> None:
                for text in follow():
                    if marker in text:
                        seen.set()
                        return

            reader = threading.Thread(target=watch, daemon=True)
            reader.start()
            time.sleep(0.05)  # the reader is waiting before the line is posted
            t0 = time.perf_counter()
            supervisor.post(f"/api/v1/sessions/{session_id}/supervisor/events",
                            json=[{"message": marker}]).raise_for_status()
            if not seen.wait(10):
                raise SystemExit("a console line did not arrive within 10 s")
            out.append((time.perf_counter() - t0) * 1000)
            reader.join(30)
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--pg", default=os.environ.get("BERTH_TEST_PG_URL"), help="PostgreSQL admin URL (default: SQLite)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-web-"))
    stack = Stack(tmp, make_database_url(args.pg))
    rows: list[tuple[str, list[float]]] = []
    try:
        stack.start_server()
        stack.login()
        launched = stack.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"name": "bench-source"}})
        source = launched["id"]
        worker = Worker(stack)
        claimed, session_token = worker.claim()
        assert claimed == source
        t0 = time.perf_counter()
        fill(stack, source, args.sessions)
        filled = time.perf_counter() - t0
        (total,), = stack.sql("SELECT count(*) FROM sessions")
        web, answer = web_login(stack.url, "admin", ADMIN_PASSWORD)
        assert answer.status_code == 303, answer.text
        api = httpx.Client(base_url=stack.url, timeout=60,
                           headers={"Authorization": f"Bearer {stack.token}"})
        try:
            rows.append(("web: instance list, page 1 (25 rows)", timed(web, "/apps/ssh-session", args.requests)))
            rows.append(("web: instance list, stopped, 100 rows", timed(web, "/apps/ssh-session?status=stopped&size=100&sort=name",
                                                                       args.requests)))
            rows.append(("web: live rows fragment (htmx poll)", timed(web, "/apps/ssh-session/rows", args.requests)))
            rows.append(("web: instance page", timed(web, f"/sessions/{source}", args.requests)))
            rows.append(("reference: API list, limit 25", timed(api, "/api/v1/sessions?limit=25", args.requests)))
            (last,), = stack.sql(f"SELECT max(id) FROM session_events WHERE session_id = '{source}'")

            def page_stream():
                with web.stream("GET", f"/sessions/{source}/console/stream", params={"after": last or 0}) as r:
                    yield from r.iter_text()

            def api_poll():
                after = last or 0
                while True:
                    events = api.get(f"/api/v1/sessions/{source}/events", params={"after": after, "wait": 20}).json()
                    for event in events:
                        after = max(after, event["id"])
                        yield event["message"]

            latency = [("console line -> open page (SSE)", console_latency(stack.url, source, session_token, page_stream, 20)),
                       ("reference: API long poll (logs --follow)", console_latency(stack.url, source, session_token, api_poll, 20))]
        finally:
            web.close()
            api.close()
            worker.stop()
    finally:
        stack.stop()
        if not os.environ.get("BERTH_BENCH_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"database: {'PostgreSQL' if args.pg else 'SQLite'}; {total} sessions (copied in {filled:.1f} s); "
          f"cores: {len(os.sched_getaffinity(0))}; {args.requests} sequential requests each")
    reference = statistics.median(rows[-1][1])
    for name, values in rows:
        print(f"  {name:42s} p50 {statistics.median(values):6.1f} ms  p95 {p95(values):6.1f} ms  "
              f"({statistics.median(values) / reference:.2f}x the API's p50)")
    targeted = {"web: instance list, page 1 (25 rows)", "web: instance page"}  # the two figures
    worst = max(p95(v) for name, v in rows if name in targeted)
    print(f"target: instance list and instance page p95 <= 50 ms: {'ok' if worst <= 50 else 'OVER TARGET'} "
          f"(worst {worst:.1f} ms)")
    for name, values in latency:
        print(f"  {name:42s} p50 {statistics.median(values):6.1f} ms  p95 {p95(values):6.1f} ms  max {max(values):6.1f} ms")
    slowest = max(latency[0][1])
    print(f"target: a console line on the open page within 1 s: {'ok' if slowest <= 1000 else 'OVER TARGET'} "
          f"(slowest {slowest:.0f} ms)")


if __name__ == "__main__":
    main()
