"""The coordinator's HTTP API (FastAPI, OpenAPI at /openapi.json, bearer-token auth).

The operator CLI (``edgefleet fleet ...``) and any dashboard use only this API.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from edgefleet._version import __version__
from edgefleet.errors import EdgefleetError, SyncError

from .rollout import RolloutPlan, parse_duration, parse_percent
from .service import Coordinator

MAX_UPLOAD = 256 << 20


def create_app(coord: Coordinator, token: str) -> FastAPI:
    if not token:
        raise ValueError("an API token is required")
    app = FastAPI(title="edgefleet coordinator", version=__version__,
                  description="Fleet registry, staged rollouts and telemetry of one edgefleet fleet.")
    bearer = HTTPBearer(auto_error=False)

    def auth(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if cred is None or not hmac.compare_digest(cred.credentials.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    reg, fleet = coord.registry, coord.fleet

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "fleet": fleet, "broker_connected": coord.transport.connected}

    @app.get("/v1/devices", dependencies=[Depends(auth)])
    def devices(group: str | None = None) -> list[dict[str, Any]]:
        return reg.devices(fleet, group)

    @app.get("/v1/devices/{device_id}", dependencies=[Depends(auth)])
    def device(device_id: str) -> dict[str, Any]:
        d = reg.device(fleet, device_id)
        if d is None:
            raise HTTPException(404, f"no device {device_id!r}")
        return {**d, "jobs": reg.jobs(device_id=device_id)[-20:], "telemetry_rejected": coord.rejected[device_id]}

    @app.patch("/v1/devices/{device_id}", dependencies=[Depends(auth)])
    def set_device(device_id: str, body: dict[str, Any]) -> dict[str, Any]:
        import json

        fields: dict[str, Any] = {}
        if isinstance(body.get("group"), str):
            fields["group_name"] = body["group"]
        if isinstance(body.get("tags"), list):
            fields["tags"] = json.dumps([str(t) for t in body["tags"]])
        if not fields or not reg.set_device(fleet, device_id, **fields):
            raise HTTPException(404, f"no device {device_id!r} or nothing to change")
        coord._groups.pop(device_id, None)
        return reg.device(fleet, device_id) or {}

    @app.post("/v1/deployments", dependencies=[Depends(auth)], status_code=201)
    async def deploy(request: Request, group: str = Query(...), canary: str = "5%",
                     waves: str = "100%", max_failure: str = "0%", job_timeout: str = "1h") -> dict[str, Any]:
        """The request body is the bundle archive (.efb) itself. ``job_timeout`` (90s, 10m, 2h, 1d): a device job
        that started but did not end within it becomes TIMED_OUT, a failure for the health gate."""
        data = await request.body()
        if not data or len(data) > MAX_UPLOAD:
            raise HTTPException(400, "the body must be a bundle archive (.efb)")
        try:
            plan = RolloutPlan(parse_percent(canary), tuple(parse_percent(w) for w in waves.split(",") if w.strip()),
                               parse_percent(max_failure))
            dep = coord.create_deployment(data, group, plan, parse_duration(job_timeout))
        except EdgefleetError as exc:
            raise HTTPException(400, str(exc)) from None
        return coord.summary(dep)

    @app.get("/v1/deployments", dependencies=[Depends(auth)])
    def deployments() -> list[dict[str, Any]]:
        return [coord.summary(d) for d in reg.deployments(fleet)]

    @app.get("/v1/deployments/{dep_id}", dependencies=[Depends(auth)])
    def deployment(dep_id: str) -> dict[str, Any]:
        d = reg.deployment(dep_id)
        if d is None:
            raise HTTPException(404, f"no deployment {dep_id!r}")
        return coord.summary(d)

    @app.post("/v1/deployments/{dep_id}/{action}", dependencies=[Depends(auth)])
    def act(dep_id: str, action: str) -> dict[str, Any]:
        if action not in ("pause", "resume", "rollback"):
            raise HTTPException(404, f"unknown action {action!r}")
        try:
            return coord.summary(coord.set_state(dep_id, action))
        except SyncError as exc:  # another coordinator holds the deployment
            raise HTTPException(409, str(exc)) from None
        except EdgefleetError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get("/v1/telemetry", dependencies=[Depends(auth)])
    def telemetry(group: str | None = None, version: str | None = None) -> dict[str, Any]:
        return {"rows": reg.telemetry(fleet, group, version), "alerts": reg.alerts(fleet, 50),
                "counters": dict(coord.counters), "rejected": dict(coord.rejected)}

    from edgefleet.cloud_sync.federated.routes import add_routes

    add_routes(app, coord, auth)  # /v1/federated/runs (per-round metrics), /v1/retrain (drift trigger)
    return app
