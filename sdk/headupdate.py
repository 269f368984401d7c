"""Head-only updates: a new version that changes only a bundle's trainable head.

A bundle compiled with ``--trainable-head`` is a frozen backbone (the model file) plus a
head (``head.npz``, float32 weights). Federated fine-tuning changes the head only, so:

- :func:`update_head` (``edgefleet pack --base V1 --head NEW.npz --version 2``) makes the
  full bundle v2 from v1: the same backbone files byte for byte, the new head file, a new
  manifest (new version, smoke tests recomputed, lineage naming v1), signed.
- :func:`head_update_of` takes from v2 what a device that has v1 needs: the signed
  manifest, its signature and the head file (:class:`HeadUpdate`), a few percent of v2.
- :func:`plan_rebuild` (pure) decides on a device whether that update applies to the
  installed bundle: the manifest is signed by a trusted key, the head file is the one the
  manifest names, and every other file the manifest lists is one the installed bundle holds
  with the same sha256 and size. :func:`rebuild_bundle` then writes the bundle directory
  (the manifest and signature bytes exactly as shipped) and verifies it exactly as a full
  download is verified (:func:`~edgefleet.bundle.verify_bundle_dir`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from ._version import __version__
from .atomic import fsync_dir, replace_dir, temp_name
from .bundle import (
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    Bundle,
    open_bundle,
    parse_manifest_bytes,
    verify_bundle_dir,
    write_archive,
    write_bundle,
)
from .canonical import canonical_json, load_json_bounded, sha256_bytes
from .errors import (
    BundleFormatError,
    BundleIntegrityError,
    ConfigError,
    SignatureError,
    UnsignedBundleError,
    UnsupportedFormatError,
    UpdateRejectedError,
)
from .head import MAX_HEAD_VALUES, Head
from .keys import KeySource, PrivateKey, PublicKey, load_trusted_keys, verify_payload
from .manifest import MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest, parse_version

#: v1's metrics that still describe v2 (the backbone's); scores of v1's head do not carry over
BACKBONE_METRICS = ("variant", "quantization", "size_bytes", "gzip_bytes", "p50_latency_ms", "sparsity", "params", "head_params")


#: the first key of a head update file's header
UPDATE_KIND = "edgefleet-head-update"
UPDATE_FORMAT = 1
#: the largest header (patch and signature) a head update may have
MAX_UPDATE_HEADER_BYTES = 16 << 20


def json_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """What turns object ``old`` into ``new``, key by key: ``["=", value]`` sets a key,
    ``["-"]`` removes it, ``["~", diff]`` changes an object inside (keys equal in both are
    left out). :func:`json_patch` applies it."""
    out: dict[str, Any] = {}
    for key in sorted(set(old) | set(new)):
        if key not in new:
            out[key] = ["-"]
        elif key not in old or type(old[key]) is not type(new[key]):
            out[key] = ["=", new[key]]
        elif isinstance(new[key], dict):
            sub = json_diff(old[key], new[key])
            if sub:
                out[key] = ["~", sub]
        elif old[key] != new[key]:
            out[key] = ["=", new[key]]
    return out


def json_patch(old: Mapping[str, Any], diff: Any) -> dict[str, Any]:
    """``old`` with :func:`json_diff`'s ``diff`` applied (a new object); a malformed diff is a
    ``BundleFormatError``."""
    if not isinstance(diff, dict):
        raise BundleFormatError("a manifest patch must be an object")
    out = dict(old)
    for key, op in diff.items():
        if not isinstance(op, list) or not op or op[0] not in ("=", "-", "~") or len(op) != (1 if op[0] == "-" else 2):
            raise BundleFormatError(f"manifest patch of {key!r} is not ['=', value], ['-'] or ['~', patch]")
        if op[0] == "=":
            out[key] = op[1]
        elif op[0] == "-":
            out.pop(key, None)
        else:
            if not isinstance(out.get(key), dict):
                raise BundleFormatError(f"manifest patch changes {key!r} inside, but the base has no object there")
            out[key] = json_patch(out[key], op[1])
    return out


@dataclass(frozen=True)
class HeadUpdate:
    """What a head-only update ships: the new version's manifest as a patch of the base's
    (``base_manifest_sha256`` names the base; the signature is over the whole new manifest),
    the signature file's bytes, and the new head file.

    :meth:`to_bytes` is its one-file form: a canonical JSON header line, then the head file."""

    base_manifest_sha256: str
    manifest_patch: Mapping[str, Any]
    signature: bytes | None
    head: bytes

    def to_bytes(self) -> bytes:
        header = {
            "kind": UPDATE_KIND,
            "format": UPDATE_FORMAT,
            "base_manifest_sha256": self.base_manifest_sha256,
            "manifest_patch": dict(self.manifest_patch),
            "signature": None if self.signature is None else self.signature.decode("utf-8"),
            "head_size": len(self.head),
        }
        return canonical_json(header) + b"\n" + self.head

    @property
    def size(self) -> int:
        """Bytes shipped (:meth:`to_bytes`)."""
        return len(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "the head update") -> HeadUpdate:
        """Parse :meth:`to_bytes`'s form, bounded: the header line is capped before it is parsed."""
        end = data.find(b"\n", 0, MAX_UPDATE_HEADER_BYTES + 1)
        if end < 0:
            raise BundleFormatError(f"{what} has no header line within {MAX_UPDATE_HEADER_BYTES} bytes")
        header = load_json_bounded(data[:end], max_bytes=MAX_UPDATE_HEADER_BYTES, error=BundleFormatError, what=f"{what}'s header")
        if not isinstance(header, dict) or header.get("kind") != UPDATE_KIND:
            raise BundleFormatError(f"{what} is not an edgefleet head update")
        if header.get("format") != UPDATE_FORMAT:
            raise UnsupportedFormatError(f"{what} is head update format {header.get('format')!r}; this edgefleet reads {UPDATE_FORMAT}")
        base, patch, sig, size = (header.get(k) for k in ("base_manifest_sha256", "manifest_patch", "signature", "head_size"))
        head = data[end + 1 :]
        if not isinstance(base, str) or not isinstance(patch, dict) or not (sig is None or isinstance(sig, str)) or size != len(head):
            raise BundleFormatError(f"{what}'s header is malformed or its head file is truncated")
        return cls(base, patch, None if sig is None else sig.encode("utf-8"), head)


