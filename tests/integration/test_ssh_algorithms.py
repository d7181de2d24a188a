"""Per-session SSH servers offer only modern algorithms, and real OpenSSH, asyncssh and paramiko clients
still connect. The expected sets are written out here, independently of berth.agent.ssh.algorithms."""

from __future__ import annotations

import asyncio
import base64
import os
import pwd
import secrets
import struct
import subprocess
from pathlib import Path

import asyncssh
import paramiko
import pytest

from berth.agent.ssh import SshServerSpec
from test_ssh_servers import SSH_OPTS, base_dir, connect, sh, start, system_user  # noqa: F401

pytestmark = pytest.mark.integration

MODERN = {
    "kex": {"curve25519-sha256", "curve25519-sha256@libssh.org", "sntrup761x25519-sha512",
            "sntrup761x25519-sha512@openssh.com", "mlkem768x25519-sha256"},
    "host key": {"ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"},
    "ciphers": {"chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com",
                "aes256-ctr", "aes192-ctr", "aes128-ctr"},
    "MACs": {"hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com"},
}
PSEUDO = ("kex-strict-", "ext-info-", "kexguess2@")  # markers in the kex list, not algorithms

# what a client may offer alone and must be refused with; MACs only matter with a non-AEAD cipher
WEAK_OFFERS = {
    "nist-kex": ["-o", "KexAlgorithms=ecdh-sha2-nistp256"],
    "dh-sha1-kex": ["-o", "KexAlgorithms=diffie-hellman-group14-sha1"],
    "dh-group14-kex": ["-o", "KexAlgorithms=diffie-hellman-group14-sha256"],
    "sha1-mac": ["-o", "Ciphers=aes128-ctr", "-o", "MACs=hmac-sha1"],
    "umac64-mac": ["-o", "Ciphers=aes128-ctr", "-o", "MACs=umac-64@openssh.com"],
    "non-etm-mac": ["-o", "Ciphers=aes256-ctr", "-o", "MACs=hmac-sha2-256,hmac-sha2-512"],
    "cbc-cipher": ["-o", "Ciphers=aes128-cbc,aes256-cbc"],
}


# user keys: what the server lets users register logs in, with SHA-2 signatures for RSA
USER_KEYS = {alg: asyncssh.generate_private_key(alg, **kw) for alg, kw in
             [("ssh-ed25519", {}), ("ecdsa-sha2-nistp256", {}), ("ssh-rsa", {"key_size": 3072})]}
AUTHORIZED = [k.export_public_key("openssh").decode().strip() for k in USER_KEYS.values()]


def ssh_query(what: str) -> set[str]:
    return set(subprocess.run(["ssh", "-Q", what], capture_output=True, text=True, check=True).stdout.split())


async def offered(port: int) -> dict[str, list[str]]:
    """What the server puts in its KEXINIT, as `ssh -vv` reports it."""
    _, _, err = await sh("ssh", *SSH_OPTS, "-vv", "-o", "BatchMode=yes", "-p", str(port), "nobody@127.0.0.1", "true")
    lines = err.split("peer server KEXINIT proposal", 1)[1].splitlines()
    got: dict[str, list[str]] = {}
    for key, label in [("kex", "KEX algorithms: "), ("host key", "host key algorithms: "),
                       ("ciphers", "ciphers stoc: "), ("MACs", "MACs stoc: ")]:
        line = next(x for x in lines if label in x)
        got[key] = [a for a in line.split(label, 1)[1].strip().split(",") if a and not a.startswith(PSEUDO)]
    return got


def beyond_modern(offer: dict[str, list[str]]) -> dict[str, set[str]]:
    return {k: set(v) - MODERN[k] for k, v in offer.items() if set(v) - MODERN[k]}


def paramiko_run(port: int, user: str, password: str, command: str, **kw) -> str:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect("127.0.0.1", port=port, username=user, password=password, allow_agent=False,
                       look_for_keys=False, timeout=10, banner_timeout=10, auth_timeout=10, **kw)
        _, stdout, _ = client.exec_command(command, timeout=10)
        return stdout.read().decode()
    finally:
        client.close()


