"""Throwaway PostgreSQL servers for the test suite.

Importable helper (nothing from pytest at module level) and a small CLI:

    python tests/pg.py start DIR   # prints the admin URL, leaves the server running
    python tests/pg.py url DIR     # prints the admin URL of a running server
    python tests/pg.py stop DIR    # stops it and removes DIR

Library use::

    server = start_postgres(Path(tempfile.mkdtemp(dir="/var/tmp")))
    url = create_database(server.admin_url)      # postgresql+psycopg://.../berth_t_<hex>
    ...
    drop_database(server.admin_url, url)
    server.stop()

The server listens on 127.0.0.1 only (a free port), with password
(scram-sha-256) authentication for TCP and its unix socket inside DIR.
Durability is switched off (fsync=off etc.): it is for tests only.

When run as root, initdb/postgres run as the ``postgres`` system user (initdb
refuses root) via ``runuser``; DIR must then be traversable by that user, which
any directory under /var/tmp or /tmp is. As a normal user they run as that user.

The binaries come from $BERTH_PG_BIN if set, else /usr/lib/postgresql/15/bin,
else the newest /usr/lib/postgresql/*/bin, else pg_ctl on PATH.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "PgServer",
    "start_postgres",
    "create_database",
    "drop_database",
    "find_pg_bin",
    "to_libpq_url",
]

PG_SYSTEM_USER = "postgres"
SUPERUSER = "postgres"
STATE_FILE = "server.json"
DEFAULT_PG_BIN = Path("/usr/lib/postgresql/15/bin")

_SERVER_SETTINGS = """
# ---- berth test server (tests/pg.py) ----
listen_addresses = '127.0.0.1'
unix_socket_directories = '{sock_dir}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
password_encryption = 'scram-sha-256'
logging_collector = off
log_min_messages = warning
log_min_error_statement = panic
log_checkpoints = off
"""


class PgError(RuntimeError):
    pass


def find_pg_bin() -> Path:
    env = os.environ.get("BERTH_PG_BIN")
    candidates: list[Path] = []
    if env:
        candidates.append(Path(env))
    candidates.append(DEFAULT_PG_BIN)
    base = Path("/usr/lib/postgresql")
    if base.is_dir():

        def _ver(p: Path) -> tuple[int, ...]:
            try:
                return tuple(int(x) for x in p.name.split("."))
            except ValueError:
                return (-1,)

        candidates += [d / "bin" for d in sorted(base.iterdir(), key=_ver, reverse=True)]
    which = shutil.which("pg_ctl")
    if which:
        candidates.append(Path(os.path.realpath(which)).parent)
    for c in candidates:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file():
            return c
    raise PgError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; install the "
        "'postgresql' package (scripts/setup.sh does) or set BERTH_PG_BIN"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], *, cwd: Path, what: str, timeout: float = 120) -> str:
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        )
    except subprocess.TimeoutExpired as e:
        raise PgError(f"{what} timed out after {timeout}s: {' '.join(cmd)}") from e
    if proc.returncode != 0:
        raise PgError(
            f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"{proc.stdout}{proc.stderr}".rstrip()
        )
    return proc.stdout


def _as_pg_user(run_as: str | None, cmd: list[str]) -> list[str]:
    return ["runuser", "-u", run_as, "--", *cmd] if run_as else cmd


@dataclass
class PgServer:
    base_dir: Path
    port: int
    password: str
    bin_dir: Path
    run_as: str | None = None  # system user the server runs as (None: current user)

    @property
    def admin_url(self) -> str:
        """SQLAlchemy URL of the 'postgres' database as superuser."""
        return f"postgresql+psycopg://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/postgres"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "pgdata"

    @property
    def sock_dir(self) -> Path:
        return self.base_dir / "run"

    @property
    def log_file(self) -> Path:
        return self.sock_dir / "postgres.log"

    # -- persistence, so that `pg.py stop DIR` can find a server started by `pg.py start DIR`
    def _save(self) -> None:
        path = self.base_dir / STATE_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(
                {
                    "port": self.port,
                    "password": self.password,
                    "bin_dir": str(self.bin_dir),
                    "run_as": self.run_as,
                    "admin_url": self.admin_url,
                },
                f,
            )

    @classmethod
    def load(cls, base_dir: Path) -> PgServer:
        base_dir = Path(base_dir)
        try:
            data = json.loads((base_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            raise PgError(f"no server state in {base_dir} (was it started with tests/pg.py?)")
        return cls(
            base_dir=base_dir,
            port=data["port"],
            password=data["password"],
            bin_dir=Path(data["bin_dir"]),
            run_as=data.get("run_as"),
        )

    def stop(self, *, remove: bool = True) -> None:
        """Stop the server (immediate mode) and remove base_dir."""
        if (self.data_dir / "postmaster.pid").exists():
            cmd = _as_pg_user(
                self.run_as,
                [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir),
                 "-m", "immediate", "-w", "-t", "30", "-s"],
            )
            try:
                _run(cmd, cwd=self.base_dir, what="pg_ctl stop", timeout=60)
            except PgError:
                if (self.data_dir / "postmaster.pid").exists():
                    raise
        if remove:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_postgres(base_dir: Path, *, bin_dir: Path | None = None, timeout: float = 60) -> PgServer:
    """initdb + start a throwaway server in base_dir (created if missing); wait until ready."""
    base_dir = Path(base_dir).resolve()
    bin_dir = Path(bin_dir) if bin_dir else find_pg_bin()
    is_root = os.geteuid() == 0
    run_as = PG_SYSTEM_USER if is_root else None

    base_dir.mkdir(parents=True, exist_ok=True)
    data_dir = base_dir / "pgdata"
    sock_dir = base_dir / "run"
    if data_dir.exists():
        raise PgError(f"{data_dir} already exists: stop that server first (tests/pg.py stop {base_dir})")
    data_dir.mkdir(mode=0o700)
    sock_dir.mkdir(mode=0o700, exist_ok=True)
    pwfile = sock_dir / "pwfile"
    password = secrets.token_hex(16)
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")

    if is_root:
        try:
            pw = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            raise PgError(f"system user {PG_SYSTEM_USER!r} missing (install the 'postgresql' package)")
        os.chmod(base_dir, 0o755)
        for p in (data_dir, sock_dir, pwfile):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        probe = subprocess.run(
            ["runuser", "-u", PG_SYSTEM_USER, "--", "test", "-w", str(sock_dir)],
            stdin=subprocess.DEVNULL, capture_output=True,
        )
        if probe.returncode != 0:
            raise PgError(
                f"{base_dir} is not reachable by the {PG_SYSTEM_USER!r} user (a parent "
                "directory is not world-traversable); use a directory under /var/tmp"
            )

    server = PgServer(base_dir=base_dir, port=0, password=password, bin_dir=bin_dir, run_as=run_as)
    try:
        _run(
            _as_pg_user(run_as, [
                str(bin_dir / "initdb"), "-D", str(data_dir), "-U", SUPERUSER,
                "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
                "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions",
            ]),
            cwd=base_dir, what="initdb",
        )
        pwfile.unlink()
        with open(data_dir / "postgresql.conf", "a") as f:
            f.write(_SERVER_SETTINGS.format(sock_dir=sock_dir))

        last_err: PgError | None = None
        for _attempt in range(5):
            port = _free_port()
            try:
                _run(
                    _as_pg_user(run_as, [
                        str(bin_dir / "pg_ctl"), "start", "-D", str(data_dir),
                        "-l", str(server.log_file), "-o", f"-p {port}",
                        "-w", "-t", str(int(timeout)), "-s",
                    ]),
                    cwd=base_dir, what="pg_ctl start", timeout=timeout + 10,
                )
            except PgError as e:
                log = server.log_file.read_text(errors="replace") if server.log_file.exists() else ""
                last_err = PgError(f"{e}\n--- {server.log_file} ---\n{log[-3000:]}")
                if "could not bind" in log or "Address already in use" in log:
                    continue  # port raced away; try another one
                raise last_err
            server.port = port
            break
        else:
            raise last_err or PgError("could not start postgres")

        _wait_tcp_ready(bin_dir, port, timeout)
        server._save()
        return server
    except BaseException:
        try:
            server.stop()
        except Exception:
            shutil.rmtree(base_dir, ignore_errors=True)
        raise


def _wait_tcp_ready(bin_dir: Path, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    isready = bin_dir / "pg_isready"
    while True:
        if isready.is_file():
            ok = subprocess.run(
                [str(isready), "-q", "-h", "127.0.0.1", "-p", str(port), "-t", "2"],
                stdin=subprocess.DEVNULL, capture_output=True,
            ).returncode == 0
        else:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                ok = True
            except OSError:
                ok = False
        if ok:
            return
        if time.monotonic() > deadline:
            raise PgError(f"postgres on 127.0.0.1:{port} not ready after {timeout}s")
        time.sleep(0.05)


# ---------------------------------------------------------------- databases

def to_libpq_url(url: str) -> str:
    """'postgresql+psycopg://…' (SQLAlchemy) -> 'postgresql://…' (libpq/psycopg)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    return urlunsplit(parts._replace(scheme="postgresql"))


