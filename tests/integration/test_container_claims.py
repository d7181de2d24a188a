"""Container sessions at launch and claim, against a real server and real agents (SQLite and PostgreSQL): a non-admin
user's container arguments that break isolation are refused with a 422 naming the flag (nothing created, no value
echoed), bad image references too; a session naming an image is claimed only by an agent offering the container
backend, and says so in its console (and `berth launch`, and the launch form) at once while none is online; the
workers list shows each worker's backends."""

from __future__ import annotations

import re

import httpx
import pytest
from conftest import ADMIN_PASSWORD
from webclient import page_csrf, web_login

IMAGE = "localhost/berth-absent-image:claims"  # never on this worker: the container agent fails it at once after claiming
FORBIDDEN = [
    "--privileged", "-v /:/host", "--volume=/:/host", "--mount type=bind,source=/,target=/host", "--pid host", "--pid=host",
    "--network host", "--net=host", "--network container:other", "--ipc=host", "--uts host", "--cgroupns=host",
    "--userns=host", "--userns keep-id", "--cap-add SYS_ADMIN", "--cap-add=ALL", "--device /dev/kvm", "--gpus all",
    "--security-opt seccomp=unconfined", "--security-opt=apparmor=unconfined", "--security-opt label=disable",
    "-u 0", "--user=root", "--uidmap 0:0:65536", "--gidmap=0:0:65536", "--subuidname root", "--runtime runc",
    "--rm", "--name other", "--label berth.session=other", "--init-path /bin/sh", "--oom-score-adj -1000",
    "--cgroup-parent /", "--entrypoint sh", "-it", "-p 22:22", "--env-file /etc/shadow", "-v data:/data",
]


@pytest.fixture(scope="module")
def carol(stack):
    stack.api("POST", "/api/v1/users", json={"username": "carol", "password": "carol-password"})
    r = httpx.post(stack.url + "/api/v1/auth/login", json={"username": "carol", "password": "carol-password"})
    r.raise_for_status()
    return r.json()["token"]


def _count(stack) -> int:
    return stack.sql("SELECT count(*) FROM sessions")[0][0]


def _launch(stack, token: str, **config) -> httpx.Response:
    return httpx.post(stack.url + "/api/v1/sessions", headers={"Authorization": f"Bearer {token}"},
                      json={"app": "ssh-session", "config": {"project": "carols", **config}})


def test_container_args_that_break_isolation_are_refused_naming_the_flag(stack, carol):
    before = _count(stack)
    for args in FORBIDDEN:
        r = _launch(stack, carol, image=IMAGE, container_args=f"--cpus 1 {args}")
        assert r.status_code == 422, (args, r.text)
        flag = "-i" if args == "-it" else re.split(r"[ =]", args)[0]  # -it: -i is the first refused
        body = r.json()
        assert body["field"] == "config.container_args", body
        assert body["detail"].startswith(f"config.container_args: {flag} is not allowed ("), body
    r = _launch(stack, carol, image=IMAGE, container_args="-v /:/host")
    assert r.json()["detail"] == ("config.container_args: -v is not allowed (a bind mount of a host path breaks the "
                                  "session's isolation)")
    # Garbage, values that may be secrets, bad images: 422 naming the field, the value never echoed.
    for config, field, words in [
        ({"image": IMAGE, "container_args": "--cpus 2 'unbalanced"}, "config.container_args", "cannot be split"),
        ({"image": IMAGE, "container_args": "--env TOKEN s3cret-value"}, "config.container_args", "argument 3 is not an option"),
        ({"image": IMAGE, "container_args": "--frob=s3cret-value"}, "config.container_args", "--frob is not an option berth knows"),
        ({"image": IMAGE, "container_args": "-e TOKEN"}, "config.container_args", "-e is not allowed (it needs KEY=VALUE"),
        ({"container_args": "--cpus 2"}, "config.container_args", "needs an image"),
        ({"image": "https://user:s3cret-value@registry/x"}, "config.image", "not an image reference"),
        ({"image": "Ubuntu"}, "config.image", "not an image reference"),
        ({"image": "--privileged"}, "config.image", "not an image reference"),
    ]:
        r = _launch(stack, carol, **config)
        assert r.status_code == 422 and r.json()["field"] == field and words in r.json()["detail"], (config, r.text)
        assert "s3cret" not in r.text
    assert _count(stack) == before  # nothing was created
    # The config check route says the same as a launch would.
    r = httpx.post(stack.url + "/api/v1/configs/validate", headers={"Authorization": f"Bearer {carol}"}, json={
        "berth_config": 1, "app": "ssh-session", "config": {"image": IMAGE, "container_args": "--privileged"}})
    assert r.status_code == 422 and "--privileged is not allowed" in r.json()["detail"], r.text
    # The CLI too (the server decides: the client only splits the arguments).
    env = stack.env(BERTH_SERVER=stack.url, BERTH_TOKEN=carol)
    cli = stack.cli("launch", "ssh-session", "--project", "carols", "--image", IMAGE, "--container-args", "-v /:/host",
                    check=False, env=env)
    assert cli.returncode != 0 and "-v is not allowed" in cli.stderr, cli.stderr
    assert _count(stack) == before
    assert "s3cret" not in (stack.tmp / "server.log").read_text()


def test_harmless_container_args_launch(stack, carol):
    stack.api("POST", "/api/v1/queues", json={"name": "parked"})  # nobody serves it: the session just waits
    r = _launch(stack, carol, image=IMAGE, queue="parked", container_args="--cpus 1 -e 'GREETING=hello world' --shm-size=256m -q")
    assert r.status_code == 201, r.text
    assert r.json()["config"]["container_args"] == "--cpus 1 -e 'GREETING=hello world' --shm-size=256m -q"
    stack.api("POST", f"/api/v1/sessions/{r.json()['id']}/stop")


