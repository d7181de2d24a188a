"""The session's python environment: a bare venv, then the packages it asks for (uv, else pip)."""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from berth.errors import SetupFailed
from berth.redaction import redact

from .commands import Emit, session_run_as, tool_env

if TYPE_CHECKING:
    from berth.agent.backends.base import SessionBackend


async def create_venv(python: str, venv: Path, backend: SessionBackend) -> None:
    """Create a bare venv (no pip, no system site-packages) in the session, which also proves it can run python."""
    run_as = session_run_as(backend)
    venv = Path(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    status, tail = await backend.run_in_session([python, "-m", "venv", "--without-pip", str(venv)],
                                                env=tool_env(run_as), cwd="/")
    if status:
        raise SetupFailed(f"could not create the python environment {venv} with {python} as {run_as.user}: "
                          + "\n".join(tail))


_OPTION_NAMES = {"-i": "--index-url", "--index-url": "--index-url", "--extra-index-url": "--extra-index-url",
                 "-f": "--find-links", "--find-links": "--find-links"}


def parse_requirements(items: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split pip-syntax lines into (requirements, index options). Only index options (http(s) URLs) and
    --pre are allowed: a session's package list names packages and indexes, nothing on the worker's disk."""
    tokens: list[str] = []
    for item in items:
        item = re.sub(r"(^|\s)#.*", "", item).strip()  # pip's comment rule: '#' at start or after space
        if item:
            tokens.extend(item.split() if item.startswith("-") else [item])
    reqs, opts = [], []
    it = iter(tokens)
    for tok in it:
        if not tok.startswith("-"):
            reqs.append(tok)
            continue
        name, eq, value = tok.partition("=")
        if name == "--pre":
            opts.append("--pre")
            continue
        if name not in _OPTION_NAMES:
            raise SetupFailed(f"unsupported option in packages: {name} (allowed: --index-url, "
                              "--extra-index-url, --find-links, --pre)")
        value = value if eq else next(it, "")
        if not re.match(r"https?://", value):
            raise SetupFailed(f"{name} needs an http(s) URL")
        opts += [_OPTION_NAMES[name], value]
    return reqs, opts


def pip_index_options() -> list[str]:
    """The operator's pip index settings (pip.conf, PIP_* env) as uv options: uv reads neither."""
    if any(k in os.environ for k in ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX", "UV_EXTRA_INDEX_URL")):
        return []  # uv is configured explicitly: leave it alone
    cfg = configparser.RawConfigParser()
    dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    home = Path.home()
    cfg.read([*(f"{d}/pip/pip.conf" for d in dirs), "/etc/pip.conf", home / ".pip/pip.conf",
              home / ".config/pip/pip.conf", os.environ.get("PIP_CONFIG_FILE", "")])  # later ones win, as in pip
    opts = []
    for key in ("index-url", "extra-index-url", "find-links"):
        value = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        for section in ("install", "global"):
            if value is None and cfg.has_option(section, key):
                value = cfg.get(section, key)
        for v in (value or "").split():
            opts += [f"--{key}", v]
    if opts.count("--extra-index-url") + opts.count("--index-url") > 1:
        opts += ["--index-strategy", "unsafe-best-match"]  # pip's rule: the best version across all indexes
    return opts


def _find_uv() -> str | None:
    with contextlib.suppress(ImportError, FileNotFoundError):
        import uv

        return uv.find_uv_bin()
    return shutil.which("uv")


async def install_packages(venv: Path, requirements: list[str], backend: SessionBackend, emit: Emit) -> None:
    """Install pip-syntax requirements into the venv (uv, else pip) as the session user.

    The agent's uv binary may sit where session users cannot look (a venv under /root): it is opened here
    and executed through /proc/self/fd, which needs only its execute bit. The session gets its own uv cache
    in its home, so nothing of the agent's is shared with it and nothing of it is written as root."""
    reqs, opts = parse_requirements(requirements)
    if not reqs:
        return
    run_as = session_run_as(backend)
    python = str(Path(venv) / "bin" / "python")
    uv = _find_uv()
    env = tool_env(run_as) | {k: v for k, v in os.environ.items() if k.startswith(("UV_", "PIP_"))}
    pass_fds: tuple[int, ...] = ()
    if uv:
        config = pip_index_options()
        if not backend.host.worker_files:  # a container: the operator's local wheel dirs are not in it
            config = [x for k, v in zip(config[::2], config[1::2], strict=True)
                      if k == "--index-strategy" or re.match(r"https?://", v) for x in (k, v)]
        if "--index-url" in opts:  # the session's own index replaces the operator's default one
            config = [x for k, v in zip(config[::2], config[1::2], strict=True) if k != "--index-url" for x in (k, v)]
        opts = [x for o in opts for x in (("--prerelease", "allow") if o == "--pre" else (o,))]
        uv_fd = os.open(uv, os.O_RDONLY | os.O_CLOEXEC)
        pass_fds = (uv_fd,)
        env["UV_CACHE_DIR"] = str(run_as.home / ".cache" / "uv")
        argv = [f"/proc/self/fd/{uv_fd}", "pip", "install", "--python", python, "--color", "never", *config, *opts]
    else:  # pip reads pip.conf itself
        argv = [sys.executable, "-m", "pip", "--python", python, "install", "--progress-bar", "off",
                "--disable-pip-version-check", *opts]
    argv += ["--", *reqs]  # requirements can never be taken for options
    emit(f"installing with {'uv' if uv else 'pip'}: {redact(' '.join(reqs))}")
    try:
        status, tail = await backend.run_in_session(argv, env=env, cwd="/", on_line=lambda line: emit(redact(line)),
                                                    pass_fds=pass_fds)
    finally:
        for fd in pass_fds:
            os.close(fd)
    if status:
        raise SetupFailed(f"package installation failed (exit status {status}):\n" + redact("\n".join(tail)))
