"""The container engine's command line: argv builders for Podman and Docker, so the backend names neither.

Only argv is built here (pure, unit-tested); ``container.py`` runs it. The two CLIs differ in a few places:
  * user namespaces: Podman maps each container onto its own host range (``--uidmap``/``--gidmap``); Docker
    has no per-container mapping, only the daemon's (``userns-remap``: every container shares the remap user's
    range; Podman's Docker API: containers.conf ``userns = "auto"``), so the backend reads the running
    container's maps (``userns_base``) and refuses one whose root is the host's;
  * the daemon's address: Docker's ``--host`` when set (``cmd``); the engine never gets the session's environment;
  * GPUs: Docker ``--gpus all`` (NVIDIA container toolkit); Podman CDI devices ``--device nvidia.com/gpu=all``
    (``nvidia-ctk cdi generate`` on the worker);
  * the default network: Podman ``slirp4netns`` (each session its own user-mode stack: no route to other
    sessions' containers), Docker ``bridge``.
Values that may be secret never go into argv (every user on the host reads it): environment variables go
through ``--env-file`` (a private file) or by name only (``--env NAME``, the value from the CLI's own env).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from berth.errors import SetupFailed

KINDS = ("podman", "docker")
LABEL = "berth.session"
USERNS_SIZE = 65536  # ids per container: root (0) to nobody (65534), as images expect
# Sysbox's runtime (VM-like containers). Its user guide: it honours the user namespace the engine asks for
# ("directed" mapping: Podman's --uidmap/--gidmap slice, Docker's userns-remap) and needs 65536 ids, which both
# give (Podman's --userns=auto would pick such a range too, but only once the container runs: berth needs the
# session user's host id before, for its home); it cannot pass host devices in (no --device, so no GPUs).
SYSBOX = "sysbox-runc"


def is_sysbox(runtime: str | None) -> bool:
    return bool(runtime) and runtime.rsplit("/", 1)[-1] == SYSBOX


def container_name(session_id: str) -> str:
    return f"berth-{session_id}"


@dataclass(frozen=True)
class RunSpec:
    """What ``run_argv`` puts together: one long-lived container per session."""

    name: str
    session_id: str
    image: str
    command: list[str]                    # the main process (argv, no entrypoint of the image's)
    uid_base: int | None = None           # host id that container root maps to (Podman); None: the engine's own
    mounts: list[tuple[str, str, str]] = field(default_factory=list)  # (host path, container path, options)
    runtime: str | None = None
    cpus: float | None = None
    memory: str | None = None
    network: str | None = None
    gpus: bool = False
    hostname: str | None = None
    engine_args: list[str] = field(default_factory=list)  # the operator's (settings), before the user's
    user_args: list[str] = field(default_factory=list)    # the session's container_args (validated server-side)


@dataclass(frozen=True)
class ContainerCli:
    kind: str    # podman | docker
    binary: str  # path or name of the executable
    host: str | None = None  # Docker: the daemon's address (--host), when not the CLI's default

    @classmethod
    def choose(cls, preferred: str | None, *, docker_host: str | None = None) -> ContainerCli:
        """The configured CLI, else Podman, else Docker, whichever is installed."""
        if preferred is not None and preferred not in KINDS:
            raise SetupFailed(f"container CLI {preferred!r} is not supported (BERTH_AGENT_CONTAINER_CLI: "
                              f"{' or '.join(KINDS)})")
        for kind in [preferred] if preferred else KINDS:
            path = shutil.which(kind)
            if path:
                return cls(kind, path, docker_host if kind == "docker" else None)
        wanted = preferred or " or ".join(KINDS)
        raise SetupFailed(f"the container backend needs {wanted} on this worker; none is installed")

    @property
    def cmd(self) -> list[str]:
        """What every command line starts with: the engine runs with a fixed environment (no DOCKER_HOST from the
        session's), so the daemon's address, when set, is a flag."""
        return [self.binary, "--host", self.host] if self.host else [self.binary]

    @property
    def default_network(self) -> str:
        return "slirp4netns" if self.kind == "podman" else "bridge"

    def userns_args(self, uid_base: int | None) -> list[str]:
        if self.kind == "docker" or uid_base is None:
            return []  # Docker: the daemon's userns-remap applies to every container
        return ["--uidmap", f"0:{uid_base}:{USERNS_SIZE}", "--gidmap", f"0:{uid_base}:{USERNS_SIZE}"]

    def gpu_args(self) -> list[str]:
        return ["--gpus", "all"] if self.kind == "docker" else ["--device", "nvidia.com/gpu=all"]

    def run_argv(self, spec: RunSpec) -> list[str]:
        argv = [*self.cmd, "run", "--detach", "--interactive", "--name", spec.name,
                "--label", f"{LABEL}={spec.session_id}", "--hostname", spec.hostname or spec.name[:63]]
        if spec.runtime:
            argv += ["--runtime", spec.runtime]
        argv += self.userns_args(spec.uid_base)
        argv += ["--network", spec.network or self.default_network]
        if spec.cpus:
            argv += ["--cpus", f"{spec.cpus:g}"]
        if spec.memory:
            argv += ["--memory", spec.memory]
        if spec.gpus and not is_sysbox(spec.runtime):  # Sysbox takes no devices
            argv += self.gpu_args()
        for source, target, options in spec.mounts:
            argv += ["--volume", f"{source}:{target}" + (f":{options}" if options else "")]
        argv += [*spec.engine_args, *spec.user_args]
        # Our main process, whatever the image's entrypoint: it only keeps the container up (see container.py).
        argv += ["--entrypoint", spec.command[0], spec.image, *spec.command[1:]]
        return argv

    def exec_argv(self, name: str, argv: list[str], *, user: str | None = None, cwd: str | None = None,
                  env_file: str | None = None, env_names: list[str] = (), interactive: bool = False,
                  preserve_fds: int = 0) -> list[str]:
        out = [*self.cmd, "exec"]
        if interactive:
            out.append("--interactive")
        if user:
            out += ["--user", user]
        if cwd:
            out += ["--workdir", cwd]
        if env_file:
            out += ["--env-file", env_file]
        for env_name in env_names:
            out += ["--env", env_name]
        if preserve_fds:
            if self.kind == "docker":
                raise SetupFailed("the Docker CLI cannot pass file descriptors into a container")
            out += ["--preserve-fds", str(preserve_fds)]
        return [*out, name, *argv]

    def image_exists_argv(self, image: str) -> list[str]:
        return [*self.cmd, "image", "inspect", "--format", "{{.Id}}", image]

    def inspect_argv(self, name: str, template: str) -> list[str]:
        return [*self.cmd, "container", "inspect", "--format", template, name]

    def logs_argv(self, name: str, lines: int) -> list[str]:
        return [*self.cmd, "logs", "--tail", str(lines), name]

    def remove_argv(self, name: str, *, grace_s: int = 2) -> list[str]:
        if self.kind == "podman":
            return [*self.cmd, "rm", "--force", "--time", str(grace_s), name]
        return [*self.cmd, "rm", "--force", name]  # docker rm -f kills at once

    def list_by_label_argv(self, session_id: str) -> list[str]:
        return [*self.cmd, "ps", "--all", "--filter", f"label={LABEL}={session_id}", "--format", "{{.Names}}"]

    def list_sessions_argv(self) -> list[str]:
        """Every session's container on this worker, running or not: names, one a line."""
        return [*self.cmd, "ps", "--all", "--filter", f"label={LABEL}", "--format", "{{.Names}}"]

    def runtimes_argv(self) -> list[str]:
        """Docker only: the daemon's OCI runtimes by name, as JSON (Sysbox registers itself there)."""
        return [*self.cmd, "info", "--format", "{{json .Runtimes}}"]


def parse_id_map(text: str) -> list[tuple[int, int, int]]:
    """/proc/<pid>/uid_map (or gid_map): (first id inside, first id on the host, count) per line."""
    extents = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 3 or not all(f.isdigit() for f in fields):
            raise SetupFailed(f"unreadable user-namespace map line {line.strip()!r}")
        inside, host, count = map(int, fields)
        extents.append((inside, host, count))
    return extents


def userns_base(uid_map: str, gid_map: str, *, need: int) -> tuple[int, int]:
    """(host id of container root, ids mapped one to one from there) as a running container's maps say: what the
    engine really did, whatever its configuration promised. Refused: container root as host root (no user
    namespace: a Docker daemon without userns-remap), uid and gid maps that differ (the session user is one host
    id for both), and a first extent too short to reach id `need` inside (a rootless daemon maps root alone)."""
    uids, gids = parse_id_map(uid_map), parse_id_map(gid_map)
    root = next(((host, count) for inside, host, count in uids if inside == 0), None)
    if root is None or root[0] == 0:
        raise SetupFailed("the container's root is the host's root (the engine gave it no user namespace): refused. "
                          "Docker: set \"userns-remap\": \"default\" in /etc/docker/daemon.json; Podman's service: "
                          "userns = \"auto\" in containers.conf")
    if next(((host, count) for inside, host, count in gids if inside == 0), None) != root:
        raise SetupFailed(f"the container's uid and gid maps differ ({uid_map.split()} / {gid_map.split()}): berth "
                          "needs one host range for both")
    if root[1] <= need:
        raise SetupFailed(f"the container's user namespace maps {root[1]} ids from root on (host {root[0]}): berth "
                          f"needs at least {need + 1} in one range (a rootless daemon is not supported)")
    return root
