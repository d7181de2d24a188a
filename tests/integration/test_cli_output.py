"""The CLI as a new user meets it, at 80 columns, piped and in a terminal (issue #8, point 7).

IDs are what people copy: list tables never cut or wrap them (names are cut instead). Text users control
(session names, console lines) prints literally, never as rich markup. `--help` shows no `<bool>` after flags.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from berth.cli.main import app

LONG_NAMES = ["a-session-name-far-too-long-to-fit-in-an-eighty-column-terminal-" + "x" * 40,
              "a long session name with many words in it that would wrap onto several lines"]
# Markup in a name must print as typed; "x[/red]" alone (a stray closing tag) made rich raise MarkupError.
MARKUP_NAMES = ["[b]x[/b]", "x[/red]"]
MARKUP_LINES = ["[red]printed[/red]", "closing [/oops] tag"]
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


def _plain_env(stack, **extra) -> dict:
    """The CLI's environment with nothing that picks a width or colours: the terminal (or its absence) decides."""
    env = stack.env(**extra)
    for var in ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "TERM"):
        if var not in extra:
            env.pop(var, None)
    return env


def run_piped(stack, *args: str, **env_extra) -> subprocess.CompletedProcess:
    """No terminal anywhere (stdin too: rich asks every standard stream for a width)."""
    return subprocess.run(stack.cli_cmd(*args), env=_plain_env(stack, **env_extra), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)


