"""The read-only ``/berth`` bundle that SSH into a container brings along: the worker's own OpenSSH sshd,
sftp-server, scp, rsync (and dd, mkdir for setting the server up), git and the ssh client (so that cloning the session's
repository works in an image without them), every library they load, and the worker's dynamic loader.

A user's image needs nothing of ours but ``/bin/sh``: each tool runs through the bundled loader
(``/berth/lib/ld.so --library-path /berth/lib /berth/libexec/<tool>``), so neither the image's libc nor its
loader matters. Layout, bind-mounted read-only at ``/berth`` (``Bundle.mounts``)::

    /berth/libexec/<tool>   the worker's binaries, copied
    /berth/lib/             their libraries (from ldd) and the loader, also as ``ld.so``
    /berth/bin/<tool>       small sh wrappers, so that ``scp``, ``rsync``, ``git``, ... resolve on PATH (last on
                            it: an image's own tools win)
    /berth/git-core/        git's helper programs (``git-remote-https``, ``git`` itself) as wrappers: git runs
                            them from its exec path, where the image's loader would not fit the worker's libraries
    /berth/share/           the worker's CA certificates, used by git only when the image has none

sshd (``berth.agent.ssh.container``) runs from ``/berth/libexec/sshd`` through the loader and names
``/berth/bin/sftp-server`` as its sftp subsystem. Bundles are cached under ``cache_dir/<key>``, the key made
from the tools' paths, sizes and times: an upgraded sshd or rsync makes a new bundle; an unchanged one costs a
few ``stat`` calls. A bundle is self-consistent (the libraries and loader copied together), so a libc upgrade
alone needs no rebuild.
Once a new bundle is built, the older ones (~12 MB each) that no container mounts any more are removed
(``remove_unused``); the engine says what its containers mount (``ensure_bundle``'s `mounted`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from berth.errors import SetupFailed

MOUNT = "/berth"
LOADER = f"{MOUNT}/lib/ld.so"

# name in the bundle -> where the worker has it (the first that exists)
TOOLS: dict[str, tuple[str, ...]] = {
    "sshd": ("/usr/sbin/sshd",),
    # OpenSSH 9.8+ runs each connection in sshd-session (10.0+: the pre-auth part in sshd-auth), by path
    "sshd-session": ("/usr/lib/openssh/sshd-session", "/usr/libexec/openssh/sshd-session", "/usr/libexec/sshd-session"),
    "sshd-auth": ("/usr/lib/openssh/sshd-auth", "/usr/libexec/openssh/sshd-auth", "/usr/libexec/sshd-auth"),
    "sftp-server": ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/lib/ssh/sftp-server"),
    "scp": ("/usr/bin/scp",),
    "rsync": ("/usr/bin/rsync",),
    "git": ("/usr/bin/git",),
    "git-remote-http": ("/usr/lib/git-core/git-remote-http", "/usr/libexec/git-core/git-remote-http"),
    "ssh": ("/usr/bin/ssh",),
    "dd": ("/usr/bin/dd", "/bin/dd"),
    "mkdir": ("/usr/bin/mkdir", "/bin/mkdir"),
}
REQUIRED = ("sshd", "dd", "mkdir")  # without these no SSH at all; the others only lose their feature
LAYOUT_VERSION = "3"  # bump when the layout changes
BIN = f"{MOUNT}/bin"  # goes last on the PATH of everything run in the container
GIT_CORE = f"{MOUNT}/git-core"
CA_FILE = "/etc/ssl/certs/ca-certificates.crt"  # where the worker's (and Debian-like images') libcurl looks
_GIT_HELPERS = ("git-remote-http", "git-remote-https", "git-remote-ftp", "git-remote-ftps")


@dataclass(frozen=True)
class Bundle:
    path: Path             # the bundle on the worker
    tools: tuple[str, ...]  # which TOOLS it holds

    def mounts(self) -> list[tuple[str, str, str]]:
        """(host path, container path, options) for the container (``container_cli.RunSpec.mounts``)."""
        return [(str(self.path), MOUNT, "ro")]


RUN = f"{LOADER} --library-path {MOUNT}/lib {MOUNT}/libexec"  # + "/<tool>": a bundled tool, for sh


def run_argv(tool: str) -> list[str]:
    """The argv that runs a bundled tool inside the container."""
    return [*RUN.split()[:-1], f"{MOUNT}/libexec/{tool}"]


def _found() -> dict[str, Path]:
    found = {}
    for name, candidates in TOOLS.items():
        path = next((Path(p) for p in candidates if os.access(p, os.X_OK)), None)
        if path is not None:
            found[name] = path
        elif name in REQUIRED:
            raise SetupFailed(f"SSH into containers needs {candidates[0]} on the worker (not installed)")
    return found


def _key(found: dict[str, Path]) -> str:
    h = hashlib.sha256(LAYOUT_VERSION.encode())
    for name, path in sorted(found.items()):
        st = path.stat()  # follows links: an upgrade replaces the target
        h.update(f"{name}\0{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
    return h.hexdigest()[:16]


def _libraries(binary: Path) -> tuple[list[Path], Path]:
    """The shared libraries `binary` loads and the dynamic loader, as ldd resolves them on this worker."""
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise SetupFailed(f"cannot list the libraries of {binary}: {e}") from e
    libs, loader = [], None
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs.append(Path(parts[2]))
        elif parts and parts[0].startswith("/"):  # the loader: "/lib64/ld-linux-x86-64.so.2 (0x...)"
            loader = Path(parts[0])
    if loader is None:
        raise SetupFailed(f"{binary} is not a dynamically linked program of this worker")
    return libs, loader


def _wrapper(tool: str) -> str:
    argv = " ".join(run_argv(tool))
    setup = ""
    if tool == "git":  # its helpers from the bundle too; the worker's CA list when the image has none
        setup = (f"export GIT_EXEC_PATH={GIT_CORE} GIT_TEMPLATE_DIR={MOUNT}/share/git-templates\n"
                 f'[ -n "${{GIT_SSL_CAINFO:-}}" ] || [ -e {CA_FILE} ] || [ ! -e {MOUNT}/share/ca-certificates.crt ] || '
                 f"export GIT_SSL_CAINFO={MOUNT}/share/ca-certificates.crt\n")
    return f'#!/bin/sh\n# berth: the worker\'s {tool}, run by the bundled loader\n{setup}exec {argv} "$@"\n'


def _git_core(dest: Path, found: dict[str, Path]) -> None:
    """git runs `git` and `git-remote-<scheme>` from its exec path: wrappers there, through the bundled loader."""
    (dest / "git-core").mkdir(mode=0o755)
    (dest / "share" / "git-templates").mkdir(mode=0o755, parents=True)
    names = {"git": "git", **({h: "git-remote-http" for h in _GIT_HELPERS} if "git-remote-http" in found else {})}
    for name, tool in names.items():
        wrapper = dest / "git-core" / name
        wrapper.write_text(_wrapper(tool))
        os.chmod(wrapper, 0o755)
    if os.path.isfile(CA_FILE):
        shutil.copyfile(CA_FILE, dest / "share" / "ca-certificates.crt")
        os.chmod(dest / "share" / "ca-certificates.crt", 0o644)


def _build(found: dict[str, Path], dest: Path) -> None:
    for sub in ("bin", "libexec", "lib"):
        (dest / sub).mkdir(mode=0o755)
    loader = None
    libs: dict[str, Path] = {}
    for name, path in found.items():
        shutil.copyfile(path, dest / "libexec" / name)
        os.chmod(dest / "libexec" / name, 0o755)
        for lib in (got := _libraries(path))[0]:
            libs.setdefault(lib.name, lib)
        loader = got[1]
        wrapper = dest / "bin" / name
        wrapper.write_text(_wrapper(name))
        os.chmod(wrapper, 0o755)
    assert loader is not None
    libs.setdefault(loader.name, loader)
    for name, lib in libs.items():
        shutil.copyfile(lib, dest / "lib" / name)  # the file behind the link, under the name the program asks for
        os.chmod(dest / "lib" / name, 0o755)
    os.symlink(loader.name, dest / "lib" / "ld.so")  # one fixed name to run, whatever the architecture's
    if "git" in found:
        _git_core(dest, found)


def cache_dir_for(session_dir: Path) -> Path:
    """Where a worker keeps its bundles: beside ``sessions/`` in the agent's data dir (session dirs are
    ``<data_dir>/sessions/<id>``), where nothing tightens them to 0700."""
    return session_dir.parent.parent / "ssh-bundle"


def ensure_bundle(cache_dir: Path, mounted: Callable[[], Iterable[str] | None] | None = None) -> Bundle:
    """The bundle for this worker's current tools under `cache_dir`, built (as root, world-readable) if missing.
    Safe to call from several supervisors at once: each builds in a temp dir; the first rename wins. The one that
    built it then removes the older bundles no container mounts (`mounted`: see ``remove_unused``)."""
    found = _found()
    path = cache_dir / _key(found)
    built = False
    if not path.is_dir():
        cache_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(cache_dir, 0o755)  # inside the container it is read by an unmapped (nobody) owner
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".build-"))
        try:
            os.chmod(tmp, 0o755)
            _build(found, tmp)
            try:
                os.rename(tmp, path)
                built = True
            except OSError:
                if not path.is_dir():
                    raise
        except OSError as e:
            raise SetupFailed(f"cannot build the SSH bundle in {cache_dir}: {e.strerror or e}") from e
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if built and mounted is not None:
        remove_unused(cache_dir, keep=path.name, mounted=mounted())
    return Bundle(path=path, tools=tuple(sorted(found)))


def remove_unused(cache_dir: Path, *, keep: str, mounted: Iterable[str] | None) -> list[str]:
    """Remove the bundles under `cache_dir` but `keep` (the current one) that no container mounts; returns their
    names. `mounted`: every host path the worker's session containers mount, running or not (from the engine);
    None when the engine could not say: nothing is removed. Called once a new bundle is built, so an old one
    only serves containers started before the tools changed, and goes at the next build after they end."""
    if mounted is None:
        return []
    root = os.path.realpath(cache_dir)
    in_use = set()
    for source in mounted:
        rel = os.path.relpath(os.path.realpath(source), root)
        if rel != "." and not rel.startswith(".."):
            in_use.add(rel.split(os.sep)[0])
    removed = []
    for entry in os.scandir(cache_dir):  # builds in progress (".build-*") are their builders' to remove
        if entry.name == keep or entry.name.startswith(".") or entry.name in in_use or not entry.is_dir(follow_symlinks=False):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.name)
    return sorted(removed)
