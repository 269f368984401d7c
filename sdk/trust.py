"""TUF metadata for model bundles: the repository side and verification against it.

Built on python-tuf (``tuf.api.metadata`` for roles, keys, signatures, thresholds and
expiry; ``tuf.ngclient.Updater`` for the client workflow). Nothing here re-implements
a signature, threshold or version check that python-tuf makes.

Repository layout (consistent snapshots, so readers never see a half-updated state)::

    DIR/metadata/N.root.json        every root version (the chain a device walks), root.json = newest
    DIR/metadata/N.targets.json     top-level targets: only delegations, one per model name
    DIR/metadata/N.MODEL.json       a model's delegated targets: NAME/VERSION.efb (length, sha256)
    DIR/metadata/N.snapshot.json    versions of every targets metadata
    DIR/metadata/timestamp.json     version, length and sha256 of the newest snapshot
    DIR/targets/MODEL/SHA256.VERSION.efb   the bundle archives (and deltas), content-addressed

Keys and roles:

- **root**: a threshold of offline Ed25519 keys (``keys root-init``); rotated by
  ``keys rotate-root``, which writes ``N+1.root.json`` signed by a threshold of the old
  *and* of the new root keys, so a device holding any older root walks the chain.
- **targets**: the same offline keys and threshold as root (decided: delegating a model
  name to a key is as sensitive as root itself and just as rare, so it needs the same
  ceremony; a rotation of root re-signs targets with the new keys). Top-level targets
  lists no files, only delegations.
- **one delegated role per model name** (``keys delegate``): role ``NAME``, path pattern
  ``NAME/*``, *terminating*, its own keys and threshold. A model key signs only the models
  delegated to it: its signature on another model's metadata counts for nothing, and a
  target it lists outside ``NAME/*`` is never consulted. ``keys revoke`` removes a key
  from a role and records it (with the public key) under ``x-edgefleet-revoked`` in the
  signed targets metadata, so a refusal can say "revoked" rather than "unknown key".
- **rollback** (``repo delegate-rollback``): the role whose keys sign rollback orders (the
  coordinator's ``--signing-key``), delegated from top-level targets with its own keys and
  threshold. It delegates *no paths* (``paths: []``), so its keys list no target and sign no
  bundle; no model key, root key or online key may be one of its keys, nor one of its keys a
  model key. It has no metadata file of its own: its keys and threshold are in the signed
  top-level targets, which a device refreshes with python-tuf, and a device in TUF mode
  accepts a rollback order only when python-tuf finds a threshold of this role's keys among
  the order's signatures (:meth:`TrustClient.verify_rollback_order`). ``rollback`` is
  therefore not a model name.
- **snapshot and timestamp**: the coordinator's online key only, which appears in no
  other role (root-init and rotate-root refuse it as a root key, delegate as a model key).
  Short expiry (timestamp 1 day, snapshot 7 days by default); ``repo publish`` re-signs
  them and is what the coordinator runs periodically.

Clock-skew policy (expiry):

- Metadata is checked at ``reference = max(clock, floor) - skew`` where ``skew`` is
  :data:`DEFAULT_CLOCK_SKEW` (5 minutes, ``--clock-skew``): metadata that expired less
  than ``skew`` ago is still accepted, so a device whose clock runs a little fast is not
  locked out; expired beyond that is :class:`MetadataExpiredError` (the freeze attack).
- ``floor`` is the newest reference time this verifier has used successfully (the file
  ``clock-floor`` in its state directory), and never earlier than :data:`CLOCK_FLOOR`.
  A device with no reliable clock (no RTC, clock reset to 1970 after power loss) therefore
  checks expiry as of the last time it verified anything: it refuses metadata that had
  expired by then and never goes back in time, but cannot detect a freeze that started
  after that moment. It does not install "whatever is offered" and it does not stop serving.
- A clock far in the future makes everything look expired: updates are refused with the
  reference time in the message and the floor does not move (it only moves on success),
  so fixing the clock recovers the device.
- Rollback protection does not depend on the clock: the versions of root, timestamp,
  snapshot and targets a verifier has seen are persisted in its state directory.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator, Mapping, Sequence, TypeVar, Union
from urllib import parse

from .atomic import write_atomic
from .errors import (
    BundleFormatError,
    ConfigError,
    MetadataExpiredError,
    MetadataFormatError,
    MixAndMatchError,
    RevokedKeyError,
    RollbackError,
    TargetMismatchError,
    ThresholdError,
    TrustError,
    UnknownModelError,
    UnknownTargetError,
    WrongModelError,
)
from .keys import PrivateKey, PublicKey, load_private_key_bytes, load_public_key

if TYPE_CHECKING:  # python-tuf is imported where it is used (device/cloud extras)
    from securesystemslib.signer import Signer
    from tuf.api.metadata import DelegatedRole, Key, Metadata, Root, Snapshot, TargetFile, Targets, Timestamp

#: A role's payload type, as python-tuf's ``Metadata[T]`` takes it.
_Role = TypeVar("_Role", "Root", "Timestamp", "Snapshot", "Targets")
#: Metadata of any role (:meth:`Repository.load`).
AnyRoleMetadata = Union["Metadata[Root]", "Metadata[Timestamp]", "Metadata[Snapshot]", "Metadata[Targets]"]

UTC = dt.timezone.utc
METADATA_DIR = "metadata"
TARGETS_DIR = "targets"
TOP_LEVEL_ROLES = ("root", "targets", "snapshot", "timestamp")
#: The delegated role whose keys sign rollback orders (no paths: it signs no target).
ROLLBACK_ROLE = "rollback"
#: Signatures an order may carry (a threshold of the rollback role's keys); more is malformed.
MAX_ORDER_SIGNATURES = 16
REVOKED_FIELD = "x-edgefleet-revoked"
DEFAULT_CLOCK_SKEW = dt.timedelta(minutes=5)
CLOCK_FLOOR = dt.datetime(2025, 1, 1, tzinfo=UTC)
CLOCK_FLOOR_FILE = "clock-floor"
DEFAULT_EXPIRY = {
    "root": dt.timedelta(days=365),
    "targets": dt.timedelta(days=365),
    "model": dt.timedelta(days=365),
    "snapshot": dt.timedelta(days=7),
    "timestamp": dt.timedelta(days=1),
}
MAX_BUNDLE_BYTES = 1 << 30
MAX_KEY_FILE_BYTES = 64 << 10
MAX_MANIFEST_PEEK_BYTES = 16 << 20
_CHUNK = 1 << 16
_DURATION_RE = re.compile(r"^\s*(\d{1,7})\s*([smhdw]?)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}


# ---------------------------------------------------------------- small helpers


def parse_duration(text: str | dt.timedelta, what: str = "duration") -> dt.timedelta:
    """``365d``, ``12h``, ``30m``, ``90s``, ``2w`` (a bare number is days)."""
    if isinstance(text, dt.timedelta):
        return text
    m = _DURATION_RE.match(str(text))
    if not m:
        raise ConfigError(f"{what} {text!r}: expected a number with a unit s, m, h, d or w (e.g. 365d)")
    return dt.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def _now() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


def _fmt(t: dt.datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class KeyArg:
    """A key given on the command line: the public key, and the private key if the file held one."""

    public: PublicKey
    private: PrivateKey | None
    source: str

    @property
    def keyid(self) -> str:
        return tuf_key(self.public).keyid


def load_key_arg(path: str | os.PathLike[str]) -> KeyArg:
    """A PEM file holding an Ed25519 private key (it can sign) or public key (listed only)."""
    from .keys import _read_key_file

    p = Path(path)
    data = _read_key_file(p, "key")  # bounded; a FIFO or device is refused without blocking
    try:
        private = load_private_key_bytes(data)
        return KeyArg(private.public, private, str(p))
    except ConfigError:
        pass
    try:
        return KeyArg(load_public_key(data), None, str(p))
    except ConfigError:
        raise ConfigError(f"{p} is not a PEM Ed25519 private or public key") from None


def tuf_key(public: PublicKey) -> Key:
    from securesystemslib.signer import SSlibKey

    return SSlibKey.from_crypto(public.key)


def _signer(private: PrivateKey) -> Signer:
    from securesystemslib.signer import CryptoSigner, SSlibKey

    return CryptoSigner(private.key, SSlibKey.from_crypto(private.key.public_key()))


def edge_key(key: Key) -> PublicKey | None:
    """The edgefleet key for a TUF Ed25519 key (None for other key types)."""
    if key.keytype != "ed25519":
        return None
    try:
        return load_public_key(bytes.fromhex(key.keyval["public"]))
    except (KeyError, ValueError, ConfigError):
        return None


def _signed_by(md: Metadata[_Role], keys: dict[str, Key]) -> list[str]:
    """Key ids among ``keys`` whose signature on ``md`` verifies (diagnosis only)."""
    from securesystemslib.exceptions import UnverifiedSignatureError

    found = []
    for keyid, sig in md.signatures.items():
        key = keys.get(keyid)
        if key is None:
            continue
        try:
            key.verify_signature(sig, md.signed_bytes)
            found.append(keyid)
        except UnverifiedSignatureError:
            continue
    return found


def _copy_of(src: Path) -> Callable[[BinaryIO], None]:
    """The content of ``src`` for :func:`write_atomic`, streamed."""

    def copy(fh: BinaryIO) -> None:
        with open(src, "rb") as f:
            shutil.copyfileobj(f, fh)

    return copy


def _check_model_name(model: str) -> str:
    from .manifest import check_name

    try:
        check_name(model, "model name")
    except BundleFormatError as exc:
        raise ConfigError(str(exc)) from None
    if model in TOP_LEVEL_ROLES or model == ROLLBACK_ROLE:
        raise ConfigError(f"model name {model!r} is reserved for a TUF role")
    return model


def _regular_file_size(path: Path, what: str, cap: int, too_big: type[Exception] = ConfigError) -> int:
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {path} is not a regular file")
    if st.st_size > cap:
        raise too_big(f"{what} {path} is {st.st_size} bytes, over the {cap}-byte cap")
    return st.st_size


def _open_regular(path: Path) -> int:
    """Open without blocking on a FIFO or following a symlink; the caller closes the fd."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return fd


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with os.fdopen(_open_regular(path), "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def peek_bundle_identity(archive: str | os.PathLike[str]) -> tuple[str, str]:
    """(model name, version) from an ``.efb`` archive's first member, bounded.

    Only a lookup key: whatever it says, the archive must then match the signed target's
    length and sha256, and its verified manifest must name the same model and version.
    """
    from .manifest import check_name, parse_version

    p = Path(archive)
    _regular_file_size(p, "bundle", MAX_BUNDLE_BYTES)
    try:
        with os.fdopen(_open_regular(p), "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            member = tar.next()
            if member is None or member.name != "manifest.json" or not member.isreg():
                raise BundleFormatError(f"{p}: the first archive member is not manifest.json")
            if member.size > MAX_MANIFEST_PEEK_BYTES:
                raise BundleFormatError(f"{p}: manifest.json is larger than {MAX_MANIFEST_PEEK_BYTES} bytes")
            src = tar.extractfile(member)
            raw = src.read(member.size) if src is not None else b""
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleFormatError(f"{p} is not a readable .efb archive: {exc}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BundleFormatError(f"{p}: manifest.json is not valid JSON") from None
    if not isinstance(data, dict):
        raise BundleFormatError(f"{p}: manifest.json is not an object")
    name = check_name(data.get("name"), "model name")
    version = data.get("version")
    if not isinstance(version, str) or len(version) > 64:
        raise BundleFormatError(f"{p}: manifest version is missing or too long")
    parse_version(version)
    return name, version


def target_path(model: str, version: str) -> str:
    return f"{model}/{version}.efb"


# ---------------------------------------------------------------- repository side


@dataclass
class Published:
    """What a repository operation wrote (for the CLI to print)."""

    written: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Repository:
    """A TUF repository directory of edgefleet bundles (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.metadata = self.path / METADATA_DIR
        self.targets = self.path / TARGETS_DIR

    # -- storage

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def versions(self, role: str) -> list[int]:
        suffix = f".{parse.quote(role, '')}.json"
        out = []
        if self.metadata.is_dir():
            for p in self.metadata.iterdir():
                head = p.name[: -len(suffix)] if p.name.endswith(suffix) else ""
                if head.isdigit():
                    out.append(int(head))
        return sorted(out)

    def latest_version(self, role: str) -> int:
        v = self.versions(role)
        return v[-1] if v else 0

    def file_for(self, role: str, version: int | None = None) -> Path:
        if role == "timestamp":
            return self.metadata / "timestamp.json"
        if version is None:
            version = self.latest_version(role)
        return self.metadata / f"{version}.{parse.quote(role, '')}.json"

    def load(self, role: str, version: int | None = None) -> AnyRoleMetadata:
        """``role``'s metadata (its newest version unless ``version``): root, timestamp and snapshot by
        name, any other role is targets metadata (the top-level one or a delegated model's)."""
        from tuf.api.metadata import Root, Snapshot, Targets, Timestamp

        if role == "root":
            return self.load_as(role, Root, version)
        if role == "timestamp":
            return self.load_as(role, Timestamp, version)
        if role == "snapshot":
            return self.load_as(role, Snapshot, version)
        return self.load_as(role, Targets, version)

    def load_as(self, role: str, kind: type[_Role], version: int | None = None) -> Metadata[_Role]:
        """``role``'s metadata, which must be of type ``kind`` (``MetadataFormatError`` otherwise)."""
        path = self.file_for(role, version)
        try:
            size = _regular_file_size(path, f"{role} metadata", 16 << 20, MetadataFormatError)
            try:
                with os.fdopen(_open_regular(path), "rb") as fh:
                    data = fh.read(size + 1)
            except OSError as exc:
                raise ConfigError(f"cannot read {path}: {exc}") from None
        except ConfigError:
            if not path.exists():
                raise ConfigError(
                    f"{self.path} has no {role} metadata ({path.name}); create the repository with "
                    "'edgefleet keys root-init'"
                ) from None
            raise
        return _parse_metadata(data, kind, str(path))

    def write_role(self, role: str, md: Metadata[_Role], published: Published | None = None) -> Path:
        from tuf.api.serialization.json import JSONSerializer

        path = self.file_for(role, md.signed.version)
        write_atomic(path, md.to_bytes(JSONSerializer(compact=False)), parents=True)
        if role == "root":
            write_atomic(self.metadata / "root.json", path.read_bytes(), parents=True)
        if published is not None:
            published.written.append(str(path.relative_to(self.path)))
        return path

    def root(self) -> Metadata[Root]:
        from tuf.api.metadata import Root

        return self.load_as("root", Root)

    def top_targets(self) -> Metadata[Targets]:
        from tuf.api.metadata import Targets

        return self.load_as("targets", Targets)

    def model_roles(self) -> dict[str, DelegatedRole]:
        """The delegated model roles (every delegation but the rollback role's)."""
        dl = self.top_targets().signed.delegations
        return {k: v for k, v in dl.roles.items() if k != ROLLBACK_ROLE} if dl is not None and dl.roles else {}


def _parse_metadata(data: bytes, kind: type[_Role], what: str) -> Metadata[_Role]:
    """``data`` as python-tuf metadata of payload type ``kind``; ``MetadataFormatError`` naming ``what``
    when it is not valid TUF metadata or holds another role's."""
    from tuf.api.metadata import Metadata
    from tuf.api.serialization import DeserializationError

    try:
        md: Metadata[_Role] = Metadata.from_bytes(data)  # python-tuf's way: Metadata[T] claimed, checked below
    except DeserializationError as exc:
        raise MetadataFormatError(f"{what} is not valid TUF metadata: {exc}") from None
    if not isinstance(md.signed, kind):
        raise MetadataFormatError(f"{what} holds {md.signed.type} metadata, not {kind.type}")
    return md


def _sign(md: Metadata[_Role], signers: Sequence[PrivateKey]) -> None:
    seen: set[str] = set()
    for private in signers:
        keyid = tuf_key(private.public).keyid
        if keyid in seen:
            continue
        seen.add(keyid)
        md.sign(_signer(private), append=True)


def _require_threshold(delegator: Root | Targets, role: str, md: Metadata[_Role], what: str) -> None:
    """python-tuf's own threshold check, turned into a named error before anything is written."""
    from tuf.api.exceptions import UnsignedMetadataError

    try:
        delegator.verify_delegate(role, md.signed_bytes, md.signatures)
    except UnsignedMetadataError as exc:
        raise ThresholdError(f"{what}: {exc}; give more of its keys") from None


def _privates(keys: Sequence[KeyArg]) -> list[PrivateKey]:
    return [k.private for k in keys if k.private is not None]


def _unique(keys: Sequence[KeyArg], what: str) -> list[KeyArg]:
    ids = [k.keyid for k in keys]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"the same {what} key is given twice")
    return list(keys)


def init_repository(
    repo: str | os.PathLike[str],
    root_keys: Sequence[KeyArg],
    threshold: int,
    online_key: KeyArg,
    expires: dt.timedelta = DEFAULT_EXPIRY["root"],
    targets_expires: dt.timedelta = DEFAULT_EXPIRY["targets"],
    snapshot_expires: dt.timedelta = DEFAULT_EXPIRY["snapshot"],
    timestamp_expires: dt.timedelta = DEFAULT_EXPIRY["timestamp"],
) -> Published:
    """Create ``1.root.json`` and ``1.targets.json`` (and snapshot/timestamp when the
    online key given is a private key)."""
    from tuf.api.metadata import Metadata, Root, Targets

    r = Repository(repo)
    root_keys = _unique(root_keys, "root")
    if not root_keys:
        raise ConfigError("give at least one --root-key")
    if not 1 <= threshold <= len(root_keys):
        raise ConfigError(f"--threshold {threshold}: must be between 1 and the {len(root_keys)} root key(s)")
    if online_key.keyid in {k.keyid for k in root_keys}:
        raise ConfigError("the online key must not be a root key: it signs snapshot and timestamp only")
    published = Published()
    with r.locked():
        if r.versions("root"):
            raise ConfigError(f"{r.path} already holds root metadata; rotate it with 'edgefleet keys rotate-root'")
        now = _now()
        root = Root(expires=now + expires, consistent_snapshot=True)
        for k in root_keys:
            root.add_key(tuf_key(k.public), "root")
            root.add_key(tuf_key(k.public), "targets")
        root.roles["root"].threshold = threshold
        root.roles["targets"].threshold = threshold
        root.add_key(tuf_key(online_key.public), "snapshot")
        root.add_key(tuf_key(online_key.public), "timestamp")
        root_md = Metadata(root)
        _sign(root_md, _privates(root_keys))
        _require_threshold(root, "root", root_md, f"root needs {threshold} of its {len(root_keys)} keys to sign")
        targets_md = Metadata(Targets(expires=now + targets_expires))
        _sign(targets_md, _privates(root_keys))
        _require_threshold(root, "targets", targets_md, "targets (signed by the root keys)")
        r.write_role("root", root_md, published)
        r.write_role("targets", targets_md, published)
        r.targets.mkdir(parents=True, exist_ok=True)
        if online_key.private is not None:
            _publish(r, online_key, snapshot_expires, timestamp_expires, published)
        else:
            published.notes.append("snapshot and timestamp not signed yet: run 'edgefleet repo publish --online-key ONLINE.key'")
    return published


def rotate_root(
    repo: str | os.PathLike[str],
    old_keys: Sequence[KeyArg],
    new_keys: Sequence[KeyArg],
    threshold: int,
    online_key: KeyArg | None = None,
    expires: dt.timedelta = DEFAULT_EXPIRY["root"],
    targets_expires: dt.timedelta = DEFAULT_EXPIRY["targets"],
    snapshot_expires: dt.timedelta = DEFAULT_EXPIRY["snapshot"],
    timestamp_expires: dt.timedelta = DEFAULT_EXPIRY["timestamp"],
) -> Published:
    """Write ``N+1.root.json`` signed by a threshold of the old and of the new root keys
    (and a new targets version signed by the new keys when they changed)."""
    from tuf.api.metadata import Metadata

    r = Repository(repo)
    new_keys = _unique(new_keys, "new root")
    if not 1 <= threshold <= len(new_keys):
        raise ConfigError(f"--threshold {threshold}: must be between 1 and the {len(new_keys)} new root key(s)")
    published = Published()
    with r.locked():
        old_md = r.root()
        old = old_md.signed
        online_ids = set(old.roles["timestamp"].keyids)
        if online_key is not None:
            online_ids = {online_key.keyid}
        if online_ids & {k.keyid for k in new_keys}:
            raise ConfigError("the online key must not be a root key: it signs snapshot and timestamp only")
        new = copy.deepcopy(old)
        new.version = old.version + 1
        new.expires = _now() + expires
        for role in ("root", "targets"):
            for keyid in list(new.roles[role].keyids):
                new.revoke_key(keyid, role)
            for k in new_keys:
                new.add_key(tuf_key(k.public), role)
            new.roles[role].threshold = threshold
        if online_key is not None:
            for role in ("snapshot", "timestamp"):
                for keyid in list(new.roles[role].keyids):
                    new.revoke_key(keyid, role)
                new.add_key(tuf_key(online_key.public), role)
        new_md = Metadata(new)
        _sign(new_md, _privates(list(old_keys)) + _privates(new_keys))
        _require_threshold(old, "root", new_md, f"root v{new.version} needs {old.roles['root'].threshold} of the OLD root keys")
        _require_threshold(new, "root", new_md, f"root v{new.version} needs {threshold} of the NEW root keys")
        r.write_role("root", new_md, published)
        if set(old.roles["targets"].keyids) != set(new.roles["targets"].keyids) or (
            old.roles["targets"].threshold != threshold
        ):
            t_md = r.top_targets()
            t_md.signed.version += 1
            t_md.signed.expires = _now() + targets_expires
            t_md.signatures.clear()
            _sign(t_md, _privates(new_keys))
            _require_threshold(new, "targets", t_md, "targets (re-signed by the new root keys)")
            r.write_role("targets", t_md, published)
        if online_key is not None and online_key.private is not None:
            _publish(r, online_key, snapshot_expires, timestamp_expires, published)
        else:
            published.notes.append("publish the new state with 'edgefleet repo publish --online-key ONLINE.key'")
    return published


def _revoked(targets: Targets) -> dict[str, dict[str, Any]]:
    data = targets.unrecognized_fields.get(REVOKED_FIELD)
    return data if isinstance(data, dict) else {}


def delegate(
    repo: str | os.PathLike[str],
    model: str,
    keys: Sequence[KeyArg],
    root_keys: Sequence[KeyArg],
    threshold: int | None = None,
    online_key: KeyArg | None = None,
    expires: dt.timedelta = DEFAULT_EXPIRY["targets"],
    snapshot_expires: dt.timedelta = DEFAULT_EXPIRY["snapshot"],
    timestamp_expires: dt.timedelta = DEFAULT_EXPIRY["timestamp"],
) -> Published:
    """Delegate model ``model`` (paths ``model/*``, terminating) to ``keys``."""
    model = _check_model_name(model)
    keys = _unique(keys, "model")
    if not keys:
        raise ConfigError("give at least one --key to delegate to")
    r = Repository(repo)
    published = Published()
    with r.locked():
        root = r.root().signed
        reserved = _reserved_keyids(root)
        for k in keys:
            if k.keyid in reserved:
                raise ConfigError(f"{k.source} is a root or online key; a model key must sign nothing else")
        t_md = r.top_targets()
        t = t_md.signed
        for k in keys:
            if k.keyid in _rollback_keyids(t):
                raise ConfigError(f"{k.source} is a rollback-order key (role {ROLLBACK_ROLE!r}); a model key must "
                                  "sign nothing else")
        revoked = _revoked(t).get(model, {})
        for k in keys:
            if k.keyid in revoked:
                raise RevokedKeyError(f"{k.source} was revoked for model {model!r}; delegate a new key")
        role = _delegated_role(t, model, threshold, [f"{model}/*"])
        _grant(t, role, keys, threshold, f"model {model!r}")
        _resign_and_publish(r, t_md, root, root_keys, expires, published, online_key, snapshot_expires,
                            timestamp_expires, "takes effect at the next 'edgefleet repo publish' (or 'repo add')")
    return published


def _reserved_keyids(root: Root) -> set[str]:
    """The keys of the root and online roles (root, snapshot, timestamp): a delegated key signs nothing of theirs."""
    return set(root.roles["root"].keyids) | set(root.roles["snapshot"].keyids) | set(root.roles["timestamp"].keyids)


def _delegated_role(t: Targets, name: str, threshold: int | None, paths: list[str]) -> DelegatedRole:
    """The delegated role ``name`` of targets ``t``; created (terminating, no keys yet, threshold ``threshold`` or
    1, delegating ``paths``) when ``t`` has none of that name."""
    from tuf.api.metadata import DelegatedRole, Delegations

    if t.delegations is None:
        t.delegations = Delegations(keys={}, roles={})
    assert t.delegations.roles is not None
    if name not in t.delegations.roles:
        t.delegations.roles[name] = DelegatedRole(name=name, keyids=[], threshold=threshold or 1, terminating=True,
                                                  paths=paths)
    return t.delegations.roles[name]


def _grant(t: Targets, role: DelegatedRole, keys: Sequence[KeyArg], threshold: int | None, what: str) -> None:
    """Add ``keys`` to the delegated ``role`` of targets ``t`` (python-tuf ``add_key``), set its threshold if
    given, and refuse a threshold the role's keys cannot meet."""
    for k in keys:
        if k.keyid not in role.keyids:
            t.add_key(tuf_key(k.public), role.name)
    if threshold is not None:
        role.threshold = threshold
    if not 1 <= role.threshold <= len(role.keyids):
        raise ConfigError(f"threshold {role.threshold} for {what}: it has {len(role.keyids)} key(s)")


def _resign_and_publish(r: Repository, t_md: Metadata[Targets], root: Root, root_keys: Sequence[KeyArg],
                        expires: dt.timedelta, published: Published, online_key: KeyArg | None,
                        snapshot_expires: dt.timedelta,
                        timestamp_expires: dt.timedelta, later: str) -> None:
    """Re-sign the top-level targets after a delegation change; publish snapshot and timestamp when the
    online key is at hand, else note when the change takes effect (``later``)."""
    _resign_targets(r, t_md, root, root_keys, expires, published)
    if online_key is not None and online_key.private is not None:
        _publish(r, online_key, snapshot_expires, timestamp_expires, published)
    else:
        published.notes.append(later)


def revoke(
    repo: str | os.PathLike[str],
    model: str,
    keys: Sequence[KeyArg],
    root_keys: Sequence[KeyArg],
    online_key: KeyArg | None = None,
    expires: dt.timedelta = DEFAULT_EXPIRY["targets"],
    snapshot_expires: dt.timedelta = DEFAULT_EXPIRY["snapshot"],
    timestamp_expires: dt.timedelta = DEFAULT_EXPIRY["timestamp"],
) -> Published:
    """Remove ``keys`` from model ``model``'s role (or the rollback role, ``ROLLBACK_ROLE``) and record them
    as revoked."""
    model = model if model == ROLLBACK_ROLE else _check_model_name(model)
    r = Repository(repo)
    published = Published()
    with r.locked():
        root = r.root().signed
        t_md = r.top_targets()
        t = t_md.signed
        roles = t.delegations.roles if t.delegations is not None and t.delegations.roles else {}
        if model not in roles:
            raise UnknownModelError(f"model {model!r} is not delegated in {r.path}")
        role = roles[model]
        for k in keys:
            if k.keyid not in role.keyids:
                raise ConfigError(f"{k.source} is not a key of model {model!r}")
        revoked = dict(_revoked(t))
        entry = dict(revoked.get(model, {}))
        for k in keys:
            t.revoke_key(k.keyid, model)
            entry[k.keyid] = tuf_key(k.public).to_dict()
        revoked[model] = entry
        t.unrecognized_fields[REVOKED_FIELD] = revoked
        if len(role.keyids) < role.threshold:
            published.notes.append(
                f"model {model!r} now has {len(role.keyids)} key(s) for threshold {role.threshold}: "
                "nothing verifies until you delegate a new key and re-add its bundles with it"
            )
        _resign_and_publish(r, t_md, root, root_keys, expires, published, online_key, snapshot_expires,
                            timestamp_expires, "takes effect at the next 'edgefleet repo publish'")
    return published


def _resign_targets(r: Repository, t_md: Metadata[Targets], root: Root, root_keys: Sequence[KeyArg], expires: dt.timedelta,
                    published: Published) -> None:
    t_md.signed.version += 1
    t_md.signed.expires = _now() + expires
    t_md.signatures.clear()
    _sign(t_md, _privates(root_keys))
    _require_threshold(root, "targets", t_md, f"targets needs {root.roles['targets'].threshold} of the root keys")
    r.write_role("targets", t_md, published)


def _key_models(targets: Targets, keyid: str) -> list[str]:
    roles = targets.delegations.roles if targets.delegations is not None and targets.delegations.roles else {}
    return sorted(name for name, role in roles.items() if keyid in role.keyids and name != ROLLBACK_ROLE)


def _rollback_keyids(targets: Targets) -> set[str]:
    roles = targets.delegations.roles if targets.delegations is not None and targets.delegations.roles else {}
    role = roles.get(ROLLBACK_ROLE)
    return set(role.keyids) if role is not None else set()


def delegate_rollback(
    repo: str | os.PathLike[str],
    keys: Sequence[KeyArg],
    root_keys: Sequence[KeyArg],
    threshold: int | None = None,
    online_key: KeyArg | None = None,
    expires: dt.timedelta = DEFAULT_EXPIRY["targets"],
    snapshot_expires: dt.timedelta = DEFAULT_EXPIRY["snapshot"],
    timestamp_expires: dt.timedelta = DEFAULT_EXPIRY["timestamp"],
) -> Published:
    """Delegate the rollback role (``ROLLBACK_ROLE``: no paths, terminating) to ``keys``: the keys that sign
    rollback orders (the coordinator's ``--signing-key``). A root, online or model key is refused: a
    rollback key signs nothing else, and since the role delegates no path it can list no target."""
    keys = _unique(keys, "rollback")
    if not keys:
        raise ConfigError("give at least one rollback key (KEY.pub)")
    r = Repository(repo)
    published = Published()
    with r.locked():
        root = r.root().signed
        reserved = _reserved_keyids(root)
        t_md = r.top_targets()
        t = t_md.signed
        revoked = _revoked(t).get(ROLLBACK_ROLE, {})
        for k in keys:
            if k.keyid in reserved:
                raise ConfigError(f"{k.source} is a root or online key; a rollback key must sign nothing else")
            models = _key_models(t, k.keyid)
            if models:
                raise ConfigError(f"{k.source} is a key of model(s) {', '.join(models)}; a rollback key must sign "
                                  "nothing else (it would sign bundles)")
            if k.keyid in revoked:
                raise RevokedKeyError(f"{k.source} was revoked for the rollback role; delegate a new key")
        role = _delegated_role(t, ROLLBACK_ROLE, threshold, [])
        if role.paths != []:
            raise ConfigError(f"{r.path}: role {ROLLBACK_ROLE!r} delegates paths {role.paths}; it must delegate none")
        _grant(t, role, keys, threshold, "the rollback role")
        _resign_and_publish(r, t_md, root, root_keys, expires, published, online_key, snapshot_expires,
                            timestamp_expires, "takes effect at the next 'edgefleet repo publish'")
    return published


def rollback_keys(repo: str | os.PathLike[str]) -> tuple[tuple[PublicKey, ...], int]:
    """The rollback role's Ed25519 keys and threshold in the repository's newest targets (``(), 0``: none)."""
    t = Repository(repo).top_targets().signed
    roles = t.delegations.roles if t.delegations is not None and t.delegations.roles else {}
    role = roles.get(ROLLBACK_ROLE)
    if role is None:
        return (), 0
    assert t.delegations is not None and t.delegations.keys is not None
    return tuple(pk for kid in role.keyids if (pk := edge_key(t.delegations.keys[kid])) is not None), role.threshold


def add_bundle(
    repo: str | os.PathLike[str],
    archive: str | os.PathLike[str],
    model_keys: Sequence[KeyArg],
    online_key: KeyArg | None = None,
    delta: str | os.PathLike[str] | None = None,
    delta_base: str | None = None,
    expires: dt.timedelta = DEFAULT_EXPIRY["model"],
    snapshot_expires: dt.timedelta = DEFAULT_EXPIRY["snapshot"],
    timestamp_expires: dt.timedelta = DEFAULT_EXPIRY["timestamp"],
    origin_url: str | None = None,
) -> Published:
    """Add a bundle archive (and optionally a delta to it) as target ``NAME/VERSION.efb``
    of its model's delegated role, signed by the model key(s).

    With ``origin_url`` (the base URL of the coordinator's ``--origin-url``) each target's signed custom fields
    also carry where devices download it: ``custom.edgefleet.url`` = ``ORIGIN_URL/<sha256>`` (the origin's
    content-addressed name), beside the target's signed length and sha256. A device in TUF mode then refuses a
    job whose URL is another (``origin_not_signed``)."""
    from tuf.api.metadata import Metadata, TargetFile, Targets

    from .bundle import open_bundle

    archive = Path(archive)
    base_url = _origin_base(origin_url) if origin_url else ""
    if not model_keys or any(k.private is None for k in model_keys):
        raise ConfigError("--key must be the model's private key (MODEL.key)")
    name, version = peek_bundle_identity(archive)
    r = Repository(repo)
    published = Published()
    with r.locked():
        t = r.top_targets().signed
        roles = t.delegations.roles if t.delegations is not None and t.delegations.roles else {}
        if name not in roles:
            raise UnknownModelError(f"model {name!r} is not delegated in {r.path}; run 'edgefleet keys delegate --model {name}'")
        role = roles[name]
        for k in model_keys:
            if k.keyid in _revoked(t).get(name, {}):
                raise RevokedKeyError(f"{k.source} was revoked for model {name!r}")
            if k.keyid not in role.keyids and k.keyid in _rollback_keyids(t):
                raise ThresholdError(f"{k.source} is a rollback-order key (role {ROLLBACK_ROLE!r}): it signs rollback "
                                     f"orders only, never a bundle of model {name!r}")
            if k.keyid not in role.keyids:
                others = _key_models(t, k.keyid)
                if others:
                    raise WrongModelError(
                        f"{k.source} signs model(s) {', '.join(others)}, not {name!r}: a model key signs only the models delegated to it"
                    )
                raise ThresholdError(f"{k.source} is not a key of model {name!r}")
        assert t.delegations is not None  # the model's role was found in them
        delegated = [pk for kid in role.keyids if (pk := edge_key(t.delegations.keys[kid])) is not None]
        bundle, tmp = open_bundle(archive, trusted_keys=delegated, require_signature=True)
        try:
            if bundle.manifest.name != name or bundle.manifest.version != version:
                raise WrongModelError(f"{archive}: the manifest changed while it was read")
        finally:
            if tmp is not None:
                tmp.cleanup()
        path = target_path(name, version)
        is_new = not r.versions(name)
        role_md = Metadata(Targets(version=1)) if is_new else r.load_as(name, Targets)
        current = role_md.signed
        info = TargetFile.from_file(path, str(archive), ["sha256"])
        info.unrecognized_fields["custom"] = {"edgefleet": {"kind": "bundle", "model": name, "version": version}}
        if base_url:
            info.unrecognized_fields["custom"]["edgefleet"]["url"] = base_url + info.hashes["sha256"]
        old = current.targets.get(path)
        if old is not None and old.hashes != info.hashes:
            raise ConfigError(f"{path} is already published with other content; a version is never replaced")
        new_targets = {path: info}
        copies = [(archive, info)]
        if delta is not None:
            if not delta_base:
                raise ConfigError("--delta needs --delta-base VERSION (the version the delta applies to)")
            base = target_path(name, delta_base)
            if base not in current.targets:
                raise UnknownTargetError(f"delta base {base} is not a published target of model {name!r}")
            _regular_file_size(Path(delta), "delta", MAX_BUNDLE_BYTES)
            dpath = f"{name}/{version}.from-{delta_base}.delta"
            dinfo = TargetFile.from_file(dpath, str(delta), ["sha256"])
            dinfo.unrecognized_fields["custom"] = {
                "edgefleet": {"kind": "delta", "model": name, "base": base, "result": path}
            }
            if base_url:
                dinfo.unrecognized_fields["custom"]["edgefleet"]["url"] = base_url + dinfo.hashes["sha256"]
            new_targets[dpath] = dinfo
            copies.append((Path(delta), dinfo))
        if old is not None and all(current.targets.get(p) == i for p, i in new_targets.items()):
            published.notes.append(f"{path} is already published with this content")
        else:
            for src, tinfo in copies:
                dirname, _, base_name = tinfo.path.rpartition("/")
                dest = r.targets / dirname / f"{tinfo.hashes['sha256']}.{base_name}"
                if not dest.exists():
                    write_atomic(dest, _copy_of(src), parents=True)
                published.written.append(str(dest.relative_to(r.path)))
            current.targets.update(new_targets)
            if not is_new:
                current.version += 1
            current.expires = _now() + expires
            role_md.signatures.clear()
            _sign(role_md, _privates(model_keys))
            _require_threshold(t, name, role_md, f"model {name!r} needs {role.threshold} of its keys")
            r.write_role(name, role_md, published)
        if online_key is not None and online_key.private is not None:
            _publish(r, online_key, snapshot_expires, timestamp_expires, published)
        else:
            published.notes.append("takes effect at the next 'edgefleet repo publish'")
    return published


def _origin_base(url: str) -> str:
    """An http(s) base URL for targets' ``url`` fields (printable, no query), ending in ``/``."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment \
            or any(c <= " " or c > "~" for c in url) or len(url) > 1900:
        raise ConfigError(f"--origin-url {url!r}: give the http(s)://HOST/PATH/ devices download bundles from")
    return url.rstrip("/") + "/"


def target_url(info: Any) -> str:
    """The download URL a target's signed custom fields carry (``custom.edgefleet.url``), or ""."""
    custom = info.unrecognized_fields.get("custom") if info is not None else None
    ours = custom.get("edgefleet") if isinstance(custom, dict) else None
    url = ours.get("url") if isinstance(ours, dict) else None
    return url if isinstance(url, str) else ""


def publish(
    repo: str | os.PathLike[str],
    online_key: KeyArg,
    snapshot_expires: dt.timedelta = DEFAULT_EXPIRY["snapshot"],
    timestamp_expires: dt.timedelta = DEFAULT_EXPIRY["timestamp"],
) -> Published:
    """Sign a new timestamp (and a new snapshot when any targets metadata changed or the
    current snapshot would expire before the new timestamp). Run it periodically."""
    r = Repository(repo)
    published = Published()
    with r.locked():
        _publish(r, online_key, snapshot_expires, timestamp_expires, published)
    return published


def _publish(r: Repository, online_key: KeyArg, snapshot_expires: dt.timedelta, timestamp_expires: dt.timedelta, published: Published) -> None:
    from tuf.api.exceptions import UnsignedMetadataError
    from tuf.api.metadata import Metadata, MetaFile, Snapshot, Timestamp

    if online_key.private is None:
        raise ConfigError(f"{online_key.source}: publishing needs the online private key")
    root = r.root().signed
    for role in ("snapshot", "timestamp"):
        if online_key.keyid not in root.roles[role].keyids:
            raise ThresholdError(f"{online_key.source} is not the {role} key of root v{root.version}")
    now = _now()
    roles = ["targets"] + sorted(r.model_roles())
    meta = {f"{role}.json": MetaFile(version=r.latest_version(role)) for role in roles if r.versions(role)}
    snap_md = r.load_as("snapshot", Snapshot) if r.versions("snapshot") else None
    need = snap_md is None
    if snap_md is not None:
        old_meta = snap_md.signed.meta
        for key, mf in meta.items():
            if key in old_meta and mf.version < old_meta[key].version:
                raise ConfigError(f"{key} v{mf.version} is older than v{old_meta[key].version} in the snapshot")
        meta = {**old_meta, **meta}
        need = (
            meta != old_meta
            or snap_md.signed.expires < now + timestamp_expires
        )
        try:
            root.verify_delegate("snapshot", snap_md.signed_bytes, snap_md.signatures)
        except UnsignedMetadataError:
            need = True
    if need:
        version = snap_md.signed.version + 1 if snap_md is not None else 1
        snap_md = Metadata(Snapshot(version=version, expires=now + snapshot_expires, meta=meta))
        snap_md.sign(_signer(online_key.private))
        r.write_role("snapshot", snap_md, published)
    assert snap_md is not None
    snap_bytes = r.file_for("snapshot", snap_md.signed.version).read_bytes()
    ts_version = 1
    if (r.metadata / "timestamp.json").exists():
        ts_version = r.load_as("timestamp", Timestamp).signed.version + 1
    ts = Timestamp(
        version=ts_version,
        expires=now + timestamp_expires,
        snapshot_meta=MetaFile(
            version=snap_md.signed.version,
            length=len(snap_bytes),
            hashes={"sha256": hashlib.sha256(snap_bytes).hexdigest()},
        ),
    )
    ts_md = Metadata(ts)
    ts_md.sign(_signer(online_key.private))
    r.write_role("timestamp", ts_md, published)


#: The metadata a client is sent with an update (see :func:`client_metadata`): file names as the client's
#: fetcher asks for them, their count and sizes bounded before anything is parsed.
CLIENT_METADATA_RE = re.compile(r"metadata/(?:timestamp|[0-9]{1,9}\.[A-Za-z0-9._%-]{1,200})\.json\Z")
MAX_CLIENT_METADATA_FILES = 64
MAX_CLIENT_METADATA_BYTES = 2 << 20  # all files together


def client_metadata(repo: str | os.PathLike[str], model: str) -> dict[str, bytes]:
    """The repository files a client needs to check ``model``'s targets as of now, keyed by the
    path its fetcher asks for: every root version (the rotation chain), ``timestamp.json``, the
    snapshot it names, and the top-level targets and the model's role at the versions that
    snapshot names. This only chooses which files to send (a device delivered its update over
    MQTT gets them in the job message); every check is python-tuf's, on the client.
    """
    from tuf.api.metadata import Snapshot, Timestamp

    model = _check_model_name(model)
    r = Repository(repo)
    files: dict[str, bytes] = {}

    def add(path: Path) -> bytes:
        size = _regular_file_size(path, f"metadata {path.name}", MAX_CLIENT_METADATA_BYTES, MetadataFormatError)
        with os.fdopen(_open_regular(path), "rb") as fh:
            data = fh.read(size + 1)
        files[f"{METADATA_DIR}/{path.name}"] = data
        return data

    with r.locked():  # not in the middle of a publish
        for v in r.versions("root"):
            add(r.file_for("root", v))
        if not (r.metadata / "timestamp.json").exists():
            raise ConfigError(f"{r.path} has no timestamp: run 'edgefleet repo publish'")
        ts = _parse_metadata(add(r.file_for("timestamp")), Timestamp, f"{r.path}: timestamp.json").signed
        snap = _parse_metadata(add(r.file_for("snapshot", ts.snapshot_meta.version)), Snapshot, f"{r.path}: snapshot").signed
        for role in ("targets", model):
            mf = snap.meta.get(f"{parse.quote(role, '')}.json")
            if mf is None:
                raise UnknownModelError(f"{r.path}: the snapshot lists no {role!r} role; delegate model {model!r} "
                                        "and publish")
            add(r.file_for(role, mf.version))
    if len(files) > MAX_CLIENT_METADATA_FILES or sum(map(len, files.values())) > MAX_CLIENT_METADATA_BYTES:
        raise MetadataFormatError(f"{r.path}: the metadata for {model!r} exceeds {MAX_CLIENT_METADATA_FILES} files or "
                                  f"{MAX_CLIENT_METADATA_BYTES} bytes")
    return files


def write_mirror(directory: str | os.PathLike[str], files: Mapping[str, bytes | str]) -> Path:
    """Write metadata files sent to a client (:func:`client_metadata`) into ``directory`` as a
    repository layout :func:`make_repo_fetcher` reads. Names and sizes are checked first; the
    content is not trusted (python-tuf verifies it when the client refreshes)."""
    if len(files) > MAX_CLIENT_METADATA_FILES:
        raise MetadataFormatError(f"{len(files)} metadata files exceed {MAX_CLIENT_METADATA_FILES}")
    total = 0
    for name, data in files.items():
        if not isinstance(name, str) or not CLIENT_METADATA_RE.match(name):
            raise MetadataFormatError(f"refusing metadata file name {str(name)[:80]!r}")
        total += len(data)
    if total > MAX_CLIENT_METADATA_BYTES:
        raise MetadataFormatError(f"{total} bytes of metadata exceed {MAX_CLIENT_METADATA_BYTES}")
    base = Path(directory)
    meta = base / METADATA_DIR
    if meta.exists():
        shutil.rmtree(meta)
    meta.mkdir(parents=True)
    for name, data in files.items():
        (base / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return base


# ---------------------------------------------------------------- client side


def make_repo_fetcher(root: str | os.PathLike[str]) -> Any:
    """A ``tuf.ngclient.FetcherInterface`` reading a repository directory.

    URLs are paths relative to the repository (``metadata/2.root.json``,
    ``targets/MODEL/SHA.VERSION.efb``); the device agent's MQTT/HTTP fetchers serve the
    same paths. Missing files are HTTP 404 (the end of the root chain); links, FIFOs
    and devices are refused without blocking; python-tuf caps the length of every read.
    """
    from tuf.api.exceptions import DownloadError, DownloadHTTPError
    from tuf.ngclient import FetcherInterface

    base = Path(root)

    class RepoFetcher(FetcherInterface):
        def _fetch(self, url: str) -> Iterator[bytes]:
            rel = parse.unquote(url)
            parts = rel.split("/")
            if rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
                raise DownloadError(f"refusing repository path {url!r}")
            path = base.joinpath(*parts)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise DownloadHTTPError(f"{rel} not found in {base}", 404) from None
            if not stat.S_ISREG(st.st_mode):
                raise DownloadError(f"{rel} in {base} is not a regular file")
            fd = _open_regular(path)
            return self._chunks(fd)

        @staticmethod
        def _chunks(fd: int) -> Iterator[bytes]:
            with os.fdopen(fd, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    yield chunk

    return RepoFetcher()


_ROLLBACK_RE = re.compile(r"must be >=|^Expected \S+\.json version")


def _translate(exc: BaseException) -> TrustError:
    """python-tuf's verdict as a named edgefleet error (the decision is python-tuf's)."""
    from tuf.api import exceptions as tx

    msg = str(exc) or type(exc).__name__
    if isinstance(exc, TrustError):
        return exc
    if isinstance(exc, tx.ExpiredMetadataError):
        return MetadataExpiredError(f"expired metadata (indefinite freeze?): {msg}")
    if isinstance(exc, tx.UnsignedMetadataError):
        return ThresholdError(f"below-threshold signatures: {msg}")
    if isinstance(exc, tx.BadVersionNumberError):
        if _ROLLBACK_RE.search(msg):
            return RollbackError(f"metadata rollback: {msg}")
        return MixAndMatchError(f"metadata version mismatch (mix-and-match): {msg}")
    if isinstance(exc, tx.LengthOrHashMismatchError):
        return MixAndMatchError(f"metadata does not match the length/hash its parent signed: {msg}")
    if isinstance(exc, tx.DownloadLengthMismatchError):
        return MetadataFormatError(f"metadata longer than allowed (endless data): {msg}")
    if isinstance(exc, tx.DownloadHTTPError):
        return MetadataFormatError(f"repository metadata missing: {msg}")
    if isinstance(exc, tx.DownloadError):
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        return MetadataFormatError(f"cannot read repository metadata: {msg}{cause}")
    if isinstance(exc, tx.RepositoryError):
        return MetadataFormatError(f"repository metadata refused: {msg}")
    return MetadataFormatError(f"repository metadata refused: {type(exc).__name__}: {msg}")


@dataclass(frozen=True)
class VerifiedTarget:
    """A bundle archive that matched its signed target (and its delegated role's keys)."""

    path: str
    model: str
    version: str
    length: int
    sha256: str
    keys: tuple[PublicKey, ...]
    root_version: int
    timestamp_version: int
    snapshot_version: int
    reference_time: dt.datetime
    anchor: str
    signer: PublicKey | None = None


class TrustClient:
    """The client workflow (python-tuf ``Updater``) over any fetcher, with edgefleet's
    clock policy and named errors. ``state_dir`` persists the trusted metadata (root
    chain, versions seen) and the clock floor; a device keeps it across runs."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        fetcher: Any,
        trusted_root: bytes | None = None,
        clock_skew: dt.timedelta = DEFAULT_CLOCK_SKEW,
        now: dt.datetime | None = None,
    ) -> None:
        self.state = Path(state_dir)
        self.metadata_dir = self.state / METADATA_DIR
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.fetcher = fetcher
        self.trusted_root = trusted_root
        self.clock_skew = clock_skew
        self.clock = now
        self._updater: Any = None
        self.reference_time = self._reference_time()

    # -- clock

    def _floor(self) -> dt.datetime:
        floor = CLOCK_FLOOR
        try:
            text = (self.state / CLOCK_FLOOR_FILE).read_text("ascii").strip()[:64]
            floor = max(floor, dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
        except (OSError, ValueError):
            pass
        return floor

    def _reference_time(self) -> dt.datetime:
        clock = self.clock or dt.datetime.now(UTC)
        if clock.tzinfo is None:
            clock = clock.replace(tzinfo=UTC)
        self._effective = max(clock, self._floor())
        return self._effective - self.clock_skew

    def _advance_floor(self) -> None:
        if self._effective > self._floor():
            write_atomic(self.state / CLOCK_FLOOR_FILE, _fmt(self._effective).encode(), parents=True)

    # -- workflow

    def refresh(self) -> None:
        """Root chain, timestamp, snapshot and top-level targets, as python-tuf checks them."""
        from tuf.api.exceptions import DownloadError, RepositoryError
        from tuf.ngclient import Updater

        try:
            if self.trusted_root is None and not (self.metadata_dir / "root.json").exists():
                raise ConfigError("no trusted root: give one (--trusted-root ROOT.json)")
            self._updater = Updater(
                str(self.metadata_dir),
                "metadata/",
                target_dir=str(self.state / TARGETS_DIR),
                target_base_url="targets/",
                fetcher=self.fetcher,
                bootstrap=self.trusted_root,
            )
            trusted = self._updater._trusted_set  # the one knob python-tuf has for the reference time
            if not hasattr(trusted, "reference_time"):  # pragma: no cover - pinned tuf>=7,<8
                raise TrustError("this python-tuf has no reference_time; edgefleet needs tuf 7.x")
            trusted.reference_time = self.reference_time
            self._updater.refresh()
        except (RepositoryError, DownloadError) as exc:
            raise self._diagnose(exc) from None
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise MetadataFormatError(f"repository metadata refused: {type(exc).__name__}: {exc}") from None

    def _trusted(self, role: str) -> Any:
        return self._updater._trusted_set.get(role) if self._updater is not None else None

    def get_target(self, model: str, version: str) -> Any:
        """The signed ``TargetFile`` for ``MODEL/VERSION.efb`` from the model's delegated role."""
        from tuf.api.exceptions import DownloadError, RepositoryError

        if self._updater is None:
            self.refresh()
        path = target_path(model, version)
        top = self._trusted("targets")
        roles = top.delegations.roles if top.delegations is not None and top.delegations.roles else {}
        if model not in roles:
            raise UnknownModelError(f"model {model!r} is not delegated in this repository (unknown model)")
        try:
            info = self._updater.get_targetinfo(path)
        except (RepositoryError, DownloadError) as exc:
            if isinstance(exc, RepositoryError) and "Snapshot does not contain information" in str(exc):
                raise UnknownTargetError(f"model {model!r} has no published bundles") from None
            raise self._diagnose(exc, model) from None
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise MetadataFormatError(f"repository metadata refused: {type(exc).__name__}: {exc}") from None
        if info is None:
            raise UnknownTargetError(f"{path} is not a signed target of model {model!r} (arbitrary or unlisted bundle)")
        return info

    def model_keys(self, model: str) -> tuple[PublicKey, ...]:
        top = self._trusted("targets")
        role = top.delegations.roles[model]
        return tuple(pk for kid in role.keyids if (pk := edge_key(top.delegations.keys[kid])) is not None)

    def verify_rollback_order(self, payload: bytes, signature_docs: Sequence[Any]) -> Any:
        """python-tuf's verdict on a rollback order: ``payload`` (the canonical order) signed by a threshold
        of the rollback role's keys, as the verified top-level targets delegate them. ``signature_docs``
        are edgefleet signature documents (``{"algorithm": "ed25519", "key_id", "signature"}``); each one
        naming a key of the role becomes a TUF signature by that key, the rest count for nothing.

        Returns python-tuf's ``VerificationResult``. Raises :class:`UnknownModelError` when the repository
        delegates no rollback role (or one that delegates paths), :class:`ThresholdError` when fewer than
        its threshold of its keys signed (a flat trusted key, a model key or the online key is not one)."""
        import base64
        import binascii

        from tuf.api.metadata import Signature

        if self._updater is None:
            self.refresh()
        top = self._trusted("targets")
        roles = top.delegations.roles if top.delegations is not None and top.delegations.roles else {}
        role = roles.get(ROLLBACK_ROLE)
        if role is None or role.paths != []:
            raise UnknownModelError(f"the repository delegates no {ROLLBACK_ROLE!r} role (a role with no paths): no "
                                    "key may sign rollback orders; run 'edgefleet repo delegate-rollback KEY.pub'")
        by_edge_id = {}
        for kid in role.keyids:
            pk = edge_key(top.delegations.keys[kid])
            if pk is not None:
                by_edge_id[pk.key_id] = kid
        sigs: dict[str, Signature] = {}
        for doc in list(signature_docs)[:MAX_ORDER_SIGNATURES]:
            if not isinstance(doc, Mapping) or doc.get("algorithm") != "ed25519":
                continue
            kid = by_edge_id.get(str(doc.get("key_id")))
            if kid is None or kid in sigs:
                continue
            try:
                raw = base64.b64decode(str(doc.get("signature", "")), validate=True)
            except (binascii.Error, ValueError):
                continue
            sigs[kid] = Signature(kid, raw.hex())
        result = top.get_verification_result(ROLLBACK_ROLE, payload, sigs)
        if not result.verified:
            err = ThresholdError(
                f"signed by {len(result.signed)} of the {ROLLBACK_ROLE!r} role's keys, threshold {result.threshold} "
                f"(keys {', '.join(sorted(by_edge_id)) or 'none'}): a flat trusted key, a model key or the online "
                "key does not sign rollback orders")
            err.result = result  # type: ignore[attr-defined]
            raise err
        return result

    def check_file(self, info: TargetFile, path: str | os.PathLike[str], copy_to: str | os.PathLike[str] | None = None) -> str:
        """Length first (no hashing of endless data), then python-tuf's length+hash check.

        With ``copy_to`` the bytes checked are copied there (at most length+1 read), so
        what is used afterwards is exactly what was verified."""
        from tuf.api.exceptions import LengthOrHashMismatchError

        p = Path(path)
        size = _regular_file_size(p, "bundle", MAX_BUNDLE_BYTES, TargetMismatchError)
        if size != info.length:
            raise TargetMismatchError(
                f"{p} is {size} bytes but the signed target {info.path} is {info.length} (extraneous or missing data)"
            )
        with os.fdopen(_open_regular(p), "rb") as fh:
            if copy_to is None:
                checked: Any = fh
            else:
                checked = open(copy_to, "w+b")
                remaining = info.length + 1
                while remaining and (chunk := fh.read(min(remaining, 1 << 20))):
                    checked.write(chunk)
                    remaining -= len(chunk)
                checked.seek(0)
            try:
                info.verify_length_and_hashes(checked)
            except LengthOrHashMismatchError as exc:
                raise TargetMismatchError(f"{p} does not match the signed target {info.path}: {exc}") from None
            finally:
                if copy_to is not None:
                    checked.close()
        return info.hashes["sha256"]

    def done(self) -> None:
        """Record a successful verification (moves the clock floor)."""
        self._advance_floor()

    # -- diagnosis of a refusal (which key signed what; the refusal itself is python-tuf's)

    def _diagnose(self, exc: BaseException, model: str | None = None) -> TrustError:
        from tuf.api import exceptions as tx

        err = _translate(exc)
        if not isinstance(exc, tx.UnsignedMetadataError):
            return err
        role = str(exc).split(" was signed by ", 1)[0]
        try:
            if role in TOP_LEVEL_ROLES:
                return self._diagnose_top(role, err)
            return self._diagnose_model(role, err)
        except Exception:  # the diagnosis never hides the refusal
            return err

    def _fetch_targets(self, name: str) -> Metadata[Targets]:
        from tuf.api.metadata import Targets

        return _parse_metadata(self.fetcher.download_bytes(f"metadata/{name}", 5_000_000), Targets, name)

    def _diagnose_top(self, role: str, err: TrustError) -> TrustError:
        root = self._trusted("root")
        if role not in ("targets", "root") or root is None:
            return err
        snap = self._trusted("snapshot")
        if role == "targets" and snap is not None:
            md = self._fetch_targets(f"{snap.meta['targets.json'].version}.targets.json")
            online = set(root.roles["timestamp"].keyids) | set(root.roles["snapshot"].keyids)
            if set(_signed_by(md, root.keys)) & online:
                return ThresholdError(f"{err}: signed by the online key, which may sign only snapshot and timestamp")
        return err

    def _diagnose_model(self, role: str, err: TrustError) -> TrustError:
        from tuf.api.metadata import Key

        top = self._trusted("targets")
        snap = self._trusted("snapshot")
        if top is None or snap is None or f"{role}.json" not in snap.meta:
            return err
        md = self._fetch_targets(f"{snap.meta[f'{role}.json'].version}.{parse.quote(role, '')}.json")
        revoked = {kid: Key.from_dict(kid, dict(kd)) for kid, kd in _revoked(top).get(role, {}).items()}
        if _signed_by(md, revoked):
            return RevokedKeyError(f"model {role!r} metadata is signed by a key revoked for it: {err}")
        keys = dict(top.delegations.keys or {}) if top.delegations is not None else {}
        others = {m for kid in _signed_by(md, keys) for m in _key_models(top, kid)} - {role}
        if others:
            return WrongModelError(
                f"model {role!r} metadata is signed by the key of model(s) {', '.join(sorted(others))}: "
                f"a model key signs only its own models ({err})"
            )
        return err


def read_trusted_root(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    size = _regular_file_size(p, "trusted root", 512_000, MetadataFormatError)
    try:  # the bytes of the file checked (no symlink, no FIFO swapped in since), at most what it was
        with os.fdopen(_open_regular(p), "rb") as fh:
            data = fh.read(size + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read trusted root {p}: {exc.strerror or exc}") from None
    if len(data) > 512_000:
        raise MetadataFormatError(f"trusted root {p} grew past the 512000-byte cap while read")
    return data


def verify_bundle(
    archive: str | os.PathLike[str],
    repo: str | os.PathLike[str],
    trusted_root: bytes | str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    now: dt.datetime | None = None,
    clock_skew: dt.timedelta = DEFAULT_CLOCK_SKEW,
) -> VerifiedTarget:
    """Verify a bundle archive against a repository directory.

    python-tuf checks the chain from the trusted root (rotations included), timestamp ->
    snapshot -> targets -> the model's delegated role, thresholds, expiry and versions;
    the archive must then match the signed target's length and sha256; finally the
    bundle's own Ed25519 signature must be by a key delegated for its model and its
    manifest must name the model and version of its target path.

    ``trusted_root``: the root a device was provisioned with (bytes or a path). Without
    it, a root already in ``state_dir`` is used, else the repository's own
    ``1.root.json`` (trust on first use: only checks the repository's consistency).
    ``state_dir``: the verifier's persisted state; without it a fresh temporary one
    (no rollback memory beyond this call).
    """
    from .bundle import open_bundle

    archive = Path(archive)
    repo = Path(repo)
    if not (repo / METADATA_DIR).is_dir():
        raise ConfigError(f"{repo} is not an edgefleet TUF repository (no {METADATA_DIR}/)")
    model, version = peek_bundle_identity(archive)
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefleet-trust-"))
        state = Path(state_dir)
        if isinstance(trusted_root, (str, os.PathLike)):
            anchor = f"trusted root {trusted_root}"
            root_bytes: bytes | None = read_trusted_root(trusted_root)
        elif isinstance(trusted_root, bytes):
            anchor, root_bytes = "trusted root (given)", trusted_root
        elif (state / METADATA_DIR / "root.json").exists():
            anchor, root_bytes = f"root persisted in {state}", None
        else:
            first = repo / METADATA_DIR / "1.root.json"
            anchor = f"the repository's own {first} (unpinned: pass --trusted-root)"
            root_bytes = read_trusted_root(first)
        client = TrustClient(state, make_repo_fetcher(repo), root_bytes, clock_skew=clock_skew, now=now)
        info = client.get_target(model, version)
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefleet-target-")))
        checked = work / "bundle.efb"
        sha = client.check_file(info, archive, copy_to=checked)
        keys = client.model_keys(model)
        bundle, tmp = open_bundle(checked, trusted_keys=list(keys), require_signature=True)
        try:
            m = bundle.manifest
            if m.name != model:
                raise WrongModelError(f"{archive}: the manifest names model {m.name!r} but the signed target is {info.path}")
            if m.version != version:
                raise TargetMismatchError(f"{archive}: manifest version {m.version} but the signed target is {info.path}")
            signer = bundle.signer
        finally:
            if tmp is not None:
                tmp.cleanup()
        client.done()
        ts, snap, root = client._trusted("timestamp"), client._trusted("snapshot"), client._trusted("root")
        return VerifiedTarget(
            path=info.path,
            model=model,
            version=version,
            length=info.length,
            sha256=sha,
            keys=keys,
            root_version=root.version,
            timestamp_version=ts.version,
            snapshot_version=snap.version,
            reference_time=client.reference_time,
            anchor=anchor,
            signer=signer,
        )
