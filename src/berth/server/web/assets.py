"""Static files: our own CSS and JS from this package, and an allow-list of files from node_modules (npm,
package.json at the repository root; scripts/setup.sh installs them). Nothing else of node_modules is served."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from berth.errors import NotFound

log = logging.getLogger("berth.server")
router = APIRouter(include_in_schema=False)

OWN_DIR = Path(__file__).with_name("static")
# The checkout's node_modules (src/berth/server/web/ -> repository root); BERTH_WEB_ASSETS_DIR elsewhere.
DEFAULT_VENDOR_DIR = Path(__file__).resolve().parents[4] / "node_modules"
VENDOR = {
    "htmx.min.js": "htmx.org/dist/htmx.min.js",
    "htmx-ext-sse.js": "htmx-ext-sse/dist/sse.min.js",
    "uPlot.iife.min.js": "uplot/dist/uPlot.iife.min.js",
    "uPlot.min.css": "uplot/dist/uPlot.min.css",
    "xterm.js": "@xterm/xterm/lib/xterm.js",
    "xterm.css": "@xterm/xterm/css/xterm.css",
}
# noVNC 1.x is a tree of ES modules (core/rfb.js imports its siblings and vendor/pako): served by prefix, .js only.
NOVNC_DIR = "@novnc/novnc"
NOVNC_PREFIXES = ("core/", "vendor/pako/lib/")
_MODULE_PATH = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*\.js$")  # no "..", no empty or dot segments
_OWN = {"berth.css", "berth.js", "dashboard.js", "desktop.css", "desktop.js", "favicon.svg", "terminal.js"}
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def _file(path: Path, max_age: int) -> FileResponse:
    return FileResponse(path, media_type=_TYPES[path.suffix], headers={"Cache-Control": f"public, max-age={max_age}"})


@router.get("/static/vendor/{name}")
async def vendor(request: Request, name: str) -> FileResponse:
    if name not in VENDOR:
        raise NotFound(f"no asset {name!r}")
    path = (request.app.state.settings.web_assets_dir or DEFAULT_VENDOR_DIR) / VENDOR[name]
    if not path.is_file():
        log.error("web asset %s missing: run scripts/setup.sh (npm ci) or set BERTH_WEB_ASSETS_DIR", path)
        raise NotFound(f"asset {name!r} is not installed on this server")
    return _file(path, 86400)


@router.get("/static/vendor/novnc/{path:path}")
async def novnc_module(request: Request, path: str) -> FileResponse:
    """noVNC's ES modules (the desktop page imports core/rfb.js; the browser fetches what it imports)."""
    if not path.startswith(NOVNC_PREFIXES) or not _MODULE_PATH.match(path):
        raise NotFound(f"no asset {'novnc/' + path!r}")
    root = ((request.app.state.settings.web_assets_dir or DEFAULT_VENDOR_DIR) / NOVNC_DIR).resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root) or not target.is_file():  # a link out of the package is not served either
        log.error("web asset %s missing: run scripts/setup.sh (npm ci) or set BERTH_WEB_ASSETS_DIR", root / path)
        raise NotFound(f"asset {'novnc/' + path!r} is not installed on this server")
    return _file(target, 86400)


@router.get("/static/{name}")
async def own(name: str) -> FileResponse:
    if name not in _OWN:
        raise NotFound(f"no asset {name!r}")
    return _file(OWN_DIR / name, 300)
