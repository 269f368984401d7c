"""Federated runs in the fleet registry: per-round metrics, run status and result, through the coordinator's API.

- :func:`round_metrics` flattens one round of the ServerApp's ``rounds.json`` into
  the registry's ``fed_rounds`` columns (participants, failures, train/eval
  loss and accuracy, the coordinator's holdout, duration, strategy, DP epsilon);
- :class:`RunRecord` is the run's side: it creates (or adopts) a run record,
  stores each round as it finishes and the final status/result, and tells the run
  whether a stop was asked for through the API (:meth:`RunRecord.stop_requested`).
  Recording never aborts a run that is training: after the record exists, a failed
  request is a warning on stderr;
- :func:`runs_table` (``edgefleet federated ls``) and :func:`log_lines`
  (``edgefleet federated log RUN``: rounds and events in time order, then the
  failure reason) show the records.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Mapping, Sequence

from edgefleet.errors import EdgefleetError

from ..coordinator.rows import RunStatus


def _num(v: Any) -> float | None:
    """A finite number, or None (the API refuses NaN and infinity: a diverged round records no loss)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def round_metrics(r: Mapping[str, Any], strategy: str) -> dict[str, Any]:
    """One ``rounds.json`` row as registry fields."""
    train = r.get("train") or {}
    ev = r.get("evaluate") or {}
    central = r.get("central") or {}
    return {
        "participants": int(r.get("train_replies", 0) or 0),
        "failures": int(r.get("train_failures", 0) or 0),
        "declined": int(r.get("declined", 0) or 0),
        "examples": int(r.get("examples", 0) or 0),
        "train_loss": _num(train.get("train-loss")),
        "train_accuracy": _num(train.get("train-accuracy")),
        "eval_loss": _num(ev.get("eval-loss")),
        "eval_accuracy": _num(ev.get("eval-accuracy")),
        "central_loss": _num(central.get("loss")),
        "central_accuracy": _num(central.get("accuracy")),
        "seconds": _num(r.get("seconds")),
        "dp_epsilon": _num(r.get("dp_epsilon")),
        "strategy": strategy,
    }


