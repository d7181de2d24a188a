"""Container arguments and image references as users type them (the seed's "Docker Arguments" and "Image").

Pure: no berth imports, so settings, the server and the agent share it. `container_args` is split like a shell
(shlex) and read like Podman and Docker read `run` options (pflag: `--flag=value`, `--flag value`, `-fVALUE`,
`-f=VALUE`, clusters of one-letter flags `-it`). Every option must be one berth knows (an allow-list: a flag
berth has never seen may do anything, from mounting a host file to joining another container) and must not
break the session's isolation; the admin setting `BERTH_CONTAINER_ARGS_ALLOWED` lifts the isolation refusals
flag by flag. Options berth sets itself (the container's name, labels, lifetime, main process) are never
allowed. Positional words are refused: after the options comes the image, so a stray word would replace it.

Messages name the flag as written and never echo a value (`-e KEY=VALUE` may hold a token).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Callable

ALLOW_SETTING = "BERTH_CONTAINER_ARGS_ALLOWED"
BREAKS = "breaks the session's isolation"
ISOLATION = f"it {BREAKS}"


@dataclass(frozen=True)
class Refusal:
    reason: str
    allowable: bool = True  # False: berth's own (or unsafe whatever the admin says): never allowed


@dataclass(frozen=True)
class Option:
    value: bool  # takes a value (else a boolean: no value, or =true / =false)
    check: Callable[[str], Refusal | None] | None = None  # a value-dependent rule (booleans get "true"/"false")


@dataclass(frozen=True)
class Arg:
    """One option as written: `written` is the flag as the user typed it (`-v`, `--volume`), `name` its long form."""
    written: str
    name: str
    value: str | None


class ContainerArgsError(ValueError):
    """A problem with the arguments; the message names the flag, never its value."""


def _always(reason: str, allowable: bool = True) -> Callable[[str], Refusal | None]:
    return lambda _value: Refusal(reason, allowable)


def _when_on(reason: str) -> Callable[[str], Refusal | None]:
    return lambda value: Refusal(reason) if value == "true" else None


BERTH_SETS = "berth starts the container and sets it itself"


def _namespace(kind: str) -> Callable[[str], Refusal | None]:
    """--pid/--ipc/--uts/--cgroupns/--network: the worker's or another container's namespace breaks isolation."""
    def check(value: str) -> Refusal | None:
        v = value.strip().lower()
        if v == "host":
            return Refusal(f"sharing the worker's {kind} namespace {BREAKS}")
        if v.startswith(("container:", "ns:", "ns=", "pod:")):
            return Refusal(f"joining another {kind} namespace {BREAKS}")
        return None
    return check


_BIND = Refusal(f"a bind mount of a host path {BREAKS}")
# A named volume is the worker's, by name: any session there could name it; an anonymous one outlives the container.
_VOLUME = Refusal("volumes outlive the session and any session on the worker may name them: keep data in the workspace")


def _volume(value: str) -> Refusal | None:
    source = value.split(":", 1)[0] if ":" in value else ""
    return _BIND if source.startswith(("/", ".", "~")) else _VOLUME


def _mount(value: str) -> Refusal | None:
    fields = dict(part.split("=", 1) if "=" in part else (part, "") for part in value.split(","))
    kind = fields.get("type", "volume").strip().lower()
    if kind == "tmpfs":
        return None
    if kind == "bind":
        return _BIND
    if kind == "volume":
        return _VOLUME
    return Refusal("only type=tmpfs mounts are allowed")


def _security_opt(value: str) -> Refusal | None:
    key = re.split(r"[=:]", value.strip(), maxsplit=1)[0].lower()
    if key in ("no-new-privileges", "mask"):
        return None
    return Refusal(f"{key or 'this option'} lifts a confinement of the session")


def _label(value: str) -> Refusal | None:
    if value.strip().lower().startswith("berth."):
        return Refusal("labels berth.* are berth's own", allowable=False)
    return None


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env(value: str) -> Refusal | None:
    name, sep, _rest = value.partition("=")
    if not sep:  # Podman and Docker copy the worker's own variable (the agent's environment) for a bare name
        return Refusal("it needs KEY=VALUE: a bare name would copy the worker's own variable into the container", allowable=False)
    if not _ENV_NAME.match(name):
        return Refusal("it needs KEY=VALUE, KEY made of letters, digits and _", allowable=False)
    return None


def _oom_score_adj(value: str) -> Refusal | None:
    try:
        number = int(value.strip())
    except ValueError:
        return Refusal("it needs a whole number", allowable=False)
    if number < 0:
        return Refusal("a negative value makes the worker's kernel kill other processes before this session's")
    return None


def _group_add(value: str) -> Refusal | None:
    if value.strip().lower() == "keep-groups":
        return Refusal(f"keeping the worker's groups {BREAKS}")
    return None


# Berth's own options, or ones that hand the worker's own environment to the container: never allowed.
NEVER: dict[str, str] = {**{f: BERTH_SETS for f in ("--name", "--entrypoint", "--restart", "--attach", "--rm", "--detach",
                                                    "--interactive", "--tty", "--replace")},
                         "--env-host": "it copies the worker's own environment into the container"}
_BOOLEAN_NEVER = frozenset({"--rm", "--detach", "--interactive", "--tty", "--replace", "--env-host"})
_USERS = "berth maps the container's users to an unprivileged range of the worker"
_DEVICE = "it gives the container a device of the worker"

# Every option berth knows: harmless ones (no check), refused ones (a check that always refuses), and value-dependent ones.
OPTIONS: dict[str, Option] = {
    # resources
    **{f: Option(True) for f in ("--cpus", "--cpu-shares", "--cpu-period", "--cpu-quota", "--cpuset-cpus", "--cpuset-mems",
                                 "--memory", "--memory-reservation", "--memory-swap", "--memory-swappiness", "--shm-size",
                                 "--pids-limit", "--ulimit", "--blkio-weight", "--storage-opt", "--sysctl", "--timeout")},
    # the environment and what the container looks like inside
    "--env": Option(True, _env), "--unsetenv": Option(True), "--unsetenv-all": Option(False),
    "--workdir": Option(True), "--hostname": Option(True), "--tz": Option(True), "--umask": Option(True),
    "--label": Option(True, _label), "--annotation": Option(True), "--group-add": Option(True, _group_add),
    "--read-only": Option(False), "--read-only-tmpfs": Option(False), "--tmpfs": Option(True), "--mount": Option(True, _mount),
    "--init": Option(False), "--systemd": Option(True), "--stop-signal": Option(True), "--stop-timeout": Option(True),
    "--health-cmd": Option(True), "--health-interval": Option(True), "--health-retries": Option(True),
    "--health-start-period": Option(True), "--health-timeout": Option(True), "--no-healthcheck": Option(False),
    "--pull": Option(True), "--platform": Option(True), "--arch": Option(True), "--os": Option(True), "--variant": Option(True),
    "--quiet": Option(False), "--cap-drop": Option(True),
    "--security-opt": Option(True, _security_opt), "--oom-score-adj": Option(True, _oom_score_adj),
    # network inside the container's own namespace
    **{f: Option(True) for f in ("--dns", "--dns-option", "--dns-search", "--add-host", "--ip", "--ip6", "--mac-address",
                                 "--network-alias", "--expose")},
    "--no-hosts": Option(False),
    # namespaces: the container's own only
    "--network": Option(True, _namespace("network")), "--net": Option(True, _namespace("network")),
    "--pid": Option(True, _namespace("process")), "--ipc": Option(True, _namespace("IPC")),
    "--uts": Option(True, _namespace("UTS")), "--cgroupns": Option(True, _namespace("cgroup")),
    # isolation: refused unless the admin allows them
    "--privileged": Option(False, _when_on(ISOLATION)),
    "--cap-add": Option(True, _always("added capabilities break the session's isolation")),
    "--device": Option(True, _always(_DEVICE)), "--device-cgroup-rule": Option(True, _always(_DEVICE)),
    "--gpus": Option(True, _always(f"{_DEVICE}; berth passes the worker's GPUs itself")),
    "--volume": Option(True, _volume), "--volumes-from": Option(True, _always("it mounts another container's volumes")),
    "--userns": Option(True, _always(_USERS)), "--uidmap": Option(True, _always(_USERS)), "--gidmap": Option(True, _always(_USERS)),
    "--subuidname": Option(True, _always(_USERS)), "--subgidname": Option(True, _always(_USERS)),
    "--user": Option(True, _always("berth runs the session as its mapped user")),
    "--runtime": Option(True, _always("the worker chooses the container runtime")),
    "--init-path": Option(True, _always("it runs a program of the worker as the container's init")),
    "--cgroup-parent": Option(True, _always("it moves the container out of berth's resource limits")),
    "--oom-kill-disable": Option(False, _when_on("it lets the container exhaust the worker's memory")),
    "--publish": Option(True, _always("it opens a port on the worker's own addresses, outside berth's access checks "
                                      "(reach ports with ssh -L or the gateway)")),
    "--publish-all": Option(False, _when_on("it opens ports on the worker's own addresses, outside berth's access checks")),
    "--pod": Option(True, _always(f"joining a pod {BREAKS}")),
    "--env-file": Option(True, _always("it reads a file of the worker")),
    **{f: Option(f not in _BOOLEAN_NEVER, _always(reason, allowable=False)) for f, reason in NEVER.items()},
}

SHORT: dict[str, str] = {"a": "--attach", "c": "--cpu-shares", "d": "--detach", "e": "--env", "h": "--hostname",
                         "i": "--interactive", "l": "--label", "m": "--memory", "p": "--publish", "P": "--publish-all",
                         "q": "--quiet", "t": "--tty", "u": "--user", "v": "--volume", "w": "--workdir"}

_FLAG_NAME = re.compile(r"^--[a-z0-9][a-z0-9-]*$")


def canonical(flag: str) -> str:
    """`-v` -> `--volume`; a long flag as it is (lowercase)."""
    flag = flag.strip()
    if len(flag) == 2 and flag[0] == "-" and flag[1] in SHORT:
        return SHORT[flag[1]]
    return flag.lower()


def check_allowed_setting(flags: list[str]) -> list[str]:
    """The admin setting's flags, as long names. Berth's own options, and those that would hand the worker's own
    environment to the container, cannot be allowed."""
    out = []
    for flag in flags:
        name = canonical(flag)
        if not _FLAG_NAME.match(name):
            raise ValueError(f"{flag!r} is not an option name (e.g. --device or -v)")
        if name in NEVER:
            raise ValueError(f"{flag} cannot be allowed ({NEVER[name]})")
        out.append(name)
    return out


def split(text: str) -> list[str]:
    """The arguments as a shell splits them (what the backend appends to `run`)."""
    try:
        return shlex.split(text, comments=False, posix=True)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise ContainerArgsError(f"cannot be split like a shell command line ({str(exc).lower()}): check the quotes") from None


def parse(text: str, allowed: frozenset[str] | set[str] = frozenset()) -> list[Arg]:
    """Each option of `text` as written, reading values as Podman and Docker do. A flag berth does not know is
    refused unless `allowed` names it; such a flag takes its value only as ``--flag=value``."""
    tokens = split(text)
    args: list[Arg] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token.startswith("--") and len(token) > 2:
            flag, eq, attached = token.partition("=")
            name = flag.lower()
            if not _FLAG_NAME.match(name):
                raise ContainerArgsError(f"argument {i} is not an option name")
            option = OPTIONS.get(name)
            if option is None:
                if name not in allowed:
                    raise ContainerArgsError(f"{flag} is not an option berth knows (ask an admin to allow it with {ALLOW_SETTING})")
                args.append(Arg(flag, name, attached if eq else None))
                continue
            if option.value and not eq:
                if i >= len(tokens):
                    raise ContainerArgsError(f"{flag} needs a value")
                attached, i = tokens[i], i + 1
            args.append(Arg(flag, name, attached if (eq or option.value) else None))
        elif token.startswith("-") and len(token) > 1 and token != "--":
            j = 1
            while j < len(token):  # a cluster: -it, -eKEY=V, -e=KEY=V, -ite KEY=V
                letter = token[j]
                if letter not in SHORT:
                    raise ContainerArgsError(f"-{letter} is not an option berth knows" if letter.isalnum()
                                             else f"argument {i} is not an option name")
                name, rest = SHORT[letter], token[j + 1:]
                if OPTIONS[name].value:
                    if rest:
                        value = rest[1:] if rest.startswith("=") else rest
                    elif i < len(tokens):
                        value, i = tokens[i], i + 1
                    else:
                        raise ContainerArgsError(f"-{letter} needs a value")
                    args.append(Arg(f"-{letter}", name, value))
                    break
                if rest.startswith("="):
                    args.append(Arg(f"-{letter}", name, rest[1:]))
                    break
                args.append(Arg(f"-{letter}", name, None))
                j += 1
        else:  # not echoed: it may be a value typed apart from its flag (-e KEY VALUE)
            raise ContainerArgsError(f"argument {i} is not an option (container arguments are options only: "
                                     f"the image goes in the Image field)")
    return args


def check(text: str, allowed: frozenset[str] | set[str] = frozenset()) -> list[Arg]:
    """Parse and apply the rules: the first refused option raises, naming the flag as written."""
    args = parse(text, allowed)
    for arg in args:
        option = OPTIONS.get(arg.name)
        if option is None:
            continue  # an unknown flag the admin allowed
        value = arg.value
        if not option.value:
            flag_value = "true" if value is None else value.strip().lower()
            if flag_value not in ("true", "false"):
                raise ContainerArgsError(f"{arg.written} takes no value (or =true / =false)")
            value = flag_value
        refusal = option.check(value) if option.check else None
        if refusal is None or (refusal.allowable and arg.name in allowed):
            continue
        raise ContainerArgsError(f"{arg.written} is not allowed ({refusal.reason})")
    return args


# The validation context key under which the server passes its admin's allowed flags (ServerSettings).
POLICY_CONTEXT = "container_args_allowed"


def validate(value: str, image: str | None, context: dict | None) -> str:
    """A configuration's container_args. The server validates every launch with its policy in the context: the
    rules apply, and arguments need an image. Without it (the agent re-reading an assignment, the CLI reading
    a file) only the shell syntax is checked: the server has already applied the rules it was configured with."""
    if context is None or POLICY_CONTEXT not in context:
        split(value)
        return value
    if image is None:
        raise ContainerArgsError("needs an image: container arguments apply to the container the image names")
    check(value, frozenset(context[POLICY_CONTEXT]))
    return value


# Image references: [registry[:port]/]path[:tag][@algorithm:digest] (the grammar of the OCI distribution spec),
# nothing else: no transport (`docker://`, `oci-archive:/path` would reach beyond a registry), no options.
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_REGISTRY = re.compile(rf"^(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:]+\])(?::[0-9]{{1,5}})?$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")
IMAGE_EXAMPLES = "e.g. ubuntu:24.04, ghcr.io/org/image:tag, localhost/name:tag or name@sha256:<digest>"


def check_image(value: str) -> str:
    """A plain image reference; the message does not echo it (a pasted URL may hold credentials)."""
    value = value.strip()
    if not _is_image(value):
        raise ValueError(f"not an image reference ({IMAGE_EXAMPLES})")
    return value


def _is_image(value: str) -> bool:
    rest, at, digest = value.partition("@")
    if at and not _DIGEST.match(digest):
        return False
    parts = rest.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _REGISTRY.match(first):
            return False
        parts = parts[1:]
    path, colon, tag = "/".join(parts).partition(":")
    if colon and not _TAG.match(tag):
        return False
    return 0 < len(path) <= 255 and all(_COMPONENT.match(c) for c in path.split("/"))
