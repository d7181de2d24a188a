"""The launch form of an app: Launch New, Clone (`?clone=ID`), Import Configuration (a preview: nothing is
launched), Export Configuration, and a session's configuration as a download. Validation and launching are the
API's (`apps.config_errors`, `services.sessions.launch`); `launch_form` carries form text back and forth."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import ValidationError

from berth.apps import config_errors, config_model, document_config, export_document, invalid_from_validation
from berth.errors import Forbidden, InvalidInput, NotFound
from berth.fields import Line
from berth.schemas import LaunchRequest, LaunchSecrets, Role
from berth.server.api.deps import Db
from berth.server.services import access, accounts, queues, sessions

from . import forms, launch_form
from .apps import APPS, _app
from .browser import Browser, CurrentBrowser, check_csrf
from .templates import render

router = APIRouter(include_in_schema=False, dependencies=[Depends(check_csrf)])


async def _form(request: Request, db, browser: Browser, slug: str, values: dict[str, Any], *,
                errors: list[InvalidInput] = (), notice: str | None = None, status_code: int = 200) -> Response:
    app = _app(slug)
    model = config_model(app)
    by_field, general = launch_form.field_errors(model, list(errors))
    loads = await queues.with_workers(db)
    workers = {q.name: q.online_workers for q in loads}
    queue = str(values.get("queue", ""))
    load = next((q for q in loads if q.name == queue), None)
    needs = queues.required_backend(values)
    projects = [name for name, role in await accounts.list_projects(db, browser.user)
                if Role(role).rank >= Role.member.rank]
    return render(request, "launch.html", {
        "browser": browser, "app": app, "info": APPS[app], "groups": launch_form.groups(model), "values": values,
        "errors": by_field, "general": general, "notice": notice, "queues": loads, "projects": projects,
        "queue_unserved": not workers.get(queue), "unserved": queues.unserved_warning(queue),
        "queue_unable": bool(load and load.online_workers and needs and not load.backends.get(needs))},
        status_code=status_code)


@router.get("/apps/{slug}/launch")
async def launch_page(request: Request, slug: str, db: Db, browser: CurrentBrowser,
                      clone: Line | None = Query(None, max_length=64)) -> Response:
    model = config_model(_app(slug))
    if not clone:
        return await _form(request, db, browser, slug, launch_form.to_form(model, {}))
    source = await access.session_for_user(db, browser.user, clone)  # cannot see it: the same 404 as missing
    if source.app != model.app.value:
        raise NotFound(f"no session {clone!r}")
    return await _form(request, db, browser, slug, launch_form.to_form(model, sessions.clone_config(source, {})),
                       notice=f"Cloned from session {source.id}: its workspace is restored (edit anything before launching).")


def _read(db, model, posted: dict[str, str]) -> tuple[dict[str, Any], dict[str, str], list[InvalidInput]]:
    """The posted configuration and secrets with every problem the model finds."""
    config = launch_form.from_form(model, posted)
    secrets = launch_form.secrets_from_form(posted)
    errors = config_errors(model.app, config, context=sessions.config_context(db))
    try:
        LaunchSecrets.model_validate(secrets)
    except ValidationError as exc:
        errors.append(invalid_from_validation(exc, prefix="secrets"))
    return config, secrets, errors


def _kept(model, posted: dict[str, str]) -> dict[str, Any]:
    """What the user typed, to show again after an error (secrets are never sent back)."""
    values = {name: posted.get(name, "") for name in model.model_fields}
    for name, info in model.model_fields.items():
        if info.annotation is bool:
            values[name] = name in posted
    return values


@router.post("/apps/{slug}/launch")
async def launch(request: Request, slug: str, db: Db, browser: CurrentBrowser) -> Response:
    model = config_model(_app(slug))
    posted = await forms.fields(request)
    config, secrets, errors = _read(db, model, posted)
    status_code = 422
    if not errors:
        try:
            row = await sessions.launch(db, browser.user, LaunchRequest(app=model.app, config=config, secrets=secrets))
            return RedirectResponse(f"/sessions/{row.id}", status_code=303)
        except InvalidInput as exc:
            errors = [exc]
        except Forbidden as exc:  # a viewer of the project: the API's 403, shown at the project field
            errors, status_code = [InvalidInput(exc.message, field="config.project")], 403
    return await _form(request, db, browser, slug, _kept(model, posted), errors=errors, status_code=status_code)


@router.post("/apps/{slug}/launch/import")
async def import_preview(request: Request, slug: str, db: Db, browser: CurrentBrowser) -> Response:
    """Import Configuration: the form prefilled from a file (an exported document or a bare configuration
    object), each problem next to its field. Nothing is launched: the user presses Launch."""
    model = config_model(_app(slug))
    text = (await forms.fields(request)).get("document", "")
    try:
        _doc_app, raw = document_config(json.loads(text), model.app)
    except ValueError as exc:  # json's errors are ValueErrors
        message = exc.message if isinstance(exc, InvalidInput) else f"the file is not valid JSON ({exc})"
        return await _form(request, db, browser, slug, launch_form.to_form(model, {}), status_code=422,
                           errors=[InvalidInput(f"Import Configuration: {message}")])
    if not isinstance(raw, dict):
        return await _form(request, db, browser, slug, launch_form.to_form(model, {}), status_code=422,
                           errors=[InvalidInput("Import Configuration: config: must be a JSON object")])
    errors = config_errors(model.app, raw, context=sessions.config_context(db))
    return await _form(request, db, browser, slug, launch_form.to_form(model, raw), errors=errors,
                       notice="Configuration imported: check it, then press Launch.", status_code=422 if errors else 200)


def _download(document: dict, filename: str) -> JSONResponse:
    return JSONResponse(document, headers={"content-disposition": f'attachment; filename="{filename}"'})


@router.post("/apps/{slug}/launch/export")
async def export_form(request: Request, slug: str, db: Db, browser: CurrentBrowser) -> Response:
    """Export Configuration: the form's current configuration as the document `berth sessions export` writes."""
    model = config_model(_app(slug))
    posted = await forms.fields(request)
    config, _secrets, errors = _read(db, model, posted)
    if errors:
        return await _form(request, db, browser, slug, _kept(model, posted), errors=errors, status_code=422)
    document = export_document(model.app, model.model_validate(config).model_dump(mode="json"))
    return _download(document, f"berth-{model.app.value}.json")


@router.get("/sessions/{session_id}/export")
async def export_session(session_id: str, db: Db, browser: CurrentBrowser) -> Response:
    """A session's configuration, the same JSON as the API's and the CLI's export."""
    row = await access.session_for_user(db, browser.user, session_id)
    return _download(sessions.export(row), f"berth-{row.app}-{row.id}.json")