class RunRecord:
    """A federated run's record in the registry, written through the coordinator's HTTP API."""

    def __init__(self, api: str, token: str | None, run_id: str, *, ca_cert: str | None = None) -> None:
        self.api = api
        self.token = token
        self.run_id = run_id
        self.ca_cert = ca_cert  # the CA an https API is verified with (None: EDGEFLEET_CA_CERT, else the system's)
        self.warnings: list[str] = []

    @classmethod
    def open(cls, api: str, token: str | None, *, group: str, strategy: str, rounds: int,
             run_id: str | None = None, config: Mapping[str, Any] | None = None,
             ca_cert: str | None = None) -> RunRecord:
        """Create the record (or adopt ``run_id``, created by the coordinator's drift trigger). Errors raise:
        a run asked to record must not start unrecorded."""
        from edgefleet.cloud_sync.coordinator.client import api_call

        if run_id:
            api_call(api, token, "PATCH", f"/v1/federated/runs/{run_id}", ca_cert=ca_cert,
                     json={"status": RunStatus.RUNNING.value, "config": dict(config or {})})
        else:
            doc = api_call(api, token, "POST", "/v1/federated/runs", ca_cert=ca_cert,
                           json={"group": group, "strategy": strategy, "rounds": rounds,
                                 "status": RunStatus.RUNNING.value, "config": dict(config or {})})
            run_id = str(doc["id"])
        return cls(api, token, run_id, ca_cert=ca_cert)

    def _send(self, method: str, path: str, body: Mapping[str, Any]) -> None:
        from edgefleet.cloud_sync.coordinator.client import api_call

        try:
            api_call(self.api, self.token, method, path, ca_cert=self.ca_cert, json=dict(body))
        except EdgefleetError as exc:
            msg = f"warning: could not record federated run {self.run_id} at {self.api}: {exc}"
            self.warnings.append(msg)
            print(msg, file=sys.stderr, flush=True)

    def round(self, r: Mapping[str, Any], strategy: str) -> None:
        self._send("PUT", f"/v1/federated/runs/{self.run_id}/rounds/{int(r['round'])}", round_metrics(r, strategy))

    def update(self, *, status: RunStatus | str | None = None, error: str | None = None, flower_run_id: Any = None,
               result: Mapping[str, Any] | None = None) -> None:
        """Record the run's ``status`` (and ``error``; ``failed: REASON`` is read as both), Flower run id, result."""
        body: dict[str, Any] = {}
        if status is not None:
            state, legacy_error = RunStatus.parse(str(status))
            body["status"] = state.value
            body["error"] = (error if error is not None else legacy_error)[:4000]
        if flower_run_id is not None:
            body["flower_run_id"] = str(flower_run_id)
        if result is not None:
            body["result"] = dict(result)
        self._send("PATCH", f"/v1/federated/runs/{self.run_id}", body)

    def ended(self, exc: BaseException) -> None:
        """Record how the run ended when ``exc`` ended it: ``stopped`` for a stop (asked for, SIGTERM, Ctrl-C),
        else ``failed``, with the reason."""
        from .runner import RunStopped

        reason = str(exc) or type(exc).__name__
        if isinstance(exc, KeyboardInterrupt):
            reason = "interrupted (Ctrl-C)"
        stopped = isinstance(exc, (RunStopped, KeyboardInterrupt))
        self.update(status=RunStatus.STOPPED if stopped else RunStatus.FAILED, error=reason)

    def stop_requested(self) -> str | None:
        """Whether a stop was asked for through the API (the reason to stop), read from the run's record; None
        when not, or when the coordinator does not answer (a warning: the run goes on)."""
        from edgefleet.cloud_sync.coordinator.client import api_call

        try:
            doc = api_call(self.api, self.token, "GET", f"/v1/federated/runs/{self.run_id}", ca_cert=self.ca_cert)
        except EdgefleetError as exc:
            msg = f"warning: could not read federated run {self.run_id} at {self.api}: {exc}"
            if msg not in self.warnings:
                self.warnings.append(msg)
                print(msg, file=sys.stderr, flush=True)
            return None
        if doc.get("stop_requested") or doc.get("status") == RunStatus.STOPPED.value:
            return f"stop requested through the coordinator API ({self.api})"
        return None


