"""Setup steps through the whole platform: git clone, extra packages, init script, and how each one fails."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from test_ssh_session import openssh


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> tuple[str, str]:
    """A git server (git daemon on a port) with two commits on 'main' and a 'feature' branch; returns (url, first commit)."""
    from conftest import git_daemon

    root = tmp_path_factory.mktemp("git")
    src = root / "src"
    run = lambda *a: subprocess.run(a, cwd=src, check=True, capture_output=True, text=True).stdout.strip()  # noqa: E731
    src.mkdir()
    run("git", "init", "-q", "-b", "main")
    run("git", "config", "user.email", "t@example.com")
    run("git", "config", "user.name", "t")
    (src / "README.md").write_text("one\n")
    run("git", "add", ".")
    run("git", "commit", "-qm", "one")
    first = run("git", "rev-parse", "HEAD")
    (src / "README.md").write_text("two\n")
    run("git", "commit", "-qam", "two")
    run("git", "checkout", "-qb", "feature")
    (src / "feature.txt").write_text("feature\n")
    run("git", "add", ".")
    run("git", "commit", "-qm", "feature")
    run("git", "checkout", "-q", "main")
    with git_daemon(src, root) as url:
        yield url, first


def test_git_branch_is_cloned_into_workspace(stack, origin):
    url, _ = origin
    view = stack.cli_json("launch", "ssh-session", "--git-repo", url, "--git-branch", "feature", "--wait")
    try:
        result = openssh(view, "cat repo/feature.txt; git -C repo rev-parse --abbrev-ref HEAD")
        assert result.stdout.split() == ["feature", "feature"]
    finally:
        stack.cli("sessions", "stop", view["id"])


def test_git_commit_is_checked_out(stack, origin):
    url, first = origin
    view = stack.cli_json("launch", "ssh-session", "--git-repo", url, "--git-commit", first, "--wait")
    try:
        result = openssh(view, "cat repo/README.md; git -C repo rev-parse HEAD")
        assert result.stdout.split() == ["one", first]
    finally:
        stack.cli("sessions", "stop", view["id"])


def test_bad_git_url_fails_with_a_clear_console_line(stack):
    result = stack.cli("launch", "ssh-session", "--git-repo", "git://127.0.0.1:9/nonexistent.git", "--wait", "--json", check=False)
    assert result.returncode == 1
    import json

    view = json.loads(result.stdout)
    assert view["status"] == "failed"
    assert "git" in view["error"].lower()
    assert any("setup failed" in e for e in stack.events(view["id"]))


def test_bad_git_branch_fails(stack, origin):
    url, _ = origin
    result = stack.cli("launch", "ssh-session", "--git-repo", url, "--git-branch", "no-such-branch", "--wait", "--json", check=False)
    assert result.returncode == 1
    assert "no-such-branch" in result.stdout


def test_git_token_never_appears(stack, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("tok-SECRET-4242\n")
    result = stack.cli("launch", "ssh-session", "--git-repo", "http://127.0.0.1:9/org/private.git", "--git-token-file",
                       str(token_file), "--wait", "--json", check=False)
    assert result.returncode == 1
    sid = __import__("json").loads(result.stdout)["id"]
    everything = result.stdout + result.stderr + "\n".join(stack.events(sid)) + stack.cli("sessions", "export", sid).stdout
    assert "tok-SECRET-4242" not in everything
    assert "tok-SECRET-4242" not in (stack.tmp / "server.log").read_text()


def test_packages_are_installed_into_the_session_venv(stack):
    view = stack.cli_json("launch", "ssh-session", "--packages", "six==1.16.0", "--wait")
    try:
        result = openssh(view, "python -c 'import six, sys; print(six.__version__, sys.prefix)'")
        version, prefix = result.stdout.split()
        assert version == "1.16.0" and prefix.endswith("/.venv")
    finally:
        stack.cli("sessions", "stop", view["id"])


def test_failing_package_install_fails_with_installers_message(stack):
    result = stack.cli("launch", "ssh-session", "--packages", "berth-no-such-package-zz==9.9", "--wait", "--json", check=False)
    assert result.returncode == 1
    view = __import__("json").loads(result.stdout)
    assert view["status"] == "failed"
    assert "berth-no-such-package-zz" in view["error"]


def test_init_script_runs_before_ssh_and_output_reaches_console(stack, tmp_path):
    script = tmp_path / "init.sh"
    script.write_text("# comment at line start\necho init-says-hello\necho made-by-init > from-init.txt\n")
    view = stack.cli_json("launch", "ssh-session", "--init-script", str(script), "--wait")
    try:
        events = stack.events(view["id"])
        assert "init: init-says-hello" in events
        assert events.index("init: init-says-hello") < [i for i, e in enumerate(events) if e.startswith("ssh: ready")][0]
        assert openssh(view, "cat from-init.txt").stdout.strip() == "made-by-init"
        assert view["config"]["init_script"] == script.read_text()
    finally:
        stack.cli("sessions", "stop", view["id"])


def test_failing_init_script_fails_the_session(stack, tmp_path):
    script = tmp_path / "init.sh"
    script.write_text("echo about-to-fail\nexit 7\n")
    result = stack.cli("launch", "ssh-session", "--init-script", str(script), "--wait", "--json", check=False)
    assert result.returncode == 1
    view = __import__("json").loads(result.stdout)
    assert view["status"] == "failed" and "status 7" in view["error"]
    assert "init: about-to-fail" in stack.events(view["id"])
    assert not Path(f"/var/lib/berth/homes/{view['id']}").exists() or \
        subprocess.run(["id", f"berth-{view['id']}"], capture_output=True).returncode != 0
