"""The model store: content-addressed bundles, one active version, the previous kept.

Layout under the state directory::

    objects/<id>/        a verified bundle; <id> is the sha256 of its manifest bytes,
                         and the manifest chains the hash of every other file
    staging/             bundles being copied and verified (emptied on open)
    trash/               objects being deleted (emptied on open)
    trust/*.pub          trusted public keys kept with the device
    current              the pointer: which object is active and which is previous
    lock                 advisory lock held by whoever changes the store

Crash consistency rests on two rules. An object is complete and fsynced before
it is renamed into ``objects/``, and the pointer is only ever replaced by
writing a new file, fsyncing it and renaming it over the old one (then fsyncing
the directory). So a ``kill -9`` or power cut at any instant leaves ``current``
naming either the old or the new active object, both complete; nothing that the
pointer names is ever deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from edgefleet.atomic import fsync_dir, fsync_file, replace_dir, write_atomic
from edgefleet.bundle import (
    MAX_SIGNATURE_BYTES,
    Bundle,
    extract_archive,
    is_archive,
    read_manifest,
    verify_bundle_dir,
)
from edgefleet.canonical import canonical_json, sha256_bytes
from edgefleet.errors import (
    BundleError,
    BundleFormatError,
    BundleIntegrityError,
    EdgefleetError,
    SignatureError,
    StoreError,
    UnsafeArchiveError,
    UnsignedBundleError,
    UpdateRejectedError,
)
from edgefleet.keys import PublicKey, load_public_key
from edgefleet.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest

from ._failpoints import failpoint

log = logging.getLogger("edgefleet.device_agent.store")

POINTER = "current"
MAX_BAD = 32
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One stored version: its object id and what it is."""

    id: str
    name: str
    version: str
    installed_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "version": self.version, "installed_at": self.installed_at}

    @classmethod
    def from_dict(cls, data: Any) -> Entry:
        if not isinstance(data, dict):
            raise StoreError("store pointer entry is not an object")
        try:
            return cls(str(data["id"]), str(data["name"]), str(data["version"]), float(data.get("installed_at", 0.0)))
        except KeyError as exc:
            raise StoreError(f"store pointer entry lacks {exc}") from None


