"""`berth sessions metrics` and `berth sessions extend` (issue #4)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Optional

import typer
from rich.table import Table

from berth.errors import InvalidInput
from berth.metrics import MetricsView

from .common import err, escape, guard, out, print_json, run

_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_LABELS = {"cpu": "CPU (% of one core)", "mem_mb": "memory (RSS)", "disk_read_mbs": "disk read", "disk_write_mbs": "disk write",
           "net_rx_mbs": "network rx", "net_tx_mbs": "network tx", "gpu_util": "GPU utilization",
           "gpu_mem_used_mb": "GPU memory used", "gpu_mem_total_mb": "GPU memory total"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """'90s', '30m', '1h', '1.5h', '2d', '1w' before now, or an ISO 8601 time (UTC when no zone is given)."""
    now = now or datetime.now(timezone.utc)
    if m := _SINCE.match(text):
        return now - timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"--since: {text!r} is neither a duration (30m, 1h, 2d) nor an ISO time", field="since") from None
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if unit == "MB" or abs(value) >= 100 else f"{value:.2f}" if unit == "MB/s" else f"{value:.1f}"


def summary_rows(view: MetricsView) -> list[tuple[str, str, float | None, float | None, float | None, float | None]]:
    """(series, unit, latest, min, mean, max) over the whole range; series with no value at all are left out."""
    rows = []
    for name, series in view.series.items():
        pairs = [(m, n) for m, n in zip(series.mean, view.n or [1] * len(series.mean), strict=True) if m is not None]
        if not pairs:
            continue
        lows = [v for v in series.min if v is not None]
        highs = [v for v in series.max if v is not None]
        mean = sum(m * n for m, n in pairs) / sum(n for _, n in pairs)
        latest = getattr(view.latest, name, None) if view.latest else None
        rows.append((name, series.unit, latest, min(lows), mean, max(highs)))
    return rows


def render_metrics(view: MetricsView, session_id: str) -> None:
    if not view.samples:
        err.print(f"no samples for {escape(session_id)} between {view.start:%Y-%m-%d %H:%M:%S} and {view.end:%Y-%m-%d %H:%M:%S} UTC")
        return
    table = Table(title=f"{escape(session_id)}: {view.samples} samples since {view.start:%Y-%m-%d %H:%M:%S} UTC",
                  title_justify="left")
    for col, justify in (("series", "left"), ("unit", "left"), ("latest", "right"), ("min", "right"), ("mean", "right"), ("max", "right")):
        table.add_column(col, justify=justify)
    for name, unit, latest, lo, mean, hi in summary_rows(view):
        table.add_row(_LABELS.get(name, name), unit, _num(latest, unit), _num(lo, unit), _num(mean, unit), _num(hi, unit))
    out.print(table, highlight=False)
    latest = view.latest
    for gpu in (latest.gpus or []) if latest else []:
        share = f", this session {gpu.session_util:.0f}%" if gpu.session_util is not None else ""
        mem = f", this session {gpu.session_mem_mb:.0f} MB" if gpu.session_mem_mb is not None else ""
        out.print(f"gpu {gpu.index} {escape(gpu.name or '')}: {_num(gpu.util, '%')}%{share}; memory {_num(gpu.mem_used_mb, 'MB')}"
                  f"/{_num(gpu.mem_total_mb, 'MB')} MB{mem}", highlight=False)
    notes = []
    if view.network_scope == "host":
        notes.append("network is the worker's (all sessions), not this session's own")
    if latest is not None and not latest.gpu_available:
        notes.append("no GPU visible through NVML")
    if notes:
        err.print("[dim]" + "; ".join(notes) + "[/dim]")


def metrics(session_id: str,
            since: Optional[str] = typer.Option(None, "--since", help="Start: a duration before now (30m, 1h, 2d) or an ISO time; "
                                                "default: the session's start"),
            points: int = typer.Option(1000, "--points", help="Buckets in the --json output"),
            as_json: bool = typer.Option(False, "--json", help="Print the downsampled series as JSON")) -> None:
    """Resource use of a session: latest value and min/mean/max of CPU, memory, disk, network and GPU."""
    start = guard(lambda: parse_since(since)) if since else None
    # The table needs whole-range figures only: one bucket makes the database compute them.
    view = run(lambda c: c.session_metrics(session_id, start=start, points=points if as_json else 1))
    print_json(view) if as_json else render_metrics(view, session_id)


def extend(session_id: str, hours: float = typer.Option(..., "--hours", help="How long to postpone the idle shutdown (fractions allowed)"),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Keep an idle session: no idle shutdown before now (or an earlier extension) + HOURS."""
    view = run(lambda c: c.extend(session_id, hours))
    if as_json:
        print_json(view)
    else:
        err.print(f"session {view.id}: no idle shutdown before {view.idle_extended_until:%Y-%m-%d %H:%M:%S} UTC")
