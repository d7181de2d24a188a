"""The settings page: profile, password change, SSH public keys, API and gateway tokens. Every change goes
through the service the API uses (services/accounts.py) and the API's own request models; a token's secret is
rendered once, in the answer to the form that created it, and never again."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from berth.errors import BerthError, NotFound
from berth.server.api.auth import NewToken, PasswordChange, SshKeys
from berth.server.api.deps import Db
from berth.server.db.models import utcnow
from berth.server.services import access, accounts, login_throttle

from . import forms
from .browser import Browser, CurrentBrowser, check_csrf
from .templates import render

router = APIRouter(include_in_schema=False, dependencies=[Depends(check_csrf)])

TOKEN_KINDS = ("gateway", "api")
_SAVED = {"password": "Password changed. Your other browsers were logged out and your API and gateway tokens revoked.",
          "key-added": "SSH key added.", "key-removed": "SSH key removed.", "token-revoked": "Token revoked."}
_NO_STORE = {"cache-control": "no-store"}  # a page with a token's secret on it is not kept anywhere


async def _page(request: Request, db, browser: Browser, *, errors: dict[str, str] | None = None,
                values: dict[str, str] | None = None, created: dict | None = None, status_code: int = 200) -> Response:
    tokens = await accounts.list_tokens(db, browser.user)
    now = utcnow()
    context = {
        "browser": browser, "projects": await accounts.list_projects(db, browser.user),
        "keys": list(browser.user.ssh_keys or []), "now": now, "token_kinds": TOKEN_KINDS,
        "tokens": sorted(tokens, key=lambda t: t.created_at, reverse=True),
        "errors": errors or {}, "values": values or {}, "created": created,
        "saved": _SAVED.get(request.query_params.get("saved", "")), "password_min": accounts.PASSWORD_MIN,
    }
    return render(request, "settings.html", context, status_code=status_code, headers=_NO_STORE)


@router.get("/settings")
async def settings_page(request: Request, db: Db, browser: CurrentBrowser) -> Response:
    return await _page(request, db, browser)


def _done(what: str, anchor: str) -> Response:
    return RedirectResponse(f"/settings?saved={what}#{anchor}", status_code=303)


@router.post("/settings/password")
async def change_password(request: Request, db: Db, browser: CurrentBrowser) -> Response:
    form = await forms.fields(request)
    new, again = form.get("new_password", ""), form.get("new_password_again", "")
    body, errors = forms.check(PasswordChange, {"current_password": form.get("current_password", ""), "new_password": new})
    if not errors and new != again:
        errors = {"new_password_again": "the two new passwords differ"}
    if body is not None and not errors:
        settings = request.app.state.settings
        try:
            await accounts.change_password(
                db, browser.user, body.current_password, body.new_password, keep_secret=browser.secret,
                address=request.client.host if request.client else "unknown",
                limits=login_throttle.Limits.from_settings(settings))
            return _done("password", "password")
        except BerthError as exc:
            if exc.http_status >= 500:
                raise
            errors = {exc.field or "current_password": exc.message.split(": ", 1)[-1]}
            return await _page(request, db, browser, errors=errors, status_code=exc.http_status)
    return await _page(request, db, browser, errors=errors, status_code=422)


@router.post("/settings/ssh-keys")
async def add_ssh_key(request: Request, db: Db, browser: CurrentBrowser) -> Response:
    line = (await forms.fields(request)).get("key", "").strip()
    body, errors = forms.check(SshKeys, {"keys": [line]})
    if body is not None and not line:
        errors = {"keys": "paste a public key line (ssh-ed25519 AAAA… you@host)"}
    if body is not None and not errors:
        try:
            accounts.add_ssh_keys(browser.user, body.keys)
            return _done("key-added", "ssh-keys")
        except BerthError as exc:
            if exc.http_status >= 500:
                raise
            errors = {"keys": exc.message.split(": ", 1)[-1]}
    return await _page(request, db, browser, errors={"key": next(iter(errors.values()))}, values={"key": line[:16384]},
                       status_code=422)


@router.post("/settings/ssh-keys/remove")
async def remove_ssh_key(request: Request, db: Db, browser: CurrentBrowser) -> Response:
    accounts.remove_ssh_key(browser.user, (await forms.fields(request)).get("key", ""))
    return _done("key-removed", "ssh-keys")


@router.post("/settings/tokens")
async def create_token(request: Request, db: Db, browser: CurrentBrowser) -> Response:
    form = await forms.fields(request)
    values = {name: form.get(name, "") for name in ("label", "kind", "expires_days")}
    kind = values["kind"] or "gateway"
    data = {"label": values["label"].strip(), "kind": kind, "expires_days": values["expires_days"].strip() or None}
    body, errors = forms.check(NewToken, data)
    if body is not None and kind not in TOKEN_KINDS:
        errors = {"kind": f"one of {', '.join(TOKEN_KINDS)}"}
    if body is None or errors:
        return await _page(request, db, browser, errors=errors, values=values, status_code=422)
    row, secret = await accounts.create_token(db, browser.user, kind=body.kind, label=body.label,
                                              expires_days=body.expires_days)
    return await _page(request, db, browser, created={"id": row.id, "label": row.label, "secret": secret},
                       status_code=201)


@router.post("/settings/tokens/{token_id}/revoke")
async def revoke_token(token_id: str, db: Db, browser: CurrentBrowser) -> Response:
    row = await access.own_token(db, browser.user, token_id)
    if row.kind == "web" or row.user_id != browser.user.id:  # here: your own tokens only, as listed
        raise NotFound(f"no token {token_id!r}")
    await accounts.revoke_token(db, browser.user, token_id)
    return _done("token-revoked", "tokens")
