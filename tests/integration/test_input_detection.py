"""Input detection and warnings through real SSH servers (built-in; OpenSSH in a real session) and real clients."""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import time
import uuid
from pathlib import Path

import asyncssh
import pytest

from berth.agent.idle import IdleTracker, warn_terminals
from berth.agent.monitor import SessionSampler
from berth.agent.ssh import SshServerSpec, start_ssh_server

pytestmark = pytest.mark.integration
WRAPPER = """#!/bin/bash
cd "$HOME" || exit 1
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then exec bash -c "$SSH_ORIGINAL_COMMAND"; else exec bash --norc --noprofile -i; fi
"""


@pytest.fixture
async def server():
    base = Path("/var/tmp") / f"berth-monitor-test-{secrets.token_hex(4)}"
    (base / "home").mkdir(parents=True)
    (base / "run").mkdir()
    wrapper = base / "wrapper.sh"
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o755)
    session_id = "m" + uuid.uuid4().hex[:11]
    holder: dict = {}
    spec = SshServerSpec(kind="builtin", run_dir=base / "run", home=base / "home", user=pwd.getpwuid(os.geteuid()).pw_name,
                         password="pw-" + secrets.token_urlsafe(12), authorized_keys=[], shell_wrapper=wrapper,
                         bind_host="127.0.0.1", env={"BERTH_SESSION_ID": session_id},
                         on_input=lambda: holder["sampler"].note_input())
    srv = await start_ssh_server(spec, lambda line: None)
    # this test process plays the (non-root) supervisor: the shells are its descendants
    holder["sampler"] = SessionSampler(session_id, root_pid=os.getpid(), input_ports=[srv.port], gpus=False)
    yield srv, spec, holder["sampler"]
    await srv.stop()
    shutil.rmtree(base, ignore_errors=True)


def connect(srv, spec):
    return asyncssh.connect("127.0.0.1", srv.port, username=spec.user, password=spec.password, known_hosts=None,
                            client_keys=None, agent_path=None)


async def read_until(stream, text: str, timeout: float = 10) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen and time.monotonic() < deadline:
        try:
            seen += await asyncio.wait_for(stream.read(4096), 0.5)
        except asyncio.TimeoutError:
            pass
    return seen


async def shell_ready(proc) -> None:
    proc.stdin.write("echo READ$((1))Y\n")  # the output differs from the echoed command line
    assert "READ1Y" in await read_until(proc.stdout, "READ1Y")


async def test_open_connection_without_input_is_idle_and_typing_is_not(server):
    srv, spec, sampler = server
    tracker = IdleTracker(3600, input_window_s=60)
    async with connect(srv, spec) as conn:
        proc = await conn.create_process(term_type="xterm", term_size=(80, 24))
        await shell_ready(proc)
        await asyncio.to_thread(sampler.sample)
        ttys = sampler.ttys()
        assert len(ttys) == 1 and ttys[0].startswith("/dev/pts/")
        long_ago = time.time() - 600
        os.utime(ttys[0], (long_ago, long_ago))
        sampler._input_at = None  # forget the login's own keystrokes: from here on, silence
        sampler.last_input_at()  # socket baseline (the handshake is not input)
        for _ in range(3):  # an open, silent connection
            await asyncio.sleep(1.0)
            sample = await asyncio.to_thread(sampler.sample)
            last = sampler.last_input_at()
            assert last is not None and last < time.time() - 500, last
            state = tracker.update(sample, last, time.time())
            assert "ssh input" not in " ".join(state.kept_alive_by)
        before = time.time()
        proc.stdin.write("echo typed-$((6*7))\n")
        assert "typed-42" in await read_until(proc.stdout, "typed-42")
        last = sampler.last_input_at()
        assert last >= before - 1
        state = tracker.update(await asyncio.to_thread(sampler.sample), last, time.time())
        assert not state.idle and any(r.startswith("ssh input") for r in state.kept_alive_by)
        proc.stdin.write("exit\n")
        await proc.wait_closed()


async def test_pipe_channel_data_calls_the_hook(server):
    srv, spec, sampler = server
    async with connect(srv, spec) as conn:
        before = time.time()
        result = await asyncio.wait_for(conn.run("cat", input="from a non-pty client\n"), 10)
        assert result.stdout == "from a non-pty client\n"
    assert sampler.last_input_at() >= before


async def test_warnings_reach_the_users_terminal(server):
    srv, spec, sampler = server
    async with connect(srv, spec) as conn:
        proc = await conn.create_process(term_type="xterm", term_size=(80, 24))
        await shell_ready(proc)
        await asyncio.to_thread(sampler.sample)
        assert await asyncio.to_thread(warn_terminals, sampler.ttys(), "idle for 3 h 50 min") == 1  # through the pty
        assert "*** berth: idle for 3 h 50 min ***" in await read_until(proc.stdout, "50 min ***")
        assert srv.notify_terminals("shutting down in 10 min") == 1  # through the channel
        assert "*** berth: shutting down in 10 min ***" in await read_until(proc.stdout, "10 min ***")
        proc.stdin.write("exit\n")
        await proc.wait_closed()


async def test_openssh_session_of_a_root_agent(stack):
    """The root-agent path end to end: a real session (per-session user, OpenSSH), a real client on a pty.
    Sampled by the session user's uid; input seen through the pty's atime; a silent connection is idle."""
    if os.geteuid() != 0:
        pytest.skip("per-session users need a root agent")
    view = stack.cli_json("launch", "ssh-session", "--wait", "--name", "idle-e2e")
    ssh = view["ssh"]
    try:
        async with asyncssh.connect(ssh["host"], port=ssh["port"], username=ssh["user"], password=ssh["password"],
                                    known_hosts=None) as conn:
            proc = await conn.create_process(term_type="xterm", term_size=(80, 24))
            await shell_ready(proc)
            sampler = SessionSampler(view["id"], uid=pwd.getpwnam(ssh["user"]).pw_uid, input_ports=[ssh["port"]], gpus=False)
            tracker = IdleTracker(3600)
            await asyncio.sleep(1.0)
            sample = await asyncio.to_thread(sampler.sample)
            assert len(sampler.ttys()) == 1 and sample.processes >= 2  # the user's sshd process and the shell
            long_ago = time.time() - 600
            os.utime(sampler.ttys()[0], (long_ago, long_ago))
            sampler.last_input_at()  # socket baseline
            for _ in range(2):  # open, silent
                await asyncio.sleep(1.0)
                sample = await asyncio.to_thread(sampler.sample)
                state = tracker.update(sample, sampler.last_input_at(), time.time())
                assert state.idle, state.kept_alive_by
            before = time.time()
            proc.stdin.write("timeout 3 sh -c 'while :; do :; done'; echo burnt-$((6*7))\n")
            await asyncio.sleep(1.5)
            sample = await asyncio.to_thread(sampler.sample)
            state = tracker.update(sample, sampler.last_input_at(), time.time())
            assert sample.cpu > 60, sample.cpu
            assert sampler.last_input_at() >= before - 1
            assert state.kept_alive_by[0].startswith("ssh input") and state.kept_alive_by[1].startswith("cpu ")
            assert "burnt-42" in await read_until(proc.stdout, "burnt-42")
            proc.stdin.write("exit\n")
            await proc.wait_closed()
    finally:
        stack.cli("sessions", "stop", view["id"], check=False)
