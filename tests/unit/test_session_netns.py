"""A session's own network namespace in its metrics (``netns``, ``SessionSampler(net_counters=...)``), and the
removal of SSH bundles no container mounts (``ssh.bundle.remove_unused``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from berth.agent.monitor import SessionSampler
from berth.agent.netns import namespace_counters, parse_net_dev
from berth.agent.ssh.bundle import remove_unused

NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 9000000     100    0    0    0     0          0         0  9000000     100    0    0    0     0       0          0
  tap0: 5000000    3000    0    0    0     0          0         0    20000     200    0    0    0     0       0          0
  eth1:     100       1    0    0    0     0          0         0       50       1    0    0    0     0       0          0
"""


def test_net_dev_counts_every_interface_but_loopback():
    assert parse_net_dev(NET_DEV) == (5_000_100, 20_050)


def test_the_callers_own_namespace_is_not_a_sessions():
    assert namespace_counters(os.getpid()) is None  # the worker's network: sockets tell the session's traffic
    assert namespace_counters(2**22 + 1) is None    # no such process


def test_the_sampler_takes_the_namespace_counters_as_the_sessions_traffic():
    counters = {"now": (1_000_000, 500_000)}
    sampler = SessionSampler(session_id="netns-test", gpus=False, net_counters=lambda: counters["now"])
    time.sleep(0.2)
    counters["now"] = (3_000_000, 600_000)
    sample = sampler.sample()
    assert sample.network_scope == "session"
    assert 2 / 5 < sample.net_rx_mbs < 2 / 0.15 and 0 < sample.net_tx_mbs < sample.net_rx_mbs / 10  # 2 MB in 0.2+ s


def test_without_a_namespace_of_its_own_the_sockets_count():
    sampler = SessionSampler(session_id="netns-test", gpus=False, net_counters=lambda: None)
    time.sleep(0.1)
    sample = sampler.sample()
    assert sample.network_scope in ("session", "host")  # the ss-based figure (host only where ss is missing)
    plain = SessionSampler(session_id="netns-test", gpus=False)
    time.sleep(0.1)
    assert plain.sample().network_scope == sample.network_scope


def _bundle(cache: Path, key: str) -> Path:
    (cache / key / "bin").mkdir(parents=True)
    (cache / key / "bin" / "sftp-server").write_text("#!/bin/sh\n")
    return cache / key


def test_old_bundles_go_unless_a_container_mounts_them(tmp_path):
    cache = tmp_path / "ssh-bundle"
    current, mounted, sftp_only, unused = (_bundle(cache, k) for k in ("c" * 16, "m" * 16, "s" * 16, "u" * 16))
    (cache / ".build-x").mkdir()  # another supervisor's build in progress
    removed = remove_unused(cache, keep=current.name, mounted=["/var/lib/berth/homes/containers/x", str(mounted),
                                                                str(sftp_only / "bin" / "sftp-server"), str(cache)])
    assert removed == [unused.name]
    assert sorted(p.name for p in cache.iterdir()) == sorted([".build-x", current.name, mounted.name, sftp_only.name])


def test_nothing_goes_when_the_engine_cannot_say(tmp_path):
    cache = tmp_path / "ssh-bundle"
    _bundle(cache, "c" * 16), _bundle(cache, "o" * 16)
    assert remove_unused(cache, keep="c" * 16, mounted=None) == []
    assert len(list(cache.iterdir())) == 2
