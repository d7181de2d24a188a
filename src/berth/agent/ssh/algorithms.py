"""Which SSH algorithms per-session servers offer: one modern set for all three kinds.

Key exchange: hybrid post-quantum first, then curve25519 (no NIST curves, no finite-field DH).
Ciphers: AEAD (chacha20-poly1305, AES-GCM), then AES-CTR for clients without AEAD (paramiko).
MACs: encrypt-then-MAC SHA-2 only (no SHA-1, no umac-64, no encrypt-and-MAC).
Host keys: ed25519 and RSA with SHA-2 signatures; generated RSA keys have RSA_BITS. User keys: the
same, plus ECDSA (what the server lets users register, FIDO keys are often sk-ecdsa); never SHA-1 RSA.

OpenSSH and asyncssh are given this set, cut down to what the installed version knows (an unknown
name stops sshd). Dropbear's set is fixed when it is built: :func:`read_offer` asks the running
server what it offers, and :func:`weaker_than_modern` says what falls outside this set.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from dataclasses import dataclass
from typing import Callable

KEX = ["mlkem768x25519-sha256", "sntrup761x25519-sha512", "sntrup761x25519-sha512@openssh.com",
       "curve25519-sha256", "curve25519-sha256@libssh.org"]
CIPHERS = ["chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com",
           "aes256-ctr", "aes192-ctr", "aes128-ctr"]
MACS = ["hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com"]
HOST_KEY_ALGS = ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]
USER_KEY_ALGS = ["ssh-ed25519", "sk-ssh-ed25519@openssh.com", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                 "ecdsa-sha2-nistp521", "sk-ecdsa-sha2-nistp256@openssh.com", "rsa-sha2-512", "rsa-sha2-256"]
RSA_BITS = 3072
SSH = "/usr/bin/ssh"  # absolute, like the other tools: a supervisor's PATH may be minimal

# markers some servers put in their KEXINIT lists; they name no algorithm
_PSEUDO = ("kex-strict-", "ext-info-", "kexguess2@")
_SSH_QUERIES = {"kex": KEX, "cipher": CIPHERS, "mac": MACS, "key-sig": HOST_KEY_ALGS + USER_KEY_ALGS}
# what every OpenSSH of the last years knows: used when `ssh -Q` cannot tell
_OPENSSH_BASELINE = {"curve25519-sha256@libssh.org", "chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com",
                     "aes128-gcm@openssh.com", "aes256-ctr", "aes192-ctr", "aes128-ctr", *MACS, *HOST_KEY_ALGS,
                     *USER_KEY_ALGS}
_openssh_known: set[str] | None = None


async def _ssh_query(what: str) -> set[str] | None:
    try:
        proc = await asyncio.create_subprocess_exec(
            SSH, "-Q", what, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate()
    except OSError:
        return None
    return set(out.decode(errors="replace").split()) if proc.returncode == 0 else None


async def sshd_config_lines() -> list[str]:
    """The algorithm lines of a per-session sshd_config. The OpenSSH client comes from the same
    release as sshd, so `ssh -Q` says which names this sshd accepts."""
    global _openssh_known
    if _openssh_known is None:
        answers = await asyncio.gather(*(_ssh_query(q) for q in _SSH_QUERIES))
        known: set[str] = set()
        for wanted, answer in zip(_SSH_QUERIES.values(), answers):
            known |= set(wanted) & (_OPENSSH_BASELINE if answer is None else answer)
        _openssh_known = known

    def pick(names: list[str]) -> str:
        return ",".join(n for n in names if n in _openssh_known)

    return [f"KexAlgorithms {pick(KEX)}", f"Ciphers {pick(CIPHERS)}", f"MACs {pick(MACS)}",
            f"HostKeyAlgorithms {pick(HOST_KEY_ALGS)}", f"PubkeyAcceptedAlgorithms {pick(USER_KEY_ALGS)}",
            f"CASignatureAlgorithms {pick(HOST_KEY_ALGS)}"]


def asyncssh_options() -> dict[str, list[str]]:
    """Server options for asyncssh (the built-in server), limited to what this asyncssh supports."""
    from asyncssh.encryption import get_encryption_algs
    from asyncssh.kex import get_kex_algs
    from asyncssh.mac import get_mac_algs
    from asyncssh.public_key import get_public_key_algs

    def pick(names: list[str], known: list[bytes]) -> list[str]:
        return [n for n in names if n.encode() in known]

    return {"kex_algs": pick(KEX, get_kex_algs()), "encryption_algs": pick(CIPHERS, get_encryption_algs()),
            "mac_algs": pick(MACS, get_mac_algs()), "signature_algs": pick(USER_KEY_ALGS, get_public_key_algs())}


def rsa_bits(public_key_line: str) -> int:
    """The modulus size of an ``ssh-rsa AAAA...`` public key line."""
    blob = base64.b64decode(public_key_line.split()[1])
    pos = 0
    for _ in range(2):  # skip the type name and the exponent
        pos += 4 + struct.unpack_from(">I", blob, pos)[0]
    (n,) = struct.unpack_from(">I", blob, pos)
    return int.from_bytes(blob[pos + 4:pos + 4 + n], "big").bit_length()


@dataclass
class Offer:
    """The algorithm lists a server sends in its KEXINIT (server to client direction)."""
    kex: list[str]
    host_key: list[str]
    ciphers: list[str]
    macs: list[str]


async def read_offer(host: str, port: int, timeout: float = 3.0) -> Offer:
    """Connect and read the server's KEXINIT, which comes unencrypted right after the version lines."""
    async def read() -> Offer:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"SSH-2.0-berth_offer_check\r\n")
            while not (line := await reader.readline()).startswith(b"SSH-"):  # servers may send lines before it
                if not line:  # EOF: readline returns at once without yielding, so wait_for could never cut in
                    raise asyncio.IncompleteReadError(b"", None)
            length, padding = struct.unpack(">IB", await reader.readexactly(5))
            payload = (await reader.readexactly(length - 1))[:length - 1 - padding]
        finally:
            writer.close()
        if not payload or payload[0] != 20:  # SSH_MSG_KEXINIT
            raise ValueError("the server's first packet is not KEXINIT")
        lists, pos = [], 17  # message code and 16-byte cookie, then ten name-lists
        for _ in range(10):
            (n,) = struct.unpack_from(">I", payload, pos)
            lists.append([a for a in payload[pos + 4:pos + 4 + n].decode().split(",") if a])
            pos += 4 + n
        return Offer(kex=lists[0], host_key=lists[1], ciphers=lists[3], macs=lists[5])

    return await asyncio.wait_for(read(), timeout)


