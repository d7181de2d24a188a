"""Sealed secrets: round trip, values from before sealing, a wrong key, the generated key file."""

import os
import stat

import pytest

from berth.errors import BerthError
from berth.server.services.secretbox import PREFIX, SecretBox


def test_seal_and_open_round_trip_with_fresh_nonces():
    box = SecretBox("k1")
    a, b = box.seal("s3cret-password"), box.seal("s3cret-password")
    assert a.startswith(PREFIX) and a != b and "s3cret" not in a
    assert box.open(a) == box.open(b) == "s3cret-password"
    assert box.open_values(box.seal_values({"git_token": "t0k3n", "n": None})) == {"git_token": "t0k3n", "n": None}


def test_values_stored_before_sealing_read_back_unchanged():
    assert SecretBox("k1").open("plain-old-password") == "plain-old-password"


def test_a_different_key_fails_clearly_without_the_secret():
    sealed = SecretBox("replica-a").seal("hunter2hunter2")
    with pytest.raises(BerthError) as info:
        SecretBox("replica-b").open(sealed)
    assert "hunter2" not in str(info.value) and "hunter2" not in info.value.log_message
    assert "BERTH_SECRET_KEY" in info.value.log_message


def test_generated_key_file_is_private_and_reused(tmp_path):
    first = SecretBox.from_settings(None, tmp_path)
    mode = stat.S_IMODE(os.stat(tmp_path / "secret.key").st_mode)
    assert mode == 0o600
    assert SecretBox.from_settings(None, tmp_path).open(first.seal("x-secret")) == "x-secret"
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]
