"""Resource metrics: ingest samples, downsample them for charts, delete old ones.

Storage: one wide row per sample (``session_samples`` / ``worker_samples``) plus per-minute rollups
(``*_rollups``: min, max, sum and count per series), updated at ingestion by an upsert.

Downsampling: buckets are aligned on the epoch (bucket k covers [k*w, (k+1)*w) in epoch ms) with a width
w from a ladder (ms under 1 s; 1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60 s; then whole minutes) chosen so
that [start, end) touches at most `points` buckets; the first and last are clipped to the range. When w
is whole minutes, the whole minutes of the range come from the rollups and only the partial minutes at
either end from raw samples: a day of 2 s samples is ~1,440 rollup rows instead of 43,200 samples, and
the result is the same as from the raw samples (min, max, and means weighted by counts). `points=1` is
one bucket over exactly [start, end).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import BigInteger, Table, and_, bindparam, delete, func, insert, literal, or_, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from berth.errors import InvalidInput
from berth.metrics import MAX_POINTS, SERIES, GpuSample, Ingested, MetricSample, MetricsView, Series
from berth.server.db.models import SessionSample, WorkerSample, session_rollups, utcnow, worker_rollups

log = logging.getLogger("berth.server")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MINUTE = 60_000
LADDER_MS = (1000, 2000, 3000, 4000, 5000, 6000, 10_000, 12_000, 15_000, 20_000, 30_000, 60_000)


@dataclass(frozen=True)
class Kind:
    samples: Any  # SessionSample | WorkerSample
    rollups: Table
    owner: str
    upserts: dict = field(default_factory=dict, compare=False)  # statements, built once


SESSIONS = Kind(SessionSample, session_rollups, "session_id")
WORKERS = Kind(WorkerSample, worker_rollups, "worker_id")


def to_ms(ts: datetime) -> int:
    """Exact integer milliseconds (no float rounding at bucket edges)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return (ts - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def bucket_width(span_ms: int, points: int) -> int | None:
    """Bucket width in ms (None: one bucket). w >= span/(points-1) keeps the buckets [start, end) touches,
    partial ones included, at most `points`."""
    if points == 1:
        return None
    need = -(-span_ms // (points - 1))
    if need <= 1000:
        return max(1, need)
    if need <= MINUTE:
        return next(w for w in LADDER_MS if w >= need)
    return -(-need // MINUTE) * MINUTE


# --- ingestion --------------------------------------------------------------------------------------

def _row(sample: MetricSample) -> dict:
    row = {name: getattr(sample, name) for name in SERIES}
    row["ts_ms"] = to_ms(sample.ts)
    row["gpus"] = [g.model_dump(exclude_none=True) for g in sample.gpus] if sample.gpus is not None else None
    row["processes"] = sample.processes
    row["network_scope"] = sample.network_scope
    return row


_KEYS = [(s, f"{s}_min", f"{s}_max", f"{s}_sum", f"{s}_n") for s in SERIES]


def _minutes(kind: Kind, owner_id: str, rows: list[dict]) -> list[dict]:
    """The batch's own per-minute aggregates (distinct minutes: one upsert statement may not touch a row twice)."""
    acc: dict[int, dict] = {}
    for row in rows:
        minute = row["ts_ms"] // MINUTE * MINUTE
        a = acc.get(minute)
        if a is None:
            a = acc[minute] = {kind.owner: owner_id, "minute_ms": minute, "n": 0}
            for _, k_min, k_max, k_sum, k_n in _KEYS:
                a[k_min] = a[k_max] = None
                a[k_sum], a[k_n] = 0.0, 0
        a["n"] += 1
        for s, k_min, k_max, k_sum, k_n in _KEYS:
            v = row[s]
            if v is not None:
                a[k_sum] += v
                a[k_n] += 1
                if a[k_min] is None or v < a[k_min]:
                    a[k_min] = v
                if a[k_max] is None or v > a[k_max]:
                    a[k_max] = v
    return list(acc.values())


def _sqlite_upsert(kind: Kind):
    """Merge a batch's minutes into the rollups (SQLite; PostgreSQL does it inside _pg_ingest)."""
    if "sqlite-upsert" in kind.upserts:
        return kind.upserts["sqlite-upsert"]
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    def lower(a, b):  # SQLite's two-argument min() is NULL when either is
        return func.coalesce(func.min(a, b), a, b)

    def upper(a, b):
        return func.coalesce(func.max(a, b), a, b)

    stmt = sqlite_insert(kind.rollups)
    t, new = kind.rollups.c, stmt.excluded
    merged = {"n": t.n + new.n}
    for s in SERIES:
        merged[f"{s}_min"] = lower(t[f"{s}_min"], new[f"{s}_min"])
        merged[f"{s}_max"] = upper(t[f"{s}_max"], new[f"{s}_max"])
        merged[f"{s}_sum"] = t[f"{s}_sum"] + new[f"{s}_sum"]
        merged[f"{s}_n"] = t[f"{s}_n"] + new[f"{s}_n"]
    stmt = kind.upserts["sqlite-upsert"] = stmt.on_conflict_do_update(index_elements=[kind.owner, "minute_ms"], set_=merged)
    return stmt


_COLUMNS = ("ts_ms", *SERIES, "gpus", "processes", "network_scope")
_PG_TYPES = {"ts_ms": "bigint", "gpus": "json", "processes": "integer", "network_scope": "text"}


def _pg_ingest(kind: Kind):
    """PostgreSQL: one statement over one JSON parameter holding the whole batch: the samples are inserted
    and their minutes merged into the rollups. Short and the same whatever the batch size (psycopg caches
    it, the server keeps it prepared), where a parameter per value or a statement per row (psycopg's
    executemany) costs several times more."""
    if "pg-ingest" not in kind.upserts:
        table, rollups, owner, cols = kind.samples.__tablename__, kind.rollups.name, kind.owner, ", ".join(_COLUMNS)
        record = ", ".join(f"{c} {_PG_TYPES.get(c, 'double precision')}" for c in _COLUMNS)
        aggs = ", ".join(f"min({s}), max({s}), coalesce(sum({s}), 0), count({s})" for s in SERIES)
        names = ", ".join(f"{s}_min, {s}_max, {s}_sum, {s}_n" for s in SERIES)
        merge = ", ".join(f"{s}_min = least({rollups}.{s}_min, excluded.{s}_min), {s}_max = greatest({rollups}.{s}_max, excluded.{s}_max), "
                          f"{s}_sum = {rollups}.{s}_sum + excluded.{s}_sum, {s}_n = {rollups}.{s}_n + excluded.{s}_n" for s in SERIES)
        kind.upserts["pg-ingest"] = text(
            f"WITH batch AS (SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS r({record})), "
            f"stored AS (INSERT INTO {table} ({owner}, {cols}) SELECT :owner, {cols} FROM batch) "
            f"INSERT INTO {rollups} ({owner}, minute_ms, n, {names}) "
            f"SELECT :owner, ts_ms / {MINUTE} * {MINUTE}, count(*), {aggs} FROM batch GROUP BY 2 "
            f"ON CONFLICT ({owner}, minute_ms) DO UPDATE SET n = {rollups}.n + excluded.n, {merge}")
    return kind.upserts["pg-ingest"]


async def ingest(db: AsyncSession, kind: Kind, owner_id: str, samples: list[MetricSample]) -> Ingested:
    if not samples:
        return Ingested(samples=0, points=0)
    rows = [_row(s) for s in samples]
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(_pg_ingest(kind), {"owner": owner_id, "rows": json.dumps(rows)})
    else:  # SQLite: the driver's executemany is the fast path; the minutes are merged by an upsert
        await db.execute(insert(kind.samples.__table__), [{kind.owner: owner_id, **r} for r in rows])
        await db.execute(_sqlite_upsert(kind), _minutes(kind, owner_id, rows))
    return Ingested(samples=len(rows), points=sum(s.points() for s in samples))


# --- queries ----------------------------------------------------------------------------------------

def check_points(points: int) -> int:
    if not 1 <= points <= MAX_POINTS:
        raise InvalidInput(f"points: must be between 1 and {MAX_POINTS} (got {points})", field="points")
    return points


def check_range(start: datetime, end: datetime, points: int) -> None:
    if start > end:
        raise InvalidInput(f"start: {start.isoformat()} is after end ({end.isoformat()})", field="start")
    check_points(points)


Parts = dict[int, list[tuple]]  # bucket -> rows (bucket, n, then min, max, sum, count per series)


def _merge(rows: list[tuple]) -> tuple:
    """One bucket made of pieces (rollup minutes and raw edges): min of mins, max of maxes, sums of sums and counts."""
    out = [rows[0][0], sum(r[1] for r in rows)]
    for i in range(len(SERIES)):
        j = 2 + 4 * i
        lows = [r[j] for r in rows if r[j] is not None]
        highs = [r[j + 1] for r in rows if r[j + 1] is not None]
        out += [min(lows) if lows else None, max(highs) if highs else None,
                sum(r[j + 2] or 0.0 for r in rows), sum(r[j + 3] or 0 for r in rows)]
    return tuple(out)


async def _collect(db: AsyncSession, query, params: dict, parts: Parts) -> None:
    for row in await db.execute(query, params):
        if row[1]:
            parts.setdefault(int(row[0]), []).append(tuple(row))


def _bucket(column, single: bool):
    return literal(0) if single else column // bindparam("width", type_=BigInteger)


def _raw(kind: Kind, single: bool):
    """Raw samples in [a, b) and [c, d) (the partial minutes at either end of a range, or all of it)."""
    name = f"raw-{single}"
    if name not in kind.upserts:
        t = kind.samples
        key = _bucket(t.ts_ms, single)
        aggs = [agg(getattr(t, s)) for s in SERIES for agg in (func.min, func.max, func.sum, func.count)]
        ranges = or_(and_(t.ts_ms >= bindparam("a"), t.ts_ms < bindparam("b")), and_(t.ts_ms >= bindparam("c"), t.ts_ms < bindparam("d")))
        kind.upserts[name] = (select(key.label("bucket"), func.count(), *aggs)
                              .where(getattr(t, kind.owner) == bindparam("owner"), ranges).group_by(key))
    return kind.upserts[name]


def _rolled(kind: Kind, single: bool):
    """Rollup minutes in [a, b)."""
    name = f"rolled-{single}"
    if name not in kind.upserts:
        c = kind.rollups.c
        key = _bucket(c.minute_ms, single)
        parts = ((func.min, "min"), (func.max, "max"), (func.sum, "sum"), (func.sum, "n"))
        aggs = [agg(c[f"{s}_{part}"]) for s in SERIES for agg, part in parts]
        kind.upserts[name] = (select(key.label("bucket"), func.sum(c.n), *aggs)
                              .where(c[kind.owner] == bindparam("owner"), c.minute_ms >= bindparam("a"), c.minute_ms < bindparam("b"))
                              .group_by(key))
    return kind.upserts[name]


def _sample(row) -> MetricSample:
    return MetricSample(ts=from_ms(row.ts_ms), **{name: getattr(row, name) for name in SERIES},
                        gpus=[GpuSample.model_validate(g) for g in row.gpus] if row.gpus is not None else None,
                        gpu_available=row.gpus is not None, processes=row.processes, network_scope=row.network_scope or "host")


async def query(db: AsyncSession, kind: Kind, owner_id: str, start: datetime, end: datetime, points: int) -> MetricsView:
    """Samples in [start, end) downsampled to at most `points` buckets (see the module docstring)."""
    check_range(start, end, points)
    start_ms, end_ms = to_ms(start), to_ms(end)
    width = bucket_width(end_ms - start_ms, points)
    view = MetricsView(start=from_ms(start_ms), end=from_ms(end_ms), bucket_s=(width or end_ms - start_ms) / 1000, points=points,
                       samples=0, t=[], series={name: Series(unit=unit, min=[], mean=[], max=[]) for name, unit in SERIES.items()})
    if end_ms == start_ms:
        return view
    parts: Parts = {}
    single, common = width is None, {"owner": owner_id} | ({} if width is None else {"width": width})
    first_minute, last_minute = -(-start_ms // MINUTE) * MINUTE, end_ms // MINUTE * MINUTE
    if (single or width % MINUTE == 0) and first_minute < last_minute:
        await _collect(db, _rolled(kind, single), common | {"a": first_minute, "b": last_minute}, parts)
        if start_ms < first_minute or last_minute < end_ms:
            edges = {"a": start_ms, "b": first_minute, "c": last_minute, "d": end_ms}
            await _collect(db, _raw(kind, single), common | edges, parts)
    else:
        await _collect(db, _raw(kind, single), common | {"a": start_ms, "b": end_ms, "c": 0, "d": 0}, parts)
    rows = [p[0] if len(p) == 1 else _merge(p) for _, p in sorted(parts.items())]
    view.t = [from_ms(r[0] * width) for r in rows] if width else [view.start] * len(rows)
    view.n = [int(r[1]) for r in rows]
    view.samples = sum(view.n)
    for i, name in enumerate(SERIES):  # column by column: a day is ~720 buckets x 9 series
        j = 2 + 4 * i
        view.series[name] = Series.model_construct(unit=SERIES[name], min=[r[j] for r in rows], max=[r[j + 1] for r in rows],
                                                   mean=[r[j + 2] / r[j + 3] if r[j + 3] else None for r in rows])
    if rows:
        t = kind.samples
        # a separate statement: retention may have deleted the rows in between (PostgreSQL, read committed)
        latest = (await db.execute(select(t).where(getattr(t, kind.owner) == owner_id, t.ts_ms >= start_ms, t.ts_ms < end_ms)
                                   .order_by(t.ts_ms.desc()).limit(1))).scalar_one_or_none()
        view.latest = _sample(latest) if latest is not None else None
        if view.latest is not None:
            view.network_scope = view.latest.network_scope
    return view


# --- retention -------------------------------------------------------------------------------------

def _expired(kind: Kind, cutoff: int, chunk: int) -> list:
    t, r = kind.samples, kind.rollups.c
    return [delete(t).where(t.id.in_(select(t.id).where(t.ts_ms < cutoff).limit(chunk).scalar_subquery())),
            delete(kind.rollups).where(tuple_(r[kind.owner], r.minute_ms).in_(
                select(r[kind.owner], r.minute_ms).where(r.minute_ms < cutoff).limit(chunk)))]


async def delete_expired(sessionmaker: async_sessionmaker, retention_days: float, chunk: int = 5000) -> int:
    """Delete samples and rollups older than the retention, a chunk per transaction so ingestion is never
    blocked for long."""
    cutoff = to_ms(utcnow()) - int(retention_days * 86_400_000)
    total = 0
    for statement in _expired(SESSIONS, cutoff, chunk) + _expired(WORKERS, cutoff, chunk):
        while True:
            async with sessionmaker() as db:
                deleted = (await db.execute(statement)).rowcount or 0
                await db.commit()
            total += deleted
            if deleted < chunk:
                break
            await asyncio.sleep(0)
    return total


async def retention_loop(app) -> None:
    """Started by the app's lifespan; every replica may run it (deletes are idempotent)."""
    settings = app.state.settings
    await asyncio.sleep(min(60.0, settings.metrics_retention_interval_s))
    while True:
        try:
            deleted = await delete_expired(app.state.sessionmaker, settings.metrics_retention_days)
            if deleted:
                log.info("metrics retention: deleted %d rows older than %g days", deleted, settings.metrics_retention_days)
        except Exception:  # keep going; a database hiccup must not end the loop
            log.exception("metrics retention pass failed")
        await asyncio.sleep(settings.metrics_retention_interval_s)
