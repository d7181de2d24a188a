"""Pure helpers of the metrics feature: bucket widths, per-minute rollups of a batch, `--since`, table rows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from berth.cli.metrics import parse_since, summary_rows
from berth.errors import InvalidInput
from berth.metrics import SERIES, MetricsView, Series
from berth.server.db.models import SAMPLE_SERIES
from berth.server.services.metrics import MINUTE, SESSIONS, _minutes, bucket_width, from_ms, to_ms


def test_series_lists_agree():
    assert tuple(SERIES) == SAMPLE_SERIES


@pytest.mark.parametrize(("span_ms", "points", "width"), [
    (100_000, 10, 12_000),          # 100 s / 9 = 11.1 s -> 12 s from the ladder
    (10_000, 1000, 11),             # under a second: whole milliseconds
    (86_400_000, 1000, 120_000),    # a day: 86.5 s -> 2 min (rollups)
    (7 * 86_400_000, 1000, 11 * MINUTE),
    (3_600_000, 61, MINUTE),
    (5, 10, 1),
    (1_000, 1, None),               # one bucket
])
def test_bucket_width(span_ms, points, width):
    assert bucket_width(span_ms, points) == width


@pytest.mark.parametrize("points", [2, 3, 7, 10, 61, 999, 1000, 10_000])
@pytest.mark.parametrize("span_ms", [1, 999, 60_001, 3_599_999, 86_400_000, 604_800_000])
@pytest.mark.parametrize("offset", [0, 1, 29_999, 59_999])
def test_never_more_buckets_than_points(points, span_ms, offset):
    start = 1_800_000_000_000 + offset
    width = bucket_width(span_ms, points)
    touched = (start + span_ms - 1) // width - start // width + 1
    assert touched <= points


def test_ms_round_trip_is_exact():
    ts = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    assert from_ms(to_ms(ts)) == ts and to_ms(ts.replace(tzinfo=None)) == to_ms(ts)


def test_minutes_of_a_batch():
    base = 1_800_000_000_000 // MINUTE * MINUTE
    rows = [{"ts_ms": base + 10_000 * i, **{s: None for s in SERIES}} for i in range(8)]  # 0..70 s: two minutes
    for i, row in enumerate(rows):
        row["cpu"] = float(i)
        row["net_rx_mbs"] = None if i % 2 else 1.0 * i
    first, second = _minutes(SESSIONS, "s1", rows)
    assert (first["minute_ms"], first["n"], second["minute_ms"], second["n"]) == (base, 6, base + MINUTE, 2)
    assert (first["cpu_min"], first["cpu_max"], first["cpu_sum"], first["cpu_n"]) == (0.0, 5.0, 15.0, 6)
    assert (first["net_rx_mbs_min"], first["net_rx_mbs_max"], first["net_rx_mbs_sum"], first["net_rx_mbs_n"]) == (0.0, 4.0, 6.0, 3)
    assert (first["gpu_util_min"], first["gpu_util_sum"], first["gpu_util_n"]) == (None, 0.0, 0)
    assert first["session_id"] == "s1"


def test_parse_since():
    now = datetime(2026, 1, 2, 12, 0, tzinfo=timezone.utc)
    assert parse_since("1h", now) == now - timedelta(hours=1)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("1.5d", now) == now - timedelta(hours=36)
    assert parse_since("2026-01-01T00:00:00", now) == datetime(2026, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(InvalidInput):
        parse_since("yesterday", now)


def test_summary_rows_weight_means_by_samples():
    t = [datetime(2026, 1, 1, tzinfo=timezone.utc)] * 2
    series = {name: Series(unit=unit, min=[None, None], mean=[None, None], max=[None, None]) for name, unit in SERIES.items()}
    series["cpu"] = Series(unit="%", min=[0.0, 50.0], mean=[10.0, 70.0], max=[20.0, 90.0])
    view = MetricsView(start=t[0], end=t[0], bucket_s=1, points=2, samples=4, t=t, n=[3, 1], series=series)
    assert summary_rows(view) == [("cpu", "%", None, 0.0, 25.0, 90.0)]  # (10*3 + 70*1) / 4; GPU series left out
