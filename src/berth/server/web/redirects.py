"""Where a login may send the browser next: a path on this site, nothing else.

Refused (answered with "/"): anything not starting with one "/" (`//x` and `/\\x` are other hosts to a
browser), schemes, whitespace or control characters in the path (browsers drop tabs and newlines, so
`/\\t/x` is `//x`), and the same tricks percent-encoded once or several times (`/%09/x`, `/%2F%2Fx`, `%252F`).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

_MAX_LENGTH = 2000
_MAX_DECODES = 4  # still encoded after this many rounds: not a link people make


def safe_next(target: str | None) -> str:
    if not target or len(target) > _MAX_LENGTH or not target.isascii() or not target.isprintable() or " " in target:
        return "/"
    value = target
    for _ in range(_MAX_DECODES):
        if not _local_path(value):
            return "/"
        decoded = unquote(value)
        if decoded == value:
            return target  # the original: what was checked is what the browser gets
        value = decoded
    return "/"


def _local_path(value: str) -> bool:
    path = value.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        return False
    if any(c.isspace() or not c.isprintable() for c in path):
        return False
    parts = urlsplit(value)
    return not parts.scheme and not parts.netloc
