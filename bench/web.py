"""Web pages' server time with 10,000 sessions in the database, next to the JSON API doing the same page.

    .venv/bin/python bench/web.py [--sessions 10000] [--requests 200] [--pg ADMIN_URL]

A real server (the tests' Stack: `berth server`, one uvicorn process) on SQLite (or PostgreSQL with --pg).
One session is launched through the API, then copied in SQL to `--sessions` rows (half of them stopped, in
two projects' worth of names). Timed from this process over a kept-alive loopback connection, one request at
a time: the instance list (first page, 25 rows, and a filtered page of 100), its live rows fragment, and the
instance page; the reference is `GET /api/v1/sessions?limit=25` (what `berth sessions list` asks for) on the
same data in the same run. Targets (issue #9): list p95 <= 50 ms, instance page p95 <= 50 ms.
The browser-side figures (chart drawing, console latency) are measured by the browser tests of the dashboard.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
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
        finally:
            web.close()
            api.close()
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
    worst = max(p95(v) for name, v in rows if name.startswith("web"))
    print(f"target: every page p95 <= 50 ms: {'ok' if worst <= 50 else 'OVER TARGET'} (worst {worst:.1f} ms)")


if __name__ == "__main__":
    main()
