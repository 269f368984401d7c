"""Signed rollback orders: the only way an older version may be installed.

An order names one exact bundle (the sha256 of its manifest), optionally one
device, a random ``order_id``, the time it was issued and an expiry, and is
signed with a fleet key (the same Ed25519 signature document as bundles, over
the canonical JSON of the order; signed by several keys, ``signatures`` lists them
all and ``signature`` is the first)::

    {"order": {"type": "edgefleet.rollback", "manifest_sha256": "...", "name": "m",
               "version": "3", "device_id": "", "order_id": "9f…", "issued_at": 1764230000.1,
               "expires_at": 1764834800.1},
     "signature": {"algorithm": "ed25519", "key_id": "...", "signature": "..."}}

**Who may sign.** A device without a TUF root verifies ``signature`` against its
flat trusted keys (``--trust``). A device in TUF mode ignores those: the order must be
signed by a threshold of the keys of the repository's ``rollback`` role
(:func:`edgefleet.device_agent.tuf_mode.order_verifier`, python-tuf), given as ``verify``.

**Single use.** The device keeps every order it has executed in
``STATE_DIR/orders.json`` (:class:`OrderLedger`, written atomically and fsynced
*before* the order takes effect): the same order given again is refused
``order_replayed``, in this process or any later one. An order is identified by
the sha256 of its signed body, so even an order without ``order_id`` is used once.
The coordinator's orders (:mod:`edgefleet.cloud_sync.wire.orders`) are single-use by
their rising ``seq``, which the device keeps in the same ledger.

**Two order formats, on purpose.** The coordinator's fleet order (type
``edgefleet.fleet_rollback``, :mod:`edgefleet.cloud_sync.wire.orders`) names a fleet, device,
deployment, job and versions and sends the device back to the previous version in its store,
single-use by ``seq``; this one names one exact bundle (its manifest sha256) that an operator
installs by hand, single-use by the hash of its body. They share the signature document,
the keys (or TUF rollback role), :func:`check_time_bounds` and the ledger; merging the bodies
would change what is signed, so orders already issued and devices of an older release would
refuse each other's orders (see that module for the details). It cannot live there either:
this package may import only the SDK, and the device checks its own order offline.

**Time bounds and the clock-skew policy** (:func:`check_time_bounds`, used by both
order paths). An order is valid while ``issued_at <= now + skew`` and
``now <= expires_at`` (``expires_at`` 0: no expiry; ``issued_at`` is
required). What ``now`` is depends on ``[update] clock``:

``auto`` (default)  ``system`` when the kernel reports the clock synchronized
                    (``adjtimex``: NTP, chrony, PTP), otherwise ``none``.
``system``          the device's clock, never earlier than the signed-time floor.
                    A clock behind the signer's by more than the skew refuses
                    orders as ``order_not_yet_valid`` (a device set 40 days back
                    cannot be fed an order that expired 30 days ago); a clock
                    ahead refuses them as ``order_expired`` (it cannot be told
                    from an order delivered late). Fix the clock.
``none``            a device with no reliable clock (no RTC battery, no time
                    sync): its clock is ignored. ``now`` is the *signed-time
                    floor*: the newest ``issued_at`` of any signed order it has
                    verified, kept in the ledger. An order is refused once the
                    device has seen signed evidence of a time after its expiry;
                    without such evidence a late-delivered (never executed)
                    order is accepted: single use still holds, expiry then
                    bounds only what the device has learnt.

``clock_skew_seconds`` (default 300) is the tolerance between the signer's
clock and the device's. Only orders whose signature verified raise the floor.
A ledger found damaged is moved aside and the new one refuses every order issued
before the moment the damage was found (they may have been executed already).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from edgefleet.atomic import write_atomic
from edgefleet.canonical import canonical_json, sha256_bytes
from edgefleet.errors import SignatureError, UpdateRejectedError
from edgefleet.keys import PrivateKey, PublicKey, sign_payload, verify_payload
from edgefleet.manifest import MANIFEST_NAME

ORDER_TYPE = "edgefleet.rollback"
LEDGER_NAME = "orders.json"
CLOCK_MODES = ("auto", "system", "none")
DEFAULT_CLOCK_SKEW = 300.0
DEFAULT_ORDER_TTL = 7 * 86400.0
MAX_LEDGER = 10_000  # executed order ids kept (orders are rare; past this the floor still refuses old ones)

_now: Callable[[], float] = time.time  # the device's clock (tests replace it)


def make_rollback_order(
    private_key: PrivateKey | Sequence[PrivateKey],
    bundle_dir: str | os.PathLike,
    device_id: str = "",
    expires_in: float | None = DEFAULT_ORDER_TTL,
) -> dict[str, Any]:
    """Sign an order allowing ``bundle_dir`` (typically an older version) to be installed, once.

    ``expires_in`` seconds from now (``None`` or 0: no expiry; it is still single-use). Several keys
    (a threshold of the TUF rollback role's) each sign it: ``signatures`` lists them all."""
    raw = (Path(bundle_dir) / MANIFEST_NAME).read_bytes()
    doc = json.loads(raw)
    now = time.time()
    order = {
        "type": ORDER_TYPE,
        "manifest_sha256": sha256_bytes(raw),
        "name": doc.get("name", ""),
        "version": doc.get("version", ""),
        "device_id": device_id,
        "order_id": uuid.uuid4().hex,
        "issued_at": now,
        "expires_at": now + expires_in if expires_in else 0,
    }
    return sign_order(order, private_key)


def sign_order(order: Mapping[str, Any], keys: PrivateKey | Sequence[PrivateKey]) -> dict[str, Any]:
    """``{"order": order, "signature": first}`` (and ``"signatures": [all]`` for more than one key)."""
    signers = [keys] if isinstance(keys, PrivateKey) else list(keys)
    if not signers:
        raise ValueError("an order needs at least one signing key")
    payload = canonical_json(dict(order))
    sigs = [sign_payload(k, payload) for k in signers]
    doc: dict[str, Any] = {"order": dict(order), "signature": sigs[0]}
    if len(sigs) > 1:
        doc["signatures"] = sigs
    return doc


# -- the clock -----------------------------------------------------------------------------------------------------
def clock_synchronized() -> bool | None:
    """Whether the kernel says the system clock is synchronized (Linux ``adjtimex``); ``None``: cannot tell."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        buf = ctypes.create_string_buffer(1024)  # struct timex, modes = 0: read only
        state = int(libc.adjtimex(buf))
    except (OSError, AttributeError, TypeError, ValueError):
        return None
    if state < 0:
        return None
    return state != 5  # TIME_ERROR: the clock is not synchronized


@dataclass(frozen=True)
class ClockPolicy:
    """``[update] clock`` and ``clock_skew_seconds`` (see the module docstring)."""

    mode: str = "auto"
    skew: float = DEFAULT_CLOCK_SKEW

    def resolve(self, synchronized: bool | None = None) -> str:
        """``system`` or ``none`` (``auto`` asks the kernel unless ``synchronized`` is given)."""
        if self.mode != "auto":
            return self.mode
        sync = clock_synchronized() if synchronized is None else synchronized
        return "none" if sync is False else "system"


def check_time_bounds(
    issued_at: float,
    expires_at: float,
    *,
    policy: ClockPolicy,
    floor: float = 0.0,
    now: float | None = None,
    synchronized: bool | None = None,
) -> tuple[str, str] | None:
    """``(reason, message)`` when an order is outside its signed time bounds, else ``None``.

    Reasons: ``order_not_yet_valid`` (issued after the device's now + skew) and ``order_expired``."""
    mode = policy.resolve(synchronized)
    skew = max(0.0, float(policy.skew))
    clock = _now() if now is None else float(now)
    if mode == "none":
        current, what = max(floor, issued_at), "the newest signed time this device has seen"
    else:
        current, what = max(clock, floor), "this device's clock"
    if issued_at > current + skew:
        return "order_not_yet_valid", (
            f"it was issued {issued_at - current:.0f} s after {what} ({_iso(current)}, skew allowed {skew:.0f} s): "
            "the device clock is behind the signer's; fix it (or set [update] clock = \"none\")")
    if expires_at and current > expires_at:
        return "order_expired", (
            f"it expired at {_iso(expires_at)}, {current - expires_at:.0f} s before {what} ({_iso(current)})")
    return None


def _iso(t: float) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    except (OverflowError, ValueError, OSError):
        return str(t)


# -- the ledger ------------------------------------------------------------------------------------------------------
class OrderLedger:
    """Orders this device has executed, the signed-time floor, the last fleet order ``seq``: ``orders.json``.

    Written with :func:`edgefleet.atomic.write_atomic` (temp file, fsync, rename, fsync of the directory) before an
    order takes effect. Call :meth:`reload` and :meth:`record` holding the store lock."""

    def __init__(self, path: str | os.PathLike, now: Callable[[], float] | None = None) -> None:
        self.path = Path(path)
        self._clock = now or _now
        self.applied: dict[str, float] = {}
        self.floor = 0.0
        self.not_before = 0.0
        self.seq = 0
        self.job = ""
        self._load()

    def reload(self) -> OrderLedger:
        self._load()
        return self

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError:
            raw = b""
        try:
            d = json.loads(raw.decode("utf-8"))
            applied = {str(k): float(v) for k, v in dict(d["applied"]).items()}
            floor, not_before = float(d.get("floor", 0.0)), float(d.get("not_before", 0.0))
            seq, job = int(d.get("seq", 0)), str(d.get("job", ""))
            if not all(math.isfinite(x) for x in (floor, not_before)):
                raise ValueError("non-finite time")
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            self._damaged()
            return
        self.applied, self.floor, self.not_before, self.seq, self.job = applied, floor, not_before, seq, job

    def _damaged(self) -> None:
        """Moved aside; every order issued before now may have been executed: refuse those from now on."""
        with contextlib.suppress(OSError):
            os.replace(self.path, self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"))
        self.applied, self.seq, self.job = {}, 0, ""
        self.not_before = max(self.not_before, self._clock())
        with contextlib.suppress(OSError):
            self._write()

    def used(self, order_id: str) -> bool:
        return order_id in self.applied

    def record(self, order_id: str, issued_at: float, *, signed: bool, seq: int | None = None, job: str = "") -> None:
        """Remember an order as executed (durably) and raise the floor to its signed ``issued_at``."""
        self.applied[order_id] = float(issued_at)
        if len(self.applied) > MAX_LEDGER:
            for k in sorted(self.applied, key=self.applied.__getitem__)[: len(self.applied) - MAX_LEDGER]:
                self.not_before = max(self.not_before, self.applied.pop(k))
        if signed and math.isfinite(issued_at):
            self.floor = max(self.floor, float(issued_at))
        if seq is not None:
            self.seq, self.job = int(seq), job
        self._write()

    def _write(self) -> None:
        doc = {"applied": self.applied, "floor": self.floor, "not_before": self.not_before, "seq": self.seq,
               "job": self.job}
        write_atomic(self.path, json.dumps(doc, sort_keys=True).encode())


# -- local orders ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AcceptedOrder:
    order_id: str  # the sha256 of the signed order body
    issued_at: float
    expires_at: float
    signed: bool


def check_rollback_order(
    doc: Mapping[str, Any],
    manifest_id: str,
    trusted: Sequence[PublicKey],
    device_id: str = "",
    now: float | None = None,
    *,
    ledger: OrderLedger | None = None,
    clock: ClockPolicy | None = None,
    floor: float | None = None,
    synchronized: bool | None = None,
    verify: Callable[[Mapping[str, Any], bytes], None] | None = None,
) -> AcceptedOrder:
    """Raise ``UpdateRejectedError`` unless the order allows exactly this bundle, now, for the first time.

    Reasons: ``bad_rollback_order`` (signature, type, bundle, device, no issue time), ``order_replayed``,
    ``order_not_yet_valid``, ``order_expired``. The caller records the returned order in the ledger
    before acting on it. ``verify(doc, payload)`` (TUF mode: the rollback role's keys, see
    :func:`edgefleet.device_agent.tuf_mode.order_verifier`) replaces the check against ``trusted`` and
    raises ``UpdateRejectedError`` with its own reason."""
    def refuse(msg: str, reason: str = "bad_rollback_order") -> UpdateRejectedError:
        return UpdateRejectedError(f"rollback order refused: {msg}", reason=reason)

    if not isinstance(doc, Mapping) or not isinstance(doc.get("order"), Mapping):
        raise refuse("not an order document")
    order = dict(doc["order"])
    if verify is not None:
        verify(doc, canonical_json(order))
    else:
        try:
            verify_payload(dict(doc.get("signature") or {}), canonical_json(order), list(trusted))
        except (SignatureError, TypeError, ValueError) as exc:
            raise refuse(str(exc)) from None
    if order.get("type") != ORDER_TYPE:
        raise refuse(f"type is {order.get('type')!r}")
    if order.get("manifest_sha256") != manifest_id:
        raise refuse("it names a different bundle")
    if order.get("device_id") and order["device_id"] != device_id:
        raise refuse(f"it is addressed to device {order['device_id']!r}")
    issued: Any = order.get("issued_at")
    expires: Any = order.get("expires_at") or 0
    if not _number(issued) or not _number(expires):
        raise refuse("it has no signed issue time (made by an older edgefleet?): sign a new order")
    order_id = sha256_bytes(canonical_json(order))
    if ledger is not None and ledger.used(order_id):
        raise refuse(f"this order was already executed on this device (at version {order.get('version')!r}); "
                     "an order is used once: sign a new one", "order_replayed")
    if ledger is not None and float(issued) < ledger.not_before:
        raise refuse("it was issued before this device's order ledger was found damaged, so it may have been "
                     "executed already: sign a new one", "order_replayed")
    problem = check_time_bounds(float(issued), float(expires), policy=clock or ClockPolicy(),
                                floor=(ledger.floor if ledger is not None else 0.0) if floor is None else floor,
                                now=now, synchronized=synchronized)
    if problem:
        raise refuse(problem[1], problem[0])
    return AcceptedOrder(order_id, float(issued), float(expires), signed=True)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


__all__ = ["ORDER_TYPE", "LEDGER_NAME", "CLOCK_MODES", "DEFAULT_CLOCK_SKEW", "DEFAULT_ORDER_TTL", "ClockPolicy",
           "OrderLedger", "AcceptedOrder", "check_time_bounds", "check_rollback_order", "clock_synchronized",
           "make_rollback_order", "sign_order"]
