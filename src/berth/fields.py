"""Field types of every request model, so the input limits live in one place.

- numbers: finite (no NaN or ±Infinity, which JSON parsing lets through) and bounded, so arithmetic on them
  (timedelta, sums in SQL) and the database columns they land in never overflow;
- ``Text``: any text, but never NUL or a lone surrogate (no database or encoder can store them);
  ``OutputText`` (program output: console lines, setup errors) replaces them instead of refusing the line;
- ``Line``: one line of text (labels, host names): no control characters;
- ``Name``: names that appear in URLs and on screens (projects, queues, sessions, tags): one line, and nothing
  a route cannot address (``/ ? # % \\``, ``.``/``..``, leading or trailing spaces);
- ``JsonObject``: free-form JSON (app configurations, GPU details) held to the same rules at every depth.

``WireModel`` is the base of request models: floats are finite whatever their field says.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

INT32 = 2 ** 31 - 1
INT64 = 2 ** 63 - 1
MAX_FLOAT = 1e15  # larger than any sane quantity berth measures; sums of many stay finite
MAX_JSON_DEPTH = 16

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
_UNADDRESSABLE = ("/", "?", "#", "%", "\\")


class WireModel(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)


def check_text(value: str) -> str:
    if _UNSTORABLE.search(value):
        raise ValueError("must not contain NUL characters or invalid Unicode")
    return value


def check_line(value: str) -> str:
    check_text(value)
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (newlines, tabs, escapes, NUL)")
    return value


def check_name(value: str) -> str:
    check_line(value)
    if value != value.strip():
        raise ValueError("must not start or end with a space")
    bad = [c for c in _UNADDRESSABLE if c in value]
    if bad:
        raise ValueError(f"must not contain {' '.join(repr(c) for c in bad)} (it could not be used in a URL)")
    if value in (".", ".."):
        raise ValueError("cannot be '.' or '..'")
    return value


def scrub_text(value: str) -> str:
    """Program output (console lines, setup errors) is kept, not refused: what cannot be stored is replaced."""
    return _UNSTORABLE.sub("\ufffd", value)


def check_json(value: Any, depth: int = 0) -> Any:
    """Free-form JSON: finite numbers in range, storable strings, bounded depth."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
        return value
    if isinstance(value, int):
        if abs(value) > INT64:
            raise ValueError("integer out of range")
        return value
    if isinstance(value, str):
        return check_text(value)
    if isinstance(value, list):
        return [check_json(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {check_text(str(k)): check_json(v, depth + 1) for k, v in value.items()}
    raise ValueError(f"not a JSON value: {type(value).__name__}")


Text = Annotated[str, AfterValidator(check_text)]
OutputText = Annotated[str, AfterValidator(scrub_text)]
Line = Annotated[str, AfterValidator(check_line)]
Name = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(check_name)]
JsonObject = Annotated[dict[str, Any], AfterValidator(check_json)]

Finite = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_FLOAT, le=MAX_FLOAT)]
Int32 = Annotated[int, Field(ge=-INT32 - 1, le=INT32)]
Count = Annotated[int, Field(ge=0, le=INT32)]
BigCount = Annotated[int, Field(ge=0, le=INT64)]
