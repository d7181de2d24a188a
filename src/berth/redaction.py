"""The one redactor: what may be shown of a text that might carry secrets (console lines, setup errors,
URLs printed by the CLI).

Two rules: the credentials of a URL (``scheme://user:pass@host``; a token alone in the user part too) are
removed, leaving ``scheme://host`` readable; each known secret value is replaced by ``MASK``. Secrets shorter
than ``MIN_SECRET_LEN`` are ignored: masking every "a" would make the text unreadable and protect nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "****"
MIN_SECRET_LEN = 4

# Everything between "scheme://" and the last "@" before the path: a password may hold an unescaped "@".
_URL_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s]+@")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` without URL credentials and with every secret (of at least MIN_SECRET_LEN characters) masked."""
    # Longest first: a secret containing a shorter one must not be left half visible.
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _URL_USERINFO.sub(r"\1", text)
