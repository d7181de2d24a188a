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
from .remote_desktop import RemoteDesktopConfig
from .ssh_session import SshSessionConfig

CONFIG_MODELS: dict[App, type[CommonConfig]] = {App.ssh_session: SshSessionConfig,
                                                 App.remote_desktop: RemoteDesktopConfig}


def config_model(app: App | str) -> type[CommonConfig]:
    try:
        return CONFIG_MODELS[App(app)]
    except (ValueError, KeyError):
        known = ", ".join(a.value for a in CONFIG_MODELS)
        raise InvalidInput(f"app: unknown or unsupported app {app!r} (supported: {known})", field="app") from None


def validate_config(app: App | str, data: Any, prefix: str = "config", context: dict[str, Any] | None = None) -> CommonConfig:
    """Validate a configuration dict; the error names the first offending field. `context`: what the server's
    settings add to the checks (its admin's allowed container flags, `container_args.POLICY_CONTEXT`); the server
    passes it for every launch, the agent and the CLI do not."""
    model = config_model(app)
    if not isinstance(data, dict):
        raise InvalidInput(f"{prefix or 'configuration'}: must be a JSON object", field=prefix)
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise invalid_from_validation(exc, prefix=prefix) from None


def config_errors(app: App | str, data: dict[str, Any], context: dict[str, Any] | None = None) -> list[InvalidInput]:
    """Every problem of a configuration dict (the launch form shows each next to its field), in the words
    `validate_config` uses; empty when it is valid."""
    try:
        config_model(app).model_validate(data, context=context)
    except ValidationError as exc:
        return [_invalid(error, "config") for error in exc.errors()]
    return []


def invalid_from_validation(exc: ValidationError, prefix: str = "") -> InvalidInput:
    return _invalid(exc.errors()[0], prefix)


def _invalid(first: Any, prefix: str) -> InvalidInput:
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


_DOCUMENT_KEYS = {"berth_config", "app", "config"}
EXPECTED_SHAPES = ('expected an exported configuration {"berth_config": 1, "app": ..., "config": {...}} '
                   'or a configuration object such as {"queue": "gpu"}')


def document_config(doc: Any, app: App | str | None = None) -> tuple[App, dict[str, Any]]:
    """The app and the (unvalidated) configuration dict of a configuration file: an exported document, or a bare
    configuration object as people write one by hand (`app`: the app it configures, when the caller knows it)."""
    if not isinstance(doc, dict):
        raise InvalidInput(f"configuration file: must be a JSON object: {EXPECTED_SHAPES}", field="")
    if app is not None and not (_DOCUMENT_KEYS & set(doc)):  # no key of a document: a bare configuration
        return App(config_model(app).app), doc
    if not (_DOCUMENT_KEYS & set(doc)):
        raise InvalidInput(f"configuration file: {EXPECTED_SHAPES} (a bare configuration needs its app)", field="")
    unknown = sorted(set(doc) - {"berth_config", "app", "config"})
    if unknown:
        raise InvalidInput(f"{unknown[0]}: unknown field", field=unknown[0])
    version = doc.get("berth_config")
    if version != CONFIG_SCHEMA_VERSION:
        raise InvalidInput(f"berth_config: unsupported schema version {version!r} (expected {CONFIG_SCHEMA_VERSION})", field="berth_config")
    if "app" not in doc:
        raise InvalidInput("app: required field is missing", field="app")
    doc_app = App(config_model(doc["app"]).app)
    if app is not None and doc_app != App(app):
        raise InvalidInput(f"app: the file configures {doc_app.value!r}, not {App(app).value!r}", field="app")
    return doc_app, doc.get("config", {})


def parse_document(doc: Any, app: App | str | None = None, context: dict[str, Any] | None = None) -> tuple[App, CommonConfig]:
    """Validate a configuration file as a whole: an exported document, or (when `app` is given) a bare
    configuration object of that app, whose errors name the fields as written (`queue`, not `config.queue`)."""
    doc_app, config = document_config(doc, app)
    bare = config is doc
    return doc_app, validate_config(doc_app, config, prefix="" if bare else "config", context=context)


__all__ = ["CONFIG_MODELS", "CommonConfig", "SshSessionConfig", "RemoteDesktopConfig", "config_model", "validate_config",
           "export_document", "parse_document", "document_config", "config_errors", "invalid_from_validation", "EXPECTED_SHAPES"]
