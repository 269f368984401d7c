"""Head-only updates: a new version that changes only a bundle's trainable head.

A bundle compiled with ``--trainable-head`` is a frozen backbone (the model file) plus a
head (``head.npz``, float32 weights). Federated fine-tuning changes the head only, so:

- :func:`update_head` (``edgefleet pack --base V1 --head NEW.npz --version 2``) makes the
  full bundle v2 from v1: the same backbone files byte for byte, the new head file, a new
  manifest (new version, smoke tests recomputed, lineage naming v1), signed.
- :func:`head_update_of` takes from v2 what a device that has v1 needs: the signed
  manifest, its signature and the head file (:class:`HeadUpdate`), a few percent of v2.
  It travels in the smaller of two forms: format 1, ``raw`` (the manifest patch in the header,
  the head file itself: the form every edgefleet reads, byte for byte as before), or format 2,
  ``xor-lzma`` (the manifest patch zlib-compressed, the head file XORed with the base's head
  file, which the device holds, and LZMA2-compressed: :func:`encode_head`). Fine-tuning moves
  every float a little, so the encoded form is usually the smaller one, and smaller than a
  bsdiff4 delta of the two archives (bsdiff4's byte differences of the floats compress worse).
  An edgefleet that reads format 1 only refuses format 2 with ``UnsupportedFormatError`` (a
  device then fetches the full bundle).
- :func:`plan_rebuild` (pure) decides on a device whether that update applies to the
  installed bundle: the manifest is signed by a trusted key, the head file is the one the
  manifest names, and every other file the manifest lists is one the installed bundle holds
  with the same sha256 and size. An encoded head is decoded from the installed head file
  (checked against the installed manifest first) after the signature is checked, never past
  the size the signed manifest gives the head file, then checked against its sha256 as a raw
  one is. :func:`rebuild_bundle` then writes the bundle directory
  (the manifest and signature bytes exactly as shipped) and verifies it exactly as a full
  download is verified (:func:`~edgefleet.bundle.verify_bundle_dir`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zlib
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
#: the format of an update that ships the head file raw (its header has no ``head_encoding``)
UPDATE_FORMAT = 1
#: the format of an update that ships the head file encoded (``head_encoding`` in its header)
ENCODED_UPDATE_FORMAT = 2
#: how the head file travels -> the format of an update shipping it so
HEAD_ENCODINGS = {"raw": UPDATE_FORMAT, "xor-lzma": ENCODED_UPDATE_FORMAT}
#: the formats this edgefleet reads
READ_FORMATS = frozenset(HEAD_ENCODINGS.values())
#: the largest head file an update may decode to (as :func:`read_head_file` caps a head file)
MAX_HEAD_FILE_BYTES = 8 * MAX_HEAD_VALUES + (1 << 20)
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
    the signature file's bytes, and the new head file as ``head_encoding`` says: ``head`` is
    the file itself (``"raw"``) or :func:`encode_head`'s encoding of it against the base's head
    file (``"xor-lzma"``; :meth:`head_file` decodes it).

    :meth:`to_bytes` is its one-file form: a canonical JSON header line, then the body. A raw
    update is format 1: the manifest patch in the header, the head file as the body (the bytes
    every edgefleet reads). An encoded one is format 2: the header names ``head_encoding`` and
    ``manifest_patch_size``; the body is the manifest patch's canonical JSON zlib-compressed
    (that many bytes), then the encoded head. ``head_size`` is the length of the head part."""

    base_manifest_sha256: str
    manifest_patch: Mapping[str, Any]
    signature: bytes | None
    head: bytes
    head_encoding: str = "raw"

    def to_bytes(self) -> bytes:
        if self.head_encoding not in HEAD_ENCODINGS:
            raise ConfigError(f"unknown head encoding {self.head_encoding!r} (one of {', '.join(HEAD_ENCODINGS)})")
        header: dict[str, Any] = {
            "kind": UPDATE_KIND,
            "format": HEAD_ENCODINGS[self.head_encoding],
            "base_manifest_sha256": self.base_manifest_sha256,
            "signature": None if self.signature is None else self.signature.decode("utf-8"),
            "head_size": len(self.head),
        }
        if self.head_encoding == "raw":
            header["manifest_patch"] = dict(self.manifest_patch)
            return canonical_json(header) + b"\n" + self.head
        patch = zlib.compress(canonical_json(dict(self.manifest_patch)), 9)
        header.update(head_encoding=self.head_encoding, manifest_patch_size=len(patch))
        return canonical_json(header) + b"\n" + patch + self.head

    @property
    def size(self) -> int:
        """Bytes shipped (:meth:`to_bytes`)."""
        return len(self.to_bytes())

    def head_file(self, base_head: bytes | None, size: int) -> bytes:
        """The new head file of ``size`` bytes (what the signed manifest gives it): ``head`` itself (raw),
        or decoded from ``base_head`` (the base's head file), bounded: nothing is decompressed past ``size``
        bytes. An encoded head needs ``base_head`` of that same size (else ``UpdateRejectedError``
        ``wrong_base``); one that does not decode is a ``BundleFormatError``, one decoding to another size a
        ``BundleIntegrityError``. The caller checks the sha256."""
        if self.head_encoding == "raw":
            return self.head
        if not 0 <= size <= MAX_HEAD_FILE_BYTES:
            raise BundleFormatError(f"the signed manifest's head file is {size} bytes, more than a head file can be "
                                    f"({MAX_HEAD_FILE_BYTES})")
        if base_head is None or len(base_head) != size:
            raise UpdateRejectedError(f"the head update's head is encoded against the installed head file, which "
                                      f"{'was not given' if base_head is None else 'is not the same size'}",
                                      reason="wrong_base")
        lzma = _lzma()
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": _LZMA_DICT}])
        try:
            xor = dec.decompress(self.head, max_length=size + 1)
        except (lzma.LZMAError, ValueError, EOFError) as exc:
            raise BundleFormatError(f"the head update's encoded head does not decode: {str(exc)[:200]}") from None
        if len(xor) > size:
            raise BundleIntegrityError(f"the head update's encoded head decodes past the {size} bytes the signed "
                                       f"manifest gives the head file")
        if not dec.eof or dec.unused_data:
            raise BundleFormatError("the head update's encoded head is truncated or has trailing bytes")
        if len(xor) != size:
            raise BundleIntegrityError(f"the head update's encoded head decodes to {len(xor)} bytes; the signed "
                                       f"manifest's head file is {size}")
        return _xor(base_head, xor)

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "the head update") -> HeadUpdate:
        """Parse :meth:`to_bytes`'s form, bounded: the header line is capped before it is parsed, the
        compressed manifest patch is never decompressed past that cap. A format this edgefleet does not
        read is an ``UnsupportedFormatError``."""
        end = data.find(b"\n", 0, MAX_UPDATE_HEADER_BYTES + 1)
        if end < 0:
            raise BundleFormatError(f"{what} has no header line within {MAX_UPDATE_HEADER_BYTES} bytes")
        header = load_json_bounded(data[:end], max_bytes=MAX_UPDATE_HEADER_BYTES, error=BundleFormatError, what=f"{what}'s header")
        if not isinstance(header, dict) or header.get("kind") != UPDATE_KIND:
            raise BundleFormatError(f"{what} is not an edgefleet head update")
        fmt = header.get("format")
        if isinstance(fmt, bool) or fmt not in READ_FORMATS:
            raise UnsupportedFormatError(f"{what} is head update format {fmt!r}; this edgefleet reads "
                                         f"{', '.join(str(f) for f in sorted(READ_FORMATS))}")
        encoding = header.get("head_encoding", "raw")
        if not isinstance(encoding, str) or HEAD_ENCODINGS.get(encoding) != fmt or (fmt == UPDATE_FORMAT and "head_encoding" in header):
            raise BundleFormatError(f"{what}'s head_encoding {encoding!r} does not go with its format {fmt}")
        base, patch, sig, size = (header.get(k) for k in ("base_manifest_sha256", "manifest_patch", "signature", "head_size"))
        body = data[end + 1 :]
        if encoding != "raw":
            n = header.get("manifest_patch_size")
            if "manifest_patch" in header or isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(body):
                raise BundleFormatError(f"{what}'s header is malformed or its manifest patch is truncated")
            patch = load_json_bounded(_inflate(body[:n], MAX_UPDATE_HEADER_BYTES, f"{what}'s manifest patch"),
                                      max_bytes=MAX_UPDATE_HEADER_BYTES, error=BundleFormatError, what=f"{what}'s manifest patch")
            body = body[n:]
        if not isinstance(base, str) or not isinstance(patch, dict) or not (sig is None or isinstance(sig, str)) or size != len(body):
            raise BundleFormatError(f"{what}'s header is malformed or its head file is truncated")
        return cls(base, patch, None if sig is None else sig.encode("utf-8"), body, encoding)


