"""The pages' forms: small application/x-www-form-urlencoded bodies (the request size limit already applies),
read once per request and kept on it, so the CSRF check and the route read the same fields."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import Request

from berth.errors import InvalidInput

_MAX_FIELDS = 100


async def fields(request: Request) -> dict[str, str]:
    cached = getattr(request.state, "form_fields", None)
    if cached is not None:
        return cached
    found: dict[str, str] = {}
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl((await request.body()).decode(), keep_blank_values=True, max_num_fields=_MAX_FIELDS,
                              strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            raise InvalidInput("the form could not be read (not UTF-8, or too many fields)") from None
        for name, value in pairs:
            found.setdefault(name, value)  # the first of repeated fields, as browsers send one each
    request.state.form_fields = found
    return found
