"""The modern SSH algorithm set: what counts as weaker, and sshd config lines when `ssh -Q` cannot answer."""

from __future__ import annotations

import pytest

from berth.agent.ssh import algorithms as algs


def test_weaker_than_modern_names_only_real_algorithms_outside_the_set():
    offer = algs.Offer(kex=["curve25519-sha256", "ecdh-sha2-nistp256", "kexguess2@matt.ucc.asn.au", "kex-strict-s-v00@openssh.com"],
                       host_key=["ssh-ed25519", "ssh-rsa"], ciphers=["chacha20-poly1305@openssh.com"],
                       macs=["hmac-sha1", "hmac-sha2-256-etm@openssh.com"])
    assert algs.weaker_than_modern(offer) == ["key exchange ecdh-sha2-nistp256", "host key ssh-rsa", "MACs hmac-sha1"]
    modern = algs.Offer(kex=algs.KEX, host_key=algs.HOST_KEY_ALGS, ciphers=algs.CIPHERS, macs=algs.MACS)
    assert algs.weaker_than_modern(modern) == []


async def test_sshd_lines_fall_back_to_a_baseline_without_ssh(monkeypatch):
    monkeypatch.setattr(algs, "_openssh_known", None)
    monkeypatch.setattr(algs, "SSH", "/nonexistent/ssh")
    lines = dict(line.split(" ", 1) for line in await algs.sshd_config_lines())
    assert lines["KexAlgorithms"] == "curve25519-sha256@libssh.org"
    assert lines["MACs"] == "hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com"
    assert "aes128-ctr" in lines["Ciphers"] and "cbc" not in lines["Ciphers"]


@pytest.mark.parametrize("bits", [2048, 3072])
def test_rsa_bits(bits):
    import asyncssh

    key = asyncssh.generate_private_key("ssh-rsa", key_size=bits)
    assert algs.rsa_bits(key.export_public_key("openssh").decode()) == bits
