"""Which OCI runtime a container session gets, and the one console line saying what isolation that is.

SSH sessions get ``container_runtime``. VM-like sessions (the Remote Desktop: ``CommonConfig.vm_like``) get
``container_desktop_runtime``: by default ``auto``, Sysbox (``sysbox-runc``: systemd and Docker run inside, root
inside is still an unprivileged host range) where the worker has it, else ``container_runtime``. Sysbox is found
by Podman as a binary on the PATH, passed by its path (Podman's built-in runtime table does not name it), and by
Docker in the daemon's own runtime list (``/etc/docker/daemon.json``), passed by name.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass

from .container_cli import SYSBOX, ContainerCli, is_sysbox

AUTO = "auto"
VM_LIKE = "sysbox-runc (VM-like: systemd and Docker can run inside)"


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: str | None  # what --runtime gets; None: the engine's default
    isolation: str       # the console line


def runtime_name(runtime: str | None) -> str:
    return runtime.rsplit("/", 1)[-1] if runtime else "the engine's default runtime"


def isolation_line(runtime: str | None) -> str:
    if is_sysbox(runtime):
        return f"isolation: {VM_LIKE}"
    return f"isolation: {runtime_name(runtime)} container in its own user namespace"


def choose_runtime(*, configured: str | None, desktop: str | None, vm_like: bool, sysbox: str | None) -> RuntimeChoice:
    """`configured`: container_runtime; `desktop`: container_desktop_runtime; `sysbox`: what --runtime takes for
    Sysbox on this worker, None when it has none (``find_sysbox``)."""
    if not vm_like:
        return RuntimeChoice(configured, isolation_line(configured))
    if desktop != AUTO:
        return RuntimeChoice(desktop, isolation_line(desktop))
    if sysbox:
        return RuntimeChoice(sysbox, isolation_line(sysbox))
    if is_sysbox(configured):  # the operator named it for every session
        return RuntimeChoice(configured, isolation_line(configured))
    return RuntimeChoice(configured, isolation_line(configured) + f"; {SYSBOX} is not installed on this worker, "
                         "so systemd and Docker cannot run inside")


def sysbox_from(kind: str, which: str | None, docker_runtimes: str) -> str | None:
    """Pure: Sysbox's --runtime value from what the worker shows (`which`: its path on the PATH; `docker_runtimes`:
    `docker info`'s runtimes as JSON, "" when unknown)."""
    if kind == "podman":
        return which
    try:
        runtimes = json.loads(docker_runtimes or "{}")
    except ValueError:
        return None
    return SYSBOX if isinstance(runtimes, dict) and SYSBOX in runtimes else None


def find_sysbox(cli: ContainerCli, env: dict[str, str]) -> str | None:
    """Sysbox's --runtime value on this worker, or None (asks the Docker daemon; Podman: the PATH)."""
    which = shutil.which(SYSBOX, path=env.get("PATH"))
    out = ""
    if cli.kind == "docker":
        try:
            proc = subprocess.run(cli.runtimes_argv(), env=env, capture_output=True, text=True, timeout=30)
            out = proc.stdout if proc.returncode == 0 else ""
        except (OSError, subprocess.TimeoutExpired):
            out = ""
    return sysbox_from(cli.kind, which, out)
