"""The container backend's test image and agent settings, shared by the container tests.

The image is built by scripts/test-image.sh (debootstrap rootfs, cached under /var/cache/berth/test-image,
never committed); when it cannot be made the tests fail loudly, they are not skipped."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

IMAGE = "localhost/berth-test:bookworm"
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "test-image.sh"
# This host's Podman needs runc and these limits (crun and the host's own limits fail on its cgroup setup).
AGENT_ENV = {
    "BERTH_AGENT_BACKEND": "container",
    "BERTH_AGENT_CONTAINER_CLI": "podman",
    "BERTH_AGENT_CONTAINER_RUNTIME": "runc",
    "BERTH_AGENT_CONTAINER_RUN_ARGS": json.dumps(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]),
}


def ensure_test_image() -> str:
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"cannot build the container test image {IMAGE}:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def container_exists(session_id: str) -> bool:
    return podman("container", "exists", f"berth-{session_id}", check=False).returncode == 0
