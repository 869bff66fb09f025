"""Secrets at rest: AES-GCM with a key derived from KEYGATE_SECRET_KEY, or plain without one.

Backend-neutral so SQLite and PostgreSQL apply the same policy (`resolve_cipher`) and produce the
same formats. With a passphrase the database holds only ciphertext (`enc:v1:<b64(nonce|ct)>`),
HMAC fingerprints for duplicate detection, a random salt and a verifier; nothing that reveals a
secret or the passphrase. Without one, secrets are plain and fingerprints are sha256 hex.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from keygate.store.records import StoreError

ENC_PREFIX = "enc:v1:"
# Meta names holding the encryption parameters (not secret: salt, KDF settings, verifier).
META_SALT = "crypto.salt"
META_KDF = "crypto.kdf"
META_VERIFIER = "crypto.verifier"
CRYPTO_META = (META_SALT, META_KDF, META_VERIFIER)

# scrypt cost: ~50 ms and 16 MiB once per open; stored per database so it can be raised later.
_DEFAULT_KDF = "scrypt$16384$8$1"
_NONCE_LEN = 12
_AAD = b"keygate secret v1"

ERR_KEY_REQUIRED = (
    "KEYGATE_SECRET_KEY is required: this database holds encrypted keys (set it to the passphrase "
    "used when they were stored)"
)
ERR_KEY_MISMATCH = "KEYGATE_SECRET_KEY does not match the key this database was encrypted with"


class Cipher:
    """Plain form: what a database without KEYGATE_SECRET_KEY stores."""

    encrypted = False

    def seal(self, secret: str) -> str:
        """The stored form of a secret."""
        return secret

    def unseal(self, stored: str) -> str:
        """The secret from its stored form."""
        if stored.startswith(ENC_PREFIX):
            raise StoreError(ERR_KEY_REQUIRED)
        return stored

    def fingerprint(self, secret: str) -> str:
        """Duplicate-detection value: equal secrets give equal fingerprints."""
        return hashlib.sha256(secret.encode()).hexdigest()


class AesGcmCipher(Cipher):
    """Authenticated encryption with keys derived from a passphrase and the database's salt."""

    encrypted = True

    def __init__(self, passphrase: str, salt: bytes, kdf: str = _DEFAULT_KDF) -> None:
        master = _derive_master(passphrase, salt, kdf)
        self._aead = AESGCM(_subkey(master, b"keygate enc v1"))
        self._fp_key = _subkey(master, b"keygate fingerprint v1")
        self.verifier = hmac.new(
            _subkey(master, b"keygate verify v1"), b"keygate", hashlib.sha256
        ).hexdigest()

    def seal(self, secret: str) -> str:
        nonce = os.urandom(_NONCE_LEN)
        blob = nonce + self._aead.encrypt(nonce, secret.encode(), _AAD)
        return ENC_PREFIX + base64.b64encode(blob).decode("ascii")

    def unseal(self, stored: str) -> str:
        if not stored.startswith(ENC_PREFIX):
            return stored  # written before encryption was switched on and not migrated yet
        try:
            blob = base64.b64decode(stored[len(ENC_PREFIX) :], validate=True)
            plain = self._aead.decrypt(blob[:_NONCE_LEN], blob[_NONCE_LEN:], _AAD)
        except (InvalidTag, ValueError) as exc:
            raise StoreError(
                "a stored key could not be decrypted: the database is damaged or was written "
                "with another KEYGATE_SECRET_KEY"
            ) from exc
        return plain.decode()

    def fingerprint(self, secret: str) -> str:
        return hmac.new(self._fp_key, secret.encode(), hashlib.sha256).hexdigest()


def _derive_master(passphrase: str, salt: bytes, kdf: str) -> bytes:
    try:
        name, n, r, p = kdf.split("$")
        if name != "scrypt":
            raise ValueError(name)
        return Scrypt(salt=salt, length=32, n=int(n), r=int(r), p=int(p)).derive(
            passphrase.encode()
        )
    except ValueError as exc:
        raise StoreError(f"unknown key derivation {kdf!r} in the database") from exc


def _subkey(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


def resolve_cipher(secret_key: str, meta: Mapping[str, str]) -> tuple[Cipher, dict[str, str]]:
    """Pick the cipher for a database from its crypto meta values and the configured passphrase.

    Returns the cipher and the meta values to write. Non-empty meta to write means the database
    was plain and is being switched to encryption: the caller must, in the same transaction,
    write them and re-seal every stored secret and fingerprint with the new cipher.
    Raises StoreError for a missing or wrong passphrase.
    """
    verifier = meta.get(META_VERIFIER)
    if verifier:
        if not secret_key:
            raise StoreError(ERR_KEY_REQUIRED)
        try:
            salt = base64.b64decode(meta.get(META_SALT, ""), validate=True)
        except ValueError as exc:
            raise StoreError("the database's encryption salt is damaged") from exc
        cipher = AesGcmCipher(secret_key, salt, meta.get(META_KDF) or _DEFAULT_KDF)
        if not hmac.compare_digest(cipher.verifier, verifier):
            raise StoreError(ERR_KEY_MISMATCH)
        return cipher, {}
    if not secret_key:
        return Cipher(), {}
    salt = os.urandom(16)
    cipher = AesGcmCipher(secret_key, salt, _DEFAULT_KDF)
    return cipher, {
        META_SALT: base64.b64encode(salt).decode("ascii"),
        META_KDF: _DEFAULT_KDF,
        META_VERIFIER: cipher.verifier,
    }