#: the encoded head's LZMA2 dictionary (a decoder allocates this much; a head's XOR needs no more)
_LZMA_DICT = 1 << 20


def _lzma() -> Any:
    try:
        import lzma
    except ImportError:  # a Python built without liblzma
        raise UnsupportedFormatError("the head update's head is LZMA-encoded, and this Python has no lzma module") from None
    return lzma


def _xor(a: bytes, b: bytes) -> bytes:
    import numpy as np

    return (np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).tobytes()


def _inflate(data: bytes, limit: int, what: str) -> bytes:
    """zlib-decompress at most ``limit`` bytes of a complete stream (a ``BundleFormatError`` otherwise)."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise BundleFormatError(f"{what} does not decompress: {exc}") from None
    if len(out) > limit:
        raise BundleFormatError(f"{what} decompresses past {limit} bytes")
    if not d.eof or d.unused_data:
        raise BundleFormatError(f"{what} is truncated or has trailing bytes")
    return out


def encode_head(base_head: bytes, head: bytes) -> bytes | None:
    """``head`` encoded against ``base_head`` (``"xor-lzma"``): the bytes XORed with the base's (a fine-tuned
    float32 weight keeps its sign, exponent and high mantissa bits, so most XORed bytes are zero), then raw
    LZMA2 whose literal contexts follow the byte's place in a 4-byte float (lc=0, lp=2, pb=2). ``None`` when
    the two files differ in size (a head-only update keeps the head's layers, so its file's size) or there
    is no lzma module."""
    if len(base_head) != len(head):
        return None
    try:
        lzma = _lzma()
    except UnsupportedFormatError:
        return None
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": _LZMA_DICT, "lc": 0, "lp": 2, "pb": 2}]
    return bytes(lzma.compress(_xor(base_head, head), format=lzma.FORMAT_RAW, filters=filters))


@dataclass(frozen=True)
class RebuildPlan:
    """A checked head-only update: the manifest it installs (and its exact bytes), the key that
    signed it (``None`` when no signature was required), the files the installed bundle gives, and
    the new head file (decoded, checked against the signed manifest)."""

    manifest: Manifest
    manifest_bytes: bytes
    signer: PublicKey | None
    from_installed: tuple[str, ...]
    head: bytes


def plan_rebuild(
    installed_manifest: bytes,
    update: HeadUpdate,
    trusted_keys: Iterable[KeySource] | KeySource | None = None,
    require_signature: bool | None = None,
    installed_head: bytes | None = None,
) -> RebuildPlan:
    """Decide whether ``update`` rebuilds into a bundle from the installed bundle whose manifest
    bytes are ``installed_manifest`` (pure: bytes in, a plan or a named error out).
    ``installed_head`` is the installed bundle's head file, needed for an update whose head is
    encoded against it (``head_encoding`` ``"xor-lzma"``).

    Refused: an update made for another base manifest or naming a file the installed bundle
    does not hold with the same sha256 and size (``UpdateRejectedError`` ``wrong_base``); a
    patch that does not apply (``BundleFormatError``); a missing or bad signature over the
    rebuilt manifest where one is required (``SignatureError``); a manifest without a head
    (``not_head_update``) or for another model (``wrong_model``); a head file that is not the
    one the signed manifest names (``BundleIntegrityError``). An encoded head: refused when
    ``installed_head`` is missing or is not the head file the installed manifest names, or not the
    size the signed manifest gives the new one (``UpdateRejectedError`` ``wrong_base``), when it does
    not decode (``BundleFormatError``) or decodes past that size (``BundleIntegrityError``; nothing is
    decompressed further).
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
    if update.head_encoding != "raw":
        base_spec = installed.head
        if base_spec is None or installed_head is None or sha256_bytes(installed_head) != base_spec.sha256 \
                or len(installed_head) != installed.files[base_spec.file].size:
            raise UpdateRejectedError("the head update's head is encoded against the installed head file, and the "
                                      "installed bundle's head file is not the one its manifest names", reason="wrong_base")
    new_head = update.head_file(installed_head, manifest.files[head.file].size)
    if sha256_bytes(new_head) != head.sha256 or len(new_head) != manifest.files[head.file].size:
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
    return RebuildPlan(manifest, manifest_bytes, signer, tuple(from_installed), new_head)


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
    from the installed bundle (and, for an encoded head, the installed head file it patches).
    Nothing is left at ``out`` when any check fails."""
    plan = plan_rebuild(installed.manifest_bytes, update, trusted_keys, require_signature, _installed_head(installed, update))
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
        _write(tmp / head.file, plan.head)
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


def _installed_head(installed: Bundle, update: HeadUpdate) -> bytes | None:
    """The installed bundle's head file when ``update``'s head is encoded against it (bounded by its manifest's size; plan_rebuild
    checks its sha256), else ``None``."""
    spec = installed.manifest.head
    if update.head_encoding == "raw" or spec is None:
        return None
    size = installed.manifest.files[spec.file].size
    try:
        with open(installed.path / spec.file, "rb") as fh:
            return fh.read(min(size, MAX_HEAD_FILE_BYTES) + 1)
    except OSError as exc:
        raise UpdateRejectedError(f"cannot read the installed head file {spec.file}: {exc.strerror}", reason="wrong_base") from None


def _write(path: Path, data: bytes) -> None:
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def head_update_of(bundle: Bundle, base: Bundle, encoding: str = "smallest") -> HeadUpdate:
    """What a device holding ``base`` needs to rebuild ``bundle`` (both verified; ``bundle`` has a head).

    ``encoding``: how the head file travels, ``"raw"`` (format 1), ``"xor-lzma"`` (encoded against
    ``base``'s head file, :func:`encode_head`; format 2) or ``"smallest"``: the encoded form when it is
    smaller than the raw one, else the raw form."""
    if encoding not in (*HEAD_ENCODINGS, "smallest"):
        raise ConfigError(f"unknown head encoding {encoding!r} (raw, xor-lzma or smallest)")
    head = bundle.manifest.head
    if head is None:
        raise ConfigError(f"{bundle.manifest.name} v{bundle.manifest.version} has no trainable head; ship the whole bundle")
    old, new = (load_json_bounded(b.manifest_bytes, max_bytes=MAX_MANIFEST_BYTES, error=BundleFormatError, what=f"{what} manifest")
                for b, what in ((base, "the base"), (bundle, "the new")))
    patch = json_diff(old, new)
    sig = bundle.path / SIGNATURE_NAME
    raw = HeadUpdate(
        base_manifest_sha256=sha256_bytes(base.manifest_bytes),
        manifest_patch=patch,
        signature=sig.read_bytes() if bundle.signed and sig.is_file() else None,
        head=(bundle.path / head.file).read_bytes(),
    )
    if encoding == "raw":
        return raw
    base_head = base.manifest.head
    patched = encode_head((base.path / base_head.file).read_bytes(), raw.head) if base_head is not None else None
    if patched is None:
        if encoding != "smallest":
            raise ConfigError(f"no {encoding} head update: the base has no head file of the new one's size, or "
                              "this Python has no lzma module")
        return raw
    encoded = replace(raw, head=patched, head_encoding=encoding if encoding != "smallest" else "xor-lzma")
    return encoded if encoding != "smallest" or encoded.size < raw.size else raw


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
           "update_head", "encode_head", "BACKBONE_METRICS", "HEAD_ENCODINGS"]