@dataclass(frozen=True)
class RebuildPlan:
    """A checked head-only update: the manifest it installs (and its exact bytes), the key that
    signed it (``None`` when no signature was required), and the files the installed bundle gives."""

    manifest: Manifest
    manifest_bytes: bytes
    signer: PublicKey | None
    from_installed: tuple[str, ...]


def plan_rebuild(
    installed_manifest: bytes,
    update: HeadUpdate,
    trusted_keys: Iterable[KeySource] | KeySource | None = None,
    require_signature: bool | None = None,
) -> RebuildPlan:
    """Decide whether ``update`` rebuilds into a bundle from the installed bundle whose manifest
    bytes are ``installed_manifest`` (pure: bytes in, a plan or a named error out).

    Refused: an update made for another base manifest or naming a file the installed bundle
    does not hold with the same sha256 and size (``UpdateRejectedError`` ``wrong_base``); a
    patch that does not apply (``BundleFormatError``); a missing or bad signature over the
    rebuilt manifest where one is required (``SignatureError``); a manifest without a head
    (``not_head_update``) or for another model (``wrong_model``); a head file that is not the
    one the signed manifest names (``BundleIntegrityError``).
    """
    if sha256_bytes(installed_manifest) != update.base_manifest_sha256:
        raise UpdateRejectedError("the head update was made for another base bundle (its base manifest's sha256 "
                                  "differs from the installed one's)", reason="wrong_base")
    installed = parse_manifest_bytes(installed_manifest, "the installed manifest")
    base_doc = load_json_bounded(installed_manifest, max_bytes=MAX_MANIFEST_BYTES, error=BundleFormatError,
                                 what="the installed manifest")
    try:
        manifest_bytes = canonical_json(json_patch(base_doc, update.manifest_patch))
    except (TypeError, ValueError, RecursionError) as exc:
        raise BundleFormatError(f"the head update's manifest patch does not apply: {str(exc)[:200]}") from None
    keys = load_trusted_keys(trusted_keys)
    must_sign = bool(keys) if require_signature is None else require_signature
    signer = None
    if must_sign:
        if update.signature is None:
            raise UnsignedBundleError("the head update is unsigned, but a signature from a trusted key is required")
        if not keys:
            raise SignatureError("a signature is required but no trusted keys were given")
        doc = load_json_bounded(update.signature, max_bytes=MAX_SIGNATURE_BYTES, max_depth=4, error=SignatureError,
                                what="the head update's signature")
        signer = verify_payload(doc, manifest_bytes, keys)
    manifest = parse_manifest_bytes(manifest_bytes, "the head update's manifest")
    head = manifest.head
    if head is None:
        raise UpdateRejectedError(f"{manifest.name} v{manifest.version} has no trainable head: not a head-only update",
                                  reason="not_head_update")
    if manifest.name != installed.name:
        raise UpdateRejectedError(f"the update is for model {manifest.name!r}; the installed bundle is {installed.name!r}",
                                  reason="wrong_model")
    if sha256_bytes(update.head) != head.sha256 or len(update.head) != manifest.files[head.file].size:
        raise BundleIntegrityError(f"the update's head file does not match its sha256 in the signed manifest of "
                                   f"{manifest.name} v{manifest.version}")
    from_installed = []
    for name, entry in sorted(manifest.files.items()):
        if name == head.file:
            continue
        have = installed.files.get(name)
        if have != entry:
            raise UpdateRejectedError(
                f"{manifest.name} v{manifest.version} is built on another backbone: its file {name!r} "
                + ("is not in" if have is None else "differs from the one in")
                + f" the installed v{installed.version} (a head-only update applies to the bundle it was made from)",
                reason="wrong_base",
            )
        from_installed.append(name)
    return RebuildPlan(manifest, manifest_bytes, signer, tuple(from_installed))


