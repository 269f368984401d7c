"""The coordinator's HTTP API (FastAPI, OpenAPI at /openapi.json, bearer-token auth).

The operator CLI (``edgefleet fleet ...``) and any dashboard use only this API.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import math
import time
from collections import OrderedDict, deque
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema
from starlette.concurrency import run_in_threadpool

from edgefleet._version import __version__
from edgefleet.errors import ConfigError, EdgefleetError, SyncError

from ..dashboard.pages import is_public as is_dashboard
from ..wire import protocol as P
from .registry import BOOTSTRAP, SCOPES, TOKEN_NAME
from .rollout import (
    MAX_DISPATCH_RATE,
    MAX_MIN_FINISHED,
    MAX_TAGS,
    MAX_TOKEN_TTL,
    TAG,
    check_tags,
    parse_duration,
    parse_plan,
    parse_quality,
)
from .rows import Principal
from .service import Coordinator

MAX_UPLOAD = 256 << 20  # a bundle archive (POST /v1/deployments)
MAX_JSON_BODY = 1 << 20  # every other request body
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
_ID = r"^[A-Za-z0-9_.-]{1,128}$"  # a deployment id (the registry's are 12 hex digits)
DEVICE_ID = P._ID.pattern  # device ids and group names: the protocol's ids (1-128 of A-Z a-z 0-9 _ . : -)
MAX_LISTED_DEVICES = 100  # devices a deployment may list (POST /v1/deployments?devices=...: a URL; more by tags)
WINDOW = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)[smhdwSMHDW]?$"  # a duration (edgefleet.units.parse_seconds)
NO_NUL = r"^[^\x00]*$"  # free text a query compares with the registry's: PostgreSQL text cannot hold NUL (500)
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_TRACKED_CLIENTS = 10_000  # addresses whose failed authentications are remembered (oldest forgotten first)
log = logging.getLogger("edgefleet.coordinator.api")
_clock = time.time  # lockouts: wall-clock, as the registry shares them between coordinators (a test moves it on)


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class RequestGuard:
    """ASGI middleware in front of every route, before any body is read or parsed:

    - a client address with ``max_failures`` 401s within ``failure_window`` seconds is locked out (429, with
      Retry-After) for ``lockout_seconds``, whatever token it sends then; other clients are unaffected. The 401s
      are counted in the registry (``Registry.auth_failed``), so every coordinator of the registry counts them
      together and honours the lockout, also after a restart; a lockout known in memory answers without a query,
      and if the registry cannot be reached the count of this process alone still locks a client out;
    - the bearer token is checked (401): the coordinator's own admin token (``cloud serve``'s, compared in
      constant time) or a scoped token of the registry (looked up by its sha256);
    - the token's scope must cover the route's (403): GETs ``read``; deployments, rollouts, retraining and
      federated runs ``deploy``; tokens, the audit log and device changes ``admin`` (see :func:`required_scope`);
    - the body size is limited (413): a declared Content-Length beyond the route's limit is refused at once; a
      streamed body is counted as it arrives and refused when it passes the limit;
    - every authenticated mutating call (POST, PUT, PATCH, DELETE) is written to the registry's audit log: who
      (the token's name), method, path, a short summary, the answer's status, the client address."""

    def __init__(self, app: Any, token: str | None, registry: Any = None, fleet: str = "", *,
                 max_failures: int = 10, failure_window: float = 60.0, lockout_seconds: float = 300.0) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.registry = registry
        self.fleet = fleet
        self.max_failures = max_failures
        self.failure_window = failure_window
        self.lockout_seconds = lockout_seconds
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()  # client -> times of its recent 401s
        self.locked: OrderedDict[str, float] = OrderedDict()  # client -> end of its lockout

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        method, path = scope["method"], scope["path"]
        principal: Principal | None = None
        if path not in PUBLIC_PATHS and not is_dashboard(path):  # the dashboard's shells carry no data
            client = (scope.get("client") or ("", 0))[0] or ""
            now = _clock()
            until = self.locked.get(client)
            if (until is None or until <= now) and self.registry is not None:
                until = await self._shared_lockout(client)
            if until is not None and until > now:
                await _reply(send, 429, "too many failed authentications from this address; try again later",
                             [(b"retry-after", str(max(1, math.ceil(until - now))).encode())])
                return
            principal = await self._principal(headers.get(b"authorization", b""))
            if principal is None:
                self._failed(client, now)
                if self.registry is not None:
                    await self._shared_failure(client, now)
                await _reply(send, 401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")])
                return
            need = required_scope(method, path)
            if SCOPES.index(principal.scope) < SCOPES.index(need):
                detail = f"token {principal.name!r} has scope {principal.scope}; {method} {path} needs scope {need}"
                await _reply(send, 403, detail)
                await self._audit(principal, scope, 403, "refused: needs scope " + need)
                return
            scope["edgefleet.principal"] = principal
            scope["edgefleet.audit"] = {"summary": scope.get("query_string", b"").decode("latin-1")[:500]}
        status = 500
        try:
            status = await self._limited(scope, headers, receive, send)
        finally:
            if principal is not None:
                await self._audit(principal, scope, status, scope["edgefleet.audit"]["summary"])

    async def _principal(self, header: bytes) -> Principal | None:
        scheme, _, given = header.partition(b" ")
        given = given.strip()
        if scheme.lower() != b"bearer" or not given or len(given) > 512:
            return None
        if self.token is not None and hmac.compare_digest(given, self.token):
            return Principal(BOOTSTRAP, "admin")
        if self.registry is None:
            return None
        try:
            text = given.decode("ascii")
        except UnicodeDecodeError:
            return None
        found: Principal | None = await run_in_threadpool(self.registry.check_token, self.fleet, text)
        return found

    def _failed(self, client: str, now: float) -> None:
        """Count a 401 of ``client``; lock it out at ``max_failures`` within the window (memory stays bounded)."""
        times = self.failures.pop(client, None) or deque()
        while times and times[0] <= now - self.failure_window:
            times.popleft()
        times.append(now)
        if len(times) >= self.max_failures:
            self.locked.pop(client, None)
            self.locked[client] = now + self.lockout_seconds
            times.clear()
            log.warning("API: %s locked out for %gs after %d failed authentications", client, self.lockout_seconds,
                        self.max_failures)
        self.failures[client] = times
        for table in (self.failures, self.locked):
            while len(table) > MAX_TRACKED_CLIENTS:
                table.popitem(last=False)

    async def _shared_lockout(self, client: str) -> float | None:
        """The end of ``client``'s lockout in the registry (set by any coordinator), remembered here; None if none."""
        try:
            until: float = await run_in_threadpool(self.registry.auth_locked_until, self.fleet, client)
        except Exception as exc:  # the registry is unreachable: this process's own count still applies
            log.error("API: could not read the lockout of %s from the registry: %s", client, exc)
            return None
        if until <= 0:
            return None
        self._remember_lockout(client, until)
        return until

    async def _shared_failure(self, client: str, now: float) -> None:
        """Count a 401 of ``client`` in the registry, with every coordinator's; remember a lockout it starts."""
        try:
            until: float = await run_in_threadpool(
                lambda: self.registry.auth_failed(self.fleet, client, now, max_failures=self.max_failures,
                                                  window=self.failure_window, lockout=self.lockout_seconds,
                                                  max_clients=MAX_TRACKED_CLIENTS))
        except Exception as exc:
            log.error("API: could not count a failed authentication of %s in the registry: %s", client, exc)
            return
        if until > now and self.locked.get(client) != until:
            if client not in self.locked:
                log.warning("API: %s locked out for %gs after %d failed authentications (counted by every "
                            "coordinator of the registry)", client, self.lockout_seconds, self.max_failures)
            self._remember_lockout(client, until)

    def _remember_lockout(self, client: str, until: float) -> None:
        if until > self.locked.get(client, 0.0):
            self.locked.pop(client, None)
            self.locked[client] = until
            while len(self.locked) > MAX_TRACKED_CLIENTS:
                self.locked.popitem(last=False)

    async def _audit(self, principal: Principal, scope: Any, status: int, summary: str) -> None:
        if scope["method"] not in MUTATING or self.registry is None:
            return
        client = (scope.get("client") or ("", 0))[0] or ""
        try:
            await run_in_threadpool(self.registry.add_audit, self.fleet, principal.name, scope["method"],
                                    scope["path"], summary, status, client)
        except Exception as exc:  # the answer is sent already; the failure is logged, never a traceback to clients
            log.error("API: could not write the audit record of %s %s: %s", scope["method"], scope["path"], exc)

    async def _limited(self, scope: Any, headers: dict[bytes, bytes], receive: Any, send: Any) -> int:
        """Run the route with the body size limited; returns the answer's status."""
        limit = MAX_UPLOAD if (scope["method"], scope["path"]) == ("POST", "/v1/deployments") else MAX_JSON_BODY
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _reply(send, 413, f"request body larger than {limit} bytes")
            return 413
        seen = 0
        status = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def tracked(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _BodyTooLarge as exc:
            if status:
                raise
            await _reply(send, 413, str(exc.detail))
            return 413
        return status or 500


def required_scope(method: str, path: str) -> str:
    """The scope a route needs: tokens and the audit log ``admin``; other reads ``read``; device changes ``admin``;
    deployments, rollout actions, retraining and federated run records ``deploy``; anything else ``admin``."""
    if path.startswith(("/v1/tokens", "/v1/audit")):
        return "admin"
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    if path.startswith(("/v1/deployments", "/v1/retrain", "/v1/federated/")):
        return "deploy"
    return "admin"


def audit_note(request: Request, summary: str) -> None:
    """What a mutating call did, for its audit record (replaces the default: the query string)."""
    note = request.scope.get("edgefleet.audit")
    if note is not None:
        note["summary"] = summary[:500]


async def _reply(send: Any, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


class TokenIn(BaseModel):
    name: str = Field(pattern="^" + TOKEN_NAME + "$")
    scope: Literal["read", "deploy", "admin"]
    # seconds the token is valid for (at most a year); absent: until revoked
    expires_in: Annotated[int, Field(ge=1, le=int(MAX_TOKEN_TTL))] | SkipJsonSchema[None] = None


class DevicePatch(BaseModel):
    """The operator's change to a device: its group, its tags, or both (at least one; nothing else)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})
    # an explicit null is refused by the schema (SkipJsonSchema) and, like a missing field, changes nothing
    group: Annotated[str, Field(pattern=DEVICE_ID)] | SkipJsonSchema[None] = None
    tags: Annotated[list[Annotated[str, Field(pattern="^" + TAG + "$")]], Field(max_length=MAX_TAGS)] \
        | SkipJsonSchema[None] = None


# -- error answers: every one is {"detail": ...}, and every status a route can answer is in /openapi.json --------
class Error(BaseModel):
    """Every error answer (4xx): what went wrong, in one line."""

    detail: str


class FieldError(BaseModel):
    """One refused field of a 422 (pydantic's error: where, what, and possibly the input and context)."""

    model_config = ConfigDict(extra="allow")
    loc: list[str | int]
    msg: str
    type: str


class Invalid(BaseModel):
    """A 422: the request's parameters or body do not fit the schema (a list of refused fields), or the route
    refused a value the schema cannot express (one line)."""

    detail: str | list[FieldError]


_GUARD_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    401: ("missing or wrong bearer token (RequestGuard)",
          {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}),
    403: ("the token's scope does not cover this route (read: GETs; deploy: deployments, rollouts, retraining, "
          "federated runs; admin: everything)", {}),
    429: ("this client address is locked out after repeated failed authentications",
          {"Retry-After": {"description": "seconds until the lockout ends", "schema": {"type": "integer"}}}),
}


def document_errors(schema: dict[str, Any], routes: list[Any]) -> dict[str, Any]:
    """Complete ``schema`` (FastAPI's OpenAPI document of ``routes``) with every error status an operation can
    answer, whoever answers it, each with the body really sent (idempotent):

    - the ASGI guard (:class:`RequestGuard`): 413 on every route; 401, 403 and 429 on every route but the public
      ones (``PUBLIC_PATHS``);
    - FastAPI: 400 for a JSON body that cannot be read (``There was an error parsing the body``), 422 (model
      :class:`Invalid`) wherever there are parameters or a body;
    - a path parameter: 404 (no such record; also the router's answer when a value holds a ``/``);
    - the route's own ``responses=`` (404, 409, 400, ...), given a body schema here when they have none.

    Every error body is ``{"detail": ...}`` (:class:`Error`; 422: :class:`Invalid`)."""
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (Error, Invalid):
        doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in doc.pop("$defs", {}).items():
            comps.setdefault(name, sub)
        comps.setdefault(model.__name__, doc)
    ref = {code: {"application/json": {"schema": {"$ref": "#/components/schemas/" + name}}}
           for code, name in (("error", "Error"), ("422", "Invalid"))}
    for route in routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            op = schema["paths"].get(route.path_format, {}).get(method.lower())
            if op is None:
                continue
            answers = op.setdefault("responses", {})
            params = op.get("parameters", [])

            def add(code: int, description: str, headers: dict[str, Any] | None = None, *,
                    answers: dict[str, Any] = answers) -> None:
                entry = answers.setdefault(str(code), {"description": description})
                if headers:
                    entry.setdefault("headers", headers)

            add(413, f"the request body is larger than {MAX_JSON_BODY} bytes ({MAX_UPLOAD} for a bundle archive), "
                     "or its Content-Length is not a number")
            if route.path_format not in PUBLIC_PATHS:
                for code, (description, headers) in _GUARD_ERRORS.items():
                    add(code, description, headers)
            if route.body_field is not None:
                add(400, "the body could not be read as JSON")
            if params or "requestBody" in op:
                add(422, "a parameter or the body does not fit the schema")
            if any(p.get("in") == "path" for p in params):
                add(404, "no such record (or no route: a path value holding '/')")
            for code, entry in answers.items():
                if code.startswith(("4", "5")):
                    content = entry.setdefault("content", {})
                    json_doc = content.get("application/json")
                    if code == "422" and (json_doc is None or "HTTPValidationError" in str(json_doc)):
                        content["application/json"] = ref["422"]["application/json"]
                    elif json_doc is None:
                        content["application/json"] = ref["error"]["application/json"]
    return schema


#: the largest request head (request line and headers) the server reads: a URL of the longest query values the
#: schema admits, percent-encoded (a device list of MAX_LISTED_DEVICES ids, up to 12 bytes a character), fits
MAX_REQUEST_HEAD = 256 * 1024


def server_config(app: Any, host: str, port: int, **kw: Any) -> Any:
    """The uvicorn configuration the API is served with (``cloud serve``, the tests): the h11 parser, reading
    request heads up to :data:`MAX_REQUEST_HEAD`, so a URL the OpenAPI document admits is answered by the API, not
    refused by the HTTP parser with a bare-text 400 (httptools, uvicorn's other parser, stops at 64 KiB URLs)."""
    import uvicorn

    kw.setdefault("log_config", None)
    return uvicorn.Config(app, host=host, port=port, http="h11", h11_max_incomplete_event_size=MAX_REQUEST_HEAD,
                          **kw)


def create_app(coord: Coordinator, token: str | None, *, max_failures: int = 10, failure_window: float = 60.0,
               lockout_seconds: float = 300.0) -> FastAPI:
    """The API of ``coord``. ``token`` is the coordinator's own admin token (audited as ``bootstrap``); further
    tokens of scope read, deploy or admin live (hashed) in the registry. A client address with ``max_failures``
    failed authentications within ``failure_window`` seconds is locked out for ``lockout_seconds``.

    ``/openapi.json`` documents every status each operation can answer (:func:`document_errors`); schemathesis
    checks it against the live API (tests/cloud/test_cloud_schemathesis.py)."""
    reg, fleet = coord.registry, coord.fleet
    if not token and not any(t.scope == "admin" for t in reg.tokens(fleet)):
        raise ConfigError("an API token is required: the coordinator's admin token or an admin token in the registry")
    app = FastAPI(title="edgefleet coordinator", version=__version__,
                  description="Fleet registry, staged rollouts and telemetry of one edgefleet fleet. Bearer tokens "
                              "of scope read (GETs), deploy (deployments, rollouts, retraining, federated runs) or "
                              "admin (tokens, audit log, devices). Every error answer is {\"detail\": ...}.")
    app.add_middleware(RequestGuard, token=token, registry=reg, fleet=fleet, max_failures=max_failures,
                       failure_window=failure_window, lockout_seconds=lockout_seconds)
    bearer = HTTPBearer(auto_error=False)

    def auth(request: Request, cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        # RequestGuard authenticated the call and checked its scope before any body was read; this is its mark
        if cred is None or "edgefleet.principal" not in request.scope:
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    device_id = Path(pattern=DEVICE_ID, description="a device id (1-128 of A-Z a-z 0-9 _ . : -)")
    group_q = Query(None, pattern=DEVICE_ID, description="only this group")
    no_device: dict[int | str, dict[str, Any]] = {404: {"description": "no such device"}}

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness, and this coordinator's own broker connection: while ``broker_connected`` is false, device
        states are stale (``broker_since``: wall-clock time of its last change)."""
        return {"ok": True, "fleet": fleet, "broker_connected": coord.transport.connected,
                "broker_since": coord.broker.since}

    from .metrics import add_route as add_metrics

    add_metrics(app, coord, auth)  # GET /metrics: Prometheus (a read token is enough)

    @app.get("/v1/devices", dependencies=[Depends(auth)])
    def devices(group: str | None = group_q) -> list[dict[str, Any]]:
        return [d.to_dict() for d in reg.devices(fleet, group)]

    @app.get("/v1/devices/{device_id}", dependencies=[Depends(auth)], responses=no_device)
    def device(device_id: str = device_id) -> dict[str, Any]:
        d = reg.device(fleet, device_id)
        if d is None:
            raise HTTPException(404, f"no device {device_id!r}")
        return {**d.to_dict(), "jobs": [j.to_dict() for j in reg.jobs(device_id=device_id)[-20:]],
                "telemetry_rejected": coord.rejected[device_id],
                "telemetry_rate_limited": coord.rate_limited[device_id],
                "alerts": [a.to_dict() for a in reg.alerts(fleet, 10, device_id=device_id)],
                "quality": [q.to_dict() for q in reg.quality(fleet, device_id=device_id)]}

    @app.patch("/v1/devices/{device_id}", dependencies=[Depends(auth)],
               responses={404: {"description": "tags for a device not seen yet (a group provisions it)"},
                          422: {"description": "nothing to change, or a group or tags that do not fit"}})
    def set_device(body: DevicePatch, request: Request, device_id: str = device_id) -> dict[str, Any]:
        """The operator assigns the device's group (a device not seen yet is provisioned) and/or its tags."""
        import json

        fields: dict[str, Any] = {}
        if body.group is not None:
            fields["group_name"] = body.group
        if body.tags is not None:
            try:
                fields["tags"] = json.dumps(check_tags(body.tags))
            except ConfigError as exc:
                raise HTTPException(422, str(exc)) from None
        audit_note(request, " ".join(f"{k}={v}" for k, v in sorted(fields.items())))
        if not fields:
            raise HTTPException(422, "nothing to change: give a group or tags")
        if "group_name" in fields:  # the operator's assignment; a device not seen yet is provisioned
            if reg.readmit(fleet, device_id):  # decommissioned: the operator's assignment re-admits it
                from .housekeeping import readmitted

                readmitted(coord, device_id)
            try:
                coord.provision({device_id: fields.pop("group_name")})
            except ConfigError as exc:
                raise HTTPException(422, str(exc)) from None
        if fields and not reg.set_device(fleet, device_id, **fields):
            raise HTTPException(404, f"no device {device_id!r}")
        d = reg.device(fleet, device_id)
        return d.to_dict() if d is not None else {}

    archive = {"required": True, "description": "the bundle archive (.efb) itself",
               "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}

    @app.post("/v1/deployments", dependencies=[Depends(auth)], status_code=201,
              openapi_extra={"requestBody": archive},
              responses={400: {"description": "the body is not a bundle archive the coordinator may deploy "
                                              "(unreadable, unsigned, untrusted, another model's; the detail says "
                                              "which), the plan or timeout cannot be read, or the targets (group, "
                                              "tags, devices) select no device or name devices that do not fit"}})
    async def deploy(request: Request, group: str | None = Query(None, pattern=DEVICE_ID,
                                                                 description="the group to roll out to (absent: "
                                                                             "every group; then give tags or devices)"),
                     canary: str = Query("5%", max_length=64), waves: str = Query("100%", max_length=64),
                     max_failure: str = Query("0%", max_length=64),
                     job_timeout: str = Query("1h", max_length=64),
                     tags: str = Query("", max_length=8300, pattern=f"^({TAG}(,{TAG})*)?$",
                                       description="comma-separated: only devices of the group the operator gave "
                                                   "every one of these tags (what devices claim does not count)"),
                     devices: str = Query("", max_length=MAX_LISTED_DEVICES * 129,
                                          pattern=f"^({DEVICE_ID[1:-1]}(,{DEVICE_ID[1:-1]})*)?$",
                                          description="comma-separated device ids: only these devices (each must "
                                                      f"exist and fit the group and tags; at most "
                                                      f"{MAX_LISTED_DEVICES}); a list takes no joiners"),
                     rate: int = Query(0, ge=0, le=MAX_DISPATCH_RATE,
                                       description="devices dispatched per minute at most (0: no limit)"),
                     min_finished: int = Query(0, ge=0, le=MAX_MIN_FINISHED,
                                               description="jobs that must have ended before the failure rate is "
                                                           "judged (0: from the first failure)"),
                     quality: str = Query("", max_length=512, pattern=r"^[A-Za-z0-9_.,=+-]*$",
                                          description="quality probation policy the install jobs carry: "
                                                      "comma-separated option=value of the devices' [quality] "
                                                      "(mode=enforce,agreement_bad=0.3; a bare word is the mode)")
                     ) -> dict[str, Any]:
        """The request body is the bundle archive (.efb) itself. The targets: ``group``, ``tags`` and/or
        ``devices`` (at least one). ``canary``, ``waves`` (comma-separated) and ``max_failure`` are percentages
        (``5%`` or ``0.05``); ``rate`` limits the devices dispatched per minute, ``min_finished`` holds the health
        gate until that many jobs have ended. ``job_timeout`` (90s, 10m, 2h, 1d): a device job that started but
        did not end within it becomes TIMED_OUT, a failure for the health gate. ``tags`` (comma-separated) selects
        the devices the operator gave all of them (``PATCH /v1/devices/ID``); a device's own ``hardware_tags`` are
        only a claim (``claimed_tags``)."""
        data = await request.body()
        if not data or len(data) > MAX_UPLOAD:
            raise HTTPException(400, "the body must be a bundle archive (.efb)")
        listed = [d for d in devices.split(",") if d]
        if len(listed) > MAX_LISTED_DEVICES:
            raise HTTPException(400, f"at most {MAX_LISTED_DEVICES} devices may be listed")
        try:
            plan = dataclasses.replace(parse_plan(canary, waves, max_failure), rate=rate, min_finished=min_finished)
            dep = coord.create_deployment(data, group or "", plan, parse_duration(job_timeout),
                                          [t for t in tags.split(",") if t], listed, quality=parse_quality(quality))
        except EdgefleetError as exc:  # BundleError, SignatureError, UnsignedBundleError, TrustError, ConfigError
            raise HTTPException(400, str(exc)) from None
        out = coord.summary(dep)
        audit_note(request, f"deployment {out.get('id')}: {out.get('name')} {out.get('version')} to "
                            + (f"group {group}" if group else "every group")
                            + (f" tags {','.join(out['tags'])}" if out.get("tags") else "")
                            + (f" devices {','.join(listed)}" if listed else "")
                            + f" (canary {canary}, waves {waves}, max failure {max_failure}"
                            + (f", rate {rate}/min" if rate else "")
                            + (f", min finished {min_finished}" if min_finished else "")
                            + (f", quality {quality}" if quality else "") + ")")
        return out

    dep_id_p = Path(pattern=_ID, description="a deployment id")

    @app.get("/v1/deployments", dependencies=[Depends(auth)])
    def deployments() -> list[dict[str, Any]]:
        return [coord.summary(d) for d in reg.deployments(fleet)]

    @app.get("/v1/deployments/{dep_id}", dependencies=[Depends(auth)],
             responses={404: {"description": "no such deployment"}})
    def deployment(dep_id: str = dep_id_p) -> dict[str, Any]:
        d = reg.deployment(dep_id)
        if d is None:
            raise HTTPException(404, f"no deployment {dep_id!r}")
        targets = set(d.targets)  # how well its version serves each of its devices (their quality records)
        return {**coord.summary(d), "device_quality": [q.to_dict() for q in reg.quality(fleet, version=d.version)
                                                       if q.device_id in targets]}

    @app.post("/v1/deployments/{dep_id}/{action}", dependencies=[Depends(auth)],
              responses={404: {"description": "no such deployment"},
                         409: {"description": "the deployment's state does not allow the action (resume on a "
                                              "halted deployment, pause on a rolled-back one, cancel on a completed "
                                              "one: nothing changed; the detail says why), or another coordinator "
                                              "holds the deployment (try again)"}})
    def act(request: Request, action: Literal["pause", "resume", "rollback", "cancel"],
            dep_id: str = dep_id_p) -> dict[str, Any]:
        """``pause`` a running rollout, ``resume`` a paused one, ``rollback`` (devices on the new version are
        ordered back; the answer's ``jobs`` hold the rollback jobs, whose results arrive later: poll this
        deployment), or ``cancel`` a running or paused one (devices not dispatched get nothing, jobs not started
        are canceled on the devices, installs under way finish)."""
        audit_note(request, f"{action} deployment {dep_id}")
        try:
            return coord.summary(coord.set_state(dep_id, action))
        except SyncError as exc:  # the state does not allow it (ActionRefusedError), or another coordinator holds it
            raise HTTPException(409, str(exc)) from None
        except EdgefleetError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get("/v1/telemetry", dependencies=[Depends(auth)],
             responses={422: {"description": "a window that is not a duration within 1m..7d"}})
    def telemetry(group: str | None = group_q,
                  version: str | None = Query(None, max_length=128, pattern=NO_NUL,
                                              description="only this model version"),
                  window: str | None = Query(None, max_length=16, pattern=WINDOW,
                                             description="also the telemetry of the last 1h, 1d, 90m ... (within "
                                                         "1m..7d) per group and version, with p50/p95 latency")
                  ) -> dict[str, Any]:
        """All-time aggregates per group, version and kind (``rows``), the latest alerts, the ingest counters and
        ``quality``: per device and version, how well it serves (confidence, labelled accuracy, agreement with the
        version it replaced, PSI, the quality test's verdict; the devices' newest quality records, at most 1000);
        with ``window``, also ``window``: per group and version over that long (whole minutes), the records,
        predictions, errors, invalid inputs, error rate and the p50/p95 latency in ms (bucket upper bounds of the
        histograms devices report; null without samples)."""
        out = {"rows": [r.to_dict() for r in reg.telemetry(fleet, group, version)],
               "alerts": [a.to_dict() for a in reg.alerts(fleet, 50)],
               "counters": dict(coord.counters), "rejected": dict(coord.rejected),
               "refused": dict(coord.refused), "rate_limited": dict(coord.rate_limited),
               "quality": [q.to_dict() for q in reg.quality(fleet, group=group, version=version)]}
        if window is not None:
            from edgefleet.units import parse_seconds

            from . import windows as W

            try:
                seconds = parse_seconds(window, "window", lo=W.MIN_WINDOW, hi=W.RETENTION)
            except ConfigError as exc:
                raise HTTPException(422, str(exc)) from None
            now = time.time()
            since = W.window_since(now, seconds)
            out["window"] = {"seconds": seconds, "since": float(since), "until": now,
                             "rows": [W.WindowStats(r.group, r.version, r.records, r.predictions, r.errors, r.invalid,
                                                    tuple(r.latency)).to_dict()
                                      for r in reg.telemetry_window(fleet, since, group, version)]}
        return out

    @app.get("/v1/tokens", dependencies=[Depends(auth)])
    def tokens() -> list[dict[str, Any]]:
        """The fleet's API tokens (admin): name, scope, created, expires (0: never), expired; never a token or its
        hash. An expired token is refused (401) like a revoked one; it is listed until revoked."""
        return [t.to_dict() for t in reg.tokens(fleet)]

    @app.post("/v1/tokens", dependencies=[Depends(auth)], status_code=201,
              responses={409: {"description": "a token of that name exists"},
                         422: {"description": f"a name or scope that does not fit, or {BOOTSTRAP!r} (the "
                                              "coordinator's own token)"}})
    def create_token(body: TokenIn, request: Request) -> dict[str, Any]:
        """A new token (admin), valid for ``expires_in`` seconds if given (at most a year), else until revoked. Its
        value is in this answer only: the registry keeps its sha256."""
        audit_note(request, f"create token {body.name} scope {body.scope}"
                            + (f" expires in {body.expires_in}s" if body.expires_in else ""))
        if body.name == BOOTSTRAP:
            raise HTTPException(422, f"{BOOTSTRAP!r} names the coordinator's own token")
        try:
            secret = reg.create_token(fleet, body.name, body.scope, body.expires_in)
        except ConfigError as exc:
            raise HTTPException(409, str(exc)) from None
        made = next((t for t in reg.tokens(fleet) if t.name == body.name), None)
        return {"name": body.name, "scope": body.scope, "token": secret, "expires": made.expires if made else 0.0}

    @app.delete("/v1/tokens/{name}", dependencies=[Depends(auth)], responses={404: {"description": "no such token"}})
    def revoke_token(request: Request, name: str = Path(pattern="^" + TOKEN_NAME + "$")) -> dict[str, Any]:
        audit_note(request, f"revoke token {name}")
        if not reg.revoke_token(fleet, name):
            raise HTTPException(404, f"no token {name!r}")
        return {"name": name, "revoked": True}

    @app.get("/v1/audit", dependencies=[Depends(auth)])
    def audit(limit: int = Query(100, ge=1, le=10_000), since: float = Query(0.0, ge=0, le=1e11)
              ) -> list[dict[str, Any]]:
        """Every authenticated mutating call (admin), newest first: ts, who (token name), method, path, summary,
        status, client."""
        return [e.to_dict() for e in reg.audit(fleet, limit, since)]

    from edgefleet.cloud_sync.federated.routes import add_routes

    add_routes(app, coord, auth)  # /v1/federated/runs (per-round metrics), /v1/retrain (drift trigger)

    from .fleet_routes import add_routes as add_fleet_routes

    add_fleet_routes(app, coord, auth)  # DELETE /v1/devices/{id} (decommission), GET /v1/artifacts

    from edgefleet.cloud_sync.dashboard.routes import mount

    mount(app, coord, auth)  # the web dashboard: /ui/ (pages without data), /v1/deployments/{id}/progress

    generate = app.openapi  # FastAPI's own (caches its result in app.openapi_schema)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document_errors(generate(), app.routes)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
