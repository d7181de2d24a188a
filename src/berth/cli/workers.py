"""`berth workers list`."""

from __future__ import annotations

import typer

from .common import out, print_json, run
from .render import ago, cut, fixed_column, list_table, text_column

workers = typer.Typer(help="Worker machines.", no_args_is_help=True)


@workers.command("list")
def list_workers(as_json: bool = typer.Option(False, "--json")) -> None:
    """Registered workers: status, queues, CPUs, memory, GPUs."""
    views = run(lambda c: c.workers())
    if as_json:
        print_json(views)
        return
    table = list_table()  # names, hosts, queues and GPU models are cut at 80 columns; figures are kept whole
    for col in ("name", "status", "host", "queues", "cpus", "memory", "gpus", "heartbeat", "tunnel"):
        (text_column if col in ("name", "host", "queues", "gpus") else fixed_column)(table, col)
    for w in views:
        gpus = ", ".join(str(g.get("name") or g.get("index", "?")) for g in w.gpus) if w.gpus else "-"
        style = {"online": "green", "lost": "red"}.get(w.status.value, "dim")
        table.add_row(cut(w.name), f"[{style}]{w.status.value}[/{style}]", cut(w.hostname), cut(", ".join(w.queues)), str(w.cpus),
                      f"{w.memory_bytes / 2**30:.1f} GiB", cut(gpus), ago(w.last_heartbeat),
                      "[green]up[/green]" if w.tunnel_replica else "[dim]down[/dim]")
    out.print(table, highlight=False)
