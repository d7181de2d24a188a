"""Bulk byte transfers (pack uploads, pack reads) over keep-alive stdlib HTTP connections, one per thread.

httpx's asyncio stack spends about 4 ms of CPU per MB in Python (64 KiB reads through several layers);
http.client moves the bytes in C, at about a tenth of that, and it runs right in the worker threads that
produce or consume the data. Errors map exactly as BerthClient's do. Proxies from the environment are
not used here (the agent reaches the server directly).
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from berth.errors import ServerUnavailable, from_http

_RETRYABLE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, http.client.CannotSendRequest)


class BulkHttp:
    def __init__(self, server: str, token: str | None, timeout: float = 300.0):
        url = urlsplit(server)
        self.https = url.scheme == "https"
        self.host, self.port = url.hostname or "127.0.0.1", url.port or (443 if self.https else 80)
        self.base = url.path.rstrip("/")
        self.server = server
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._ssl = ssl.create_default_context() if self.https else None

    def _conn(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            if self.https:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def request(self, method: str, path: str, parts: Callable[[], Iterable] | list | None = None,
                content_type: str = "application/octet-stream", length: int | None = None) -> bytes:
        """Send the body part by part (a list of buffers, or a callable giving an iterable of them, with
        `length`: nothing is joined); the response body, or raises."""
        if parts is None:
            parts = []
        if length is None:
            length = sum(len(p) for p in parts)
        for attempt in (0, 1):
            conn = self._conn(fresh=attempt == 1)
            reused = attempt == 0 and conn.sock is not None
            try:
                conn.putrequest(method, self.base + path, skip_accept_encoding=True)
                for k, v in self.headers.items():
                    conn.putheader(k, v)
                conn.putheader("Content-Type", content_type)
                conn.putheader("Content-Length", str(length))
                conn.endheaders()
                for part in parts() if callable(parts) else parts:
                    conn.send(part)
                response = conn.getresponse()
                data = response.read()
            except _RETRYABLE:
                conn.close()
                if reused:
                    continue  # the server closed an idle keep-alive connection: once more on a new one
                raise ServerUnavailable(f"cannot reach the berth server at {self.server}: connection lost") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise ServerUnavailable(f"cannot reach the berth server at {self.server}: {type(exc).__name__}") from None
            if response.status >= 400:
                try:
                    body = json.loads(data)
                except ValueError:
                    body = None
                raise from_http(response.status, body)
            return data
        raise ServerUnavailable(f"cannot reach the berth server at {self.server}")

    def json(self, method: str, path: str, payload: object) -> object:
        return json.loads(self.request(method, path, [json.dumps(payload).encode()], "application/json"))

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
