"""The coordinator API's federated endpoints (FastAPI), mounted by :func:`~edgefleet.cloud_sync.coordinator.api.create_app`.

- ``GET/POST /v1/federated/runs``, ``GET/PATCH /v1/federated/runs/{id}`` - run records
  (status, strategy, Flower run id, result: gate verdict, signed version, deployment);
- ``PUT /v1/federated/runs/{id}/rounds/{n}`` - one round's metrics, written by the run;
- ``GET /v1/federated/runs/{id}/events`` - its status changes (with the error of a failure) and stop requests;
- ``POST /v1/federated/runs/{id}/stop`` - ask a run to stop: its ``stop_requested`` is set (a run's process polls
  it and ends with status ``stopped``) and a coordinator supervising the run's process (a drift-started run,
  :mod:`.autorun`) stops it; ``?force=true`` records the run stopped at once (a run whose process is gone);
- ``GET /v1/retrain``, ``PUT /v1/retrain/{group}`` - whether a drift alert of the group
  starts a run, with the policy (devices, window, cool-down) and the run's options.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field, field_validator

from edgefleet.errors import EdgefleetError

from ..coordinator.rows import RunStatus

if TYPE_CHECKING:
    from ..coordinator.service import Coordinator

_ID = r"^[A-Za-z0-9_.-]{1,128}$"
# every integer fits its column (fed_rounds' counts are INTEGER: 32 bits on PostgreSQL), every float is finite
MAX_ROUNDS = 100_000
MAX_COUNT = 2**31 - 1
MAX_SECONDS = 10 * 365 * 86400.0


def _finite_doc(v: Any) -> Any:
    """A JSON document without NaN or infinity (``1e400`` parses as infinity and could not be answered)."""
    if v is not None:
        try:
            json.dumps(v, allow_nan=False)
        except ValueError:
            raise ValueError("numbers must be finite") from None
    return v


class RunIn(BaseModel):
    group: str = Field(pattern=_ID)
    strategy: str = Field(min_length=1, max_length=32)
    rounds: int = Field(ge=1, le=MAX_ROUNDS)
    status: RunStatus = RunStatus.RUNNING
    trigger: str = Field("manual", max_length=32)
    reason: str = Field("", max_length=4000)
    config: dict[str, Any] = Field(default_factory=dict)

    _finite = field_validator("config")(_finite_doc)


class RunPatch(BaseModel):
    status: RunStatus | None = None
    error: str | None = Field(None, max_length=4000, description="why the run failed or stopped (with status)")
    flower_run_id: str | None = Field(None, max_length=32)
    result: dict[str, Any] | None = None
    config: dict[str, Any] | None = None

    _finite = field_validator("result", "config")(_finite_doc)


class RoundIn(BaseModel):
    participants: int = Field(0, ge=0, le=MAX_COUNT)
    failures: int = Field(0, ge=0, le=MAX_COUNT)
    declined: int = Field(0, ge=0, le=MAX_COUNT)
    examples: int = Field(0, ge=0, le=MAX_COUNT)
    train_loss: float | None = Field(None, allow_inf_nan=False)
    train_accuracy: float | None = Field(None, allow_inf_nan=False)
    eval_loss: float | None = Field(None, allow_inf_nan=False)
    eval_accuracy: float | None = Field(None, allow_inf_nan=False)
    central_loss: float | None = Field(None, allow_inf_nan=False)
    central_accuracy: float | None = Field(None, allow_inf_nan=False)
    seconds: float | None = Field(None, allow_inf_nan=False)
    dp_epsilon: float | None = Field(None, allow_inf_nan=False)
    strategy: str = Field("", max_length=32)


class RetrainIn(BaseModel):
    on_drift: bool
    min_devices: int = Field(1, ge=1, le=MAX_COUNT)
    window_s: float = Field(3600.0, gt=0, le=MAX_SECONDS)
    cooldown_s: float = Field(6 * 3600.0, ge=0, le=MAX_SECONDS)
    rounds: int = Field(3, ge=1, le=MAX_ROUNDS)
    strategy: str = Field("fedavg", max_length=32)
    args: list[str] = Field(default_factory=list, max_length=256,
                            description="further `edgefleet federated run` options")


def add_routes(app: FastAPI, coord: Coordinator, auth: Callable[..., None]) -> None:
    reg, fleet = coord.registry, coord.fleet
    dep = [Depends(auth)]

    def run_or_404(run_id: str) -> dict[str, Any]:
        run = reg.fed_run(run_id)
        if run is None or run.fleet != fleet:
            raise HTTPException(404, f"no federated run {run_id!r}")
        return run.to_dict()

    @app.get("/v1/federated/runs", dependencies=dep)
    def runs(group: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        return [r.to_dict() for r in reg.fed_runs(fleet, group, max(1, min(limit, 200)))]

    @app.post("/v1/federated/runs", dependencies=dep, status_code=201)
    def create_run(body: RunIn) -> dict[str, Any]:
        run_id = reg.create_fed_run(fleet, body.group, body.strategy, body.rounds, trigger=body.trigger,
                                    reason=body.reason, status=body.status, config=body.config)
        return run_or_404(run_id)

    @app.get("/v1/federated/runs/{run_id}", dependencies=dep)
    def get_run(run_id: str) -> dict[str, Any]:
        return run_or_404(run_id)

    def ended(run_id: str, status: RunStatus) -> HTTPException:
        return HTTPException(409, f"federated run {run_id} has already ended: {status}")

    @app.patch("/v1/federated/runs/{run_id}", dependencies=dep,
               responses={409: {"description": "the run has ended with another status (an end is kept)"}})
    def patch_run(run_id: str, body: RunPatch) -> dict[str, Any]:
        current = run_or_404(run_id)["status"]
        if body.status is not None and not RunStatus(current).may_become(body.status):
            raise ended(run_id, RunStatus(current))
        fields: dict[str, Any] = {"flower_run_id": body.flower_run_id} if body.flower_run_id is not None else {}
        if body.status is not None:
            fields.update(status=body.status, error=body.error or "")
        if body.config is not None:
            fields["config"] = json.dumps(body.config, default=str)
        reg.set_fed_run(run_id, result=body.result, **fields)
        return run_or_404(run_id)

    @app.get("/v1/federated/runs/{run_id}/events", dependencies=dep)
    def run_events(run_id: str) -> list[dict[str, Any]]:
        run_or_404(run_id)
        return [e.to_dict() for e in reg.fed_run_events(run_id)]

    @app.post("/v1/federated/runs/{run_id}/stop", dependencies=dep, status_code=202,
              responses={409: {"description": "the run has already ended"}})
    def stop_run(run_id: str, request: Request, force: bool = False) -> dict[str, Any]:
        """Ask the run to stop; answers the run and whether this coordinator supervises its process (and stops
        it now) - otherwise the run's own process acts on the request when it next polls its record."""
        status = RunStatus(run_or_404(run_id)["status"])
        if not status.active:
            raise ended(run_id, status)
        principal = request.scope.get("edgefleet.principal")
        who = principal.name if principal is not None else "?"
        reg.request_fed_stop(run_id, who)
        hook = coord.on_fed_stop
        supervised = bool(hook(run_id)) if hook is not None else False
        if force:
            reg.set_fed_run(run_id, status=RunStatus.STOPPED,
                            error=f"stopped by {who} with force (not waiting for the run's process)")
        return {"run": run_or_404(run_id), "supervised": supervised}

    @app.put("/v1/federated/runs/{run_id}/rounds/{rnd}", dependencies=dep)
    def put_round(run_id: str, body: RoundIn, rnd: int = PathParam(le=MAX_ROUNDS)) -> dict[str, Any]:
        run_or_404(run_id)
        if rnd < 1:
            raise HTTPException(400, "rounds are numbered from 1")
        reg.put_fed_round(run_id, rnd, **body.model_dump())
        reg.set_fed_run(run_id)
        return run_or_404(run_id)

    @app.get("/v1/retrain", dependencies=dep)
    def retrain(group: str | None = None) -> list[dict[str, Any]]:
        return [r.to_dict() for r in reg.retrain(fleet, group)]

    @app.put("/v1/retrain/{group}", dependencies=dep)
    def set_retrain(group: str, body: RetrainIn) -> dict[str, Any]:
        from .autorun import RetrainSettings

        try:
            settings = RetrainSettings(group=group, **body.model_dump())
        except EdgefleetError as exc:  # a named ConfigError: unknown, abbreviated or reserved run option
            raise HTTPException(422, str(exc)) from None
        reg.set_retrain(fleet, group, settings.on_drift, settings.policy_doc())
        return reg.retrain(fleet, group)[0].to_dict()


__all__ = ["add_routes"]
