"""`/healthz` latency while 20 failed logins are in flight, next to the same server idle.

    .venv/bin/python bench/login.py [--seconds 10] [--concurrency 20] [--pg ADMIN_URL]

A real server (the tests' Stack: `berth server`, uvicorn, one process). Load: a separate process keeps
`--concurrency` failed logins in flight (a real user, a wrong password: each one is an argon2 verification).
Throttling is turned off for the run (BERTH_LOGIN_MAX_FAILURES_PER_ADDRESS / _PER_USER = 0), so no login is
short-circuited by a 429 and every one costs a full hash. Probe: one `/healthz` every 20 ms from this process,
on a kept-alive connection. Target (issue #7): p95 under load <= idle p95 + 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import Stack, make_database_url  # noqa: E402  (the same real server the tests use)

PROBE_EVERY_S = 0.02


def probe(url: str, seconds: float) -> list[float]:
    """`/healthz` latencies in ms, one request every PROBE_EVERY_S."""
    out = []
    with httpx.Client(base_url=url, timeout=30) as http:
        http.get("/healthz")  # connect once: the figures are request latency, not TCP set-up
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            http.get("/healthz").raise_for_status()
            out.append((time.perf_counter() - t0) * 1000)
            time.sleep(max(0.0, PROBE_EVERY_S - (time.perf_counter() - t0)))
    return out


def failed_logins(url: str, concurrency: int, stop_at: float, counter) -> None:
    async def one_client(http: httpx.AsyncClient) -> None:
        while time.time() < stop_at:
            r = await http.post("/api/v1/auth/login", json={"username": "benchuser", "password": "not-the-password"})
            assert r.status_code == 401, r.text
            with counter.get_lock():
                counter.value += 1

    async def main() -> None:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
            await asyncio.gather(*(one_client(http) for _ in range(concurrency)))

    asyncio.run(main())


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--pg", default=os.environ.get("BERTH_TEST_PG_URL"), help="PostgreSQL admin URL (default: SQLite)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-login-"))
    stack = Stack(tmp, make_database_url(args.pg))
    saved = dict(os.environ)
    os.environ.update(BERTH_LOGIN_MAX_FAILURES_PER_ADDRESS="0", BERTH_LOGIN_MAX_FAILURES_PER_USER="0")
    try:
        stack.start_server()
        os.environ.clear()
        os.environ.update(saved)
        stack.login()
        stack.api("POST", "/api/v1/users", json={"username": "benchuser", "password": "bench-password"})
        idle = probe(stack.url, args.seconds)

        counter = multiprocessing.Value("i", 0)
        stop_at = time.time() + args.seconds + 3
        load = multiprocessing.Process(target=failed_logins, args=(stack.url, args.concurrency, stop_at, counter))
        load.start()
        time.sleep(2.0)  # every client has a login in flight
        start_count = counter.value
        busy = probe(stack.url, args.seconds)
        logins = counter.value - start_count
        load.join()
        if load.exitcode != 0:
            raise SystemExit("the login load failed (see above)")
    finally:
        os.environ.clear()
        os.environ.update(saved)
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    added = p95(busy) - p95(idle)
    print(f"database: {'PostgreSQL' if args.pg else 'SQLite'}; cores: {len(os.sched_getaffinity(0))}; "
          f"throttling off for the run (every login is a full argon2 verification)")
    print(f"/healthz idle:                         p50 {statistics.median(idle):6.1f} ms  p95 {p95(idle):6.1f} ms  ({len(idle)} requests)")
    print(f"/healthz during {args.concurrency} concurrent failed logins: p50 {statistics.median(busy):6.1f} ms  "
          f"p95 {p95(busy):6.1f} ms  ({len(busy)} requests; {logins / args.seconds:.1f} failed logins/s)")
    print(f"added p95: {added:+.1f} ms (target <= 20 ms): {'ok' if added <= 20 else 'OVER TARGET'}")


if __name__ == "__main__":
    main()