@dataclass(frozen=True)
class StoreState:
    """What the pointer file says. ``bad`` lists object ids that failed probation."""

    active: Entry | None = None
    previous: Entry | None = None
    generation: int = 0
    bad: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        body = {
            "active": self.active.to_dict() if self.active else None,
            "previous": self.previous.to_dict() if self.previous else None,
            "generation": self.generation,
            "bad": list(self.bad),
        }
        return canonical_json({"body": body, "sha256": sha256_bytes(canonical_json(body))}) + b"\n"

    @classmethod
    def from_bytes(cls, raw: bytes) -> StoreState:
        try:
            doc = json.loads(raw.decode("utf-8"))
            body = doc["body"]
            ok = sha256_bytes(canonical_json(body)) == doc["sha256"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise StoreError(f"store pointer is unreadable: {exc}") from None
        if not ok:
            raise StoreError("store pointer fails its checksum")
        return cls(
            active=Entry.from_dict(body["active"]) if body.get("active") else None,
            previous=Entry.from_dict(body["previous"]) if body.get("previous") else None,
            generation=int(body.get("generation", 0)),
            bad=tuple(str(b) for b in body.get("bad", [])),
        )

    @property
    def kept_ids(self) -> set[str]:
        return {e.id for e in (self.active, self.previous) if e is not None}


@dataclass
class Staged:
    """A bundle copied into the store and verified, not yet active."""

    entry: Entry
    bundle: Bundle
    manifest: Manifest
    size: int
    notes: list[str] = field(default_factory=list)


def _write_pointer(path: Path, data: bytes) -> None:
    write_atomic(path, data, on_step=lambda step: failpoint(f"pointer.{step}"))


def _dir_size(path: Path) -> int:
    total = 0
    for p in path.iterdir():
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def manifest_id(manifest_bytes: bytes) -> str:
    return sha256_bytes(manifest_bytes)


class Store:
    """A model store rooted at ``root``. Readers need no lock; writers take ``lock()``."""

    def __init__(
        self,
        root: str | os.PathLike,
        trusted_keys: Sequence[Any] = (),
        require_signature: bool = True,
        quota_bytes: int = 512 << 20,
        key_dirs: Sequence[str | os.PathLike] = (),
    ) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.staging = self.root / "staging"
        self.trash = self.root / "trash"
        self.trust_dir = self.root / "trust"
        self.pins = self.root / "pins"
        self.pointer = self.root / POINTER
        self.require_signature = require_signature
        self.quota_bytes = int(quota_bytes)
        for d in (self.root, self.objects, self.staging, self.trash, self.trust_dir, self.pins):
            d.mkdir(parents=True, exist_ok=True)
        self._extra_keys = [load_public_key(k) for k in trusted_keys]
        # keys that signed installs verified by other means (TUF: STATE/tuf/keys): they re-verify stored
        # objects (verify, repair, loading) but are not trusted for new bundles or rollback orders
        self.key_dirs = tuple(Path(d) for d in key_dirs)

    # -- keys ----------------------------------------------------------------
    @property
    def trusted_keys(self) -> list[PublicKey]:
        keys = list(self._extra_keys)
        for p in sorted(self.trust_dir.glob("*.pub")):
            keys.append(load_public_key(p))
        seen: set[str] = set()
        out = []
        for k in keys:
            if k.key_id not in seen:
                seen.add(k.key_id)
                out.append(k)
        return out

    @property
    def verify_keys(self) -> list[PublicKey]:
        """Keys that re-verify stored objects: the trusted keys and those in ``key_dirs``."""
        keys = self.trusted_keys
        seen = {k.key_id for k in keys}
        for d in self.key_dirs:
            for p in sorted(d.glob("*.pub")) if d.is_dir() else []:
                k = load_public_key(p)
                if k.key_id not in seen:
                    seen.add(k.key_id)
                    keys.append(k)
        return keys

    def add_trusted_key(self, source: Any) -> PublicKey:
        """Keep a public key in ``trust/`` so later commands verify against it."""
        key = load_public_key(source)
        write_atomic(self.trust_dir / f"{key.key_id}.pub", key.pem())
        return key

    # -- locking and recovery ---------------------------------------------------
    @contextlib.contextmanager
    def lock(self, timeout: float = 30.0) -> Iterator[None]:
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreError(f"the store {self.root} is locked by another process") from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def recover(self, known_bad: Sequence[str] = ()) -> dict[str, Any] | None:
        """Clear what a crash may have left: staging copies, trash, temp pointers, unreferenced objects.

        An unreadable pointer is rebuilt first (:meth:`repair_pointer`); what was done is returned
        (``None`` when the pointer was fine)."""
        for d in (self.staging, self.trash):
            for p in d.iterdir():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        for p in self.root.glob(f".{POINTER}.tmp-*"):
            p.unlink(missing_ok=True)
        repaired = None
        try:
            self.state()
        except StoreError as exc:
            repaired = self.repair_pointer(str(exc), known_bad)
        self.gc()
        return repaired

    def repair_pointer(self, why: str, known_bad: Sequence[str] = ()) -> dict[str, Any]:
        """The pointer is unreadable (garbage, truncated, empty, bad checksum): rebuild it from the store.

        Every stored object is verified (manifest hash = id, signature, sizes, hashes); the newest
        verified version becomes active and the next newest previous. Versions a job log names as
        rolled back (``known_bad``) are passed over while any other verifies. The damaged pointer is
        kept as ``current.corrupt-<time>``; the repair is logged. Call it holding ``lock()``.
        """
        from edgefleet.manifest import parse_version

        found: list[tuple[Any, float, Entry]] = []
        for p in sorted(self.objects.iterdir()):
            try:
                bundle = self.verify(p.name)
            except EdgefleetError:
                continue
            except OSError:
                continue
            m = bundle.manifest
            try:
                key: Any = parse_version(m.version)
            except Exception:
                continue
            found.append((key, p.stat().st_mtime, Entry(p.name, m.name, m.version, p.stat().st_mtime)))
        found.sort(key=lambda t: (t[0], t[1]), reverse=True)
        bad = set(known_bad)
        good = [e for _, _, e in found if e.id not in bad] or [e for _, _, e in found]
        aside = self.root / f"{POINTER}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
        with contextlib.suppress(OSError):
            os.replace(self.pointer, aside)
        new = StoreState(active=good[0] if good else None, previous=good[1] if len(good) > 1 else None,
                         generation=int(time.time()), bad=tuple(i for i in bad if i in {e.id for _, _, e in found}))
        self._write_state(new)
        info = {"why": why, "kept_as": aside.name, "verified": [e.version for e in good],
                "active": new.active.to_dict() if new.active else None,
                "previous": new.previous.to_dict() if new.previous else None}
        if new.active is None:
            log.error("store pointer %s was unreadable (%s) and no stored version verifies: nothing to serve",
                      self.pointer, why)
        else:
            log.warning("store pointer %s was unreadable (%s): rebuilt, serving the newest verified version %s v%s "
                        "(previous %s); the damaged pointer is kept as %s", self.pointer, why, new.active.name,
                        new.active.version, new.previous.version if new.previous else "none", aside.name)
        return info

    # -- the pointer -------------------------------------------------------------
    def state(self) -> StoreState:
        try:
            raw = self.pointer.read_bytes()
        except FileNotFoundError:
            return StoreState()
        return StoreState.from_bytes(raw)

    def _write_state(self, state: StoreState) -> StoreState:
        _write_pointer(self.pointer, state.to_bytes())
        return state

    def object_path(self, object_id: str) -> Path:
        if not object_id or any(c not in "0123456789abcdef" for c in object_id):
            raise StoreError(f"invalid object id {object_id!r}")
        return self.objects / object_id

    def activate(self, entry: Entry) -> StoreState:
        """Make ``entry`` active, keep the old active as previous (one atomic pointer write)."""
        if not (self.object_path(entry.id) / MANIFEST_NAME).is_file():
            raise StoreError(f"object {entry.id[:12]} is not in the store")
        cur = self.state()
        if cur.active is not None and cur.active.id == entry.id:
            return cur
        previous = cur.active if cur.active is not None else cur.previous
        new = StoreState(
            active=replace(entry, installed_at=entry.installed_at or time.time()),
            previous=previous,
            generation=cur.generation + 1,
            bad=cur.bad,
        )
        self._write_state(new)
        failpoint("activate.written")
        self.gc()
        return new

    def rollback(self, mark_bad: bool = False) -> StoreState:
        """Swap active and previous. With ``mark_bad`` the version rolled away from is refused later."""
        cur = self.state()
        if cur.previous is None or cur.active is None:
            raise StoreError("there is no previous version to roll back to")
        if not (self.object_path(cur.previous.id) / MANIFEST_NAME).is_file():
            raise StoreError(f"the previous version {cur.previous.version} is missing from the store")
        bad = cur.bad
        if mark_bad and cur.active.id not in bad:
            bad = (bad + (cur.active.id,))[-MAX_BAD:]
        new = StoreState(active=cur.previous, previous=cur.active, generation=cur.generation + 1, bad=bad)
        return self._write_state(new)

    # -- pins: objects an install in progress needs, though the pointer does not name them yet --
    def pin(self, object_id: str) -> None:
        (self.pins / f"{self.object_path(object_id).name}.{os.getpid()}").touch()

    def unpin(self, object_id: str) -> None:
        (self.pins / f"{object_id}.{os.getpid()}").unlink(missing_ok=True)

    def pinned(self) -> set[str]:
        """Ids pinned by live processes (pins of dead processes are removed)."""
        out: set[str] = set()
        for p in self.pins.iterdir():
            object_id, _, pid = p.name.rpartition(".")
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                p.unlink(missing_ok=True)
                continue
            except (ValueError, PermissionError):
                pass
            out.add(object_id)
        return out

    def gc(self) -> None:
        """Remove objects neither the pointer nor a live install needs (moved to trash first, never half-visible)."""
        keep = self.state().kept_ids | self.pinned()
        for p in self.objects.iterdir():
            if p.name in keep:
                continue
            dest = self.trash / f"{p.name}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(p, dest)
            except OSError:
                continue
            failpoint("gc.trashed")
            shutil.rmtree(dest, ignore_errors=True)
        fsync_dir(self.objects)

    def used_bytes(self, ids: Sequence[str] | None = None) -> int:
        total = 0
        for p in self.objects.iterdir():
            if ids is None or p.name in ids:
                total += _dir_size(p)
        return total

    # -- verification ---------------------------------------------------------------
    def verify(self, object_id: str) -> Bundle:
        """Verify a stored object: its manifest hashes to its id, signature, sizes and hashes."""
        path = self.object_path(object_id)
        try:
            raw = (path / MANIFEST_NAME).read_bytes()
        except OSError:
            raise StoreError(f"object {object_id[:12]} is missing its manifest") from None
        if manifest_id(raw) != object_id:
            raise StoreError(f"object {object_id[:12]} has a manifest that does not match its id")
        try:
            return verify_bundle_dir(path, self.verify_keys, require_signature=self.require_signature)
        except BundleError as exc:
            raise StoreError(f"stored version {object_id[:12]} fails verification: {exc}") from None

    # -- staging -------------------------------------------------------------------
    def stage(self, source: str | os.PathLike, trusted_keys: Sequence[PublicKey] | None = None) -> Staged:
        """Copy a bundle dir or archive into the store and verify the copy; return it staged.

        Raises ``UpdateRejectedError`` with a named reason for anything wrong with
        the bundle itself. The verified copy is renamed into ``objects/`` whole.
        ``trusted_keys``: the only keys accepted for this bundle (TUF: those delegated to its
        model), instead of the store's trusted keys; a signature is then always required.
        """
        only = None if trusted_keys is None else list(trusted_keys)
        src = Path(source)
        work = self.staging / uuid.uuid4().hex[:12]
        try:
            if src.is_dir():
                bundle_dir = self._copy_dir(src, work)
            elif src.exists() and is_archive(src):
                keys = self.trusted_keys if only is None else only
                try:  # the manifest and (with keys) its signature are checked before any data is written
                    bundle_dir = extract_archive(src, work, max_bytes=self.quota_bytes, trusted_keys=keys or None,
                                                 require_signature=bool(keys) or only is not None)
                except UnsafeArchiveError as exc:
                    raise UpdateRejectedError(str(exc), reason="unsafe_archive") from None
                except BundleIntegrityError as exc:
                    raise UpdateRejectedError(str(exc), reason="archive_corrupt") from None
                except UnsignedBundleError as exc:
                    raise UpdateRejectedError(str(exc), reason="unsigned") from None
                except SignatureError as exc:
                    raise UpdateRejectedError(str(exc), reason="bad_signature") from None
                except BundleFormatError as exc:
                    raise UpdateRejectedError(str(exc), reason="bad_manifest") from None
            elif not src.exists():
                raise UpdateRejectedError(f"{src} does not exist", reason="not_found")
            else:
                raise UpdateRejectedError(f"{src} is neither a bundle directory nor an archive", reason="bad_format")
            failpoint("stage.copied")
            bundle = self._check(bundle_dir, only)
            object_id = manifest_id(bundle.manifest_bytes)
            size = _dir_size(bundle_dir)
            for p in bundle_dir.iterdir():
                fsync_file(p)
            fsync_dir(bundle_dir)
            failpoint("stage.synced")
            dest = self.objects / object_id
            if dest.exists():
                try:
                    self.verify(object_id)
                    shutil.rmtree(work, ignore_errors=True)
                except StoreError:  # a damaged earlier copy (bit rot): replace it with the verified one
                    replace_dir(bundle_dir, dest, aside=self.trash / f"{object_id}-{uuid.uuid4().hex[:8]}")
            else:
                os.rename(bundle_dir, dest)
            failpoint("stage.renamed")
            fsync_dir(self.objects)
            shutil.rmtree(work, ignore_errors=True)
            bundle = Bundle(dest, bundle.manifest, bundle.manifest_bytes, bundle.signer, bundle.signed)
            m = bundle.manifest
            return Staged(Entry(object_id, m.name, m.version), bundle, m, size)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def _copy_dir(self, src: Path, work: Path) -> Path:
        """Copy a bundle directory, never more than the manifest declares (+1 byte to detect excess)."""
        try:
            manifest, raw = read_manifest(src)
        except BundleFormatError as exc:
            raise UpdateRejectedError(str(exc), reason="bad_manifest") from None
        declared = sum(e.size for e in manifest.files.values())
        if declared > self.quota_bytes:
            raise UpdateRejectedError(
                f"bundle declares {declared} bytes, over the store quota of {self.quota_bytes}", reason="quota_exceeded"
            )
        work.mkdir(parents=True)
        (work / MANIFEST_NAME).write_bytes(raw)
        names = {p.name for p in src.iterdir()} - {MANIFEST_NAME}
        extra = names - set(manifest.files) - {SIGNATURE_NAME}
        if extra:
            raise UpdateRejectedError(f"bundle holds files the manifest does not list: {sorted(extra)}", reason="unexpected_file")
        if (src / SIGNATURE_NAME).is_file():
            with open(src / SIGNATURE_NAME, "rb") as fh:
                sig = fh.read(MAX_SIGNATURE_BYTES + 1)
            if len(sig) > MAX_SIGNATURE_BYTES:
                raise UpdateRejectedError("the signature file is implausibly large", reason="bad_signature")
            (work / SIGNATURE_NAME).write_bytes(sig)
        for name, entry in manifest.files.items():
            p = src / name
            if not p.is_file() or p.is_symlink():
                raise UpdateRejectedError(f"bundle file {name!r} is missing", reason="missing_file")
            with open(p, "rb") as fin, open(work / name, "wb") as fout:
                left = entry.size + 1
                while left > 0:
                    chunk = fin.read(min(left, _COPY_CHUNK))
                    if not chunk:
                        break
                    fout.write(chunk)
                    left -= len(chunk)
        return work

    def _check(self, root: Path, only: list[PublicKey] | None = None) -> Bundle:
        """Ordered checks with a named reason each: manifest, signature, sizes, extra files, hashes."""
        try:
            manifest, raw = read_manifest(root)
        except BundleFormatError as exc:
            raise UpdateRejectedError(str(exc), reason="bad_manifest") from None
        keys = self.trusted_keys if only is None else only
        require = self.require_signature or bool(keys) or only is not None
        if require:
            if not (root / SIGNATURE_NAME).is_file():
                raise UpdateRejectedError(f"bundle {manifest.name} v{manifest.version} is unsigned", reason="unsigned")
            if (root / SIGNATURE_NAME).stat().st_size > MAX_SIGNATURE_BYTES:
                raise UpdateRejectedError("the signature file is implausibly large", reason="bad_signature")
            if not keys:
                raise UpdateRejectedError("a signature is required but no trusted keys are configured", reason="no_trusted_keys")
        present = {p.name for p in root.iterdir()} - {MANIFEST_NAME, SIGNATURE_NAME}
        extra = present - set(manifest.files)
        if extra:
            raise UpdateRejectedError(f"bundle holds files the manifest does not list: {sorted(extra)}", reason="unexpected_file")
        for name, entry in manifest.files.items():
            p = root / name
            if not p.is_file():
                raise UpdateRejectedError(f"bundle file {name!r} is missing", reason="missing_file")
            size = p.stat().st_size
            if size > entry.size:
                raise UpdateRejectedError(
                    f"bundle file {name!r} is larger than the {entry.size} bytes its manifest declares", reason="file_too_large"
                )
            if size < entry.size:
                raise UpdateRejectedError(
                    f"bundle file {name!r} is {size} bytes, shorter than the {entry.size} declared", reason="file_truncated"
                )
        try:
            return verify_bundle_dir(root, keys, require_signature=require)
        except SignatureError as exc:
            raise UpdateRejectedError(str(exc), reason="bad_signature") from None
        except BundleIntegrityError as exc:
            raise UpdateRejectedError(str(exc), reason="hash_mismatch") from None
        except BundleError as exc:
            raise UpdateRejectedError(str(exc), reason="bad_bundle") from None

    def discard(self, object_id: str) -> None:
        """Drop a staged object that never became active (no-op for kept ones)."""
        self.unpin(object_id)
        if object_id in self.state().kept_ids | self.pinned():
            return
        p = self.object_path(object_id)
        if p.exists():
            dest = self.trash / f"{object_id}-{uuid.uuid4().hex[:8]}"
            os.rename(p, dest)
            shutil.rmtree(dest, ignore_errors=True)
