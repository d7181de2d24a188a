"""berth.agent.ssh: choosing a server kind (choice.py), host key fingerprints, key files."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

from berth.agent import ssh
from berth.agent.ssh import choice, dropbear, process
from berth.errors import SetupFailed

HAVE_SSHD = os.access(choice.SSHD, os.X_OK)
HAVE_DROPBEAR = os.access(choice.DROPBEAR, os.X_OK)
DEVPTS_GID5 = "devpts /dev/pts devpts rw,nosuid,noexec,relatime,gid={gid},mode=620,ptmxmode=666 0 0\n"
DEVPTS_NOGID = "devpts /dev/pts devpts rw,relatime,mode=600,ptmxmode=000 0 0\n"


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A fake host: which binaries exist, whether shadow is readable, how devpts is mounted."""
    exe = tmp_path / "exe"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    shadow = tmp_path / "shadow"
    shadow.write_text("")
    ptmx = tmp_path / "ptmx"
    ptmx.write_text("")
    mounts = tmp_path / "mounts"
    mounts.write_text(DEVPTS_GID5.format(gid=12345))
    monkeypatch.setattr(choice, "SSHD", str(exe))
    monkeypatch.setattr(choice, "DROPBEAR", str(exe))
    monkeypatch.setattr(choice, "SHADOW", str(shadow))
    monkeypatch.setattr(choice, "PTMX", str(ptmx))
    monkeypatch.setattr(choice, "MOUNTS", str(mounts))
    monkeypatch.setattr(choice, "_tty_gid", lambda: 12345)  # a group this test process is not in
    return {"missing": str(tmp_path / "missing"), "mounts": mounts}


def test_root_prefers_openssh_unless_dropbear_asked(host):
    assert choice.choose_kind(False, True)[0] == "openssh"
    assert choice.choose_kind(True, True)[0] == "dropbear"


def test_root_falls_back_to_what_is_installed(host, monkeypatch):
    monkeypatch.setattr(choice, "DROPBEAR", host["missing"])
    kind, reason = choice.choose_kind(True, True)
    assert kind == "openssh" and "dropbear" in reason
    monkeypatch.setattr(choice, "SSHD", host["missing"])
    assert choice.choose_kind(False, True)[0] == "builtin"


def test_nonroot_uses_dropbear_when_it_can_work(host):
    for want in (False, True):
        kind, reason = choice.choose_kind(want, False)
        assert kind == "dropbear", reason
        assert "\n" not in reason


def test_nonroot_without_shadow_uses_builtin(host, monkeypatch):
    monkeypatch.setattr(choice, "SHADOW", host["missing"])
    for want in (False, True):
        kind, reason = choice.choose_kind(want, False)
        assert kind == "builtin"
        assert reason == "dropbear cannot check passwords as a non-root user here; using the built-in SSH server"


def test_nonroot_without_tty_group_ptys_uses_builtin(host):
    host["mounts"].write_text(DEVPTS_NOGID)
    kind, reason = choice.choose_kind(False, False)
    assert kind == "builtin" and "terminals" in reason


def test_nonroot_without_dropbear_uses_builtin(host, monkeypatch):
    monkeypatch.setattr(choice, "DROPBEAR", host["missing"])
    kind, reason = choice.choose_kind(True, False)
    assert kind == "builtin" and "not installed" in reason


def test_pty_check_reads_devpts_gid(host):
    assert choice._nonroot_pty_ok()
    host["mounts"].write_text(DEVPTS_GID5.format(gid=5))
    assert not choice._nonroot_pty_ok()  # gid=5 is not the tty group of this fake host
    host["mounts"].write_text(DEVPTS_NOGID)
    assert not choice._nonroot_pty_ok()


@pytest.mark.parametrize("key_type", ["ed25519", "rsa", "ecdsa"])
def test_fingerprint_matches_ssh_keygen(tmp_path, key_type):
    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen not installed")
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-f", str(key)], check=True)
    line = (tmp_path / "k.pub").read_text()
    expected = subprocess.run(["ssh-keygen", "-lf", str(key) + ".pub"], check=True, capture_output=True,
                              text=True).stdout.split()[1]
    assert ssh.fingerprint(line) == expected
    assert expected.startswith("SHA256:") and not expected.endswith("=")


def test_fingerprint_rejects_garbage():
    with pytest.raises(ValueError):
        ssh.fingerprint("nonsense")


@pytest.mark.skipif(not shutil.which("dropbearkey"), reason="dropbearkey not installed")
def test_dropbear_rsa_key_is_readable_by_dropbear(tmp_path):
    path = tmp_path / "rsa"
    line = dropbear._write_dropbear_rsa(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    out = subprocess.run(["dropbearkey", "-y", "-f", str(path)], check=True, capture_output=True, text=True).stdout
    assert line == process.pubkey_line(out, "ssh-rsa")


def test_authorized_keys_file(tmp_path):
    home = tmp_path / "home"
    path = ssh.write_authorized_keys(home, ["ssh-ed25519 AAAA one", "  ", "ssh-ed25519 BBBB two\n"], None, None)
    assert path.read_text() == "ssh-ed25519 AAAA one\nssh-ed25519 BBBB two\n"
    assert (path.stat().st_mode & 0o777) == 0o600 and (path.parent.stat().st_mode & 0o777) == 0o700
    path.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("precious\n")
    path.symlink_to(elsewhere)  # a planted link is replaced, never written through
    ssh.write_authorized_keys(home, ["ssh-ed25519 CCCC three"], None, None)
    assert elsewhere.read_text() == "precious\n"
    assert not path.is_symlink() and path.read_text() == "ssh-ed25519 CCCC three\n"
    path.unlink()
    os.link(elsewhere, path)
    ssh.write_authorized_keys(home, ["ssh-ed25519 DDDD four"], None, None)
    assert elsewhere.read_text() == "precious\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["authorized_keys"]
    shutil.rmtree(path.parent)
    (home / ".ssh").symlink_to(tmp_path)
    with pytest.raises(SetupFailed):
        ssh.write_authorized_keys(home, ["x"], None, None)


def test_free_port_is_bindable():
    port = ssh.free_port("127.0.0.1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_spec_repr_hides_password(tmp_path):
    spec = ssh.SshServerSpec(kind="builtin", run_dir=tmp_path, home=tmp_path, user="u", password="s3cret",
                             authorized_keys=[], shell_wrapper=tmp_path / "w")
    assert "s3cret" not in repr(spec)


def test_signals_ignored_by_whoever_started_the_agent_are_not_passed_on(tmp_path):
    """Under `nohup` SIGHUP arrives ignored; session shells must still be able to get (and trap) it."""
    import subprocess
    import sys

    probe = ("import signal, subprocess\n"
             "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
             "from berth.agent.signal_defaults import undo_inherited_signal_ignores\n"
             "undo_inherited_signal_ignores()\n"
             "print(subprocess.run(['bash', '-c', 'trap \"echo trapped\" HUP; kill -HUP $$; echo after'],"
             " capture_output=True, text=True).stdout)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["trapped", "after"], out.stderr
