"""berth's one exception tree.

Every error carries a ``message`` meant for the user (shown by the CLI, returned by the API)
and an optional ``log_message`` with detail meant for operators only. Neither may ever contain
a secret (password, token, key): callers redact before raising.

::

    BerthError                      500  something broke on our side
    ├── InvalidInput                422  a request or configuration is wrong; ``field`` names where
    ├── Unauthorized                401  no credentials, or wrong ones
    ├── Forbidden                   403  authenticated, but not allowed on this resource
    ├── NotFound                    404  no such resource
    ├── Conflict                    409  the resource is in a state that forbids the request
    ├── TooLarge                    413  the request body is over the server's limit
    ├── TooManyRequests             429  too many failed logins; ``retry_after_s`` becomes ``Retry-After``
    ├── ServerUnavailable           503  the server could not be reached (client side only)
    ├── SetupFailed                 ---  a session setup step failed on the worker (supervisor)
    └── WorkspaceError              ---  a workspace snapshot or restore failed (agent side or CLI); the previous
                                         snapshot is left intact

The HTTP status of each class is its ``http_status`` attribute: the server's single exception
handler (``berth.server.app``) turns any ``BerthError`` into ``{"detail": message, "field": ...}``
with that status, and the client (``berth.client``) turns a response back into the same class
with :func:`from_http`. That is the only place errors meet HTTP.
"""

from __future__ import annotations


class BerthError(Exception):
    http_status = 500

    def __init__(self, message: str, *, log_message: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.log_message = log_message or message
        self.field = field

    def to_body(self) -> dict:
        body: dict = {"detail": self.message}
        if self.field:
            body["field"] = self.field
        return body

    def headers(self) -> dict[str, str]:
        return {}


class InvalidInput(BerthError):
    http_status = 422


class Unauthorized(BerthError):
    http_status = 401


class Forbidden(BerthError):
    http_status = 403


class NotFound(BerthError):
    http_status = 404


class Conflict(BerthError):
    http_status = 409


class TooLarge(BerthError):
    http_status = 413


class TooManyRequests(BerthError):
    http_status = 429

    def __init__(self, message: str, *, retry_after_s: int = 1, **kw):
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class BadGateway(BerthError):
    """What the gateway reaches in a session answered badly or not at all (nothing listens on the app's port)."""

    http_status = 502


class ServerUnavailable(BerthError):
    http_status = 503


class SetupFailed(BerthError):
    """A session setup step (git, packages, init script, SSH server) failed on the worker."""


class WorkspaceError(BerthError):
    """A workspace snapshot, upload or restore failed (corrupt or missing data, size limit, unsafe entry).

    Raised on the agent side and by the CLI; a failed snapshot never replaces the previous one.
    """


_BY_STATUS = {cls.http_status: cls for cls in (InvalidInput, Unauthorized, Forbidden, NotFound, Conflict, TooManyRequests,
                                                 TooLarge, BadGateway, ServerUnavailable)}


def from_http(status: int, body: object) -> BerthError:
    """Rebuild the error a server response describes (client side)."""
    message, field = f"server answered HTTP {status}", None
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, str):
            message = detail
        elif isinstance(detail, list) and detail:  # FastAPI's own request validation errors
            first = detail[0]
            loc = [str(p) for p in first.get("loc", []) if p not in ("body", "query", "path")]
            field = ".".join(loc) or None
            message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
        field = body.get("field", field)
    cls = _BY_STATUS.get(status, BerthError)
    return cls(message, field=field)