def rsa_bits(public_key_line: str) -> int:
    blob = base64.b64decode(public_key_line.split()[1])
    fields, pos = [], 0
    while pos < len(blob):
        (n,) = struct.unpack_from(">I", blob, pos)
        fields.append(blob[pos + 4:pos + 4 + n])
        pos += 4 + n
    return int.from_bytes(fields[2], "big").bit_length()  # "ssh-rsa", e, n


@pytest.fixture(params=["openssh", "builtin"])
async def server(request, base_dir):  # noqa: F811
    """A started per-session server of each kind that berth configures itself: (server, user, password)."""
    if request.param == "builtin":  # what a non-root agent runs, here in-process as the current user
        me = pwd.getpwuid(os.geteuid())
        user, password, home = me.pw_name, "pw-" + secrets.token_urlsafe(12), base_dir / "home"
        home.mkdir()
        spec = SshServerSpec(kind="builtin", run_dir=base_dir / "run", home=home, user=user, password=password,
                             authorized_keys=AUTHORIZED, shell_wrapper=base_dir / "wrapper.sh", bind_host="127.0.0.1")
    else:
        pw, password = request.getfixturevalue("system_user")
        user = pw.pw_name
        spec = SshServerSpec(kind="openssh", run_dir=base_dir / "run", home=Path(pw.pw_dir), user=user,
                             password=password, authorized_keys=AUTHORIZED, shell_wrapper=base_dir / "wrapper.sh",
                             uid=pw.pw_uid, gid=pw.pw_gid)
    srv, _, _ = await start(spec)
    try:
        yield srv, user, password
    finally:
        await srv.stop()


async def test_server_offers_only_modern_algorithms(server):
    srv, _, _ = server
    offer = await offered(srv.port)
    assert beyond_modern(offer) == {}, offer
    assert "curve25519-sha256" in offer["kex"] and "chacha20-poly1305@openssh.com" in offer["ciphers"]
    if srv.kind == "openssh":  # post-quantum hybrid first, where this OpenSSH has it
        assert offer["kex"][0] in {"mlkem768x25519-sha256", "sntrup761x25519-sha512", "sntrup761x25519-sha512@openssh.com"}
        assert "sntrup761x25519-sha512@openssh.com" in offer["kex"] or "sntrup761x25519-sha512@openssh.com" not in ssh_query("kex")


@pytest.mark.parametrize("weak", sorted(WEAK_OFFERS))
async def test_openssh_client_offering_only_weak_algorithms_is_refused(server, weak):
    srv, user, password = server
    # LogLevel INFO (the first value given wins): ssh says why it could not negotiate at that level
    rc, _, err = await sh("sshpass", "-p", password, "ssh", "-o", "LogLevel=INFO", *SSH_OPTS, *WEAK_OFFERS[weak], "-p", str(srv.port),
                          f"{user}@127.0.0.1", "echo in")
    assert rc == 255 and "no matching" in err, err


async def test_openssh_client_connects_with_each_modern_kex(server):
    srv, user, password = server
    kexes = (MODERN["kex"] & ssh_query("kex")) & set((await offered(srv.port))["kex"])
    assert kexes
    for kex in sorted(kexes):
        rc, out, err = await sh("sshpass", "-p", password, "ssh", *SSH_OPTS, "-o", f"KexAlgorithms={kex}",
                                "-p", str(srv.port), f"{user}@127.0.0.1", "echo in")
        assert (rc, out) == (0, "in\n"), (kex, err)
    # a non-AEAD cipher with an encrypt-then-MAC SHA-2 MAC still works (paramiko-like clients)
    rc, out, err = await sh("sshpass", "-p", password, "ssh", *SSH_OPTS, "-o", "Ciphers=aes128-ctr", "-o",
                            "MACs=hmac-sha2-256-etm@openssh.com", "-p", str(srv.port), f"{user}@127.0.0.1", "echo in")
    assert (rc, out) == (0, "in\n"), err