def weaker_than_modern(offer: Offer) -> list[str]:
    """What the offer has beyond the modern set, one '<kind> a, b' item per kind ([] if nothing)."""
    out = []
    for label, names, modern in [("key exchange", offer.kex, KEX), ("host key", offer.host_key, HOST_KEY_ALGS),
                                 ("ciphers", offer.ciphers, CIPHERS), ("MACs", offer.macs, MACS)]:
        extra = [n for n in names if n not in modern and not n.startswith(_PSEUDO)]
        if extra:
            out.append(f"{label} {', '.join(extra)}")
    return out


async def report_weaker(name: str, bind_host: str, port: int, log: Callable[[str], None]) -> None:
    """Ask the server listening on ``bind_host:port`` what it offers and log one line naming what
    falls outside the modern set (nothing if it does not)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind_host, bind_host)
    try:
        weaker = weaker_than_modern(await read_offer(host, port))
    except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError, struct.error) as e:
        log(f"could not read which algorithms {name} offers: {e or type(e).__name__}")
        return
    if weaker:
        log(f"{name} offers the strongest set its build allows, weaker than OpenSSH: {'; '.join(weaker)}")


def refuse_sha1_rsa_user_signatures() -> None:
    """asyncssh servers advertise their signature_algs but verify a user's key with whatever algorithm the client
    signed with, SHA-1 `ssh-rsa` included. Verification looks the algorithm up in the key class's
    `all_sig_algorithms`: without `ssh-rsa` there, such a signature fails. This process (a supervisor) serves
    SSH and signs nothing with RSA, so narrowing it process-wide costs nothing else."""
    import asyncssh.rsa

    rsa = asyncssh.rsa.RSAKey
    rsa.all_sig_algorithms = {alg for alg in rsa.all_sig_algorithms if alg != b"ssh-rsa"}