def _f(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _status(run: Mapping[str, Any], error: bool = True) -> str:
    """The run's status; with the error of a failure or stop, or ``(stop requested)`` while it has not stopped."""
    status = str(run["status"])
    if run.get("stop_requested") and status in {s.value for s in RunStatus if s.active}:
        status += " (stop requested)"
    elif error and run.get("error"):
        status += f": {run['error']}"
    return status


def run_line(run: Mapping[str, Any]) -> str:
    res = run.get("result") or {}
    gate = res.get("gate") or {}
    dep = res.get("deployment") or {}
    line = (f"federated run {run['id']} (group {run['group']}, {run['strategy']}, trigger {run['trigger']}): "
            f"{_status(run)}, {run['rounds_done']}/{run['rounds']} round(s)")
    if gate:
        line += f"; gate: {'promoted v' + str(gate.get('version')) if gate.get('promoted') else 'not promoted'}"
    if dep:
        line += f"; deployment {dep.get('id')}"
    return line


def print_runs(runs: list[Mapping[str, Any]]) -> None:
    """The federated-runs section of ``edgefleet fleet status``: each run, then its rounds."""
    from rich.console import Console
    from rich.table import Table

    c = Console(soft_wrap=True)
    if not runs:
        print("federated runs: none")
        return
    for run in runs:
        print(run_line(run))
        if run.get("reason"):
            print(f"  {run['reason']}")
        rows = run.get("round_metrics") or []
        if not rows:
            continue
        t = Table("round", "devices", "failed", "train loss", "train acc", "eval loss", "eval acc", "holdout acc",
                  "s", "eps")
        for r in rows:
            t.add_row(str(r["round"]), str(r["participants"]), str(r["failures"]), _f(r["train_loss"]),
                      _f(r["train_accuracy"]), _f(r["eval_loss"]), _f(r["eval_accuracy"]), _f(r["central_accuracy"]),
                      _f(r["seconds"], ".1f"), _f(r["dp_epsilon"], ".2f"))
        c.print(t)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def runs_table(runs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """``edgefleet federated ls``: one row per run (id, status, group, trigger, rounds done, strategy, started;
    ``federated log`` shows why a run failed or stopped)."""
    return [[str(r["id"]), _status(r, error=False), str(r["group"]), str(r["trigger"]),
             f"{r['rounds_done']}/{r['rounds']}", str(r["strategy"]), _when(float(r["created"]))] for r in runs]


RUNS_HEADER = ["run", "status", "group", "trigger", "rounds", "strategy", "started"]


def aligned(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as aligned text columns, never wrapped or cut (as ``flwr ls`` or ``docker ps``: for a terminal and
    for grep)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in (header, *rows)]


def round_text(r: Mapping[str, Any]) -> str:
    """One recorded round, as ``federated log`` shows it."""
    parts = [f"round {r['round']}: {r['participants']} device(s)"]
    if r.get("failures"):
        parts.append(f"{r['failures']} failed/declined")
    for key, name in (("train_loss", "train loss"), ("train_accuracy", "train acc"), ("eval_loss", "eval loss"),
                      ("eval_accuracy", "eval acc"), ("central_accuracy", "holdout acc")):
        if r.get(key) is not None:
            parts.append(f"{name} {r[key]:.3f}")
    if r.get("dp_epsilon") is not None:
        parts.append(f"eps {r['dp_epsilon']:.2f}")
    if r.get("seconds") is not None:
        parts.append(f"{r['seconds']:.1f}s")
    return ", ".join(parts)


def personalization_lines(p: Mapping[str, Any]) -> list[str]:
    """A ``--personalize`` run's outcome: how many devices keep a local head, then both heads' held-back accuracy
    on each device (``federated run`` prints it; ``federated log`` shows it from the run's record)."""
    lines = [f"personalisation: {p.get('kept', 0)} of {p.get('reported', 0)} device(s) keep a local head; mean "
             f"held-back accuracy: global head {_f(p.get('mean_global_accuracy'))}, local heads "
             f"{_f(p.get('mean_personal_accuracy'))}, served {_f(p.get('mean_served_accuracy'))}"]
    for d in p.get("devices") or []:
        lines.append(f"  {d.get('device_id', '?')}: global {_f(d.get('global_accuracy'))}, local "
                     f"{_f(d.get('personal_accuracy'))} on {d.get('holdout', 0)} held-back sample(s): "
                     + ("keeps its local head" if d.get("stored") else
                        "beats the global head, but this node has no model store to keep it in" if d.get("kept") else
                        "serves the global head"))
    return lines


def event_text(e: Mapping[str, Any]) -> str:
    if e["kind"] == "status":
        return f"status {e['status']}" + (f": {e['message']}" if e.get("message") else "")
    return str(e["message"])


def log_lines(run: Mapping[str, Any], events: Sequence[Mapping[str, Any]]) -> list[str]:
    """``edgefleet federated log RUN``: the run's line, its events and rounds in time order, then why it failed or
    stopped and its result (gate, deployment)."""
    timeline = [(float(e["ts"]), 0, event_text(e)) for e in events]
    timeline += [(float(r["ts"]), 1, round_text(r)) for r in run.get("round_metrics") or []]
    lines = [run_line(run)]
    if run.get("reason"):
        lines.append(f"  started for: {run['reason']}")
    lines += [f"  {_when(ts)}  {text}" for ts, _, text in sorted(timeline, key=lambda t: (t[0], t[1]))]
    if run.get("error"):
        lines.append(f"{'failure' if run['status'] == RunStatus.FAILED.value else 'ended'}: {run['error']}")
    res = run.get("result") or {}
    if res.get("gate"):
        gate = res["gate"]
        lines.append(f"gate: {gate.get('reason', '')}: "
                     f"{'promoted v' + str(gate.get('version')) if gate.get('promoted') else 'not promoted'}")
    if res.get("personalization"):
        lines += personalization_lines(res["personalization"])
    if res.get("deployment"):
        lines.append(f"deployment: {res['deployment'].get('id')}")
    return lines


__all__ = ["round_metrics", "RunRecord", "run_line", "print_runs", "runs_table", "RUNS_HEADER", "aligned",
           "log_lines", "round_text", "event_text", "personalization_lines"]
