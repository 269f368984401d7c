"""The device side of TUF (python-tuf via :mod:`edgefleet.trust`) for installs.

A device is in *TUF mode* once it holds a pinned TUF root in its state directory
(``edgefleet agent trust-root ROOT.json`` or ``[agent] tuf_root``)::

    STATE/tuf/metadata/root.json       the trusted root (python-tuf walks and persists the chain here)
    STATE/tuf/metadata/*.json          the newest timestamp, snapshot, targets and model roles seen
    STATE/tuf/clock-floor              the last reference time that verified (see edgefleet.trust)
    STATE/tuf/provisioned-root.json    the root as provisioned (a record; not read for trust)
    STATE/tuf/keys/*.pub               keys that signed installed bundles (re-verifying stored objects)

In TUF mode an install, before anything is staged: refreshes metadata from the repository
(any ``FetcherInterface``; :func:`edgefleet.trust.make_repo_fetcher` for a directory), gets the
signed target ``MODEL/VERSION.efb`` for the device's model identity, checks the archive's
length and sha256 against it (copying exactly the bytes checked) and returns the keys
delegated to that model; the store then requires the bundle's signature to be by one of
them. Every TUF check is python-tuf's (through :class:`edgefleet.trust.TrustClient`); each
:class:`~edgefleet.errors.TrustError` becomes a named job reason (:func:`trust_reason`).
Without a pinned root nothing here runs and installs behave as before.

Rollback orders in TUF mode (local ``agent install --rollback-order`` and the coordinator's over MQTT)
are accepted only when signed by a threshold of the keys of the repository's ``rollback`` role, as
python-tuf verified them in the refreshed top-level targets (:func:`order_verifier`); the device's flat
trusted keys, a model key or the online key do not count. Refusals: ``no_rollback_role`` (the repository
delegates none), ``order_key_not_delegated`` (no signature by a rollback key), ``order_threshold``
(some, fewer than the role's threshold), or the metadata's own reason.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from edgefleet.errors import (
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
    UpdateRejectedError,
    WrongModelError,
)
from edgefleet.keys import PublicKey

TUF_DIR = "tuf"
KEYS_DIR = "keys"
PROVISIONED_ROOT = "provisioned-root.json"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

#: TrustError subclass -> job reason (most specific first; a subclass before its parent).
TRUST_REASONS: tuple[tuple[type[TrustError], str], ...] = (
    (UnknownModelError, "unknown_model"),
    (UnknownTargetError, "unknown_target"),
    (MetadataExpiredError, "metadata_expired"),
    (RollbackError, "metadata_rollback"),
    (MixAndMatchError, "metadata_mix_and_match"),
    (TargetMismatchError, "target_mismatch"),
    (WrongModelError, "wrong_model"),
    (RevokedKeyError, "revoked_key"),
    (ThresholdError, "metadata_threshold"),
    (MetadataFormatError, "metadata_invalid"),
    (TrustError, "untrusted_metadata"),
)


def trust_reason(exc: TrustError) -> str:
    for cls, reason in TRUST_REASONS:
        if isinstance(exc, cls):
            return reason
    return "untrusted_metadata"  # pragma: no cover - TrustError is last in the table


def tuf_dir(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / TUF_DIR


def _root_file(state_dir: str | os.PathLike) -> Path:
    from edgefleet.trust import METADATA_DIR

    return tuf_dir(state_dir) / METADATA_DIR / "root.json"


def provisioned(state_dir: str | os.PathLike) -> bool:
    """Whether the device holds a pinned TUF root (TUF mode)."""
    return _root_file(state_dir).is_file()


@dataclass(frozen=True)
class Provisioned:
    version: int
    threshold: int
    keyids: tuple[str, ...]
    changed: bool
    cleared: tuple[str, ...] = ()


def _parse_root(raw: bytes, what: str) -> Any:
    """A root that python-tuf parses and that is signed by a threshold of its own keys."""
    from tuf.api.exceptions import UnsignedMetadataError
    from tuf.api.metadata import Metadata, Root
    from tuf.api.serialization import DeserializationError

    try:
        md = Metadata.from_bytes(raw)
    except DeserializationError as exc:
        raise MetadataFormatError(f"{what} is not valid TUF metadata: {exc}") from None
    if not isinstance(md.signed, Root):
        raise MetadataFormatError(f"{what} is {md.signed.type} metadata, not a root")
    try:
        md.verify_delegate(Root.type, md)
    except UnsignedMetadataError as exc:
        raise ThresholdError(f"{what} is not signed by a threshold of its own root keys: {exc}") from None
    return md


def provision_root(state_dir: str | os.PathLike, source: str | os.PathLike | bytes) -> Provisioned:
    """Pin a TUF root in the agent's state (the device is in TUF mode from then on).

    The same root again is a no-op. A root with a lower version than the one the device
    holds (it may have walked a rotation chain since) is a :class:`RollbackError`. Another
    root with an equal or higher version re-provisions the device: the metadata trusted
    under the old root is removed (its versions mean nothing under a new root).
    """
    from edgefleet.atomic import write_atomic
    from edgefleet.trust import METADATA_DIR, read_trusted_root

    if isinstance(source, bytes):
        raw, what = source, "the TUF root"
    else:
        raw, what = read_trusted_root(source), f"TUF root {source}"
    md = _parse_root(raw, what)
    role = md.signed.roles["root"]
    target = _root_file(state_dir)
    cleared: list[str] = []
    if target.is_file():
        current = target.read_bytes()
        try:
            held = _parse_root(current, "the device's TUF root").signed.version
        except TrustError:
            held = 0  # a damaged stored root: replace it
        if current == raw:
            return Provisioned(md.signed.version, role.threshold, tuple(role.keyids), changed=False)
        if md.signed.version < held:
            raise RollbackError(f"{what} is root version {md.signed.version} but this device already trusts "
                                f"version {held}; a device's root only moves forward (its rotation chain)")
        meta = tuf_dir(state_dir) / METADATA_DIR
        for p in sorted(meta.iterdir()):
            if p.name != "root.json" and p.suffix == ".json":
                p.unlink(missing_ok=True)
                cleared.append(p.name)
    write_atomic(tuf_dir(state_dir) / PROVISIONED_ROOT, raw, parents=True)
    write_atomic(target, raw, parents=True)
    return Provisioned(md.signed.version, role.threshold, tuple(role.keyids), changed=True, cleared=tuple(cleared))


def root_version(state_dir: str | os.PathLike) -> int | None:
    """The version of the root the device trusts now (None: not in TUF mode; 0: unreadable)."""
    import json

    p = _root_file(state_dir)
    if not p.is_file():
        return None
    try:
        with open(p, "rb") as fh:
            return int(json.loads(fh.read(512_001))["signed"]["version"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return 0


def remember_key(state_dir: str | os.PathLike, key: PublicKey) -> None:
    from edgefleet.atomic import write_atomic

    write_atomic(tuf_dir(state_dir) / KEYS_DIR / f"{key.key_id}.pub", key.pem(), parents=True)


@dataclass
class CheckedTarget:
    """An archive copy whose length and sha256 matched its signed target."""

    archive: Path
    model: str
    version: str
    target: str
    sha256: str
    keys: tuple[PublicKey, ...]
    client: Any  # the TrustClient: ``done()`` once the install is verified (moves the clock floor)


def check_archive(
    state_dir: str | os.PathLike,
    source: str | os.PathLike,
    repo: str | os.PathLike | None,
    identity: str,
    work: Path,
    *,
    fetcher: Any = None,
    clock: str = "system",
    clock_skew: float = 300.0,
    now: dt.datetime | None = None,
) -> CheckedTarget:
    """Refresh metadata, get the signed target for (``identity``, the bundle's version) and check
    the archive against it; the checked bytes are copied to ``work``. Refusals are
    ``UpdateRejectedError`` with a named reason; nothing is staged here.

    ``identity``: the model this device serves ("" before its first install: the bundle's name).
    ``fetcher``: a ``tuf.ngclient.FetcherInterface`` (default: the repository directory ``repo``).
    ``clock`` (``[update] clock``): ``none`` (configured: no reliable clock) checks expiry at the
    clock floor only (the last successful verification); otherwise at the system clock, never
    earlier than that floor (a clock reset to 1970 cannot make expired metadata valid).
    """
    from edgefleet.trust import METADATA_DIR, make_repo_fetcher, peek_bundle_identity

    src = Path(source)
    if fetcher is None:
        if repo is None:
            raise UpdateRejectedError("this device verifies updates against TUF metadata: give the repository "
                                      "(--repo DIR)", reason="no_repository")
        if not (Path(repo) / METADATA_DIR).is_dir():
            raise UpdateRejectedError(f"{repo} is not a TUF repository (no {METADATA_DIR}/)", reason="no_repository")
        fetcher = make_repo_fetcher(repo)
    if not os.path.lexists(src):
        raise UpdateRejectedError(f"{src} does not exist", reason="not_found")
    if src.is_dir():
        raise UpdateRejectedError(f"{src} is a bundle directory; a device in TUF mode installs the .efb archive "
                                  "its signed target names", reason="archive_required")
    try:
        name, version = peek_bundle_identity(src)
    except BundleFormatError as exc:
        raise UpdateRejectedError(str(exc), reason="bad_manifest") from None
    except ConfigError as exc:
        raise UpdateRejectedError(str(exc), reason="bad_format") from None
    model = identity or name
    if name != model:
        raise UpdateRejectedError(f"bundle is model {name!r} v{version}; this device serves {model!r} "
                                  "(set agent.model_name to re-assign it)", reason="wrong_model")
    try:
        client, info = _signed_target(state_dir, fetcher, model, version, clock, clock_skew, now)
        work.mkdir(parents=True, exist_ok=True)
        copy = work / "bundle.efb"
        sha = client.check_file(info, src, copy_to=copy)
        keys = client.model_keys(model)
    except TrustError as exc:
        raise UpdateRejectedError(f"{exc}", reason=trust_reason(exc)) from None
    except ConfigError as exc:  # no usable trusted root
        raise UpdateRejectedError(str(exc), reason="untrusted_metadata") from None
    except OSError as exc:
        raise UpdateRejectedError(f"cannot read {src}: {exc}", reason="bad_format") from None
    if not keys:
        raise UpdateRejectedError(f"model {model!r} has no Ed25519 key delegated in the repository",
                                  reason="key_not_delegated")
    return CheckedTarget(copy, model, version, info.path, sha, keys, client)


def _signed_target(state_dir: str | os.PathLike, fetcher: Any, model: str, version: str, clock: str,
                   clock_skew: float, now: dt.datetime | None) -> tuple[Any, Any]:
    """Refresh the metadata (python-tuf) and get the signed target of (model, version)."""
    from edgefleet.trust import TrustClient

    if now is None and clock == "none":
        now = _EPOCH  # expiry is checked at the clock floor (the last successful verification)
    client = TrustClient(tuf_dir(state_dir), fetcher, None, clock_skew=dt.timedelta(seconds=clock_skew), now=now)
    return client, client.get_target(model, version)


def refreshed_client(state_dir: str | os.PathLike, repo: str | os.PathLike | None, *, fetcher: Any = None,
                     clock: str = "system", clock_skew: float = 300.0, now: dt.datetime | None = None) -> Any:
    """A :class:`edgefleet.trust.TrustClient` over the device's trusted state whose metadata python-tuf has
    refreshed from ``repo`` (a directory, or a job's metadata mirror) or ``fetcher``; refusals are
    ``UpdateRejectedError`` with their named reason."""
    from edgefleet.trust import METADATA_DIR, TrustClient, make_repo_fetcher

    if fetcher is None:
        if repo is None or not (Path(repo) / METADATA_DIR).is_dir():
            raise UpdateRejectedError("this device verifies rollback orders against TUF metadata: give the "
                                      "repository (--repo DIR)", reason="no_repository")
        fetcher = make_repo_fetcher(repo)
    if now is None and clock == "none":
        now = _EPOCH
    try:
        client = TrustClient(tuf_dir(state_dir), fetcher, None, clock_skew=dt.timedelta(seconds=clock_skew), now=now)
        client.refresh()
    except TrustError as exc:
        raise UpdateRejectedError(f"{exc}", reason=trust_reason(exc)) from None
    except ConfigError as exc:
        raise UpdateRejectedError(str(exc), reason="untrusted_metadata") from None
    return client


def order_signatures(doc: Mapping[str, Any]) -> list[Any]:
    """The signature documents an order carries: ``signature`` and, for a threshold, ``signatures``."""
    from edgefleet.trust import MAX_ORDER_SIGNATURES

    out: list[Any] = []
    if isinstance(doc.get("signature"), Mapping):
        out.append(doc["signature"])
    extra = doc.get("signatures")
    if isinstance(extra, list):
        out.extend(extra[:MAX_ORDER_SIGNATURES])
    return out


def order_verifier(client: Any) -> Callable[[Mapping[str, Any], bytes], None]:
    """``verify(doc, payload)`` for the order checks (``device_agent.orders.check_rollback_order``,
    ``cloud_sync.wire.orders.check_order``): the order must be signed by a threshold of the rollback role's keys
    (python-tuf's ``get_verification_result`` on the refreshed, verified top-level targets)."""
    def verify(doc: Mapping[str, Any], payload: bytes) -> None:
        try:
            client.verify_rollback_order(payload, order_signatures(doc))
        except UnknownModelError as exc:
            raise UpdateRejectedError(f"rollback order refused: {exc}", reason="no_rollback_role") from None
        except ThresholdError as exc:
            result = getattr(exc, "result", None)
            reason = "order_threshold" if result is not None and result.signed else "order_key_not_delegated"
            raise UpdateRejectedError(f"rollback order refused: {exc}", reason=reason) from None
        except TrustError as exc:
            raise UpdateRejectedError(f"rollback order refused: {exc}", reason=trust_reason(exc)) from None

    return verify


@dataclass(frozen=True)
class AnnouncedTarget:
    """A file announced for download whose length and sha256 are those of the signed target."""

    model: str
    version: str
    target: str
    length: int
    sha256: str
    url: str = ""  # where the signed target says it is downloaded from (custom.edgefleet.url; "": not said)


def check_announced(
    state_dir: str | os.PathLike,
    mirror: str | os.PathLike,
    model: str,
    version: str,
    length: int,
    sha256: str,
    *,
    clock: str = "system",
    clock_skew: float = 300.0,
    now: dt.datetime | None = None,
) -> AnnouncedTarget:
    """Bind an announced download (an install job's file: length, sha256) to the signed target of
    (``model``, ``version``) before the first byte is fetched: the metadata in ``mirror`` (sent with the
    job, see ``edgefleet.trust.write_mirror``) is refreshed by python-tuf from the device's trusted state.
    A job whose file is not exactly the signed target is ``UpdateRejectedError`` ``target_mismatch``;
    any metadata refusal has its named reason (``TRUST_REASONS``). The archive is checked again, with
    the bundle's signature against the model's delegated keys, when it is installed."""
    from edgefleet.trust import make_repo_fetcher

    try:
        _, info = _signed_target(state_dir, make_repo_fetcher(mirror), model, version, clock, clock_skew, now)
    except TrustError as exc:
        raise UpdateRejectedError(f"{exc}", reason=trust_reason(exc)) from None
    except ConfigError as exc:
        raise UpdateRejectedError(str(exc), reason="untrusted_metadata") from None
    signed_sha = (info.hashes or {}).get("sha256", "")
    if info.length != length or signed_sha != sha256:
        raise UpdateRejectedError(
            f"the job announces {length} bytes sha256 {sha256[:16]}... but the signed target {info.path} is "
            f"{info.length} bytes sha256 {signed_sha[:16]}...; nothing was downloaded", reason="target_mismatch")
    from edgefleet.trust import target_url

    return AnnouncedTarget(model, version, info.path, info.length, signed_sha, target_url(info))
