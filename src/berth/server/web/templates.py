"""Jinja2 pages: autoescape on every template (names, tags, console lines are user text), a few display filters."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

_ENV = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")), autoescape=True,
                   undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def duration(seconds: float | None) -> str:
    """3 s, 4 min, 2 h 5 min, 3 d 4 h."""
    if seconds is None:
        return "—"
    s = int(max(0, seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(s // 3600, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def ago(when: datetime | None) -> str:
    if when is None:
        return "—"
    seconds = (datetime.now(timezone.utc) - when.astimezone(timezone.utc)).total_seconds()
    return "just now" if seconds < 10 else duration(seconds) + " ago"


def iso(when: datetime | None) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if when else ""


_ENV.filters.update(duration=duration, ago=ago, iso=iso)


def render(request: Request, name: str, context: dict[str, Any] | None = None, *, status_code: int = 200,
           headers: dict[str, str] | None = None) -> HTMLResponse:
    html = _ENV.get_template(name).render({"request": request, "browser": None, **(context or {})})
    return HTMLResponse(html, status_code=status_code, headers=headers)
