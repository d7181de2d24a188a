"""The container engine's command line: argv builders for Podman and Docker, so the backend names neither.

Only argv is built here (pure, unit-tested); ``container.py`` runs it. The two CLIs differ in a few places:
  * user namespaces: Podman maps each container onto its own host range (``--uidmap``/``--gidmap``); Docker
    has no per-container mapping, only the daemon's ``userns-remap`` (every container shares the remap user's
    range) or a rootless daemon, so the backend asks the daemon which range it uses (``docker_remap_range``);
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

    @classmethod
    def choose(cls, preferred: str | None) -> ContainerCli:
        """The configured CLI, else Podman, else Docker, whichever is installed."""
        if preferred is not None and preferred not in KINDS:
            raise SetupFailed(f"container CLI {preferred!r} is not supported (BERTH_AGENT_CONTAINER_CLI: "
                              f"{' or '.join(KINDS)})")
        for kind in [preferred] if preferred else KINDS:
            path = shutil.which(kind)
            if path:
                return cls(kind, path)
        wanted = preferred or " or ".join(KINDS)
        raise SetupFailed(f"the container backend needs {wanted} on this worker; none is installed")

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
        argv = [self.binary, "run", "--detach", "--interactive", "--name", spec.name,
                "--label", f"{LABEL}={spec.session_id}", "--hostname", spec.hostname or spec.name[:63]]
        if spec.runtime:
            argv += ["--runtime", spec.runtime]
        argv += self.userns_args(spec.uid_base)
        argv += ["--network", spec.network or self.default_network]
        if spec.cpus:
            argv += ["--cpus", f"{spec.cpus:g}"]
        if spec.memory:
            argv += ["--memory", spec.memory]
        if spec.gpus:
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
        out = [self.binary, "exec"]
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
        return [self.binary, "image", "inspect", "--format", "{{.Id}}", image]

    def inspect_argv(self, name: str, template: str) -> list[str]:
        return [self.binary, "container", "inspect", "--format", template, name]

    def logs_argv(self, name: str, lines: int) -> list[str]:
        return [self.binary, "logs", "--tail", str(lines), name]

    def remove_argv(self, name: str, *, grace_s: int = 2) -> list[str]:
        if self.kind == "podman":
            return [self.binary, "rm", "--force", "--time", str(grace_s), name]
        return [self.binary, "rm", "--force", name]  # docker rm -f kills at once

    def list_by_label_argv(self, session_id: str) -> list[str]:
        return [self.binary, "ps", "--all", "--filter", f"label={LABEL}={session_id}", "--format", "{{.Names}}"]

    def info_userns_argv(self) -> list[str]:
        """Docker only: the daemon's security options (``name=userns`` when it remaps, ``name=rootless``)."""
        return [self.binary, "info", "--format", "{{json .SecurityOptions}}"]


def docker_remap_range(security_options: str, subuid: str, remap_user: str = "dockremap") -> int:
    """The host id container root maps to under Docker, from `docker info`'s security options and /etc/subuid.
    A daemon that neither remaps nor runs rootless would run container root as host root: refused."""
    if "name=rootless" in security_options:
        raise SetupFailed("a rootless Docker daemon is not supported by berth's container backend yet: use "
                          "a daemon with userns-remap, or Podman")
    if "name=userns" not in security_options:
        raise SetupFailed("the Docker daemon does not remap user namespaces: container root would be host root. "
                          "Set \"userns-remap\": \"default\" in /etc/docker/daemon.json, or use Podman")
    for line in subuid.splitlines():
        name, _, rest = line.partition(":")
        start, _, count = rest.partition(":")
        if name == remap_user and start.isdigit() and count.isdigit() and int(count) >= USERNS_SIZE:
            return int(start)
    raise SetupFailed(f"the Docker daemon remaps user namespaces but /etc/subuid has no range of {USERNS_SIZE} "
                      f"ids for {remap_user}")
