"""A few seconds' memory of gateway authorizations, so a page's burst of requests (or a program's many small
ones) does not read the token, user, session and worker rows again for each.

Only grants are remembered, never refusals, keyed by a hash of the credential and the session; the database stays
where access is decided: a revoked token, a removed member or a stopped session is refused again at the latest
``BERTH_GATEWAY_GRANT_CACHE_S`` later (0 turns the cache off).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from berth.server.db.models import Worker


@dataclass(frozen=True)
class WorkerRoute:
    """What the gateway needs of a worker to reach it: its id and where its tunnel is held."""

    id: str
    tunnel_replica: str | None
    tunnel_url: str | None

    @classmethod
    def of(cls, worker: Worker) -> WorkerRoute:
        return cls(worker.id, worker.tunnel_replica, worker.tunnel_url)


@dataclass(frozen=True)
class Grant:
    username: str
    worker: WorkerRoute


class GrantCache:
    def __init__(self, ttl_s: float, max_entries: int = 10_000):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._grants: dict[str, tuple[float, Grant]] = {}

    @staticmethod
    def key(credential: str, session_id: str) -> str:
        return hashlib.sha256(f"{credential}\0{session_id}".encode()).hexdigest()

    def get(self, key: str) -> Grant | None:
        found = self._grants.get(key)
        if found is None:
            return None
        if found[0] < time.monotonic():
            del self._grants[key]
            return None
        return found[1]

    def put(self, key: str, grant: Grant) -> None:
        if self.ttl_s <= 0:
            return
        now = time.monotonic()
        if len(self._grants) >= self.max_entries:  # drop what expired; if all is fresh, start over
            self._grants = {k: v for k, v in self._grants.items() if v[0] >= now}
            if len(self._grants) >= self.max_entries:
                self._grants.clear()
        self._grants[key] = (now + self.ttl_s, grant)
