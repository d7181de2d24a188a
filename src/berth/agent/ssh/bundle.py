"""The read-only ``/berth`` bundle that SSH into a container brings along: the worker's own dropbear, sftp-server,
scp, rsync (and dd, mkdir for setting the server up), every library they load, and the worker's dynamic loader.

A user's image needs nothing of ours but ``/bin/sh``: each tool runs through the bundled loader
(``/berth/lib/ld.so --library-path /berth/lib /berth/libexec/<tool>``), so neither the image's libc nor its
loader matters. Layout, bind-mounted read-only at ``/berth`` (``Bundle.mounts``)::

    /berth/libexec/<tool>   the worker's binaries, copied
    /berth/lib/             their libraries (from ldd) and the loader, also as ``ld.so``
    /berth/bin/<tool>       small sh wrappers, so that ``scp``, ``rsync``, ``sftp-server`` resolve on PATH

dropbear runs a client's sftp subsystem as its compiled-in ``/usr/lib/sftp-server``, so that path gets the
sftp wrapper too. Bundles are cached under ``cache_dir/<key>``, the key made from the tools' paths, sizes and
times: an upgraded dropbear or rsync makes a new bundle; an unchanged one costs a few ``stat`` calls. A bundle
is self-consistent (the libraries and loader copied together), so a libc upgrade alone needs no rebuild.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from berth.errors import SetupFailed

MOUNT = "/berth"
LOADER = f"{MOUNT}/lib/ld.so"
SFTP_PATH = "/usr/lib/sftp-server"  # dropbear's compiled-in sftp subsystem (strings /usr/sbin/dropbear)

# name in the bundle -> where the worker has it (the first that exists)
TOOLS: dict[str, tuple[str, ...]] = {
    "dropbear": ("/usr/sbin/dropbear",),
    "sftp-server": ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/lib/ssh/sftp-server"),
    "scp": ("/usr/bin/scp",),
    "rsync": ("/usr/bin/rsync",),
    "dd": ("/usr/bin/dd", "/bin/dd"),
    "mkdir": ("/usr/bin/mkdir", "/bin/mkdir"),
}
REQUIRED = ("dropbear", "dd", "mkdir")  # without these no SSH at all; the others only lose their feature
LAYOUT_VERSION = "1"  # bump when the layout changes


@dataclass(frozen=True)
class Bundle:
    path: Path             # the bundle on the worker
    tools: tuple[str, ...]  # which TOOLS it holds

    def mounts(self) -> list[tuple[str, str, str]]:
        """(host path, container path, options) for the container (``container_cli.RunSpec.mounts``)."""
        out = [(str(self.path), MOUNT, "ro")]
        if "sftp-server" in self.tools:
            out.append((str(self.path / "bin" / "sftp-server"), SFTP_PATH, "ro"))
        return out


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
    return f'#!/bin/sh\n# berth: the worker\'s {tool}, run by the bundled loader\nexec {argv} "$@"\n'


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


def cache_dir_for(session_dir: Path) -> Path:
    """Where a worker keeps its bundles: beside ``sessions/`` in the agent's data dir (session dirs are
    ``<data_dir>/sessions/<id>``), where nothing tightens them to 0700."""
    return session_dir.parent.parent / "ssh-bundle"


def ensure_bundle(cache_dir: Path) -> Bundle:
    """The bundle for this worker's current tools under `cache_dir`, built (as root, world-readable) if missing.
    Safe to call from several supervisors at once: each builds in a temp dir; the first rename wins."""
    found = _found()
    path = cache_dir / _key(found)
    if not path.is_dir():
        cache_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(cache_dir, 0o755)  # inside the container it is read by an unmapped (nobody) owner
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".build-"))
        try:
            os.chmod(tmp, 0o755)
            _build(found, tmp)
            try:
                os.rename(tmp, path)
            except OSError:
                if not path.is_dir():
                    raise
        except OSError as e:
            raise SetupFailed(f"cannot build the SSH bundle in {cache_dir}: {e.strerror or e}") from e
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return Bundle(path=path, tools=tuple(sorted(found)))
