"""Labelled samples kept on the device for federated retraining; they never leave it.

Samples live in SQLite, bounded (oldest evicted). Arrays are serialised with
``numpy.save(allow_pickle=False)`` (numbers and strings only, nothing executed
on read). With a device key each record is sealed with AES-256-GCM (random
96-bit nonce, the record id bound as associated data) so a copied database is
useless without the key.
"""

from __future__ import annotations

import base64
import io
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from edgefleet.errors import ConfigError, StoreError

from ._sqlite import immediate

_AAD = b"edgefleet-sample-v1"


def load_device_key(path: str | os.PathLike) -> bytes:
    """A 32-byte key from a file holding it raw, as hex, or as base64."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read device key {path}: {exc.strerror}") from None
    if len(raw) == 32:
        return raw
    text = raw.strip()
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            key = decode(text.decode("ascii"))  # type: ignore[operator]
        except (ValueError, UnicodeDecodeError):
            continue
        if len(key) == 32:
            return key
    raise ConfigError(f"device key {path} must hold 32 bytes (raw, hex or base64)")


def generate_device_key(path: str | os.PathLike) -> Path:
    """Write a new random device key (base64, mode 0600)."""
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64encode(os.urandom(32)) + b"\n")
    return p


def _pack(value: Any) -> bytes:
    buf = io.BytesIO()
    if isinstance(value, Mapping):
        np.savez(buf, **{str(k): np.asarray(v) for k, v in value.items()})  # type: ignore[arg-type]
    else:
        arr = np.asarray(value)
        if arr.dtype.kind not in "biufU":
            raise ConfigError(f"samples must be numbers or strings, got dtype {arr.dtype}")
        np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _unpack(data: bytes) -> Any:
    buf = io.BytesIO(data)
    if data[:2] == b"PK":
        with np.load(buf, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    return np.load(buf, allow_pickle=False)


class SampleStore:
    """Bounded local store of ``(x, y)`` pairs, optionally encrypted at rest."""

    def __init__(self, path: str | os.PathLike, max_samples: int = 10_000, key: bytes | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_samples = int(max_samples)
        self._aead = None
        if key is not None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            if len(key) != 32:
                raise ConfigError("the device key must be 32 bytes")
            self._aead = AESGCM(key)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS samples (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,"
            " version TEXT NOT NULL, encrypted INTEGER NOT NULL, x BLOB NOT NULL, y BLOB NOT NULL)"
        )
        try:
            os.chmod(self.path, 0o600)
        except OSError:
            pass

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    def _seal(self, data: bytes, aad: bytes) -> bytes:
        if self._aead is None:
            return data
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, data, _AAD + aad)

    def _open(self, data: bytes, encrypted: int, aad: bytes) -> bytes:
        if not encrypted:
            return data
        if self._aead is None:
            raise StoreError("samples are encrypted but no device key is configured")
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(data[:12], data[12:], _AAD + aad)
        except InvalidTag:
            raise StoreError("a stored sample fails authentication (wrong device key or tampered)") from None

    def add(self, x: Any, y: Any, version: str = "") -> int:
        px, py = _pack(x), _pack(y)
        ts = time.time()
        with self._lock:
            with immediate(self._db) as cur:
                cur.execute(
                    "INSERT INTO samples (ts, version, encrypted, x, y) VALUES (?, ?, ?, ?, ?)",
                    (ts, version, int(self.encrypted), b"", b""),
                )
                rid = int(cur.lastrowid or 0)
                aad = str(rid).encode()
                cur.execute(
                    "UPDATE samples SET x = ?, y = ? WHERE id = ?",
                    (self._seal(px, aad + b":x"), self._seal(py, aad + b":y"), rid),
                )
                cur.execute(
                    "DELETE FROM samples WHERE id IN (SELECT id FROM samples ORDER BY id DESC LIMIT -1 OFFSET ?)",
                    (self.max_samples,),
                )
        return rid

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def iter(self, limit: int | None = None) -> Iterator[tuple[Any, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, encrypted, x, y FROM samples ORDER BY id LIMIT ?", (-1 if limit is None else limit,)
            ).fetchall()
        for rid, enc, x, y in rows:
            aad = str(rid).encode()
            yield _unpack(self._open(x, enc, aad + b":x")), _unpack(self._open(y, enc, aad + b":y"))

    def arrays(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All samples stacked as ``(X, Y)`` (array inputs only)."""
        xs, ys = [], []
        for x, y in self.iter(limit):
            xs.append(x)
            ys.append(y)
        if not xs:
            return np.empty((0,)), np.empty((0,))
        return np.stack(xs), np.stack(ys)

    def clear(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM samples")

    def close(self) -> None:
        with self._lock:
            self._db.close()
