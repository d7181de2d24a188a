"""Static files: our own CSS and JS from this package, and an allow-list of files from node_modules (npm,
package.json at the repository root; scripts/setup.sh installs them). Nothing else of node_modules is served."""

from __future__ import annotations

import logging
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
_OWN = {"berth.css", "berth.js", "dashboard.js", "favicon.svg"}
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


@router.get("/static/{name}")
async def own(name: str) -> FileResponse:
    if name not in _OWN:
        raise NotFound(f"no asset {name!r}")
    return _file(OWN_DIR / name, 300)
