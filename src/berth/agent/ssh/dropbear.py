"""Dropbear per session: light, and usable unprivileged where the host allows (see choice.py).

Its algorithms are fixed when it is built: after it starts, the console says where its offer is weaker than
the modern set (algorithms.report_weaker)."""

from __future__ import annotations

import asyncio
import base64
import grp
import os
import pwd
import shlex
import struct
from pathlib import Path
from typing import Callable

from . import algorithms
from .process import ProcessSshServer, pubkey_line, run_helper

DROPBEAR = "/usr/sbin/dropbear"
DROPBEARKEY = "/usr/bin/dropbearkey"


class DropbearServer(ProcessSshServer):
    kind = "dropbear"

    async def start(self, log: Callable[[str], None]) -> None:
        spec = self.spec
        port = self.listen_port()
        keys, pubs = await _host_keys(spec.run_dir)
        listen = f"[{spec.bind_host}]:{port}" if ":" in spec.bind_host else f"{spec.bind_host}:{port}"
        argv = [DROPBEAR, "-F", "-E", "-m", "-p", listen]
        for k in keys:
            argv += ["-r", str(k)]
        argv += ["-c", shlex.quote(str(spec.shell_wrapper)), "-P", str(spec.run_dir / "dropbear.pid"), "-K", "30"]
        if spec.user != "root":
            argv.append("-w")
        try:  # dropbear has no AllowUsers; restricting to the user's own group is the closest
            argv += ["-G", grp.getgrgid(pwd.getpwnam(spec.user).pw_gid).gr_name]
        except KeyError:
            pass
        await self.spawn(argv, "dropbear", port)
        self.host_key, self.host_keys = pubs[0], pubs
        log(f"dropbear listening on {spec.bind_host}:{port}")
        # dropbear's algorithms are fixed when it is built (no options narrow them): say where it is weaker
        await algorithms.report_weaker("dropbear", spec.bind_host, port, log)


def _write_dropbear_rsa(path: Path) -> str:
    """Generate an RSA key (algorithms.RSA_BITS) straight into dropbear's format; its public key line.

    OpenSSL takes ~50-80 ms where dropbearkey takes 0.2-1 s, and rsa would dominate the start."""
    from cryptography.hazmat.primitives.asymmetric import rsa  # asyncssh's dependency

    def string(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    def mpint(n: int) -> bytes:  # SSH mpint: big-endian, a leading 0 byte keeps it positive
        return string(n.to_bytes((n.bit_length() + 8) // 8, "big"))

    priv = rsa.generate_private_key(public_exponent=65537, key_size=algorithms.RSA_BITS).private_numbers()
    pub = string(b"ssh-rsa") + mpint(priv.public_numbers.e) + mpint(priv.public_numbers.n)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pub + mpint(priv.d) + mpint(priv.p) + mpint(priv.q))
    return "ssh-rsa " + base64.b64encode(pub).decode()


async def _host_keys(run_dir: Path) -> tuple[list[Path], list[str]]:
    # ed25519 first. An rsa key too: dropbear offers rsa-sha2-256 whatever keys it has, and a client
    # choosing it (asyncssh) makes dropbear fail without one. No ecdsa key: no NIST curve on offer.
    types = [("ed25519", "ssh-ed25519"), ("rsa", "ssh-rsa")]

    async def one(t: str, name: str) -> tuple[Path, str]:
        path = run_dir / f"dropbear_{t}_host_key"
        if path.exists():  # reuse keeps host keys stable across restarts; -y prints the public half
            line = pubkey_line(await run_helper(DROPBEARKEY, "-y", "-f", str(path)), name)
            if t != "rsa" or algorithms.rsa_bits(line) >= algorithms.RSA_BITS:
                return path, line
            path.unlink()  # made before RSA_BITS was raised
        if t == "rsa":
            return path, await asyncio.to_thread(_write_dropbear_rsa, path)
        return path, pubkey_line(await run_helper(DROPBEARKEY, "-t", t, "-f", str(path)), name)

    got = await asyncio.gather(*(one(*t) for t in types))
    return [p for p, _ in got], [k for _, k in got]
