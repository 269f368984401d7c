"""The coordinator API's housekeeping endpoints (FastAPI), mounted by :func:`~.api.create_app`:

- ``DELETE /v1/devices/{id}`` - decommission a device (:mod:`.housekeeping`): removed from the registry, refused
  from then on, its broker credentials revoked (with ``cloud serve --broker-config``);
- ``GET /v1/artifacts`` - the model versions the coordinator stores: size, sha256, lineage, deployments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi import Path as PathParam

from ..wire import protocol as P
from . import housekeeping

if TYPE_CHECKING:
    from .service import Coordinator


def add_routes(app: FastAPI, coord: Coordinator, auth: Callable[..., Any]) -> None:
    from .api import audit_note

    device_id_p = PathParam(pattern=P._ID.pattern, description="a device id (1-128 of A-Z a-z 0-9 _ . : -)")

    @app.delete("/v1/devices/{device_id}", dependencies=[Depends(auth)],
                responses={404: {"description": "no such device (or decommissioned already)"}})
    def decommission(request: Request, device_id: str = device_id_p) -> dict[str, Any]:
        """Decommission a device (admin): it leaves the registry, its unfinished jobs are canceled (no rollout waits
        for it), its messages are refused from then on (a device that comes back is not registered again), its
        retained status and job are cleared on the broker and, with ``cloud serve --broker-config``, its broker
        credentials are revoked (``broker`` says what was done, ``broker_error`` why that failed). Assigning it a
        group again (``PATCH``) re-admits it."""
        principal = request.scope.get("edgefleet.principal")
        audit_note(request, f"decommission device {device_id}")
        done = housekeeping.decommission(coord, device_id, getattr(principal, "name", ""))
        if done is None:
            gone = device_id in coord.gone
            raise HTTPException(404, f"no device {device_id!r}" + (" (decommissioned already)" if gone else ""))
        if done.broker_error:
            audit_note(request, f"decommission device {device_id}; broker revocation failed: {done.broker_error}")
        return done.to_dict()

    @app.get("/v1/artifacts", dependencies=[Depends(auth)])
    def artifacts() -> list[dict[str, Any]]:
        """The model versions stored by the coordinator, oldest first: ``sha256`` (the archive's), ``name``,
        ``version``, ``size`` (bytes), ``created``, the ``lineage`` of its manifest (what it was compiled or
        federated from) and the ``deployments`` that rolled it out (id, group, tags, state, created)."""
        return [a.to_dict() for a in housekeeping.artifacts(coord)]


__all__ = ["add_routes"]
