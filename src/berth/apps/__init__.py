"""The apps berth runs: each has a configuration model (one field per seed option) and dashboard fields.

Configuration files (export/import) look like::

    {"berth_config": 1, "app": "ssh-session", "config": {...}}
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from berth.errors import InvalidInput
from berth.schemas import App

from .common import CONFIG_SCHEMA_VERSION, CommonConfig
from .ssh_session import SshSessionConfig

CONFIG_MODELS: dict[App, type[CommonConfig]] = {App.ssh_session: SshSessionConfig}


def config_model(app: App | str) -> type[CommonConfig]:
    try:
        return CONFIG_MODELS[App(app)]
    except (ValueError, KeyError):
        known = ", ".join(a.value for a in CONFIG_MODELS)
        raise InvalidInput(f"app: unknown or unsupported app {app!r} (supported: {known})", field="app") from None


def validate_config(app: App | str, data: Any) -> CommonConfig:
    """Validate a configuration dict; the error names the first offending field."""
    model = config_model(app)
    if not isinstance(data, dict):
        raise InvalidInput("config: must be a JSON object", field="config")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_from_validation(exc, prefix="config") from None


def invalid_from_validation(exc: ValidationError, prefix: str = "") -> InvalidInput:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or prefix
    field = f"{prefix}.{loc}" if prefix and loc != prefix else loc
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    elif first["type"] == "missing":
        msg = "required field is missing"
    elif first["type"] == "value_error":  # our own validators' messages read better without pydantic's prefix
        msg = msg.removeprefix("Value error, ")
    return InvalidInput(f"{field}: {msg}", field=field)


def export_document(app: App | str, config: dict[str, Any]) -> dict[str, Any]:
    return {"berth_config": CONFIG_SCHEMA_VERSION, "app": App(app).value, "config": config}


def parse_document(doc: Any) -> tuple[App, CommonConfig]:
    """Validate an exported configuration file as a whole."""
    if not isinstance(doc, dict):
        raise InvalidInput("configuration file: must be a JSON object", field="")
    unknown = sorted(set(doc) - {"berth_config", "app", "config"})
    if unknown:
        raise InvalidInput(f"{unknown[0]}: unknown field", field=unknown[0])
    version = doc.get("berth_config")
    if version != CONFIG_SCHEMA_VERSION:
        raise InvalidInput(f"berth_config: unsupported schema version {version!r} (expected {CONFIG_SCHEMA_VERSION})", field="berth_config")
    if "app" not in doc:
        raise InvalidInput("app: required field is missing", field="app")
    return App(config_model(doc["app"]).app), validate_config(doc["app"], doc.get("config", {}))


__all__ = ["CONFIG_MODELS", "CommonConfig", "SshSessionConfig", "config_model", "validate_config", "export_document",
           "parse_document", "invalid_from_validation"]
