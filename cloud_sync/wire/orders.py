"""Signed rollback orders: how the coordinator orders a device back to its previous version.

The coordinator signs with the operator's key (``cloud serve --signing-key``, an
Ed25519 PEM like the bundle key). A device without a TUF root verifies it against its
flat trusted keys; a device in TUF mode accepts it only when signed by a threshold of
the keys of the TUF repository's ``rollback`` role (``edgefleet repo delegate-rollback``;
the coordinator's ``--signing-key`` is that role's key, never a bundle key), checked by
python-tuf against the metadata the coordinator sends with the rollback job
(:func:`edgefleet.device_agent.tuf_mode.order_verifier`). Signed by several keys, the
document lists them all in ``signatures`` (``signature`` is the first). The order
travels in :class:`~edgefleet.cloud_sync.wire.protocol.Desired` (``rollback_order``)::

    {"order": {"type": "edgefleet.fleet_rollback", "fleet": "f1", "device_id": "d0",
               "deployment_id": "…", "job_id": "…", "from_version": "2", "to_version": "1",
               "seq": 1764230000123, "issued_at": 1764230000.1, "expires_at": 1764834800.1},
     "signature": {"algorithm": "ed25519", "key_id": "…", "signature": "…"}}

A device refuses an order, reporting the job REJECTED with one of these reasons:

``order_unsigned``      no order or no signature (and the device requires signatures)
``order_signature``     not signed by a trusted key, or altered after signing
``order_key_not_delegated`` (TUF mode) signed by no key of the repository's rollback role
``order_threshold``     (TUF mode) signed by fewer than the rollback role's threshold of its keys
``no_rollback_role``    (TUF mode) the repository delegates no rollback role
``order_malformed``     fields missing or of the wrong type
``order_misaddressed``  another fleet or device
``order_mismatch``      the desired state around it names another job, deployment or version
``order_expired``       past ``expires_at``
``order_not_yet_valid`` ``issued_at`` after the device's now (plus the skew): its clock is behind the signer's
``order_replayed``      ``seq`` not above the last order this device accepted

``seq`` rises across the registry (its counter starts at the creation time in
milliseconds, so a fresh registry still issues higher numbers than an old one).
The device persists the last accepted ``seq`` before it acts, so an order can
be executed once: a replayed copy of an old order is refused even after the
device has forgotten the job.

**Why this is not the device agent's order** (:mod:`edgefleet.device_agent.orders`, type
``edgefleet.rollback``). Both are Ed25519 documents ``{"order", "signature"[, "signatures"]}``
over the canonical JSON of the body, checked against the same keys (or the TUF rollback role),
bounded in time by the same :func:`~edgefleet.device_agent.orders.check_time_bounds` and
recorded in the same ledger (:class:`~edgefleet.device_agent.orders.OrderLedger`). They
authorize different things, so their signed bodies differ: the agent's order lets an operator
install one exact older bundle by hand (``agent install --rollback-order``), names that
bundle's manifest sha256 and no job, and is single-use by the sha256 of its body; this one is
issued by the coordinator for a fleet job, names fleet, device, deployment, job and the two
versions (the device returns to the *previous* version in its store, so no bundle travels and
there is no manifest to name), and is single-use by ``seq``, which rises across the registry.
One format would change what is signed: orders already issued and kept by operators, and
devices and coordinators of an older release, would refuse each other's orders
(``order_malformed`` / ``bad_rollback_order``), and the ledger's two kinds of entry (body hashes
and ``fleet:JOB:SEQ``) would mean different things. So the two bodies stay, each in its module,
sharing everything below the body.

Time bounds follow the device's clock policy (``[update] clock``, ``clock_skew_seconds``;
see :mod:`edgefleet.device_agent.orders`): ``issued_at <= now + skew`` and
``now <= expires_at``, where ``now`` is the device clock (``system``) or,
on a device without a reliable clock (``none``, or ``auto`` with an unsynchronized
kernel clock), the newest signed ``issued_at`` it has verified (``floor``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

from edgefleet.canonical import canonical_json
from edgefleet.device_agent.orders import ClockPolicy, check_time_bounds
from edgefleet.errors import SignatureError, UpdateRejectedError
from edgefleet.keys import PrivateKey, PublicKey, sign_payload, verify_payload

ORDER_TYPE = "edgefleet.fleet_rollback"
DEFAULT_ORDER_TTL = 7 * 86400.0


class OrderRefused(UpdateRejectedError):
    """A rollback order the device will not execute; ``reason`` is one of the ``order_*`` codes."""


@dataclass(frozen=True)
class RollbackOrder:
    fleet: str
    device_id: str
    deployment_id: str
    job_id: str
    from_version: str  # the version being undone
    to_version: str  # the version to return to
    seq: int
    issued_at: float
    expires_at: float = 0.0  # 0: never

    def to_dict(self) -> dict[str, Any]:
        return {"type": ORDER_TYPE, **asdict(self)}

    def sign(self, key: PrivateKey | Sequence[PrivateKey]) -> dict[str, Any]:
        """The signed document; several keys (a threshold of the TUF rollback role's) each sign it."""
        body = self.to_dict()
        sigs = [sign_payload(k, canonical_json(body)) for k in ([key] if isinstance(key, PrivateKey) else key)]
        if not sigs:
            raise ValueError("an order needs at least one signing key")
        return {"order": body, "signature": sigs[0], **({"signatures": sigs} if len(sigs) > 1 else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RollbackOrder:
        def field(name: str, typ: type | tuple[type, ...]) -> Any:
            v = d.get(name)
            if not isinstance(v, typ) or isinstance(v, bool):
                raise OrderRefused(f"rollback order refused: field {name!r} is missing or not {typ}",
                                   reason="order_malformed")
            return v

        if d.get("type") != ORDER_TYPE:
            raise OrderRefused(f"rollback order refused: type is {d.get('type')!r}", reason="order_malformed")
        seq, issued, expires = field("seq", int), field("issued_at", (int, float)), field("expires_at", (int, float))
        if seq < 0 or not math.isfinite(issued) or not math.isfinite(expires):
            raise OrderRefused("rollback order refused: seq or times out of range", reason="order_malformed")
        return cls(field("fleet", str), field("device_id", str), field("deployment_id", str), field("job_id", str),
                   field("from_version", str), field("to_version", str), seq, float(issued), float(expires))


def check_order(
    doc: Any,
    *,
    trusted: Sequence[PublicKey],
    require_signature: bool,
    fleet: str,
    device_id: str,
    job_id: str,
    deployment_id: str,
    to_version: str,
    last_seq: int,
    last_job: str = "",
    now: float | None = None,
    clock: str = "auto",
    skew: float = 300.0,
    floor: float = 0.0,
    synchronized: bool | None = None,
    verify: Callable[[Mapping[str, Any], bytes], None] | None = None,
) -> RollbackOrder | None:
    """Verify an order for this device and job; raise :class:`OrderRefused` naming the reason.

    Without ``require_signature`` (a device with no trusted keys and
    ``require_signature = false``: a development setup) nothing is verified and
    ``None`` is returned when there is no order; an order that is present must
    still name this device and job and be fresh.
    ``last_job`` is the job of ``last_seq``: resuming that same job after a restart
    is not a replay. ``verify(doc, payload)`` (TUF mode: the rollback role's keys, see
    :func:`edgefleet.device_agent.tuf_mode.order_verifier`) replaces the check against ``trusted``;
    a signature is then always required and its refusal reason is kept.
    """
    def refuse(reason: str, msg: str) -> OrderRefused:
        return OrderRefused(f"rollback order refused: {msg}", reason=reason)

    if verify is not None:
        require_signature = True
    if doc is None or (isinstance(doc, Mapping) and not doc.get("signature")):
        if require_signature:
            raise refuse("order_unsigned", "the coordinator sent no signed order (start it with --signing-key)")
        if doc is None:
            return None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("order"), Mapping):
        raise refuse("order_malformed", "not an order document")
    body = dict(doc["order"])
    if verify is not None:
        try:
            verify(doc, canonical_json(body))
        except OrderRefused:
            raise
        except UpdateRejectedError as exc:
            raise OrderRefused(str(exc), reason=exc.reason) from None
    elif require_signature:
        if not trusted:
            raise refuse("order_signature", "this device trusts no key to verify it with")
        try:
            verify_payload(dict(doc.get("signature") or {}), canonical_json(body), list(trusted))
        except (SignatureError, TypeError, ValueError) as exc:
            raise refuse("order_signature", str(exc)) from None
    order = RollbackOrder.from_dict(body)
    if order.fleet != fleet or order.device_id != device_id:
        raise refuse("order_misaddressed", f"it is addressed to device {order.device_id!r} of fleet {order.fleet!r}")
    if (order.job_id, order.deployment_id, order.to_version) != (job_id, deployment_id, to_version):
        raise refuse("order_mismatch", "it names another job, deployment or version than the desired state")
    problem = check_time_bounds(order.issued_at, order.expires_at, policy=ClockPolicy(clock, skew), floor=floor,
                                now=time.time() if now is None else now, synchronized=synchronized)
    if problem:
        raise refuse(*problem)
    if order.seq < last_seq or (order.seq == last_seq and order.job_id != last_job):
        raise refuse("order_replayed", f"sequence {order.seq} is not newer than {last_seq}, the last one executed")
    return order


__all__ = ["ORDER_TYPE", "DEFAULT_ORDER_TTL", "OrderRefused", "RollbackOrder", "check_order"]