def run_in_terminal(stack, *args: str, columns: int = 80, timeout: float = 120) -> tuple[int, str]:
    """Run under a pseudo-terminal `columns` wide; returns (exit code, output without escape sequences)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(stack.cli_cmd(*args), env=_plain_env(stack, TERM="xterm-256color"), stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.killpg(proc.pid, signal.SIGKILL)
                raise AssertionError(f"berth {' '.join(args)} still running after {timeout}s: {b''.join(chunks)[-2000:]!r}")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal's other side has closed it
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(10)
    finally:
        os.close(master)
    text = _ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))
    return code, text.replace("\r\n", "\n").replace("\r", "\n")


def _launch_queued(stack, name: str, project: str) -> str:
    return json.loads(stack.cli("launch", "ssh-session", "--name", name, "--project", project, "--json").stdout)["id"]


@pytest.fixture(scope="module")
def listed(server_only):
    """Queued sessions (no agent) in two projects: long names, and names that look like markup."""
    for project in ("long-names", "markup"):
        server_only.cli("projects", "create", project)
    long_ids = [_launch_queued(server_only, name, "long-names") for name in LONG_NAMES]
    markup_ids = [_launch_queued(server_only, name, "markup") for name in MARKUP_NAMES]
    return server_only, long_ids, markup_ids


def _list_output(stack, how: str, project: str) -> str:
    args = ("sessions", "list", "--project", project)
    if how == "terminal":
        code, text = run_in_terminal(stack, *args)
        assert code == 0, text
        return text
    result = run_piped(stack, *args, **({"COLUMNS": "80"} if how == "piped-COLUMNS=80" else {}))
    assert result.returncode == 0, result.stderr
    return result.stdout


HOW = ["piped", "piped-COLUMNS=80", "terminal"]


@pytest.mark.parametrize("how", HOW)
def test_sessions_list_shows_whole_ids_and_cuts_long_names_at_80_columns(listed, how):
    stack, long_ids, _ = listed
    text = _list_output(stack, how, "long-names")
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    for sid in long_ids:
        rows = [line for line in lines if re.search(rf"(^|[\s│|]){sid}($|[\s│|])", line)]
        # The whole ID on one line, and the rest of its row with it: nothing wrapped onto a second line.
        assert len(rows) == 1, f"{sid} not whole on one line:\n{text}"
        assert "queued" in rows[0] and "…" in rows[0], f"row not kept on one line, name not cut:\n{text}"
    for name in LONG_NAMES:
        assert name not in text


@pytest.mark.parametrize("how", HOW)
def test_sessions_list_prints_markup_in_names_literally(listed, how):
    stack, _, markup_ids = listed
    text = _list_output(stack, how, "markup")
    for sid, name in zip(markup_ids, MARKUP_NAMES, strict=True):
        row = next((line for line in text.splitlines() if sid in line), None)
        assert row is not None and name in row, f"{name!r} not shown as typed:\n{text}"


def test_session_dashboard_prints_markup_in_names_literally(listed):
    stack, _, markup_ids = listed
    for sid, name in zip(markup_ids, MARKUP_NAMES, strict=True):
        result = run_piped(stack, "sessions", "show", sid)
        assert result.returncode == 0, result.stderr
        assert name in result.stdout


def test_errors_print_user_text_literally(server_only, tmp_path):
    """Error messages quote what was typed; a stray closing tag in it made rich raise instead of printing it."""
    missing = tmp_path / "x[/b].json"
    result = run_piped(server_only, "launch", "ssh-session", "--config", str(missing))  # a BerthError, through guard()
    assert result.returncode == 1 and f"no such file {str(missing)!r}" in result.stderr, result.stderr
    full = tmp_path / "[bold]y"  # a tag without its closing half (a file name cannot hold "/")
    full.mkdir()
    (full / "f").touch()
    result = run_piped(server_only, "workspaces", "download", "abc", str(full))  # through fail()
    assert result.returncode == 1 and f"error: {full} must be a new or empty directory" in result.stderr, result.stderr


@pytest.mark.parametrize("how", HOW)
def test_tokens_and_workers_lists_at_80_columns(stack, how):
    label = "[b]x[/b] " + "a token label long enough to be cut " * 3
    token_id = json.loads(stack.cli("tokens", "create", "--label", label, "--json").stdout)["id"]
    for args, whole, literal in ((("tokens", "list"), token_id, "[b]x[/b] a token"), (("workers", "list"), "online", "agent")):
        if how == "terminal":
            code, text = run_in_terminal(stack, *args)
        else:
            result = run_piped(stack, *args, **({"COLUMNS": "80"} if how == "piped-COLUMNS=80" else {}))
            code, text = result.returncode, result.stdout + result.stderr
        assert code == 0, text
        assert all(len(line) <= 80 for line in text.splitlines()), text
        row = next((line for line in text.splitlines() if re.search(rf"(^|\s){whole}(\s|$)", line)), None)
        assert row is not None and literal in row, text


def _check_launch_progress(stderr: str, sid: str) -> None:
    assert "[dim]" not in stderr and "[/dim]" not in stderr, stderr
    assert f"session {sid} ([red]x[/red])" in stderr, stderr  # the name as typed
    for line in MARKUP_LINES:  # console lines from the init script, as the script printed them
        assert re.search(rf"^\d\d:\d\d:\d\d .*{re.escape(line)}", stderr, re.M), stderr
    assert re.search(r"^\d\d:\d\d:\d\d status: active", stderr, re.M), stderr


@pytest.fixture(scope="module")
def init_script(tmp_path_factory):
    path = tmp_path_factory.mktemp("init") / "init.sh"
    path.write_text("".join(f"echo '{line}'\n" for line in MARKUP_LINES))
    return path


def test_launch_wait_progress_is_plain_text_when_piped(stack, init_script):
    result = run_piped(stack, "launch", "ssh-session", "--name", "[red]x[/red]", "--init-script", str(init_script), "--wait")
    try:
        assert result.returncode == 0, result.stderr
        sid = re.search(r"session ([0-9a-f]{12})", result.stderr).group(1)
        _check_launch_progress(result.stderr, sid)
        assert "[red]x[/red]" in result.stdout  # the dashboard after the wait
    finally:
        for sid in re.findall(r"session ([0-9a-f]{12})", result.stderr)[:1]:
            stack.cli("sessions", "stop", sid, "--no-wait", check=False)


def test_launch_wait_progress_is_plain_text_in_a_terminal(stack, init_script):
    code, text = run_in_terminal(stack, "launch", "ssh-session", "--name", "[red]x[/red]", "--init-script", str(init_script),
                                 "--wait")
    found = re.search(r"session ([0-9a-f]{12})", text)
    try:
        assert code == 0, text
        _check_launch_progress(text, found.group(1))
    finally:
        if found:
            stack.cli("sessions", "stop", found.group(1), "--no-wait", check=False)


def _command_paths(command=None, path=()):
    command = command or get_command(app)
    yield list(path)
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _command_paths(sub, (*path, name))


@pytest.mark.parametrize("path", list(_command_paths()), ids=lambda p: " ".join(p) or "berth")
def test_help_shows_no_bool_placeholder(path):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert "<bool>" not in result.output, result.output


def test_help_in_a_terminal_shows_no_bool_placeholder(server_only):
    code, text = run_in_terminal(server_only, "launch", "ssh-session", "--help")
    assert code == 0 and "--wait" in text and "--dropbear" in text, text
    assert "<bool>" not in text, text


def test_launch_onto_a_queue_no_worker_serves_warns_and_a_bare_config_file_works(stack, tmp_path):
    """A bare configuration object ({"queue": ...}) is a configuration file too; a queue no online worker serves
    gets a warning line at once (the session still launches and waits there)."""
    stack.api("POST", "/api/v1/queues", json={"name": "nobody-serves"})
    path = tmp_path / "bare.json"
    path.write_text(json.dumps({"queue": "nobody-serves", "name": "bare-config"}))
    result = run_piped(stack, "launch", "ssh-session", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "launched ssh-session session" in result.stderr and "'nobody-serves'" in result.stderr
    assert "warning: no online worker serves queue 'nobody-serves': the session waits there until one does" in result.stderr
    session_id = re.search(r"session (\w+) \(bare-config\)", result.stderr).group(1)
    assert stack.api("GET", f"/api/v1/sessions/{session_id}")["status"] == "queued"
    stack.api("POST", f"/api/v1/sessions/{session_id}/stop")
    served = run_piped(stack, "launch", "ssh-session", "--name", "served")  # the agent serves 'default': no warning
    assert served.returncode == 0 and "warning" not in served.stderr, served.stderr
    served_id = re.search(r"session (\w+) \(served\)", served.stderr).group(1)
    stack.api("POST", f"/api/v1/sessions/{served_id}/stop")