def rebuild_bundle(
    installed: Bundle,
    update: HeadUpdate,
    out: str | os.PathLike[str],
    trusted_keys: Iterable[KeySource] | KeySource | None = None,
    require_signature: bool | None = None,
) -> Bundle:
    """Write the bundle ``update`` makes of the ``installed`` one at ``out`` (a new directory)
    and return it verified exactly as a full download is (:func:`verify_bundle_dir`): the
    rebuilt manifest and the signature as signed, the new head file, the other files copied
    from the installed bundle. Nothing is left at ``out`` when any check fails."""
    plan = plan_rebuild(installed.manifest_bytes, update, trusted_keys, require_signature)
    target = Path(out)
    if target.exists():
        raise ConfigError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target)
    tmp.mkdir()
    try:
        head = plan.manifest.head
        assert head is not None  # plan_rebuild refuses a manifest without one
        _write(tmp / MANIFEST_NAME, plan.manifest_bytes)
        if update.signature is not None:
            _write(tmp / SIGNATURE_NAME, update.signature)
        _write(tmp / head.file, update.head)
        for name in plan.from_installed:
            shutil.copyfile(installed.path / name, tmp / name)
        fsync_dir(tmp)
        verified = verify_bundle_dir(tmp, load_trusted_keys(trusted_keys), require_signature)
        replace_dir(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace(verified, path=target)


def _write(path: Path, data: bytes) -> None:
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def head_update_of(bundle: Bundle, base: Bundle) -> HeadUpdate:
    """What a device holding ``base`` needs to rebuild ``bundle`` (both verified; ``bundle`` has a head)."""
    head = bundle.manifest.head
    if head is None:
        raise ConfigError(f"{bundle.manifest.name} v{bundle.manifest.version} has no trainable head; ship the whole bundle")
    old, new = (load_json_bounded(b.manifest_bytes, max_bytes=MAX_MANIFEST_BYTES, error=BundleFormatError, what=f"{what} manifest")
                for b, what in ((base, "the base"), (bundle, "the new")))
    patch = json_diff(old, new)
    sig = bundle.path / SIGNATURE_NAME
    return HeadUpdate(
        base_manifest_sha256=sha256_bytes(base.manifest_bytes),
        manifest_patch=patch,
        signature=sig.read_bytes() if bundle.signed and sig.is_file() else None,
        head=(bundle.path / head.file).read_bytes(),
    )


def read_head_file(path: str | os.PathLike[str], base: Manifest) -> Head:
    """A new head's weights from an ``.npz`` (one float array per ``"{layer}.{param}"``, the
    shapes of ``base``'s head), as a :class:`Head` with ``base``'s layers."""
    spec = base.head
    if spec is None:
        raise ConfigError(f"{base.name} v{base.version} has no trainable head: compile it with --trainable-head N")
    p = Path(path)
    try:
        size, cap = p.stat().st_size, 8 * MAX_HEAD_VALUES + (1 << 20)
        if size > cap:
            raise ConfigError(f"{p} is {size} bytes, more than a head file can be ({cap})")
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the head file {p}: {exc.strerror}") from None
    return Head.from_npz(data, spec.layers, error=ConfigError, what=f"head file {p}")


def update_head(
    base: str | os.PathLike[str],
    head: Head | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    version: str,
    private_key: PrivateKey | None = None,
    trusted_keys: Iterable[KeySource] | KeySource | None = None,
    archive: bool = False,
    overwrite: bool = False,
    metrics: Mapping[str, Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> tuple[Bundle, Path | None]:
    """The bundle ``base`` (v1, with a head) with a new ``head``, as ``version``: the same
    backbone files, the new head file, smoke tests recomputed on v1's smoke inputs, v1's
    metrics that describe the backbone (plus ``metrics``), lineage naming v1; signed with
    ``private_key``. With ``archive=True`` also ``<out>.efb``."""
    try:
        new_version = parse_version(version)
    except Exception as exc:
        raise ConfigError(str(exc)) from None
    b, tmp = open_bundle(base, trusted_keys)
    try:
        m = b.manifest
        if m.head is None:
            raise ConfigError(f"{base}: {m.name} v{m.version} has no trainable head: compile it with --trainable-head N")
        if new_version <= m.version_tuple:
            raise ConfigError(f"version {version} must be newer than the base's {m.version}")
        new_head = read_head_file(head, m) if not isinstance(head, Head) else head
        if new_head.layers != m.head.layers:
            raise ConfigError("the new head has other layers than the base's; a head-only update keeps the layers")
        return _write_update(b, new_head, Path(out), version, private_key, archive, overwrite, metrics, lineage)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _write_update(b: Bundle, new_head: Head, out: Path, version: str, private_key: PrivateKey | None, archive: bool,
                  overwrite: bool, metrics: Mapping[str, Any] | None, lineage: Mapping[str, Any] | None) -> tuple[Bundle, Path | None]:
    from .model import smoke_array
    from .pack import head_spec, make_smoke_tests

    m = b.manifest
    assert m.head is not None
    head_bytes = new_head.to_npz()
    spec = head_spec(new_head, m.outputs[0], head_bytes)
    files: dict[str, str | os.PathLike[str] | bytes] = {name: b.path / name for name in m.files if name != m.head.file}
    files[spec.file] = head_bytes
    entries: dict[str, FileEntry] = {**{k: v for k, v in m.files.items() if k != m.head.file},
                                     spec.file: FileEntry(spec.sha256, len(head_bytes))}
    parent = {
        "name": m.name,
        "version": m.version,
        "manifest_sha256": hashlib.sha256(b.manifest_bytes).hexdigest(),
        "head_sha256": m.head.sha256,
    }
    new_lineage = {**dict(m.lineage), "parent_version": m.version, "head_update": {"base": parent, "packed_by": f"edgefleet {__version__}"},
                   **dict(lineage or {})}
    manifest = replace(
        m,
        version=version,
        files=entries,
        head=spec,
        metrics={**{k: v for k, v in m.metrics.items() if k in BACKBONE_METRICS}, **dict(metrics or {})},
        lineage=new_lineage,
        created_at=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        smoke_tests=None,
    )
    sample = None
    if m.smoke_tests and isinstance(m.smoke_tests.get("inputs"), dict):
        try:
            sample = {s.name: smoke_array(m.smoke_tests["inputs"][s.name], s) for s in m.inputs}
        except (KeyError, TypeError, ValueError):
            sample = None  # v1's smoke inputs unusable: synthetic ones
    smoke = make_smoke_tests(b.model_path, manifest, sample, head=new_head)
    manifest = replace(manifest, smoke_tests=smoke)
    bundle = write_bundle(out, manifest, files, private_key=private_key, overwrite=overwrite)
    for name, entry in m.files.items():  # the backbone is v1's, byte for byte
        if name != m.head.file and bundle.manifest.files[name] != entry:
            raise BundleIntegrityError(f"{name!r} changed while it was copied from the base bundle")
    archive_path = write_archive(bundle.path, Path(str(out).rstrip("/") + ".efb")) if archive else None
    return bundle, archive_path


__all__ = ["HeadUpdate", "RebuildPlan", "plan_rebuild", "rebuild_bundle", "head_update_of", "read_head_file",
           "update_head", "BACKBONE_METRICS"]
