"""The session user's entries inside a container (berth.agent.backends.container_user): the boot script is valid
sh and keeps the password hash out of argv; the boot dir is container root's only."""

from __future__ import annotations

import os
import subprocess

import pytest

from berth.agent.backends.container_user import (BOOT_DIR, READY, entry_args, exec_script, main_command,
                                                 write_boot_dir)

HASH = "$6$salt$" + "x" * 86


@pytest.mark.parametrize("entries", [None, ["berth", "1000", "/home/s", "20000"]])
def test_pid1_script_is_valid_sh_and_carries_no_hash(entries):
    argv = main_command(entries)
    assert argv[:2] == ["/bin/sh", "-c"]
    assert subprocess.run(["sh", "-n", "-c", argv[2]]).returncode == 0
    assert not any(HASH in a or "$6$" in a for a in argv)
    if entries is not None:
        assert argv[3:] == ["sh", *entries]
        assert f"< {BOOT_DIR}/hash" in argv[2] and READY in argv[2]
    else:
        assert READY not in argv[2]


def test_the_boot_script_writes_the_entries_and_marks_ready(tmp_path):
    """The script itself, run against a scratch root with sh (paths rewritten to it)."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nold:x:1000:1000::/home/old:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "boot").mkdir()
    (root / "boot" / "hash").write_text(HASH + "\n")
    script = main_command(entry_args("berth", 1000, tmp_path / "home"))[2]
    script = (script.replace("/etc/", f"{root}/etc/").replace(BOOT_DIR, f"{root}/boot").replace(READY, f"{root}/ready")
              .replace("/tmp/.X11-unix", f"{root}/x11").replace("mkdir -p /run", f"mkdir -p {root}/run"))
    script = script.split("trap ")[0]  # the entries and the mark, not the stay-up loop
    subprocess.run(["sh", "-c", script, "sh", *entry_args("berth", 1000, tmp_path / "home")], check=True)
    passwd = (root / "etc" / "passwd").read_text()
    assert "old:" not in passwd and f"berth:x:1000:1000:berth session:{tmp_path / 'home'}:" in passwd
    assert (root / "etc" / "shadow").read_text().startswith(f"berth:{HASH}:")
    assert (root / "ready").exists()


def test_the_exec_form_takes_the_hash_on_stdin():
    argv = exec_script(["berth", "1000", "/h", "1"])
    assert argv[-4:] == ["berth", "1000", "/h", "1"] and not any("$6$" in a for a in argv)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to container root's host id needs root")
def test_boot_dir_is_container_roots_only(tmp_path):
    write_boot_dir(tmp_path / "boot", HASH, 1_000_000_000)
    d, f = os.stat(tmp_path / "boot"), os.stat(tmp_path / "boot" / "hash")
    assert (d.st_uid, d.st_mode & 0o777) == (1_000_000_000, 0o700)
    assert (f.st_uid, f.st_mode & 0o777) == (1_000_000_000, 0o600)
    assert (tmp_path / "boot" / "hash").read_text() == HASH + "\n"
