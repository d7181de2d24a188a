"""A browser-like HTTP client for the web pages (cookies kept, CSRF tokens read from the pages), over httpx."""

from __future__ import annotations

import re

import httpx

_FORM_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
_HEADER_TOKEN = re.compile(r'"X-CSRF-Token": "([^"]+)"')


def page_csrf(html: str) -> str:
    """The session's CSRF token a page carries (hx-headers on <body>)."""
    found = _HEADER_TOKEN.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def web_login(url: str, username: str, password: str, next_path: str | None = None) -> tuple[httpx.Client, httpx.Response]:
    """A logged-in client (its cookie jar holds the session) and the login POST's answer (not followed)."""
    client = httpx.Client(base_url=url, timeout=60, follow_redirects=False)
    form = client.get("/login")
    assert form.status_code == 200, form.text
    data = {"username": username, "password": password, "csrf_token": _FORM_TOKEN.search(form.text).group(1)}
    if next_path is not None:
        data["next"] = next_path
    return client, client.post("/login", data=data)
