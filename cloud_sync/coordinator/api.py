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

from .rollout import parse_duration, parse_plan
from .service import Coordinator

MAX_UPLOAD = 256 << 20  # a bundle archive (POST /v1/deployments)
MAX_JSON_BODY = 1 << 20  # every other request body
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
_ID = r"^[A-Za-z0-9_.-]{1,128}$"


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class RequestGuard:
    """ASGI middleware in front of every route: the bearer token is checked (401) and the body size
    limited (413) before any body is read or parsed. A declared Content-Length beyond the route's limit is
    refused at once; a streamed body is counted as it arrives and refused when it passes the limit."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        if scope["path"] not in PUBLIC_PATHS:
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
                await _reply(send, 401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")])
                return
        limit = MAX_UPLOAD if (scope["method"], scope["path"]) == ("POST", "/v1/deployments") else MAX_JSON_BODY
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _reply(send, 413, f"request body larger than {limit} bytes")
            return
        seen = 0
        started = False

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _BodyTooLarge as exc:
            if started:
                raise
            await _reply(send, 413, str(exc.detail))


async def _reply(send: Any, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


def create_app(coord: Coordinator, token: str) -> FastAPI:
    if not token:
        raise ValueError("an API token is required")
    app = FastAPI(title="edgefleet coordinator", version=__version__,
                  description="Fleet registry, staged rollouts and telemetry of one edgefleet fleet.")
    app.add_middleware(RequestGuard, token=token)
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
        import re

        fields: dict[str, Any] = {}
        if isinstance(body.get("group"), str):
            if not re.match(_ID, body["group"]):
                raise HTTPException(422, "group must be 1-128 letters, digits, '_', '.' or '-'")
            fields["group_name"] = body["group"]
        if isinstance(body.get("tags"), list):
            tags = [str(t) for t in body["tags"]]
            if len(tags) > 64 or any(len(t) > 128 for t in tags):
                raise HTTPException(422, "at most 64 tags of at most 128 characters each")
            fields["tags"] = json.dumps(tags)
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
            plan = parse_plan(canary, waves, max_failure)
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
                "counters": dict(coord.counters), "rejected": dict(coord.rejected),
                "refused": dict(coord.refused)}

    from edgefleet.cloud_sync.federated.routes import add_routes

    add_routes(app, coord, auth)  # /v1/federated/runs (per-round metrics), /v1/retrain (drift trigger)
    return app