async def test_asyncssh_client_offering_only_weak_algorithms_is_refused(server):
    srv, user, password = server
    for weak in [dict(kex_algs=["ecdh-sha2-nistp256"]), dict(kex_algs=["diffie-hellman-group14-sha1"]),
                 dict(encryption_algs=["aes128-ctr"], mac_algs=["hmac-sha1", "umac-64@openssh.com"])]:
        with pytest.raises((asyncssh.KeyExchangeFailed, asyncssh.DisconnectError, ConnectionError)):
            async with connect(srv, user, password=password, **weak):
                pass
    async with connect(srv, user, password=password) as conn:
        assert (await conn.run("echo in")).stdout == "in\n"


async def test_user_keys_log_in_but_not_with_sha1_rsa_signatures(server, tmp_path):
    srv, user, _ = server
    for alg, key in USER_KEYS.items():
        async with connect(srv, user, client_keys=[key]) as conn:
            assert (await conn.run("echo in")).stdout == "in\n", alg
    with pytest.raises(asyncssh.PermissionDenied):
        async with connect(srv, user, client_keys=[USER_KEYS["ssh-rsa"]], signature_algs=["ssh-rsa"]):
            pass
    # The same from a client in another process (the built-in server runs in this one): OpenSSH signing with
    # SHA-1 ssh-rsa is refused by the server, rsa-sha2-256 with the same key gets in.
    key_file = tmp_path / "id_rsa"
    key_file.write_bytes(USER_KEYS["ssh-rsa"].export_private_key())
    key_file.chmod(0o600)
    for sig_alg, expect in (("ssh-rsa", 255), ("rsa-sha2-256", 0)):
        rc, out, err = await sh("ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                                "-o", "ConnectTimeout=5", "-o", "BatchMode=yes", "-o", "PasswordAuthentication=no",
                                "-o", "IdentitiesOnly=yes", "-o", f"PubkeyAcceptedAlgorithms={sig_alg}", "-i", str(key_file),
                                "-p", str(srv.port), f"{user}@127.0.0.1", "echo in")
        assert rc == expect, (sig_alg, rc, err)


async def test_paramiko_client_connects_and_weak_offers_are_refused(server):
    srv, user, password = server
    out = await asyncio.to_thread(paramiko_run, srv.port, user, password, "echo $((6*7))")
    assert out == "42\n"
    everything_but_nist = [k for k in paramiko.Transport._preferred_kex if k != "ecdh-sha2-nistp256"]
    with pytest.raises(paramiko.SSHException):
        await asyncio.to_thread(paramiko_run, srv.port, user, password, "true",
                                disabled_algorithms={"kex": everything_but_nist})


async def test_dropbear_says_where_it_is_weaker_and_every_client_connects(base_dir, system_user):  # noqa: F811
    pw, password = system_user
    spec = SshServerSpec(kind="dropbear", run_dir=base_dir / "run", home=Path(pw.pw_dir), user=pw.pw_name,
                         password=password, authorized_keys=[], shell_wrapper=base_dir / "wrapper.sh",
                         uid=pw.pw_uid, gid=pw.pw_gid)
    srv, lines, _ = await start(spec)
    try:
        offer = await offered(srv.port)
        # no NIST-curve host key to offer; its RSA host key is >= 3072 bits
        assert not any(a.startswith("ecdsa-") for a in offer["host key"]), offer
        assert [k.split()[0] for k in srv.host_keys] == ["ssh-ed25519", "ssh-rsa"]
        assert rsa_bits(srv.host_keys[1]) >= 3072
        # one console line names every algorithm this build offers beyond the OpenSSH set
        weaker = [line for line in lines if "weaker than OpenSSH" in line]
        assert len(weaker) == 1, lines
        extra = beyond_modern(offer)
        assert extra, "this dropbear build offers only modern algorithms: the line is then not needed"
        for names in extra.values():
            for name in names:
                assert name in weaker[0], (name, weaker[0])

        rc, out, err = await sh("sshpass", "-p", password, "ssh", *SSH_OPTS, "-p", str(srv.port),
                                f"{pw.pw_name}@127.0.0.1", "echo in")
        assert (rc, out) == (0, "in\n"), err
        async with connect(srv, pw.pw_name, password=password) as conn:
            assert (await conn.run("echo in")).stdout == "in\n"
        assert await asyncio.to_thread(paramiko_run, srv.port, pw.pw_name, password, "echo in") == "in\n"
    finally:
        await srv.stop()
