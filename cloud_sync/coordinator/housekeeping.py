"""Fleet housekeeping on the coordinator: decommissioning a device, and the list of stored artifacts.

Decommissioning (``DELETE /v1/devices/{id}``, ``edgefleet fleet decommission ID``):

1. the registry removes the device, keeps a tombstone, cancels its unfinished jobs and gives every live rollout
   that still targets it a CANCELED job (``Registry.decommission``);
2. the coordinator refuses its messages from then on, as it refuses a device outside the allow-list (counted in
   ``refused``), so a device that comes back is never registered again;
3. its retained status and desired job are cleared on the broker;
4. with ``cloud serve --broker-config``, its broker credentials are revoked: the generated ACL denies it the
   fleet's topics, its password line goes, the broker reloads (:class:`.acl.BrokerAccess`).

Assigning the device a group again (``PATCH /v1/devices/{id}``, ``fleet assign``) re-admits it; its broker
credentials must then be given again (mosquitto_passwd), since they were deleted.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgefleet.errors import ConfigError

from ..wire import protocol as P
from .rows import ArtifactInfo, Device

if TYPE_CHECKING:
    from .service import Coordinator

log = logging.getLogger(__name__)
MAX_MANIFEST = 1 << 20  # bytes of manifest.json read from a stored archive
MAX_LINEAGE = 64 * 1024  # characters of lineage JSON kept per artifact


@dataclass(frozen=True)
class Decommissioned:
    """What decommissioning did: the removed ``device`` row, what was done at the broker (``broker``), and
    ``broker_error`` when the revocation failed (the device is decommissioned all the same)."""

    device: Device
    broker: list[str] = field(default_factory=list)
    broker_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"device_id": self.device.device_id, "group": self.device.group, "decommissioned": True,
                "broker": self.broker, "broker_error": self.broker_error}


def decommission(coord: Coordinator, device_id: str, who: str = "") -> Decommissioned | None:
    """Decommission ``device_id`` (see the module); None when the fleet has no such device."""
    known = device_id in coord.gone
    coord.gone.add(device_id)  # first: a rollout tick running now neither dispatches to it nor takes it as a joiner
    row = coord.registry.decommission(coord.fleet, device_id, who)
    if row is None:
        if not known:
            coord.gone.discard(device_id)
        return None
    coord.gone.add(device_id)  # (again: the tick may have read the registry's list meanwhile)
    coord.forget(device_id)
    for topic in (P.up_topic(coord.fleet, device_id, P.Up.STATUS), P.down_topic(coord.fleet, device_id, P.Down.DESIRED)):
        try:
            coord.transport.publish(topic, b"", qos=1, retain=True)  # an empty retained message clears it
        except Exception as exc:  # the broker may be away: the device is refused all the same
            log.warning("could not clear %s: %s", topic, exc)
    done, error = sync_broker(coord)
    coord.counters["decommissioned"] += 1
    log.warning("device %s (group %s) decommissioned by %s%s", device_id, row.group, who or "?",
                f"; broker: {'; '.join(done)}" if done else "",
                extra={"event": "device_decommissioned", "device": device_id, "group": row.group})
    return Decommissioned(row, done, error)


def readmitted(coord: Coordinator, device_id: str) -> None:
    """The operator assigned a decommissioned device a group again: it is accepted again and the ACL stops denying
    it (its password must be given again)."""
    coord.gone.discard(device_id)
    done, _ = sync_broker(coord)
    log.warning("device %s re-admitted (it had been decommissioned)%s", device_id,
                f"; broker: {'; '.join(done)}" if done else "",
                extra={"event": "device_readmitted", "device": device_id})


def sync_broker(coord: Coordinator) -> tuple[list[str], str]:
    """Make the broker's ACL and password file deny the fleet's decommissioned devices (with
    ``coord.broker_access``); returns (what was done, the error if it failed)."""
    access = coord.broker_access
    if access is None:
        return [], ""
    try:
        return access.revoke(d.device_id for d in coord.registry.decommissioned(coord.fleet)), ""
    except (OSError, ConfigError) as exc:
        why = f"{type(exc).__name__}: {exc}"
        log.error("could not revoke broker credentials of decommissioned devices: %s", why,
                  extra={"event": "broker_revoke_failed"})
        coord.counters["broker_revoke_errors"] += 1
        return [], why


def manifest_lineage(archive: bytes) -> dict[str, Any]:
    """The ``lineage`` of an ``.efb`` archive's manifest (its first member), bounded: {} when there is none or it
    cannot be read; a lineage larger than :data:`MAX_LINEAGE` characters of JSON is replaced by a note."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            member = tar.next()
            if member is None or member.name != "manifest.json" or not member.isreg() or member.size > MAX_MANIFEST:
                return {}
            src = tar.extractfile(member)
            doc = json.loads(src.read(member.size).decode("utf-8")) if src is not None else {}
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}
    lineage = doc.get("lineage") if isinstance(doc, dict) else None
    if not isinstance(lineage, dict):
        return {}
    try:
        text = json.dumps(lineage, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return {}
    if len(text) > MAX_LINEAGE:
        return {"truncated": f"the lineage is {len(text)} characters of JSON (more than {MAX_LINEAGE})"}
    return lineage


def artifacts(coord: Coordinator) -> list[ArtifactInfo]:
    """The stored artifacts with their lineage and deployments; an artifact stored before lineage was kept has its
    manifest read once now."""
    reg = coord.registry
    missing = reg.artifacts_without_lineage()
    for file_id in missing:
        art = reg.artifact(file_id)
        if art is not None:
            reg.set_artifact_lineage(file_id, manifest_lineage(art.data))
    return reg.artifacts(coord.fleet)


__all__ = ["Decommissioned", "artifacts", "decommission", "manifest_lineage", "readmitted", "sync_broker"]
