"""The launch form as data: its fields, grouped and labelled by the app's config model (`launch_form`), with
defaults and help read from the model's fields, and the conversions form text <-> configuration. Validation is
the API's (`apps.config_errors`, `services.sessions.launch`): this module only carries text back and forth."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from berth.apps import CommonConfig
from berth.errors import InvalidInput

SECRET_FIELDS = ("git_token", "git_ssh_key")  # LaunchSecrets: posted, never rendered back
_COMMA_LISTS = {"tags"}  # the seed's "comma separated" lists; other lists take one item a line
_ADVANCED = "Advanced Options"


@dataclass(frozen=True)
class FormField:
    name: str
    label: str
    kind: str  # text | textarea | number | checkbox | list | lines | queue | choice
    help: str
    optional: bool
    choices: tuple[tuple[str, str], ...] = ()  # (value, label) of a choice


def _choices(info) -> tuple[tuple[str, str], ...]:
    """A field with a fixed set of values names them, labelled, in `json_schema_extra["choices"]`."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return tuple((str(k), str(v)) for k, v in (extra.get("choices") or {}).items())


@dataclass
class Group:
    title: str
    collapsed: bool
    fields: list[FormField] = field(default_factory=list)


def _kind(name: str, info) -> str:
    annotation = str(info.annotation)
    if name == "queue":
        return "queue"
    if info.annotation is bool:
        return "checkbox"
    if _choices(info):
        return "choice"
    if annotation.startswith("dict"):  # KEY=VALUE, one a line
        return "lines"
    if "float" in annotation or "int" in annotation:
        return "number"
    if annotation.startswith("list"):
        return "list" if name in _COMMA_LISTS else "lines"
    return "textarea" if "check_text" in annotation else "text"


def groups(model: type[CommonConfig]) -> list[Group]:
    fields = model.model_fields
    out: list[Group] = []
    placed: set[str] = set()
    for title, collapsed, members in model.launch_form:
        group = Group(title, collapsed)
        for name, label in members:
            info = fields[name]
            group.fields.append(FormField(name, label, _kind(name, info), (info.description or "").replace("%%", "%"),
                                          not info.is_required() and info.default is None, _choices(info)))
            placed.add(name)
        out.append(group)
    rest = [n for n in fields if n not in placed]
    if rest:  # a field no layout names still gets an input
        advanced = next((g for g in out if g.title == _ADVANCED), None) or Group(_ADVANCED, True)
        if advanced not in out:
            out.append(advanced)
        for name in rest:
            info = fields[name]
            advanced.fields.append(FormField(name, name.replace("_", " ").capitalize(), _kind(name, info),
                                             info.description or "", info.default is None, _choices(info)))
    return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def to_form(model: type[CommonConfig], config: dict[str, Any]) -> dict[str, Any]:
    """Form values (text, or a bool for a checkbox) of a configuration: its values over the model's defaults.
    Tolerant of wrong types (an imported file may hold them): they show as text, and validation names them."""
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        value = config[name] if name in config else info.get_default(call_default_factory=True)
        kind = _kind(name, info)
        if kind == "checkbox":
            values[name] = value if isinstance(value, bool) else str(value).lower() in ("true", "1", "on", "yes")
        elif value is None:
            values[name] = ""
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            if kind == "list":
                values[name] = ", ".join(value)
            else:  # packages are split per line with shell quoting: quote what needs it to come back the same
                values[name] = "\n".join(shlex.quote(v) if name == "packages" else v for v in value)
        elif isinstance(value, dict):  # env: KEY=VALUE lines, parsed back by the model
            values[name] = "\n".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values[name] = _number(value)
        else:
            values[name] = str(value)
    return values


def from_form(model: type[CommonConfig], posted: dict[str, str]) -> dict[str, Any]:
    """The configuration dict the posted form describes (validated by the caller, as the API validates)."""
    config: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        kind = _kind(name, info)
        if kind == "checkbox":
            config[name] = name in posted
            continue
        text = posted.get(name, "")
        if not text.strip():
            if info.default is None:
                config[name] = None
            # else: left out, so the model's default applies (seed: an empty project means the default one)
            continue
        config[name] = text
    return config


def secrets_from_form(posted: dict[str, str]) -> dict[str, str]:
    return {name: posted[name] for name in SECRET_FIELDS if posted.get(name, "").strip()}


def field_errors(model: type[CommonConfig], errors: list[InvalidInput]) -> tuple[dict[str, str], list[str]]:
    """Errors by form field ("config.tags.0" -> "tags"), and those no field shows (at the top of the form)."""
    by_field: dict[str, str] = {}
    general: list[str] = []
    names = set(model.model_fields) | set(SECRET_FIELDS)
    for error in errors:
        path = (error.field or "").split(".")
        if path and path[0] in ("config", "secrets"):
            path = path[1:]
        name = path[0] if path else ""
        if name in names and name not in by_field:
            by_field[name] = error.message
        else:
            general.append(error.message)
    return by_field, general