def _with_dbname(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def _dbname(url: str) -> str:
    name = urlsplit(url).path.lstrip("/")
    if not name:
        raise ValueError(f"URL has no database name: {url!r}")
    return name


def create_database(admin_url: str, name: str | None = None) -> str:
    """Create a fresh database; return its SQLAlchemy URL (same driver as admin_url,
    postgresql+psycopg if admin_url names none)."""
    import psycopg
    from psycopg import sql

    name = name or f"berth_t_{secrets.token_hex(6)}"
    with psycopg.connect(to_libpq_url(admin_url), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _with_dbname(admin_url, name)
    parts = urlsplit(url)
    if "+" not in parts.scheme:
        url = urlunsplit(parts._replace(scheme="postgresql+psycopg"))
    return url


def drop_database(admin_url: str, url: str) -> None:
    """Drop the database named by url (terminating its connections)."""
    import psycopg
    from psycopg import sql

    name = _dbname(url)
    with psycopg.connect(to_libpq_url(admin_url), autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# ---------------------------------------------------------------- CLI

def _main(argv: list[str]) -> int:
    usage = "usage: python tests/pg.py {start|url|stop} DIR"
    if len(argv) != 2 or argv[0] not in ("start", "url", "stop"):
        print(usage, file=sys.stderr)
        return 2
    cmd, base_dir = argv[0], Path(argv[1])
    try:
        if cmd == "start":
            server = start_postgres(base_dir)
            print(server.admin_url, flush=True)
        elif cmd == "url":
            print(PgServer.load(base_dir).admin_url)
        else:
            if (base_dir / STATE_FILE).exists():  # else: nothing (left) to stop
                PgServer.load(base_dir).stop()
    except PgError as e:
        print(f"tests/pg.py {cmd}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
