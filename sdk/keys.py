"""Ed25519 signing keys: generate, save, load, sign, verify.

Keys are PEM files: ``NAME.key`` (PKCS#8 private key, mode 0600) and ``NAME.pub``
(SubjectPublicKeyInfo). A key id is the first 16 hex digits of the sha256 of the
raw 32-byte public key; signatures name the key id they were made with.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .canonical import read_regular, sha256_bytes
from .errors import ConfigError, SignatureError

#: A PEM key file is a few hundred bytes; anything larger is refused before it is read.
MAX_KEY_FILE_BYTES = 64 << 10

KeySource = Union[str, os.PathLike[str], bytes, Ed25519PublicKey, "PublicKey"]


@dataclass(frozen=True)
class PublicKey:
    key: Ed25519PublicKey

    @property
    def raw(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return sha256_bytes(self.raw)[:16]

    def pem(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self.key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class PrivateKey:
    key: Ed25519PrivateKey

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.key.public_key())

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)

    def pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def generate_keypair(out_dir: str | os.PathLike[str], name: str = "edgefleet", overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``out_dir/name.key`` (0600) and ``out_dir/name.pub``; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    if not overwrite and (priv_path.exists() or pub_path.exists()):
        raise ConfigError(f"{priv_path} or {pub_path} already exists; pass --force or choose another --out")
    private = PrivateKey(Ed25519PrivateKey.generate())
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(priv_path, flags, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private.pem())
    os.chmod(priv_path, 0o600)
    pub_path.write_bytes(private.public.pem())
    return priv_path, pub_path


def _read_key_file(path: str | os.PathLike[str], what: str) -> bytes:
    """A key file's bytes: a regular file (a FIFO or device is refused without blocking; a symlink to one
    too) of at most :data:`MAX_KEY_FILE_BYTES`, else a :class:`ConfigError` naming it."""
    try:
        return read_regular(path, MAX_KEY_FILE_BYTES, follow_symlinks=True, error=ConfigError,
                            what=f"{what} {path}")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    data = _read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key; create one with 'edgefleet keys generate'")
    return PrivateKey(key)


def load_public_key(source: KeySource) -> PublicKey:
    """A public key from a PEM file path, PEM bytes, raw 32 bytes or a key object."""
    if isinstance(source, PublicKey):
        return source
    if isinstance(source, Ed25519PublicKey):
        return PublicKey(source)
    if isinstance(source, bytes):
        data, where = source, "key bytes"
    else:
        where = str(source)
        data = _read_key_file(source, "public key")
    if len(data) == 32:
        return PublicKey(Ed25519PublicKey.from_public_bytes(data))
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        try:  # a private key file given where a public one was expected still names a public key
            return load_private_key_bytes(data).public
        except ConfigError:
            raise ConfigError(f"{where} is not a PEM Ed25519 public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{where} is not an Ed25519 public key")
    return PublicKey(key)


def load_private_key_bytes(data: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("not an Ed25519 private key")
    return PrivateKey(key)


def load_trusted_keys(sources: Iterable[KeySource] | KeySource | None) -> list[PublicKey]:
    if sources is None:
        return []
    if isinstance(sources, (str, os.PathLike, bytes, Ed25519PublicKey, PublicKey)):
        sources = [sources]
    return [load_public_key(s) for s in sources]


def sign_payload(private: PrivateKey, data: bytes) -> dict[str, str]:
    """The signature document stored beside a manifest."""
    return {
        "algorithm": "ed25519",
        "key_id": private.public.key_id,
        "signature": base64.b64encode(private.sign(data)).decode("ascii"),
    }


def verify_payload(signature_doc: object, data: bytes, trusted: list[PublicKey]) -> PublicKey:
    """Check a signature document (parsed JSON, checked here) against trusted keys; return the key that signed."""
    if not isinstance(signature_doc, dict) or signature_doc.get("algorithm") != "ed25519":
        raise SignatureError("signature file is malformed or not ed25519")
    try:
        sig = base64.b64decode(str(signature_doc.get("signature", "")), validate=True)
    except ValueError as exc:
        raise SignatureError("signature is not valid base64") from exc
    key_id = signature_doc.get("key_id")
    candidates = [k for k in trusted if k.key_id == key_id] or trusted
    for key in candidates:
        if key.verify(sig, data):
            return key
    known = ", ".join(k.key_id for k in trusted) or "none"
    raise SignatureError(
        f"signature by key {key_id} does not verify against the trusted keys ({known}); "
        "the bundle was tampered with or signed by a key you do not trust"
    )
