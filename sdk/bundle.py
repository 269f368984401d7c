"""Bundles: a directory (or one ``.efb`` archive) of manifest, model file(s) and signature.

Writing goes to a temporary sibling directory that is renamed into place at the
end, so a crash never leaves a half-written bundle. Reading verifies, in this
order: manifest parses, signature over the manifest bytes (when trusted keys are
given), then every file's size and sha256 against the manifest, and that no
unlisted file is present.

Everything is bounded before it is trusted: files are opened without blocking and
only when they are regular (``lstat``/``fstat``, ``O_NONBLOCK``, no symlinks: a FIFO or
a link to ``/dev/zero`` is refused, never read), with a size cap before the first
byte; JSON is parsed with size, depth and integer caps (:func:`~.canonical.load_json_bounded`).

Archives are plain tar files read by our own code in two passes. The first reads
headers only and writes nothing: at most :data:`MAX_ARCHIVE_MEMBERS` members, each a
regular file with a plain name (no paths, links, devices, FIFOs, directories,
contiguous or sparse files, no oversized pax/GNU extension headers), no duplicates,
data inside the archive file, a total size cap. The second reads ``manifest.json`` and
``signature`` (small, capped), parses the manifest and, when trusted keys are given,
checks the signature, and only then extracts exactly the files the manifest lists,
each at exactly its declared size and sha256, refusing any other member.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Mapping

import numpy as np

from .atomic import fsync_dir, fsync_file, replace_dir, temp_name, write_atomic
from .canonical import load_json_bounded, open_regular, read_regular, sha256_file
from .errors import (
    BundleFormatError,
    BundleIntegrityError,
    ConfigError,
    SignatureError,
    UnsafeArchiveError,
    UnsignedBundleError,
)
from .keys import KeySource, PrivateKey, PublicKey, load_trusted_keys, sign_payload, verify_payload
from .manifest import MANIFEST_NAME, MAX_FILES, SIGNATURE_NAME, FileEntry, Manifest, check_file_name

ARCHIVE_SUFFIX = ".efb"
DEFAULT_MAX_ARCHIVE_BYTES = 1 << 30  # 1 GiB: refuse archives that unpack to more
MAX_MANIFEST_BYTES = 16 << 20
MAX_SIGNATURE_BYTES = 64 << 10
#: manifest, signature and the most files a manifest may list
MAX_ARCHIVE_MEMBERS = MAX_FILES + 2
#: a pax or GNU long-name header larger than this is refused before tarfile reads it
MAX_EXTENSION_HEADER_BYTES = 64 << 10


def _names(names: Iterable[str], limit: int = 5) -> str:
    """A short, bounded listing of names for an error message."""
    items = sorted(names)
    shown = ", ".join(repr(n[:80]) for n in items[:limit])
    return f"[{shown}{f', ... {len(items) - limit} more' if len(items) > limit else ''}]"


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
            loaded = np.load(self.path / name, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BundleFormatError(f"bundle file {name!r} is not a readable .npy array: {exc}") from None
        if not isinstance(loaded, np.ndarray):  # np.load's other answer without pickles: an .npz archive
            loaded.close()
            raise BundleFormatError(f"bundle file {name!r} is not a readable .npy array: it is an .npz archive")
        return loaded


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_bundle(
    out_dir: str | os.PathLike[str],
    manifest: Manifest,
    files: Mapping[str, str | os.PathLike[str] | bytes],
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
    tmp = temp_name(out)
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
                fsync_file(dest)
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
        replace_dir(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle(out, manifest, manifest_bytes, signer, signer is not None)


def parse_manifest_bytes(raw: bytes, where: str = MANIFEST_NAME) -> Manifest:
    """A manifest from its bytes: size, depth and integer caps first, then the typed parse.

    Every failure is a ``BundleFormatError`` (or its ``UnsupportedFormatError``) naming ``where``."""
    data = load_json_bounded(raw, max_bytes=MAX_MANIFEST_BYTES, error=BundleFormatError, what=where)
    try:
        return Manifest.from_dict(data)
    except BundleFormatError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError, RecursionError) as exc:
        # Manifest.from_dict names every field it checks; this keeps anything it missed a named error too
        raise BundleFormatError(f"{where} is not a valid manifest: {type(exc).__name__}: {str(exc)[:200]}") from None


def read_manifest(bundle_dir: str | os.PathLike[str]) -> tuple[Manifest, bytes]:
    """The manifest of a bundle directory and its bytes. A manifest that is not a regular file
    (FIFO, device, symlink) or is larger than :data:`MAX_MANIFEST_BYTES` is refused unread."""
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        raw = read_regular(path, MAX_MANIFEST_BYTES, follow_symlinks=False, error=BundleFormatError, what=str(path))
    except FileNotFoundError:
        raise BundleFormatError(f"{bundle_dir} is not a bundle: {MANIFEST_NAME} is missing") from None
    except NotADirectoryError:
        raise BundleFormatError(f"{bundle_dir} is not a bundle directory") from None
    return parse_manifest_bytes(raw, str(path)), raw


def _check_signature(
    raw: bytes, sig: bytes | None, keys: list[PublicKey], must_sign: bool, where: str
) -> PublicKey | None:
    """Verify the signature document ``sig`` over the manifest bytes ``raw`` when one is required."""
    if not must_sign:
        return None
    if sig is None:
        raise UnsignedBundleError(f"{where} is unsigned, but a signature from a trusted key is required")
    if not keys:
        raise SignatureError("a signature is required but no trusted keys were given")
    doc = load_json_bounded(sig, max_bytes=MAX_SIGNATURE_BYTES, max_depth=4, error=SignatureError,
                            what=f"the signature of {where}")
    return verify_payload(doc, raw, keys)


def _read_signature(path: Path) -> bytes | None:
    try:
        return read_regular(path, MAX_SIGNATURE_BYTES, follow_symlinks=False, error=SignatureError,
                            what=f"{path} (a signature file)")
    except FileNotFoundError:
        return None


def verify_bundle_dir(
    bundle_dir: str | os.PathLike[str],
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
    signed = os.path.lexists(sig_path)
    sig = _read_signature(sig_path) if (must_sign and signed) else None
    signer = _check_signature(raw, sig, keys, must_sign, str(root))
    present: set[str] = set()
    with os.scandir(root) as it:
        for dirent in it:
            present.add(dirent.name)
            if len(present) > MAX_ARCHIVE_MEMBERS:
                raise BundleIntegrityError(f"{root} holds more than {MAX_ARCHIVE_MEMBERS} files; not a bundle")
    present -= {MANIFEST_NAME, SIGNATURE_NAME}
    for name, entry in manifest.files.items():
        path = root / name
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise BundleIntegrityError(f"bundle file {name!r} is missing") from None
        if not stat.S_ISREG(st.st_mode):
            raise BundleIntegrityError(f"bundle file {name!r} is missing: it is not a regular file (link, FIFO or device)")
        if st.st_size != entry.size:
            raise BundleIntegrityError(
                f"bundle file {name!r} is {st.st_size} bytes but the manifest says {entry.size}"
            )
        digest, _ = sha256_file(str(path), max_bytes=entry.size, follow_symlinks=False, error=BundleIntegrityError)
        if digest != entry.sha256:
            raise BundleIntegrityError(f"bundle file {name!r} does not match its sha256 in the manifest")
    extra = present - set(manifest.files)
    if extra:
        raise BundleIntegrityError(f"bundle holds {len(extra)} file(s) the manifest does not list: {_names(extra)}")
    return Bundle(root, manifest, raw, signer, signed)


def write_archive(bundle_dir: str | os.PathLike[str], archive_path: str | os.PathLike[str]) -> Path:
    """Pack a bundle directory into one deterministic ``.efb`` (tar) file, atomically."""
    root = Path(bundle_dir)
    names = sorted(p.name for p in root.iterdir() if p.is_file())
    if MANIFEST_NAME not in names:
        raise BundleFormatError(f"{root} has no {MANIFEST_NAME}")
    names.remove(MANIFEST_NAME)
    names.insert(0, MANIFEST_NAME)  # manifest first: a reader can check it before the rest
    out = Path(archive_path)

    def write_tar(fh: BinaryIO) -> None:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name in names:
                data = (root / name).read_bytes()
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))

    write_atomic(out, write_tar, parents=True)
    return out


class _BoundedTarInfo(tarfile.TarInfo):
    """Header processing that refuses, before tarfile reads them, sparse members (which
    expand far past the archive's size) and pax/GNU extension headers larger than
    :data:`MAX_EXTENSION_HEADER_BYTES` (tarfile reads those into memory whole).
    ``_proc_member`` is tarfile's documented hook for subclasses."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise UnsafeArchiveError(f"archive member {self.name[:80]!r} is a sparse file; sparse members are refused")
        if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
            if self.size > MAX_EXTENSION_HEADER_BYTES:
                raise UnsafeArchiveError(
                    f"archive has a {self.size}-byte extension header (at most {MAX_EXTENSION_HEADER_BYTES})"
                )
            if self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
                fh = tarfile_.fileobj
                pos = fh.tell()
                body = fh.read(self.size)
                fh.seek(pos)
                if b"GNU.sparse" in body:
                    raise UnsafeArchiveError("archive has a pax-format sparse member; sparse members are refused")
        return super()._proc_member(tarfile_)  # type: ignore[misc, no-any-return]


def _scan_members(tar: tarfile.TarFile, archive_size: int, max_bytes: int, dest: Path) -> dict[str, tarfile.TarInfo]:
    """Pass one: headers only, nothing written. Every member a plain-named regular file."""
    members: dict[str, tarfile.TarInfo] = {}
    total = 0
    while True:
        member = tar.next()
        if member is None:
            return members
        name = member.name
        if len(members) >= MAX_ARCHIVE_MEMBERS:
            raise UnsafeArchiveError(
                f"archive has more than {MAX_ARCHIVE_MEMBERS} members (a bundle has a manifest, a signature and "
                f"at most {MAX_FILES} files)"
            )
        if name.startswith("/") or ".." in Path(name).parts or "/" in name or "\\" in name:
            raise UnsafeArchiveError(f"archive member {name[:80]!r} has a path; only plain file names are allowed")
        if member.issparse():
            raise UnsafeArchiveError(f"archive member {name[:80]!r} is a sparse file; sparse members are refused")
        if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise UnsafeArchiveError(
                f"archive member {name[:80]!r} is not a regular file (links, devices, FIFOs, directories refused)"
            )
        if name not in (MANIFEST_NAME, SIGNATURE_NAME):
            try:
                check_file_name(name)
            except BundleFormatError as exc:
                raise UnsafeArchiveError(str(exc)) from None
        try:  # the stdlib's own policy for untrusted archives, on top of ours
            tarfile.data_filter(member, str(dest))
        except tarfile.FilterError as exc:
            raise UnsafeArchiveError(f"archive member {name[:80]!r} is refused: {exc}") from None
        if name in members:
            raise UnsafeArchiveError(f"archive member {name!r} appears twice")
        total += member.size
        if total > max_bytes:
            raise UnsafeArchiveError(f"archive unpacks to more than the {max_bytes}-byte cap")
        if member.offset_data + member.size > archive_size:
            raise BundleIntegrityError(f"archive is truncated inside {name!r}")
        members[name] = member


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    src = tar.extractfile(member)
    assert src is not None
    data = src.read(member.size)
    if len(data) != member.size:
        raise BundleIntegrityError(f"archive is truncated inside {member.name!r}")
    return data


def extract_archive(
    archive_path: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    max_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES,
    *,
    trusted_keys: Iterable[KeySource] | KeySource | None = None,
    require_signature: bool | None = None,
) -> Path:
    """Safely extract an ``.efb`` archive into a new directory ``dest_dir``.

    Headers are checked first and nothing is written for a refused archive; the manifest
    (and, with ``trusted_keys`` or ``require_signature``, the signature) is checked before
    any data file is extracted; only the files the manifest lists are written, each at
    exactly its declared size and sha256. ``max_bytes`` caps the total unpacked size.
    The extracted directory is still to be verified (:func:`verify_bundle_dir`).
    """
    dest = Path(dest_dir)
    label = str(archive_path)
    overhead = (MAX_ARCHIVE_MEMBERS + 4) * 1024 + 4 * MAX_EXTENSION_HEADER_BYTES + (1 << 20)
    try:
        fh, archive_size = open_regular(archive_path, max_bytes=max_bytes + overhead, error=UnsafeArchiveError,
                                        what=f"archive {label}")
    except FileNotFoundError:
        raise BundleFormatError(f"{label} does not exist") from None
    dest.mkdir(parents=True, exist_ok=False)
    try:
        with fh, tarfile.open(fileobj=fh, mode="r:", tarinfo=_BoundedTarInfo) as tar:
            members = _scan_members(tar, archive_size, max_bytes, dest)
            if MANIFEST_NAME not in members:
                raise BundleFormatError(f"archive {label} holds no {MANIFEST_NAME}")
            m_info = members.pop(MANIFEST_NAME)
            if m_info.size > MAX_MANIFEST_BYTES:
                raise BundleFormatError(f"{MANIFEST_NAME} in {label} is larger than {MAX_MANIFEST_BYTES} bytes")
            raw = _read_member(tar, m_info)
            manifest = parse_manifest_bytes(raw, f"{MANIFEST_NAME} in {label}")
            s_info = members.pop(SIGNATURE_NAME, None)
            sig = None
            if s_info is not None:
                if s_info.size > MAX_SIGNATURE_BYTES:
                    raise SignatureError(f"the signature in {label} is larger than {MAX_SIGNATURE_BYTES} bytes")
                sig = _read_member(tar, s_info)
            keys = load_trusted_keys(trusted_keys)
            must_sign = bool(keys) if require_signature is None else require_signature
            _check_signature(raw, sig, keys, must_sign, label)
            extra = set(members) - set(manifest.files)
            if extra:
                raise UnsafeArchiveError(f"archive holds {len(extra)} member(s) the manifest does not list: {_names(extra)}")
            for name, entry in manifest.files.items():
                member = members.get(name)
                if member is None:
                    raise BundleIntegrityError(f"bundle file {name!r} is missing from archive {label}")
                if member.size != entry.size:
                    raise BundleIntegrityError(
                        f"bundle file {name!r} is {member.size} bytes in the archive but the manifest says {entry.size}"
                    )
            _write_exclusive(dest / MANIFEST_NAME, [raw])
            if sig is not None:
                _write_exclusive(dest / SIGNATURE_NAME, [sig])
            for name, entry in manifest.files.items():
                _extract_member(tar, members[name], dest / name, entry)
    except tarfile.TarError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise BundleIntegrityError(f"archive {label} is truncated or corrupt: {str(exc)[:200]}") from None
    except (EOFError, ValueError) as exc:  # tarfile's own parsing of hostile numeric fields
        shutil.rmtree(dest, ignore_errors=True)
        raise BundleIntegrityError(f"archive {label} is truncated or corrupt: {str(exc)[:200]}") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def _write_exclusive(path: Path, chunks: Iterable[bytes]) -> None:
    with open(path, "xb") as out:
        for chunk in chunks:
            out.write(chunk)


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, entry: FileEntry) -> None:
    """Write one listed member: exactly its declared size, its sha256 checked as it streams."""
    src = tar.extractfile(member)
    assert src is not None
    digest = hashlib.sha256()
    with open(path, "xb") as out:
        remaining = entry.size
        while remaining:
            chunk = src.read(min(remaining, 1 << 20))
            if not chunk:
                raise BundleIntegrityError(f"archive is truncated inside {member.name!r}")
            digest.update(chunk)
            out.write(chunk)
            remaining -= len(chunk)
    if digest.hexdigest() != entry.sha256:
        raise BundleIntegrityError(f"bundle file {member.name!r} does not match its sha256 in the manifest")


def is_archive(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return p.is_file() and (p.suffix == ARCHIVE_SUFFIX or tarfile.is_tarfile(p))


def open_bundle(
    path: str | os.PathLike[str],
    trusted_keys: Iterable[KeySource] | KeySource | None = None,
    workdir: str | os.PathLike[str] | None = None,
    require_signature: bool | None = None,
) -> tuple[Bundle, tempfile.TemporaryDirectory[str] | None]:
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
        keys = load_trusted_keys(trusted_keys)
        # the signature is checked from the archive before any data file is extracted
        extracted = extract_archive(p, Path(tmp.name) / "bundle", trusted_keys=keys, require_signature=require_signature)
        return verify_bundle_dir(extracted, keys, require_signature), tmp
    except BaseException:
        tmp.cleanup()
        raise
