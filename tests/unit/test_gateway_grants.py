"""The gateway's short memory of grants, and the listener-owner lookup the tunnel checks app ports with."""

from __future__ import annotations

import os
import socket
import time

from berth.agent.listeners import _proc_listeners, listener_uids
from berth.server.gateway.grants import Grant, GrantCache, WorkerRoute


def _grant() -> Grant:
    return Grant("ann", WorkerRoute("w1", "replica-a", None))


def test_a_grant_is_remembered_for_its_ttl_only():
    cache = GrantCache(ttl_s=0.2)
    key = cache.key("bg_token", "abc")
    assert cache.get(key) is None
    cache.put(key, _grant())
    assert cache.get(key) == _grant()
    assert cache.get(cache.key("bg_token", "other")) is None  # per session
    assert cache.get(cache.key("bg_other", "abc")) is None    # per credential
    time.sleep(0.25)
    assert cache.get(key) is None


def test_ttl_zero_remembers_nothing_and_the_size_is_bounded():
    off = GrantCache(ttl_s=0)
    off.put(off.key("t", "s"), _grant())
    assert off.get(off.key("t", "s")) is None
    small = GrantCache(ttl_s=60, max_entries=3)
    for i in range(10):
        small.put(small.key(f"t{i}", "s"), _grant())
    assert len(small._grants) <= 3
    assert small.get(small.key("t9", "s")) is not None


def test_listener_owners_from_netlink_match_proc():
    v4 = socket.socket()
    v4.bind(("127.0.0.1", 0))
    v4.listen()
    v6 = socket.socket(socket.AF_INET6)
    v6.bind(("::", 0))
    v6.listen()
    try:
        for sock in (v4, v6):
            port = sock.getsockname()[1]
            assert listener_uids(port) == _proc_listeners(port) == {os.geteuid()}
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # bound, not listening
        assert listener_uids(port) == set()
        free.close()
    finally:
        v4.close()
        v6.close()
