"""Head-only updates as deltas: when a new version only changes a bundle's trainable head, the
coordinator offers the device the head update file (:mod:`edgefleet.headupdate`: the manifest as a
patch of the installed one's, its signature, the head file raw or encoded against the installed head
file, whichever is smaller) where it would offer a bsdiff4 delta.

The job carries it like a delta (``Desired.delta`` from ``delta_base``: the archive the device
holds) and the device tells the two apart by the first bytes (:func:`is_head_update`). The result
is the same in both cases, the target's ``.efb`` byte for byte, checked against the job's size and
sha256 (:func:`apply_head_update`) and then installed as a full download is:

- :func:`make_head_update` (coordinator): both archives verified with the coordinator's keys; the
  update is offered only when the device's base rebuilds into exactly the target archive (rebuilt
  here once and compared), else ``None`` (a bsdiff4 delta or the full file then);
- :func:`apply_head_update` (device): :func:`~edgefleet.headupdate.rebuild_bundle` from the
  installed bundle (the signature over the rebuilt manifest checked with the device's trusted keys,
  every other file the installed one, an encoded head decoded from the installed head file), then the
  deterministic archive of it. Every refusal is a ``SyncError`` naming it (a format this edgefleet does
  not read included): the device then fetches the full file, as for a delta that does not apply.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Iterable

from edgefleet.bundle import MAX_MANIFEST_BYTES, Bundle, open_bundle, write_archive
from edgefleet.errors import EdgefleetError, SyncError
from edgefleet.headupdate import HeadUpdate, head_update_of, rebuild_bundle
from edgefleet.keys import KeySource
from edgefleet.manifest import MANIFEST_NAME

from .protocol import FileInfo

#: how a head update file starts (canonical JSON: its header's keys sorted)
MAGIC = b'{"base_manifest_sha256":'


def is_head_update(data: bytes) -> bool:
    """Whether ``data`` is a head update file (else it is a bsdiff4 patch)."""
    return data.startswith(MAGIC)


def declares_head(archive: bytes) -> bool:
    """Whether an ``.efb``'s manifest (its first member) declares a trainable head: a cheap look before a bundle
    is extracted and verified (False for anything unexpected; the full checks come after a True)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST_NAME or not first.isfile() or first.size > MAX_MANIFEST_BYTES:
                return False
            fh = tar.extractfile(first)
            doc = json.loads(fh.read(MAX_MANIFEST_BYTES + 1)) if fh is not None else None
    except (tarfile.TarError, OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("head"), dict)


def _archive_of(bundle: Bundle, work: Path) -> bytes:
    return write_archive(bundle.path, work / "rebuilt.efb").read_bytes()


def make_head_update(base_archive: bytes, target_archive: bytes,
                     trusted_keys: Iterable[KeySource] | KeySource | None = None) -> bytes | None:
    """The head update that turns the bundle of ``base_archive`` into ``target_archive`` (``.efb`` bytes both),
    or ``None`` when the target is not a head-only update of that base (no head, another backbone, another
    model) or its rebuild would not be the target archive byte for byte."""
    if not (declares_head(target_archive) and declares_head(base_archive)):
        return None
    with tempfile.TemporaryDirectory(prefix="edgefleet-headdelta-") as tmp:
        work = Path(tmp)
        (work / "base.efb").write_bytes(base_archive)
        (work / "target.efb").write_bytes(target_archive)
        try:
            base, keep_base = open_bundle(work / "base.efb", trusted_keys, workdir=work)
            target, keep_target = open_bundle(work / "target.efb", trusted_keys, workdir=work)
            if target.manifest.head is None or base.manifest.head is None:
                return None
            update = head_update_of(target, base)
            data = update.to_bytes()
            rebuilt = rebuild_bundle(base, HeadUpdate.from_bytes(data), work / "rebuilt", trusted_keys)
            same = _archive_of(rebuilt, work) == target_archive
            del keep_base, keep_target  # the extracted bundles, needed until here
        except EdgefleetError:
            return None
    return data if same and len(data) < len(target_archive) else None


def apply_head_update(installed: Bundle, data: bytes, expected: FileInfo,
                      trusted_keys: Iterable[KeySource] | KeySource | None = None,
                      require_signature: bool | None = None,
                      workdir: str | os.PathLike[str] | None = None) -> bytes:
    """The archive a head update makes of the ``installed`` bundle, checked against the job's ``expected`` file
    (size and sha256); a ``SyncError`` naming what failed otherwise."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-headdelta-", dir=workdir) as tmp:
        work = Path(tmp)
        try:
            update = HeadUpdate.from_bytes(data, "the head update")
            rebuilt = rebuild_bundle(installed, update, work / "rebuilt", trusted_keys, require_signature)
            out = _archive_of(rebuilt, work)
        except EdgefleetError as exc:
            raise SyncError(f"head update does not apply: {exc}") from None
    if len(out) != expected.size or hashlib.sha256(out).hexdigest() != expected.file_id:
        raise SyncError("head update result does not match the declared file")
    return out


__all__ = ["MAGIC", "is_head_update", "declares_head", "make_head_update", "apply_head_update"]
