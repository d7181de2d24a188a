"""berth.redaction: the one redactor (console lines, setup errors)."""

from __future__ import annotations

import pytest

from berth.redaction import MASK, redact


@pytest.mark.parametrize("text,expected", [
    ("fatal: unable to access 'https://user:s3cret@host/org/r.git/'", "fatal: unable to access 'https://host/org/r.git/'"),
    ("cloning https://TOKEN123@github.com/a/b", "cloning https://github.com/a/b"),
    ("git@github.com:org/repo.git stays", "git@github.com:org/repo.git stays"),
    ("the token TOKEN123 leaked", "the token **** leaked"),
    # a token in the user part, a password holding an unescaped '@': the whole userinfo goes
    ("https://ghp_abc:x-oauth-basic@github.com/o/r", "https://github.com/o/r"),
    ("postgresql+psycopg://berth:p@ss@db:5432/berth", "postgresql+psycopg://db:5432/berth"),
    ("ssh://git@127.0.0.1:1/r.git, https://example.com/a@b", "ssh://127.0.0.1:1/r.git, https://example.com/a@b"),
])
def test_redact(text, expected):
    assert redact(text, ["TOKEN123", None, ""]) == expected


def test_short_secrets_are_ignored_and_longer_ones_win():
    assert MASK == "****"
    assert redact("a b abc", ["a", "abc"]) == "a b abc"  # under 4 characters: masking them protects nothing
    # the longer secret first: masking the shorter one inside it would leave the rest visible
    assert redact("pw pass-word-long", ["pass", "pass-word-long"]) == "pw ****"
