"""`berth workers list`."""

from __future__ import annotations

import typer

from .common import out, print_json, run
from .render import ago, cut, fixed_column, list_table, text_column

workers = typer.Typer(help="Worker machines.", no_args_is_help=True)


@workers.command("list")
def list_workers(as_json: bool = typer.Option(False, "--json")) -> None:
    """Registered workers: status, queues, the session backends they offer, CPUs, memory, GPUs."""
    views = run(lambda c: c.workers())
    if as_json:
        print_json(views)
        return
    # Hosts, queues and GPU models are cut at 80 columns; names only past 20 characters (they name the worker);
    # figures and backends are kept whole.
    table = list_table()
    text_column(table, "name", min_width=min(20, max((len(w.name) for w in views), default=4)))
    for col in ("status", "host", "queues", "backends", "cpus", "memory", "gpus", "heartbeat", "tunnel"):
        (text_column if col in ("host", "queues", "gpus") else fixed_column)(table, col)
    for w in views:
        gpus = ", ".join(str(g.get("name") or g.get("index", "?")) for g in w.gpus) if w.gpus else "-"
        style = {"online": "green", "lost": "red"}.get(w.status.value, "dim")
        table.add_row(cut(w.name), f"[{style}]{w.status.value}[/{style}]", cut(w.hostname), cut(", ".join(w.queues)),
                      ", ".join(w.backends), str(w.cpus), f"{w.memory_bytes / 2**30:.1f} GiB", cut(gpus), ago(w.last_heartbeat),
                      "[green]up[/green]" if w.tunnel_replica else "[dim]down[/dim]")
    out.print(table, highlight=False)