def _worker(stack, name: str) -> dict:
    return next(w for w in stack.api("GET", "/api/v1/workers") if w["name"] == name)


def test_an_image_session_waits_for_a_container_worker_and_says_so(stack, carol, tmp_path):
    stack.api("POST", "/api/v1/queues", json={"name": "images"})
    stack.start_agent(queue="images", name="proc-images")  # the process backend only
    assert _worker(stack, "proc-images")["backends"] == ["process"]

    env = stack.env(BERTH_SERVER=stack.url, BERTH_TOKEN=carol)
    cli = stack.cli("launch", "ssh-session", "--project", "carols", "--queue", "images", "--image", IMAGE, "--name", "wants-image",
                    env=env)
    warning = ("no online worker on queue 'images' can run container images (its workers offer: process); "
               "the session waits until one does")
    assert f"warning: {warning}" in " ".join(cli.stderr.split()), cli.stderr
    image_id = re.search(r"session (\w+) \(wants-image\)", cli.stderr).group(1)
    assert warning in stack.events(image_id)  # in its console at once, not after some wait

    # The process agent takes a later session without an image and leaves the image one queued.
    plain = _launch(stack, carol, queue="images", name="no-image").json()
    assert not any("can run container images" in m for m in stack.events(plain["id"]))
    stack.wait_status(plain["id"], "starting", "active", "idle", timeout=60)
    assert stack.api("GET", f"/api/v1/sessions/{image_id}")["status"] == "queued"
    stack.api("POST", f"/api/v1/sessions/{plain['id']}/stop")

    # The web launch form says it too for that queue once an image is named (an import preview renders the form).
    client, answer = web_login(stack.url, "admin", ADMIN_PASSWORD)
    try:
        form = client.get("/apps/ssh-session/launch").text
        assert 'data-container-workers="0"' in form
        html = client.post("/apps/ssh-session/launch/import", data={
            "csrf_token": page_csrf(form), "document": f'{{"queue": "images", "image": "{IMAGE}"}}'}).text
        assert re.search(r'<p class="field-warning" id="queue-image-warning" role="status">', html), html[-3000:]
        html = client.post("/apps/ssh-session/launch/import", data={
            "csrf_token": page_csrf(form), "document": '{"queue": "images"}'}).text
        assert re.search(r'id="queue-image-warning" role="status" hidden', html)
    finally:
        client.close()

    # An agent offering the container backend claims it (and fails it at once: the image is not on this worker).
    stack.start_agent(queue="images", name="ctr-images", env={"BERTH_AGENT_BACKEND": "container"})
    view = stack.wait_status(image_id, "starting", "active", "idle", "stopping", "stopped", "failed", timeout=30)
    assert view["worker"] == "ctr-images", view
    assert "status: starting on worker 'ctr-images'" in stack.events(image_id)
    final = stack.wait_status(image_id, "stopped", "failed", timeout=60) if view["status"] not in ("stopped", "failed") else view
    assert final["worker"] == "ctr-images"

    # The workers list shows what each worker offers (API, CLI table and JSON, the web workers page).
    assert _worker(stack, "ctr-images")["backends"] == ["container"]
    table = stack.cli("workers", "list", env=stack.env(COLUMNS="200")).stdout
    assert re.search(r"ctr-images.*container", table) and re.search(r"proc-images.*process", table), table
    listed = {w["name"]: w["backends"] for w in stack.cli_json("workers", "list")}
    assert listed["ctr-images"] == ["container"] and listed["agent"] == ["process"]
    client, _ = web_login(stack.url, "admin", ADMIN_PASSWORD)
    try:
        page = client.get("/workers").text
    finally:
        client.close()
    assert re.search(r'data-worker="[^"]+">\s*<td class="name">ctr-images.*?<td class="backends">container</td>', page, re.S)
    assert re.search(r'<tr data-queue="images">.*?container \(1\), process \(1\)', page, re.S)

    # Once a container worker is online, an image launch onto that queue says nothing.
    again = _launch(stack, carol, queue="images", image=IMAGE, name="served").json()
    assert not any(m.startswith("no online worker") for m in stack.events(again["id"]))
    assert stack.wait_status(again["id"], "starting", "active", "idle", "stopping", "stopped", "failed",
                             timeout=30)["worker"] == "ctr-images"


def test_an_agent_of_an_older_berth_offers_the_process_backend(stack):
    """A registration without `backends` (an older agent) counts as the process backend."""
    r = httpx.post(stack.url + "/api/v1/workers/register", headers={"Authorization": f"Bearer {stack.agent_token}"}, json={
        "name": "old-agent", "hostname": "old", "queues": ["old"], "cpus": 1, "memory_bytes": 1 << 30, "run_as": "root",
        "is_root": True})
    assert r.status_code == 200, r.text
    assert _worker(stack, "old-agent")["backends"] == ["process"]
    r = httpx.post(stack.url + "/api/v1/workers/register", headers={"Authorization": f"Bearer {stack.agent_token}"}, json={
        "name": "odd-agent", "hostname": "odd", "queues": ["odd"], "cpus": 1, "memory_bytes": 1 << 30, "run_as": "root",
        "is_root": True, "backends": ["Not A Backend"]})
    assert r.status_code == 422 and r.json()["field"].startswith("backends"), r.text
