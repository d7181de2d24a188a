"""A container session's metrics and SSH bundles with the real Podman: the session's traffic, which stays in the
container's own network namespace (no socket of the worker's carries it), shows in its network metric; SSH
bundles that no container mounts go once a new one is built."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import time

import psutil
import pytest
from conftest import Stack, make_database_url
from container_image import AGENT_ENV, IMAGE, ensure_test_image, podman

from berth.agent.backends.container_bundle import session_mounts, ssh_bundle
from berth.agent.backends.container_cli import LABEL, ContainerCli
from berth.agent.ssh.bundle import ensure_bundle

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the container backend's agent runs as root")

BLOB = os.urandom(1 << 20) * 24  # 24 MB


@pytest.fixture(scope="module")
def cstack(tmp_path_factory, pg_admin_url):
    """A container agent posting its samples every 2 s."""
    ensure_test_image()
    s = Stack(tmp_path_factory.mktemp("ctr-metrics"), make_database_url(pg_admin_url))
    try:
        s.start_server()
        s.login()
        s.start_agent(name="ctr", env={**AGENT_ENV, "BERTH_AGENT_METRICS_POST_S": "2"})
        yield s
    finally:
        s.stop()


@pytest.fixture
def blob_server():
    """An HTTP server on the worker's non-loopback address (what a container reaches through slirp4netns)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(BLOB)))
            self.end_headers()
            self.wfile.write(BLOB)

        def log_message(self, *args):
            pass

    address = next(a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                   if a.family.name == "AF_INET" and not a.address.startswith("127."))
    server = http.server.ThreadingHTTPServer((address, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{address}:{server.server_address[1]}/blob"
    server.shutdown()
    server.server_close()


def test_traffic_inside_the_container_is_the_sessions_network(cstack, blob_server):
    view = cstack.cli_json("launch", "ssh-session", "--image", IMAGE, "--wait", timeout=300)
    try:
        assert view["status"] in ("active", "idle"), cstack.events(view["id"])
        fetch = f"import urllib.request; print(len(urllib.request.urlopen({blob_server!r}, timeout=60).read()))"
        got = podman("exec", "--user", "1000:1000", f"berth-{view['id']}", "python3", "-c", fetch).stdout
        assert got.strip() == str(len(BLOB))
        deadline, data, received = time.monotonic() + 40, {}, 0.0
        while time.monotonic() < deadline:  # the download's MB: its samples' rates (MB/s) times their 2 s
            data = cstack.cli_json("sessions", "metrics", view["id"])
            rx = data["series"]["net_rx_mbs"]
            received = sum((mean or 0) * n for mean, n in zip(rx["mean"], data["n"])) * 2
            if received > 12:
                break
            time.sleep(2)
        assert data["network_scope"] == "session"
        assert received > 12, data  # half the 24 MB it fetched, whatever the samples' timing (sockets would say ~0)
    finally:
        cstack.cli("sessions", "stop", view["id"])


def engine(argv: list[str]) -> tuple[int, str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout


def test_a_new_bundle_removes_the_old_ones_no_container_mounts(tmp_path):
    ensure_test_image()
    session_dir = tmp_path / "agent" / "sessions" / "s1"
    cache = tmp_path / "agent" / "ssh-bundle"
    kept, gone = cache / ("a" * 16), cache / ("b" * 16)
    for old in (kept, gone):
        old.mkdir(parents=True)
        (old / "marker").write_text("an older layout\n")
    name = f"berth-bundle-test-{os.getpid()}"  # a session container mounting `kept`, stopped: it still counts
    podman("create", "--runtime", "runc", "--name", name, "--label", f"{LABEL}=bundle-test", "--volume",
           f"{kept}:/berth:ro", IMAGE, "true")
    try:
        cli = ContainerCli.choose("podman")
        assert str(kept) in session_mounts(cli, engine)
        bundle = ssh_bundle(session_dir, cli, engine)  # the tools' bundle is new here: the unmounted old one goes
        assert sorted(p.name for p in cache.iterdir()) == sorted([bundle.path.name, kept.name])
        ensure_bundle(cache, mounted=lambda: [])  # already there: nothing built, nothing removed
        assert kept.exists()
    finally:
        podman("rm", "--force", name)
    assert json.loads(podman("ps", "--all", "--filter", f"name={name}", "--format", "json").stdout or "[]") == []
