"""The sshd_config that SSH into a container runs with (berth.agent.ssh.container.sshd_config), read by the real
sshd of this worker (the one the /berth bundle carries) in test mode."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from berth.agent.ssh import SshServerSpec, algorithms
from berth.agent.ssh.container import HOST_KEY, sshd_config


def _spec(tmp_path: Path, password: str) -> SshServerSpec:
    return SshServerSpec(kind="container", run_dir=tmp_path / "run", home=Path("/home/with space/x%y"),
                         user="berth-abc", password=password, authorized_keys=[],
                         shell_wrapper=Path("/home/with space/.berth/session-shell"), bind_host="127.0.0.1")


def _options(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        out.setdefault(key, []).append(value)
    return out


def test_the_config_names_the_containers_paths_and_never_the_password(tmp_path):
    secret = "pw-never-in-the-config"
    text = sshd_config(_spec(tmp_path, secret), asyncio.run(algorithms.sshd_config_lines()))
    opts = _options(text)
    assert secret not in text
    assert opts["HostKey"] == [HOST_KEY] and opts["UsePAM"] == ["no"] and opts["PasswordAuthentication"] == ["yes"]
    assert opts["Subsystem"] == ["sftp /berth/bin/sftp-server"] and opts["SetEnv"] == ["BERTH_TOOLS=/berth/bin"]
    assert opts["AllowTcpForwarding"] == ["local"] and opts["AllowUsers"] == ["berth-abc"]
    assert opts["PermitRootLogin"] == ["no"]
    assert opts["AuthorizedKeysFile"] == ['"/home/with space/x%%y/.ssh/authorized_keys"']  # % escaped, quoted
    assert text.splitlines()[-1] == "ForceCommand '/home/with space/.berth/session-shell'"  # last: takes the line
    assert "ssh-rsa" not in opts["HostKeyAlgorithms"][0].split(",")
    assert not any("sha1" in mac for mac in opts["MACs"][0].split(","))
    no_password = _options(sshd_config(_spec(tmp_path, ""), []))
    assert no_password["PasswordAuthentication"] == ["no"]


@pytest.mark.skipif(os.geteuid() != 0, reason="sshd's test mode checks its privilege separation setup as root")
def test_the_workers_sshd_accepts_it(tmp_path):
    key = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = tmp_path / "sshd_config"
    text = sshd_config(_spec(tmp_path, "pw"), asyncio.run(algorithms.sshd_config_lines()))
    config.write_text(text.replace(f"HostKey {HOST_KEY}", f"HostKey {key}"))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # what the openssh kind makes on the worker too
    out = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
