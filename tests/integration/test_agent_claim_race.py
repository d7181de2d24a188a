"""An agent that dies with a claim's answer in flight: the session was claimed for the worker but never reached it.
The next run of the agent fails it, saying why, instead of leaving it `starting` forever."""

from __future__ import annotations

import json
import time

import httpx

from conftest import kill_tree


def test_a_claim_the_agent_never_received_fails_at_its_next_run(stack):
    agent = stack.start_agent(queue="claimrace", name="claimrace")
    identity = json.loads((stack.tmp / "agent-claimrace" / "worker.json").read_text())
    kill_tree(agent)
    stack.agents.remove(agent)
    view = stack.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"name": "lost", "queue": "claimrace"}})
    # the dead agent's claim: committed by the server, its answer lost with the agent
    r = httpx.post(f"{stack.url}/api/v1/workers/{identity['worker_id']}/claim",
                   headers={"Authorization": f"Bearer {identity['token']}"}, timeout=30)
    assert r.status_code == 200 and r.json()["session_id"] == view["id"]
    assert stack.api("GET", f"/api/v1/sessions/{view['id']}")["status"] == "starting"
    stack.start_agent(queue="claimrace", name="claimrace")  # same data dir: same worker
    failed = stack.wait_status(view["id"], "failed", timeout=30)
    assert "restarted before it received this session" in failed["error"]
    assert any("launch it again" in line for line in stack.events(view["id"]))
    # a session the running agent does receive is not touched
    ok = stack.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"name": "kept", "queue": "claimrace"}})
    stack.wait_status(ok["id"], "active", timeout=60)
    time.sleep(2.5)  # two more heartbeats
    assert stack.api("GET", f"/api/v1/sessions/{ok['id']}")["status"] in ("active", "idle")
    stack.api("POST", f"/api/v1/sessions/{ok['id']}/stop")
