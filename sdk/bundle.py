"""Bundles: a directory (or one ``.efb`` archive) of manifest, model file(s) and signature.

Writing goes to a temporary sibling directory that is renamed into place at the
end, so a crash never leaves a half-written bundle. Reading verifies, in this
order: manifest parses, signature over the manifest bytes (when trusted keys are
given), then every file's size and sha256 against the manifest, and that no
unlisted file is present. Archives are plain tar files extracted by our own
code: regular files with plain names only (no absolute paths, ``..``, links or
devices), no duplicates, and a size cap.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .canonical import sha256_file
from .errors import (
    BundleFormatError,
    BundleIntegrityError,
    ConfigError,
    SignatureError,
    UnsafeArchiveError,
)
from .keys import KeySource, PrivateKey, PublicKey, load_trusted_keys, sign_payload, verify_payload
from .manifest import MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest, check_file_name

ARCHIVE_SUFFIX = ".efb"
DEFAULT_MAX_ARCHIVE_BYTES = 1 << 30  # 1 GiB: refuse archives that unpack to more
MAX_MANIFEST_BYTES = 16 << 20
MAX_SIGNATURE_BYTES = 64 << 10


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk. ``signer`` is the key that signed it, if checked."""

    path: Path
    manifest: Manifest
    manifest_bytes: bytes
    signer: PublicKey | None
    signed: bool

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model_file

    def read_array(self, name: str) -> np.ndarray:
        """A ``.npy`` file listed in the manifest (hash-checked when the bundle was opened);
        never unpickled."""
        if name not in self.manifest.files:
            raise BundleFormatError(f"bundle file {name!r} is not listed in the manifest")
        try:
            return np.load(self.path / name, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BundleFormatError(f"bundle file {name!r} is not a readable .npy array: {exc}") from None


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_bundle(
    out_dir: str | os.PathLike,
    manifest: Manifest,
    files: Mapping[str, str | os.PathLike | bytes],
    private_key: PrivateKey | None = None,
    overwrite: bool = False,
) -> Bundle:
    """Write a bundle directory atomically and return it (hashes filled in, signed if a key is given).

    ``files`` maps bundle file names to source paths or bytes; it must include the
    manifest's model file. The manifest's ``files`` table is recomputed here.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; remove it or pass --force")
    if manifest.model_file not in files:
        raise ConfigError(f"the model file {manifest.model_file!r} is not among the bundle files")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        entries: dict[str, FileEntry] = {}
        for name, src in files.items():
            check_file_name(name)
            dest = tmp / name
            if isinstance(src, (bytes, bytearray)):
                _write_durable(dest, bytes(src))
            else:
                shutil.copyfile(src, dest)
                with open(dest, "rb+") as fh:
                    os.fsync(fh.fileno())
            digest, size = sha256_file(str(dest))
            entries[name] = FileEntry(digest, size)
        manifest = manifest.with_files(entries)
        manifest_bytes = manifest.to_bytes()
        _write_durable(tmp / MANIFEST_NAME, manifest_bytes)
        signer = None
        if private_key is not None:
            doc = sign_payload(private_key, manifest_bytes)
            _write_durable(tmp / SIGNATURE_NAME, json.dumps(doc, sort_keys=True).encode() + b"\n")
            signer = private_key.public
        fsync_dir(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle(out, manifest, manifest_bytes, signer, signer is not None)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def read_manifest(bundle_dir: str | os.PathLike) -> tuple[Manifest, bytes]:
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleFormatError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BundleFormatError(f"{bundle_dir} is not a bundle: {MANIFEST_NAME} is missing") from None
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise BundleFormatError(f"{path} is not valid JSON: {exc}") from None
    return Manifest.from_dict(data), raw


def verify_bundle_dir(
    bundle_dir: str | os.PathLike,
    trusted_keys: Iterable[KeySource] | KeySource | None = None,
    require_signature: bool | None = None,
) -> Bundle:
    """Verify a bundle directory; raise a named error on the first problem found.

    With trusted keys (or ``require_signature=True``) an unsigned bundle is refused.
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleFormatError(f"{root} is not a bundle directory")
    manifest, raw = read_manifest(root)
    keys = load_trusted_keys(trusted_keys)
    must_sign = bool(keys) if require_signature is None else require_signature
    sig_path = root / SIGNATURE_NAME
    signer = None
    signed = sig_path.exists()
    if must_sign:
        if not signed:
            raise SignatureError(f"{root} is unsigned, but a signature from a trusted key is required")
        if not keys:
            raise SignatureError("a signature is required but no trusted keys were given")
        if sig_path.stat().st_size > MAX_SIGNATURE_BYTES:
            raise SignatureError(f"{sig_path} is larger than {MAX_SIGNATURE_BYTES} bytes; not a signature file")
        try:
            doc = json.loads(sig_path.read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SignatureError(f"{sig_path} is not a valid signature file") from None
        signer = verify_payload(doc, raw, keys)
    present = {p.name for p in root.iterdir()} - {MANIFEST_NAME, SIGNATURE_NAME}
    for name, entry in manifest.files.items():
        path = root / name
        if not path.is_file() or path.is_symlink():
            raise BundleIntegrityError(f"bundle file {name!r} is missing")
        size = path.stat().st_size
        if size != entry.size:
            raise BundleIntegrityError(
                f"bundle file {name!r} is {size} bytes but the manifest says {entry.size}"
            )
        digest, _ = sha256_file(str(path))
        if digest != entry.sha256:
            raise BundleIntegrityError(f"bundle file {name!r} does not match its sha256 in the manifest")
    extra = present - set(manifest.files)
    if extra:
        raise BundleIntegrityError(f"bundle holds files the manifest does not list: {sorted(extra)}")
    return Bundle(root, manifest, raw, signer, signed)


def write_archive(bundle_dir: str | os.PathLike, archive_path: str | os.PathLike) -> Path:
    """Pack a bundle directory into one deterministic ``.efb`` (tar) file, atomically."""
    root = Path(bundle_dir)
    names = sorted(p.name for p in root.iterdir() if p.is_file())
    if MANIFEST_NAME not in names:
        raise BundleFormatError(f"{root} has no {MANIFEST_NAME}")
    names.remove(MANIFEST_NAME)
    names.insert(0, MANIFEST_NAME)  # manifest first: a reader can check it before the rest
    out = Path(archive_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for name in names:
                    data = (root / name).read_bytes()
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(data))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def extract_archive(
    archive_path: str | os.PathLike,
    dest_dir: str | os.PathLike,
    max_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES,
) -> Path:
    """Safely extract an ``.efb`` archive into a new directory ``dest_dir``."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=False)
    total = 0
    seen: set[str] = set()
    try:
        with tarfile.open(archive_path, mode="r:") as tar:
            for member in tar:
                name = member.name
                if name.startswith("/") or ".." in Path(name).parts or "/" in name or "\\" in name:
                    raise UnsafeArchiveError(f"archive member {name!r} has a path; only plain file names are allowed")
                if not member.isreg():
                    raise UnsafeArchiveError(f"archive member {name!r} is not a regular file (links and devices are refused)")
                if name not in (MANIFEST_NAME, SIGNATURE_NAME):
                    try:
                        check_file_name(name)
                    except BundleFormatError as exc:
                        raise UnsafeArchiveError(str(exc)) from None
                if name in seen:
                    raise UnsafeArchiveError(f"archive member {name!r} appears twice")
                seen.add(name)
                total += member.size
                if total > max_bytes:
                    raise UnsafeArchiveError(f"archive unpacks to more than the {max_bytes}-byte cap")
                src = tar.extractfile(member)
                assert src is not None
                with open(dest / name, "wb") as out:
                    remaining = member.size
                    while remaining:
                        chunk = src.read(min(remaining, 1 << 20))
                        if not chunk:
                            raise BundleIntegrityError(f"archive {archive_path} is truncated inside {name!r}")
                        out.write(chunk)
                        remaining -= len(chunk)
    except tarfile.TarError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise BundleIntegrityError(f"archive {archive_path} is truncated or corrupt: {exc}") from None
    except EOFError:
        shutil.rmtree(dest, ignore_errors=True)
        raise BundleIntegrityError(f"archive {archive_path} is truncated") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    if MANIFEST_NAME not in seen:
        shutil.rmtree(dest, ignore_errors=True)
        raise BundleFormatError(f"archive {archive_path} holds no {MANIFEST_NAME}")
    return dest


def is_archive(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_file() and (p.suffix == ARCHIVE_SUFFIX or tarfile.is_tarfile(p))


def open_bundle(
    path: str | os.PathLike,
    trusted_keys: Iterable[KeySource] | KeySource | None = None,
    workdir: str | os.PathLike | None = None,
    require_signature: bool | None = None,
) -> tuple[Bundle, tempfile.TemporaryDirectory | None]:
    """Verify a bundle directory or archive. Archives are extracted into a temporary
    directory that lives as long as the returned ``TemporaryDirectory`` handle."""
    p = Path(path)
    if p.is_dir():
        return verify_bundle_dir(p, trusted_keys, require_signature), None
    if not p.exists():
        raise BundleFormatError(f"{p} does not exist")
    if not is_archive(p):
        raise BundleFormatError(f"{p} is neither a bundle directory nor an {ARCHIVE_SUFFIX} archive")
    tmp = tempfile.TemporaryDirectory(prefix="edgefleet-bundle-", dir=workdir)
    try:
        extracted = extract_archive(p, Path(tmp.name) / "bundle")
        return verify_bundle_dir(extracted, trusted_keys, require_signature), tmp
    except BaseException:
        tmp.cleanup()
        raise
