"""Drift alerts start federated runs: the coordinator side of the trigger.

The operator enables it per group (``edgefleet fleet retrain --group G --on-drift on
... -- RUN OPTIONS``); the settings live in the registry, so every coordinator of
the fleet and a restarted one see them. :class:`AutoRetrain` is attached to a
:class:`~edgefleet.cloud_sync.coordinator.service.Coordinator`: each drift record
that telemetry ingest commits goes through the pure :class:`~.trigger.DriftTrigger`
(enough distinct devices within the window, not while a run of the group is in
progress, not within the cool-down since the last one); when it fires, a run record
is created (trigger ``drift``, the reason and the exact command) and
``edgefleet federated run --group G --rounds N --strategy S --api URL [--ca-cert PEM]
--record-id ID RUN OPTIONS`` starts as a child process. The run gets a token of its own:
minted in the registry for that run only (named ``fedrun-ID``), of scope ``deploy`` - all
the run calls (its run record and rounds, ``POST /v1/deployments``) - and revoked when the
run ends; never the coordinator's admin token. The token is in the run's environment
(never on its command line), which is built explicitly (:func:`~..childenv.child_env`):
none of the coordinator's own secrets. The run writes its rounds and result into that
record; if it dies without doing so, its exit code is recorded.

A stop asked for through the API (``POST /v1/federated/runs/ID/stop``, ``edgefleet federated stop``) reaches the
coordinator supervising the run (``Coordinator.on_fed_stop``): :meth:`AutoRetrain.stop_run` ends the run's process
group (SIGTERM: the run stops its Flower run and records itself ``stopped``; SIGKILL after ``stop_timeout``), and a
run that could not record its end is recorded ``stopped`` here.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgefleet.childenv import child_env
from edgefleet.errors import ConfigError
from edgefleet.supervisor import ChildProcess, stop_all

from ..coordinator.rows import Retrain, RunStatus
from .config import StrategyName
from .trigger import DriftAlert, DriftTrigger, TriggerPolicy

log = logging.getLogger("edgefleet.cloud_sync.federated.autorun")

# options the launcher sets itself; an operator's run options may not override them
RESERVED = ("--group", "--rounds", "--strategy", "--api", "--ca-cert", "--token", "--record-id", "--out")
RUN_TOKEN_SCOPE = "deploy"  # PATCH/PUT /v1/federated/runs/..., POST /v1/deployments: nothing a run does needs admin
RUN_TOKEN_PREFIX = "fedrun-"  # + the run id: the name of a run's token in the registry and the audit log


@dataclass(frozen=True)
class RetrainSettings:
    group: str
    on_drift: bool = False
    min_devices: int = 1
    window_s: float = 3600.0
    cooldown_s: float = 6 * 3600.0
    rounds: int = 3
    strategy: str = "fedavg"
    args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(str(a) for a in self.args))
        try:
            StrategyName(self.strategy)
        except ValueError:
            raise ConfigError(f"strategy must be one of {[s.value for s in StrategyName]}, "
                              f"got {self.strategy!r}") from None
        self.policy()  # validates the numbers
        from .cli import given_run_options

        # the run's own parser (no abbreviations) names a bad option; reserved ones are found on its result
        given = given_run_options(list(self.args))
        for opt in RESERVED:
            if opt in given:
                raise ConfigError(f"run option {opt} is set by the trigger itself; "
                                  f"use the retrain settings (--rounds/--strategy) instead")

    def policy(self) -> TriggerPolicy:
        return TriggerPolicy(enabled=self.on_drift, min_devices=self.min_devices, window_s=self.window_s,
                             cooldown_s=self.cooldown_s, rounds=self.rounds, strategy=self.strategy)

    def policy_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("group")
        doc.pop("on_drift")
        doc["args"] = list(self.args)
        return doc

    @classmethod
    def from_registry(cls, row: Retrain) -> RetrainSettings:
        return cls(group=row.group, on_drift=row.on_drift, **row.policy)


def _score(data: dict[str, Any]) -> float:
    v = data.get("psi_max", 0.0)
    return float(v) if isinstance(v, (int, float)) else 0.0


class AutoRetrain:
    """Start federated runs on drift alerts for the groups whose operator enabled it.

    ``api`` is the URL the runs call the coordinator's API at, ``ca_cert`` the CA they verify an https API with
    (None: the system's CAs). Each run gets a deploy-scoped token of its own (``token``, the coordinator's admin
    token, is never given to a run; it is accepted for callers that still pass it)."""

    def __init__(self, coord: Any, api: str, token: str | None = None,
                 work_dir: str | os.PathLike[str] = "federated-runs", *, python: str = sys.executable,
                 clock: Callable[[], float] = time.time, superlink: Any = None, ca_cert: str | None = None,
                 stop_timeout: float = 15.0) -> None:
        self.coord = coord
        self.superlink = superlink  # the coordinator's supervised SuperLink: runs use it unless told otherwise
        self.registry = coord.registry
        self.fleet = coord.fleet
        self.api = api
        self.ca_cert = str(Path(ca_cert).resolve()) if ca_cert else None
        self.work_dir = Path(work_dir)
        self.python = python
        self.clock = clock
        self.trigger = DriftTrigger()
        self.children: dict[str, ChildProcess] = {}  # the runs going on (edgefleet.supervisor)
        self.run_tokens: dict[str, str] = {}  # run id -> the name of its token, until revoked
        self.stop_timeout = stop_timeout  # seconds a run asked to stop has to end after SIGTERM, before SIGKILL
        self._seeded: set[str] = set()
        self._lock = threading.Lock()

    def attach(self) -> AutoRetrain:
        """Hook into the coordinator's telemetry ingest and its API's stop requests (after revoking the tokens of
        runs that ended while no coordinator watched them)."""
        self.revoke_stale_tokens()
        self.coord.on_drift = self.on_drift
        self.coord.on_fed_stop = self.stop_run
        return self

    def revoke_stale_tokens(self) -> list[str]:
        """Revoke the run tokens (``fedrun-ID``) whose run is over (or unknown): left behind when a coordinator
        stopped before its run ended. A run still starting or running keeps its token."""
        revoked = []
        for t in self.registry.tokens(self.fleet):
            name = t.name
            if not name.startswith(RUN_TOKEN_PREFIX):
                continue
            run = self.registry.fed_run(name[len(RUN_TOKEN_PREFIX):])
            if run is None or not run.status.active:
                if self.registry.revoke_token(self.fleet, name):
                    revoked.append(name)
        if revoked:
            log.info("revoked %d token(s) of federated runs that ended: %s", len(revoked), ", ".join(revoked))
        return revoked

    def _revoke(self, run_id: str) -> None:
        name = self.run_tokens.pop(run_id, None)
        if name is None:
            return
        try:
            self.registry.revoke_token(self.fleet, name)
        except Exception as exc:  # the registry is down: the next coordinator start revokes it (revoke_stale_tokens)
            log.warning("could not revoke the token %s of federated run %s: %s", name, run_id, exc)

    def on_drift(self, device: str, group: str, data: dict[str, Any]) -> str | None:
        """A committed drift record of ``device`` in ``group``; returns the run id when it starts a run."""
        rows = self.registry.retrain(self.fleet, group)
        if not rows or not rows[0].on_drift:
            return None
        try:
            settings = RetrainSettings.from_registry(rows[0])
        except ConfigError as exc:
            log.warning("retrain settings of group %s are invalid: %s", group, exc)
            return None
        with self._lock:
            self.trigger.set_policy(group, settings.policy())
            self._seed(group)
            start = self.trigger.handle(DriftAlert(group, device, str(data.get("version", "")),
                                                   _score(data)), self.clock())
            if start is None:
                return None
            for run in self.registry.fed_runs(self.fleet, group, 5):  # another coordinator of the fleet was faster
                if run.trigger == "drift" and self.clock() - run.created < settings.cooldown_s:
                    self.trigger.restore(group, run.created)
                    self.trigger.finished(group)
                    return None
            return self._launch(settings, start.reason)

    def _seed(self, group: str) -> None:
        """After a restart (or on another coordinator), the cool-down counts from the last recorded drift run."""
        if group in self._seeded:
            return
        self._seeded.add(group)
        for run in self.registry.fed_runs(self.fleet, group, 10):
            if run.trigger == "drift":
                self.trigger.restore(group, run.created)

    def command(self, settings: RetrainSettings, run_id: str) -> list[str]:
        out = self.work_dir / run_id
        link: list[str] = []
        from .cli import given_run_options

        given = given_run_options(list(settings.args))
        if self.superlink is not None and "--superlink" not in given:
            link = ["--superlink", self.superlink.address]
            ca = self.superlink.config.ssl_ca_certfile
            if ca and not self.superlink.config.insecure and "--root-certificates" not in given:
                link += ["--root-certificates", str(ca)]
        ca = ["--ca-cert", self.ca_cert] if self.ca_cert and self.api.lower().startswith("https:") else []
        return [self.python, "-m", "edgefleet.cli", "federated", "run", "--group", settings.group,
                "--rounds", str(settings.rounds), "--strategy", settings.strategy, "--api", self.api, *ca,
                "--record-id", run_id, "--out", str(out), *link, *settings.args]

    def environment(self, token: str) -> dict[str, str]:
        """The run's environment: its own token and nothing else secret (no admin token, signing key, MQTT
        password: :func:`~..childenv.child_env`)."""
        return child_env({"EDGEFLEET_TOKEN": token})

    def _launch(self, settings: RetrainSettings, reason: str) -> str:
        run_id = self.registry.create_fed_run(self.fleet, settings.group, settings.strategy, settings.rounds,
                                              trigger="drift", reason=reason, status=RunStatus.STARTING)
        argv = self.command(settings, run_id)
        self.registry.set_fed_run(run_id, result={"command": shlex.join(argv)})
        out = self.work_dir / run_id
        try:
            out.mkdir(parents=True, exist_ok=True)
            name = RUN_TOKEN_PREFIX + run_id
            token = self.registry.create_token(self.fleet, name, RUN_TOKEN_SCOPE)
            self.run_tokens[run_id] = name
            child = ChildProcess(argv, name=f"federated-run-{run_id}", env=self.environment(token),
                                 log_path=out / "run.log", restart=False, poll_seconds=0.2,
                                 on_exit=lambda c, code: self._reap(run_id, settings.group, code))
            child.start()  # called holding self._lock (on_drift): a run that ends at once is reaped after this
            self.children[run_id] = child
        except Exception as exc:
            self._revoke(run_id)
            self.registry.set_fed_run(run_id, status=RunStatus.FAILED, error=f"cannot start: {exc}")
            self.trigger.finished(settings.group)
            return run_id
        log.info("drift on group %s: started federated run %s (pid %s): %s", settings.group, run_id, child.pid,
                 reason)
        return run_id

    def _reap(self, run_id: str, group: str, code: int) -> None:
        """A run's process ended (the supervisor's exit hook, or :meth:`stop_run`): revoke its token, record a run
        that ended without saying how (``stopped`` if a stop was asked for, else ``failed``), and let the group's
        trigger start another after its cool-down."""
        with self._lock:
            self._revoke(run_id)  # the run is over: its token with it
        run = self.registry.fed_run(run_id)
        if run is not None and run.status.active:
            log_file = self.work_dir / run_id / "run.log"
            if run.stop_requested:
                self.registry.set_fed_run(run_id, status=RunStatus.STOPPED,
                                          error=f"stopped on request (exit code {code}); see {log_file}")
            else:
                self.registry.set_fed_run(run_id, status=RunStatus.FAILED, error=f"exit code {code}; see {log_file}")
        with self._lock:
            self.children.pop(run_id, None)
            self.trigger.finished(group)

    def stop_run(self, run_id: str) -> bool:
        """A stop asked for through the API (``Coordinator.on_fed_stop``): end the run's process if this
        coordinator supervises it (on a thread: the API answers at once) and return True; False otherwise (the
        run's own process polls its record)."""
        with self._lock:
            child = self.children.get(run_id)
        if child is None:
            return False
        run = self.registry.fed_run(run_id)
        group = run.group if run is not None else ""

        def stop() -> None:
            child.stop(self.stop_timeout)  # SIGTERM to its group; SIGKILL after stop_timeout
            code = child.returncode
            log.info("stopped federated run %s on request (exit code %s)", run_id, code)
            self._reap(run_id, group, code if code is not None else -15)

        threading.Thread(target=stop, name=f"edgefleet-stop-{run_id}", daemon=True).start()
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """End the runs this coordinator started (their process groups), then its SuperLink."""
        try:
            self._stop_runs(timeout)
        finally:
            if self.superlink is not None:
                self.superlink.stop()

    def _stop_runs(self, timeout: float) -> None:
        runs = list(self.children.values())
        stop_all(runs, timeout)  # their process groups: SIGTERM, a shared wait, SIGKILL
        for child in runs:  # asked to stop, so the exit hook did not run: reap them here
            if child.on_exit is not None:
                child.on_exit(child, child.returncode if child.returncode is not None else -15)
        with self._lock:
            for run_id in list(self.run_tokens):  # the reapers may not get to it before this process exits
                self._revoke(run_id)


def start_for_coordinator(args: Any, coord: Any) -> AutoRetrain:
    """``edgefleet cloud serve``: the supervised SuperLink (``--superlink-port``) and the drift launcher.

    ``args`` carries the options :func:`~.cli.add_serve_args` registers plus ``api_host``, ``api_port``
    and, from ``cloud serve``, ``api_url`` (the URL runs call back at, https with ``--tls-cert``) and
    ``tls_ca`` (the CA they verify it with). ``stop()`` of the result ends the runs and the SuperLink.
    """
    link = None
    if args.superlink_port:
        from .runner import SuperLinkConfig, start_ready_superlink

        tls = bool(args.superlink_ssl_certfile)
        cfg = SuperLinkConfig(host=args.superlink_host, port=args.superlink_port, insecure=not tls,
                              state_dir=str(Path(args.federated_dir) / "superlink"),
                              ssl_certfile=args.superlink_ssl_certfile, ssl_keyfile=args.superlink_ssl_keyfile,
                              ssl_ca_certfile=args.superlink_ssl_ca_certfile,
                              enable_supernode_auth=args.superlink_node_auth,
                              log_path=str(Path(args.federated_dir) / "superlink.log"))
        link = start_ready_superlink(lambda _: cfg)
        print(f"flower-superlink supervised on {link.address} ({'TLS' if tls else 'insecure, loopback'})",
              file=sys.stderr, flush=True)
    api = getattr(args, "api_url", None)
    if not api:
        api_host = "127.0.0.1" if args.api_host in ("0.0.0.0", "::", "") else args.api_host
        api = f"http://{api_host}:{args.api_port}"
    return AutoRetrain(coord, api, None, args.federated_dir, superlink=link,
                       ca_cert=getattr(args, "tls_ca", None)).attach()


__all__ = ["AutoRetrain", "RetrainSettings", "RESERVED", "start_for_coordinator"]
