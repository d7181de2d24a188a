"""The pages' forms: small application/x-www-form-urlencoded bodies (the request size limit already applies),
read once per request and kept on it, so the CSRF check and the route read the same fields."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import Request

from pydantic import BaseModel, ValidationError

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


def check(model: type[BaseModel], data: dict) -> tuple[BaseModel | None, dict[str, str]]:
    """A form's fields through the API's own model (one source of truth): the model, or a message per field."""
    try:
        return model.model_validate(data), {}
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "form"
            errors.setdefault(name, "unknown field" if error["type"] == "extra_forbidden" else error["msg"])
        return None, errors
