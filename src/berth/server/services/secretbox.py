"""Secrets the server must give back later (a session's SSH password, launch credentials until the agent
has them) are stored sealed with AES-256-GCM, so a database dump or backup does not reveal them.

The key comes from ``BERTH_SECRET_KEY`` (any string; replicas must share it) or, when unset, from
``<data_dir>/secret.key``, created 0600 on first start. A value is stored as ``sealed:v1:<base64url>``
(12-byte nonce + ciphertext + tag); values written before sealing existed are read back as they are.
The database session carries the box in ``db.info["secret_box"]`` (set by the app's sessionmaker).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.ext.asyncio import AsyncSession

from berth.errors import BerthError
from berth.private_files import open_private

log = logging.getLogger("berth.server")

PREFIX = "sealed:v1:"


class SecretBox:
    def __init__(self, key_material: str | bytes):
        material = key_material.encode() if isinstance(key_material, str) else key_material
        self._aead = AESGCM(hashlib.sha256(b"berth-secret-box\0" + material).digest())
        self._mac_key = hashlib.sha256(b"berth-mac\0" + material).digest()

    def mac(self, purpose: str, message: str) -> str:
        """A signature of `message` for one `purpose` (e.g. gateway cookies), the same on every replica."""
        return hmac.new(self._mac_key, f"{purpose}\0{message}".encode(), hashlib.sha256).hexdigest()

    @classmethod
    def from_settings(cls, secret_key: str | None, data_dir: Path) -> SecretBox:
        if secret_key:
            return cls(secret_key)
        return cls(_key_file(data_dir / "secret.key"))

    def seal(self, plaintext: str) -> str:
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, plaintext.encode(), None)
        return PREFIX + base64.urlsafe_b64encode(sealed).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored  # written before sealing existed
        raw = base64.urlsafe_b64decode(stored[len(PREFIX):])
        try:
            return self._aead.decrypt(raw[:12], raw[12:], None).decode()
        except InvalidTag:
            raise BerthError("a stored secret cannot be decrypted by this server",
                                    log_message="a sealed value does not open with this server's key: every replica "
                                                "needs the same BERTH_SECRET_KEY (or the same data_dir/secret.key)") from None

    def seal_values(self, values: dict[str, str]) -> dict[str, str]:
        return {k: self.seal(v) if isinstance(v, str) else v for k, v in values.items()}

    def open_values(self, values: dict[str, str]) -> dict[str, str]:
        return {k: self.open(v) if isinstance(v, str) else v for k, v in values.items()}


def box(db: AsyncSession) -> SecretBox:
    return db.info["secret_box"]


def _key_file(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(32).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open_private(tmp, exclusive=True) as f:  # 0600 whatever the umask
        f.write(key + b"\n")
    try:
        os.link(tmp, path)  # a concurrent first start keeps whichever key landed first
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    log.info("created %s (keep it with the database backups; replicas need BERTH_SECRET_KEY)", path)
    return path.read_bytes().strip()
