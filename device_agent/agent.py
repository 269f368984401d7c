"""``Agent``: the device agent as a library (the daemon ``edgefleet agent run`` is the same code).

The agent is a facade over three parts:

- :mod:`.serving` - what ``predict()`` runs on: the active version's slot, hot swap without a failed or
  waiting call, the standby kept loaded during probation, shadow runs, stateful sessions;
- :mod:`.updates` - the pure update state machine; each action it asks for is performed here (one method per
  action, ``Agent._PERFORM``) and its outcome fed back as an event, the job persisted after every transition;
- :mod:`.probation` - judging a new version (errors, latency, agreement) into the machine's events.

A background monitor thread asks for those judgements, flushes telemetry and notices when another process
changed the store.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from edgefleet._version import __version__ as AGENT_VERSION
from edgefleet.canonical import sha256_bytes
from edgefleet.errors import (
    ConfigError,
    EdgefleetError,
    StoreError,
    UpdateRejectedError,
)
from edgefleet.keys import PublicKey
from edgefleet.manifest import MANIFEST_NAME, Manifest

from . import tuf_mode
from .config import AgentConfig, QualityConfig
from .orders import LEDGER_NAME, ClockPolicy, OrderLedger, check_rollback_order
from .personal import PersonalHeads
from .probation import QualityProbe, ShadowStats, judge_probation, judge_shadow, start_probation
from .serving import AgentSession, Comparator, Loader, ModelLike, Serving, Shadow, Slot, sdk_loader
from .store import Entry, Store, StoreState
from .telemetry import DriftMonitor, Telemetry, TelemetryQueue, TelemetrySink, drain
from .updates import (
    Action,
    Activate,
    Activated,
    Discard,
    Event,
    Failed,
    Job,
    JobLog,
    JobStatus,
    ProbationFailed,
    Refused,
    Resumed,
    Rollback,
    RolledBack,
    ShadowDone,
    SmokeFailed,
    SmokePassed,
    SmokeTest,
    Start,
    StartProbation,
    StartShadow,
    Step,
    UpdateMachine,
    Verified,
    Verify,
    available_runtimes,
    check_identity,
    check_target,
    check_version,
    new_job,
)

if TYPE_CHECKING:
    from .flower_node import FlowerNode
    from .samples import SampleStore

log = logging.getLogger(__name__)


class Agent:
    """The device agent. Thread-safe ``predict``; one install at a time."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        loader: Loader | None = None,
        monitor: bool = True,
        tick_seconds: float = 0.2,
        resume: bool = True,
    ) -> None:
        self.config = config
        self.root = config.state_path
        self.store = Store(
            self.root,
            trusted_keys=config.trusted_keys,
            require_signature=config.require_signature,
            quota_bytes=int(config.store.quota_mb * (1 << 20)),
            key_dirs=(tuf_mode.tuf_dir(self.root) / tuf_mode.KEYS_DIR,),
        )
        if config.tuf_root and not tuf_mode.provisioned(self.root):  # [agent] tuf_root: pinned at first start
            tuf_mode.provision_root(self.root, config.tuf_root)
        #: a ``tuf.ngclient.FetcherInterface`` for repository metadata and targets (the MQTT/HTTP seam);
        #: default: the directory given as ``install(..., repo=DIR)``
        self.tuf_fetcher: Any = None
        self._load = loader or sdk_loader(config.backend, config.threads)
        self.jobs = JobLog(self.root / "jobs")
        self.orders = OrderLedger(self.root / LEDGER_NAME)
        # One process owns the state dir (the daemon, or the embedding app): it resumes jobs and repairs the
        # telemetry queue. Others (CLI commands while a daemon runs) are guests: they use the store under its lock.
        self._owner_fd: int | None = None
        self.owner = self._take_ownership()
        self.telemetry = Telemetry(TelemetryQueue(self.root / "telemetry.db", config.telemetry.max_events,
                                                  repair=self.owner), config.device_id)
        self.serving = Serving(self.telemetry, config.telemetry.enabled, self._wake_monitor)
        self.samples: SampleStore | None = None
        if config.samples.enabled:
            from .samples import SampleStore, load_device_key

            key = load_device_key(config.samples.key_file) if config.samples.key_file else None
            self.samples = SampleStore(self.root / "samples.db", config.samples.max_samples, key)
        self.job_hooks: list[Callable[[Job], None]] = []
        self._drive_lock = threading.RLock()
        self._machine: UpdateMachine | None = None
        self._rollback_order: Mapping[str, Any] | None = None
        self._repo: str | None = None
        self._tuf_client: Any = None  # TUF mode: the metadata the current job's archive was checked against
        self._generation = -1
        self._last_flush = time.monotonic()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._runtimes: tuple[str, ...] | None = None
        self._thread: threading.Thread | None = None
        try:
            unfinished = self.jobs.unfinished() if self.owner else []
            with self.store.lock():
                for job in unfinished:
                    if job.target_id:
                        self.store.pin(job.target_id)  # keep what a resumed job needs through recovery
                repaired = self.store.recover(self._rolled_back_ids())
                if repaired is not None:
                    self.telemetry.event("store_repaired", {"damaged": "pointer", **repaired})
                self.serving.slot = self._load_active()
            self._set_drift(self.serving.slot)
            if resume and self.owner:
                self._resume_jobs()
        except BaseException:
            self.close()
            raise
        self.tick_seconds = tick_seconds
        self.flower_node: FlowerNode | None = None
        if config.federated.enabled and self.owner and monitor:
            try:
                self.flower_node = self._start_flower_node()
            except BaseException:
                self.close()
                raise
        if monitor:
            self._thread = threading.Thread(target=self._loop, name="edgefleet-agent", daemon=True)
            self._thread.start()
        served = self.serving.slot.entry.version if self.serving.slot is not None else ""
        log.info("agent %s started: serving %s from %s%s", config.device_id or "(no device id)",
                 f"v{served}" if served else "nothing yet", self.root, "" if self.owner else " (as a guest)",
                 extra={"event": "agent_started", "device": config.device_id, "version": served,
                        "owner": self.owner})

    def _start_flower_node(self) -> FlowerNode:
        """Enrolled for federated training: supervise this device's ``flower-supernode`` (restarted if it dies)."""
        from .flower_node import FlowerNode, FlowerNodeConfig

        f = self.config.federated
        cfg = FlowerNodeConfig.for_agent(
            self.config, f.superlink, port=f.port, insecure=f.insecure, root_certificates=f.root_certificates,
            auth_private_key=f.auth_private_key, auth_public_key=f.auth_public_key,
            log_path=f.log_file or str(self.root / "flower-node.log"))
        node = FlowerNode(cfg)
        node.start()
        return node

    @property
    def runtimes(self) -> tuple[str, ...]:
        """Runtimes this device can run (looked up once)."""
        if self._runtimes is None:
            self._runtimes = available_runtimes()
        return self._runtimes

    def _rolled_back_ids(self) -> list[str]:
        """Versions this device's job log saw fail their probation (for rebuilding a damaged pointer)."""
        try:
            return [j.target_id for j in self.jobs.load_all() if j.status is JobStatus.ROLLED_BACK and j.target_id]
        except Exception:
            return []

    def _take_ownership(self) -> bool:
        fd = os.open(self.root / "agent.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._owner_fd = fd
        return True

    # -- loading ------------------------------------------------------------------
    @property
    def trusted_keys(self) -> list[PublicKey]:
        return self.store.trusted_keys

    def _open(self, entry: Entry) -> Slot:
        path = self.store.object_path(entry.id)
        try:
            raw = (path / MANIFEST_NAME).read_bytes()
        except OSError:
            raise StoreError(f"version {entry.version} ({entry.id[:12]}) is missing from the store") from None
        if sha256_bytes(raw) != entry.id:
            raise StoreError(f"version {entry.version} ({entry.id[:12]}) does not match its id")
        keys = self.store.verify_keys  # the trusted keys and those that signed TUF-verified installs
        model = self._load(path, keys, self.config.require_signature or bool(keys))
        slot = Slot(model, entry)
        slot.personal = self._personal_head(model)
        self.telemetry.set_head(entry.version, _head_kind(slot))
        return slot

    def _personal_head(self, model: ModelLike) -> dict[str, Any] | None:
        """Serve this device's personal head of ``model``'s version when a ``--personalize`` run kept one
        (:mod:`.personal`); its summary, or ``None`` (the signed global head is served)."""
        use_head = getattr(model, "use_head", None)
        if not self.config.federated.personal_heads or use_head is None or model.manifest.head is None:
            return None
        personal = PersonalHeads(self.root).for_manifest(model.manifest)
        if personal is None:
            return None
        use_head(personal.head)
        log.info("v%s serves this device's personal head (run %s: held-back accuracy %.3f, global head %.3f)",
                 model.manifest.version, personal.run or "-", personal.personal_accuracy, personal.global_accuracy,
                 extra={"event": "personal_head", "version": model.manifest.version})
        return personal.summary()

    def _load_active(self) -> Slot | None:
        """Load the active version; if it is damaged, fall back to the previous one (never nothing)."""
        state = self.store.state()
        self._generation = state.generation
        if state.active is None:
            return None
        try:
            return self._open(state.active)
        except EdgefleetError as exc:
            damaged = str(exc)
        if state.previous is None:
            raise StoreError(f"the active version cannot be loaded and there is no previous one: {damaged}")
        slot = self._open(state.previous)
        new = self.store.rollback(mark_bad=True)
        self._generation = new.generation
        log.error("the active version v%s cannot be loaded (%s): serving the previous one, v%s", state.active.version,
                  damaged, state.previous.version, extra={"event": "store_repaired", "version": state.previous.version,
                                                          "damaged": state.active.version})
        self.telemetry.event("store_repaired", {"damaged": state.active.to_dict(), "now_active": state.previous.to_dict(),
                                                "error": damaged})
        return slot

    def _set_drift(self, slot: Slot | None) -> None:
        ref = slot.model.manifest.reference_stats if slot is not None else None
        monitor = None
        if ref and self.config.telemetry.enabled:
            t = self.config.telemetry
            try:
                monitor = DriftMonitor(ref, t.drift_threshold, t.drift_window)
            except Exception:
                monitor = None
        self.telemetry.set_drift(monitor, slot.entry.version if slot else "", slot.entry.id if slot else "")

    # -- serving ------------------------------------------------------------------
    def predict(self, x: Any, **kwargs: Any) -> Any:
        """Predict with the active version (thread-safe; never fails because of an update)."""
        return self.serving.serve(lambda slot: slot.model.predict(x, **kwargs), x, kwargs, shadow=True)

    def session(self) -> AgentSession:
        """A stateful session (streaming models) on whatever version the agent serves.

        When an update or a rollback swaps the model, the session's state moves to the new
        version if its signature (inputs, outputs, state pairs, preprocessing) is the same;
        otherwise the session's next call raises ``SessionError`` (``reset()`` starts it
        again on the new version)."""
        return AgentSession(self.serving)

    @property
    def model(self) -> ModelLike | None:
        slot = self.serving.slot
        return slot.model if slot else None

    @property
    def active_version(self) -> str | None:
        slot = self.serving.slot
        return slot.entry.version if slot else None

    @property
    def serving_head(self) -> str | None:
        """Which head the active version serves: ``personal`` (this device's, from a ``--personalize`` run),
        ``global`` (the bundle's signed one), or ``None`` (no version, or one without a trainable head)."""
        slot = self.serving.slot
        return _head_kind(slot) if slot else None

    # -- installing ---------------------------------------------------------------------
    def install(
        self,
        source: str | Path,
        *,
        shadow: bool | None = None,
        rollback_order: Mapping[str, Any] | None = None,
        job_id: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        repo: str | os.PathLike | None = None,
        quality: Mapping[str, Any] | None = None,
    ) -> Job:
        """Install a bundle directory or archive. Returns the job (terminal, or on probation/shadow).

        With ``wait=True`` returns only when the job is finished (after probation).
        A refused bundle gives a job in REJECTED with a named ``reason``; the active
        version keeps serving throughout.

        ``repo``: the TUF repository directory to check the archive against. A device in TUF
        mode (:attr:`tuf_mode`) requires it (or :attr:`tuf_fetcher`); see :mod:`.tuf_mode`.

        ``quality``: the deployment's quality policy, options of ``[quality]`` over the agent's own
        (:meth:`.config.QualityConfig.overridden`); one that does not fit is refused (``quality_policy``).
        """
        if repo is not None and not self.tuf_mode:
            raise ConfigError("a repository needs a pinned TUF root on this device: run "
                              "'edgefleet agent trust-root ROOT.json' (or set [agent] tuf_root) first")
        use_shadow = self.config.update.shadow if shadow is None else shadow
        job = new_job(str(source), shadow=use_shadow, allow_older=rollback_order is not None, job_id=job_id)
        policy_error = ""
        if quality:
            try:
                self.config.quality.overridden(quality)
                job = replace(job, details={"quality_policy": dict(quality)})
            except ConfigError as exc:
                policy_error = str(exc)
        with self._drive_lock:
            other: Job | None = None
            if self._machine is not None and not self._machine.job.status.terminal:
                other = self._machine.job
            elif not self.owner:  # the owning process (the daemon) may be in the middle of its own job
                others = self.jobs.unfinished()
                other = others[-1] if others else None
            machine = UpdateMachine(job)
            if other is not None or policy_error:
                machine.handle(Start())
                machine.handle(Refused("busy", f"job {other.job_id} is still {other.step.value or 'queued'}")
                               if other is not None else Refused("quality_policy", policy_error))
                self.jobs.save(machine.job)
                self._report(machine.job)
                return machine.job
            self._machine = machine
            self._rollback_order = rollback_order
            self._repo = None if repo is None else str(repo)
            state = self.store.state()
            self._drive(self._advance(Start(state.active.id if state.active else "",
                                            state.active.version if state.active else "")))
            job = machine.job
        if wait:
            return self.wait(job.job_id, timeout)
        return job

    def wait(self, job_id: str | None = None, timeout: float | None = None) -> Job:
        """Block until the job (default: the current one) is terminal."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done:
            while True:
                machine = self._machine
                if machine is None:
                    raise StoreError("no job to wait for")
                job = machine.job if job_id in (None, machine.job.job_id) else self.jobs.get(job_id or "")
                if job is None or job.status.terminal:
                    return job if job is not None else machine.job
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return job
                if self._thread is None:  # no monitor thread: do its work here
                    self._done.release()
                    try:
                        self.tick()
                    finally:
                        self._done.acquire()
                self._wake.set()
                self._done.wait(timeout=min(0.1, left) if left is not None else 0.1)

    @property
    def current_job(self) -> Job | None:
        m = self._machine
        return m.job if m else None

    def _advance(self, event: Event) -> list[Action]:
        with self._drive_lock:
            assert self._machine is not None
            before = self._machine.job
            actions = self._machine.handle(event)
            job = self._machine.job
            if (job.status, job.step) != (before.status, before.step):
                _log_job(job)
            try:
                self.jobs.save(job)
            except OSError as exc:  # a job that cannot be persisted cannot be resumed: it ends here
                if not job.status.terminal:
                    actions = self._machine.handle(Failed(*_io_failure(exc, "the job log")))
                    job = self._machine.job
                    with contextlib.suppress(OSError):
                        self.jobs.save(job)
        self._report(job)
        if job.status.terminal:
            self._finish(job)
        return actions

    def _drive(self, actions: list[Action]) -> None:
        with self._drive_lock:
            pending = list(actions)
            while pending:
                action = pending.pop(0)
                try:
                    event = self._perform(action)
                except EdgefleetError as exc:
                    event = Failed("store_error" if isinstance(exc, StoreError) else "error", str(exc))
                except OSError as exc:  # disk full, read-only file system, I/O error
                    event = Failed(*_io_failure(exc))
                except Exception as exc:  # an action must end in a state, not a crashed driver
                    event = Failed("internal_error", f"{type(exc).__name__}: {exc}")
                if event is not None:
                    if self._machine is None or self._machine.job.status.terminal:
                        continue
                    pending.extend(self._advance(event))

    def _report(self, job: Job) -> None:
        self.telemetry.event("job", {
            "job_id": job.job_id, "status": job.status.value, "step": job.step.value, "reason": job.reason,
            "message": job.message, "target_version": job.target_version, "from_version": job.from_version,
            "revision": job.revision,
        })
        for hook in list(self.job_hooks):
            try:
                hook(job)
            except Exception:
                log.exception("a job hook failed on job %s", job.job_id)
        with self._done:
            self._done.notify_all()

    def _finish(self, job: Job) -> None:
        """Clean up after a terminal job: drop the standby/candidate that is no longer needed."""
        if job.target_id:
            self.store.unpin(job.target_id)
        self.serving.probation = None
        self.serving.stop_comparator()
        self.serving.stop_shadow()
        cand, self.serving.candidate = self.serving.candidate, None
        if cand is not None and cand is not self.serving.slot:
            cand.retire()
        standby, self.serving.standby = self.serving.standby, None
        if standby is not None and standby is not self.serving.slot:
            standby.retire()
        self._rollback_order = None
        self._repo = None
        self._tuf_client = None
        self.jobs.prune()

    def _entry(self, object_id: str) -> Entry:
        state = self.store.state()
        for e in (state.active, state.previous):
            if e is not None and e.id == object_id:
                return e
        raw = (self.store.object_path(object_id) / MANIFEST_NAME).read_bytes()
        m = Manifest.from_dict(json.loads(raw))
        return Entry(object_id, m.name, m.version)

    def _perform(self, action: Action) -> Event | None:
        """Carry out one action of the update machine; its outcome (an event) goes back to the machine."""
        return self._PERFORM[type(action)](self, action)

    def _discard(self, action: Discard) -> None:
        with self.store.lock():
            self.store.discard(action.target_id)

    def _verify(self, action: Verify) -> Event:
        assert self._machine is not None
        job = self._machine.job
        cfg = self.config
        with self.store.lock():
            try:
                if action.target_id and (self.store.object_path(action.target_id) / MANIFEST_NAME).is_file():
                    bundle = self.store.verify(action.target_id)
                    object_id, manifest = action.target_id, bundle.manifest
                    size = sum(e.size for e in manifest.files.values())
                elif self.tuf_mode:
                    staged = self._stage_tuf(job.source)
                    object_id, manifest, size = staged.entry.id, staged.manifest, staged.size
                else:
                    staged = self.store.stage(job.source)
                    object_id, manifest, size = staged.entry.id, staged.manifest, staged.size
            except UpdateRejectedError as exc:
                return Refused(exc.reason, str(exc))
            self.store.pin(object_id)
            state = self.store.state()

            def refuse(reason: str, message: str) -> Refused:
                self.store.discard(object_id)
                return Refused(reason, message)

            problem = check_target(manifest, AGENT_VERSION, cfg.hardware_tags, self.runtimes)
            if problem:
                return refuse(*problem)
            active = state.active
            active_name = active.name if active is not None else None
            problem = check_identity(manifest, cfg.model_name, active_name)
            if problem:
                return refuse(*problem)
            if job.allow_older:  # single-use and time-bounded (see .orders); recorded before it takes effect
                ledger = self.orders.reload()
                try:
                    accepted = check_rollback_order(
                        self._rollback_order or {}, object_id, self.trusted_keys, cfg.device_id, ledger=ledger,
                        clock=ClockPolicy(cfg.update.clock, cfg.update.clock_skew_seconds),
                        verify=self._order_verifier() if self.tuf_mode else None)
                    ledger.record(accepted.order_id, accepted.issued_at, signed=accepted.signed)
                except UpdateRejectedError as exc:
                    return refuse(exc.reason, str(exc))
            problem = check_version(manifest, object_id, active.id if active else None,
                                    active.version if active else None, state.bad, job.allow_older, active_name)
            if problem:
                return refuse(*problem)
            if active is not None and active.id == object_id:
                return Verified(object_id, manifest.version, already_active=True)
            keep = self.store.used_bytes([active.id]) if active is not None else 0
            if size + keep > self.store.quota_bytes:
                return refuse("quota_exceeded", f"{size} new bytes + {keep} kept exceed the store quota of "
                                                f"{self.store.quota_bytes} bytes")
        return Verified(object_id, manifest.version)

    @property
    def model_identity(self) -> str:
        """The model this device serves: ``agent.model_name`` if assigned, else the active bundle's name
        ("" before the first install). A bundle of another model is refused (``wrong_model``)."""
        if self.config.model_name:
            return self.config.model_name
        active = self.store.state().active
        return active.name if active is not None else ""

    @property
    def tuf_mode(self) -> bool:
        """Whether this device holds a pinned TUF root: every install is then checked against TUF metadata."""
        return tuf_mode.provisioned(self.root)

    def _order_verifier(self) -> Any:
        """TUF mode: rollback orders must be signed by a threshold of the repository's rollback role (python-tuf,
        from the metadata this job's archive was checked against, else refreshed now); flat keys do not count."""
        client = self._tuf_client
        if client is None:
            cfg = self.config
            client = tuf_mode.refreshed_client(self.root, self._repo, fetcher=self.tuf_fetcher,
                                               clock=cfg.update.clock, clock_skew=cfg.update.clock_skew_seconds)
        return tuf_mode.order_verifier(client)

    def _stage_tuf(self, source: str) -> Any:
        """TUF mode: the signed target (length, sha256) is checked before anything is staged, then the
        checked copy is staged accepting only the keys delegated to the device's model. Refusals are
        ``UpdateRejectedError`` with a named reason (see ``tuf_mode.TRUST_REASONS``). Call holding the lock."""
        import shutil
        import uuid

        cfg = self.config
        identity = self.model_identity
        work = self.store.staging / f"tuf-{uuid.uuid4().hex[:12]}"
        try:
            checked = tuf_mode.check_archive(
                self.root, source, self._repo, identity, work, fetcher=self.tuf_fetcher,
                clock=cfg.update.clock, clock_skew=cfg.update.clock_skew_seconds)
            try:
                staged = self.store.stage(checked.archive, trusted_keys=checked.keys)
            except UpdateRejectedError as exc:
                if exc.reason in ("bad_signature", "no_trusted_keys"):
                    raise UpdateRejectedError(
                        f"{checked.target} is not signed by a key delegated to model {checked.model!r} "
                        f"(a key of another role or model, or the coordinator's online key, is not accepted): {exc}",
                        reason="key_not_delegated") from None
                raise
            m = staged.manifest
            if (m.name, m.version) != (checked.model, checked.version):
                self.store.discard(staged.entry.id)
                raise UpdateRejectedError(f"the manifest names {m.name} v{m.version} but the signed target is "
                                          f"{checked.target}", reason="target_mismatch")
            if staged.bundle.signer is not None:
                tuf_mode.remember_key(self.root, staged.bundle.signer)
            checked.client.done()
            self._tuf_client = checked.client
            self.telemetry.event("tuf_verified", {"target": checked.target, "sha256": checked.sha256,
                                                  "signer": staged.bundle.signer.key_id if staged.bundle.signer
                                                  else None})
            return staged
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _smoke_action(self, action: SmokeTest) -> Event:
        return self._smoke(action.target_id)

    def _smoke(self, target_id: str) -> Event:
        try:
            slot = self._open(self._entry(target_id))
        except Exception as exc:
            return SmokeFailed(f"the runtime cannot load the model: {exc}", reason="load_failed")
        message = ""
        try:
            result = slot.model.run_smoke_tests()
        except Exception as exc:
            result = None
            message = f"smoke test raised {type(exc).__name__}: {exc}"
        if result is None or not result.ok:
            slot.retire()
            return SmokeFailed(message if result is None else result.message)
        self.serving.candidate = slot
        return SmokePassed(float(getattr(result, "max_abs_error", 0.0)))

    def _start_shadow(self, target_id: str) -> Event | None:
        if self.serving.candidate is None or self.serving.candidate.entry.id != target_id:
            self.serving.candidate = self._open(self._entry(target_id))
        if self.serving.slot is None:  # nothing to compare with: shadowing is moot
            return ShadowDone(True, {"compared": 0, "why": "no active version to compare with"})
        stats = ShadowStats(self.config.update, time.monotonic())
        qcfg = self._quality_config()
        if qcfg.mode != "off":
            stats.quality = QualityProbe(qcfg, self.serving.candidate.entry.version, self.serving.slot.entry.version)
        self.serving.shadow = Shadow(self.serving.candidate, stats, self.config.update.agreement_atol)
        return None

    def _quality_config(self) -> QualityConfig:
        """The quality settings of the current job: the agent's, with the deployment's policy over them."""
        job = self._machine.job if self._machine is not None else None
        policy = job.details.get("quality_policy") if job is not None else None
        try:
            return self.config.quality.overridden(policy if isinstance(policy, Mapping) else None)
        except ConfigError:  # (checked when the job was made: a job log edited since)
            return self.config.quality

    def _start_comparing(self) -> None:
        """Probation: compare the new version with the one it replaced on the live inputs (:class:`.Comparator`).
        After a restart the replaced version is loaded again as the standby (also for an instant rollback)."""
        probation, slot = self.serving.probation, self.serving.slot
        qcfg = self._quality_config()
        if probation is None or slot is None or qcfg.mode == "off":
            return
        standby = self.serving.standby
        if standby is None and self._machine is not None and self._machine.job.from_id:
            try:
                state = self.store.state()
                if state.previous is not None and state.previous.id == self._machine.job.from_id:
                    standby = self.serving.standby = self._open(state.previous)
            except (EdgefleetError, OSError) as exc:
                log.warning("the previous version cannot be loaded to compare the new one with: %s", exc)
        if standby is None or standby is slot:
            return
        probe = QualityProbe(qcfg, slot.entry.version, standby.entry.version)
        probation.quality = probe
        self.serving.stop_comparator()
        self.serving.comparator = Comparator(standby, probe)

    def _activate(self, target_id: str) -> Event:
        self.serving.stop_shadow()
        cand = self.serving.candidate
        if cand is None or cand.entry.id != target_id:
            cand = self._open(self._entry(target_id))
        with self.store.lock():
            state = self.store.activate(cand.entry)
        cand.entry = state.active or cand.entry
        self._generation = state.generation
        old = self.serving.swap(cand)
        self.serving.candidate = None
        self.serving.standby = old
        self._set_drift(cand)
        self.telemetry.event("activated", {"version": cand.entry.version, "id": cand.entry.id,
                                           "previous": old.entry.version if old else None,
                                           "head": _head_kind(cand), "personal": cand.personal})
        log.info("activated v%s (previous: %s)", cand.entry.version, f"v{old.entry.version}" if old else "none",
                 extra={"event": "activated", "version": cand.entry.version,
                        "previous": old.entry.version if old else ""})
        return Activated()

    def _start_probation(self) -> Event | None:
        standby = self.serving.standby
        self.serving.probation = start_probation(self.config.update, time.monotonic(),
                                                 standby.hist if standby is not None else None)
        self._start_comparing()
        slot = self.serving.slot
        log.info("probation of %s started (%gs, at least %d predictions)",
                 f"v{slot.entry.version}" if slot else "the new version", self.config.update.probation_seconds,
                 self.config.update.probation_min_predictions,
                 extra={"event": "probation_started", "version": slot.entry.version if slot else ""})
        return self._judge_probation()

    def _judge_probation(self) -> Event | None:
        probation = self.serving.probation
        if probation is None:
            return None
        slot = self.serving.slot
        event = judge_probation(probation, time.monotonic(), slot.model if slot is not None else None)
        if event is not None:
            self.serving.probation = None
            self.serving.stop_comparator()  # (its outcome goes into the version's quality telemetry)
        return event

    def _wake_monitor(self) -> None:
        self._wake.set()

    def _do_rollback(self, to_id: str) -> Event:
        assert self._machine is not None
        job = self._machine.job
        with self.store.lock():
            state = self.store.state()
            if state.active is not None and state.active.id == job.target_id:
                if state.previous is None or state.previous.id != to_id:
                    if not to_id:  # first install ever: there is nothing to go back to
                        return Failed("rollback_impossible", "no previous version to roll back to")
                    return Failed("rollback_failed", "the previous version is no longer in the store")
                state = self.store.rollback(mark_bad=True)
            elif state.active is None or state.active.id != to_id:
                return Failed("rollback_failed", "the store holds neither the new nor the previous version")
        self._generation = state.generation
        standby = self.serving.standby
        if standby is not None and standby.entry.id == to_id:
            new = standby
            self.serving.standby = None
        else:
            assert state.active is not None
            new = self._open(state.active)
        old = self.serving.swap(new)
        if old is not None and old is not new:
            old.retire()
        self._set_drift(new)
        self.telemetry.event("rolled_back", {"version": new.entry.version, "from": job.target_version,
                                             "reason": job.reason})
        log.warning("rolled back from v%s to v%s: %s", job.target_version, new.entry.version, job.reason,
                    extra={"event": "rolled_back", "version": new.entry.version, "from_version": job.target_version,
                           "reason": job.reason, "job": job.job_id})
        return RolledBack()

    def _resume_jobs(self) -> None:
        jobs = self.jobs.unfinished()
        for stale in jobs[:-1]:
            m = UpdateMachine(stale)
            if stale.status is JobStatus.QUEUED:
                m.handle(Start())
            m.handle(Failed("superseded", "a newer job was in progress when the agent restarted"))
            self.jobs.save(m.job)
        if not jobs:
            return
        job = jobs[-1]
        with self._drive_lock:
            self._machine = UpdateMachine(job)
            state = self.store.state()
            if job.status is JobStatus.QUEUED:
                event: Event = Start(state.active.id if state.active else "", state.active.version if state.active else "")
            else:
                event = Resumed(state.active.id if state.active else "")
            self._drive(self._advance(event))

    # -- rollback, feedback, status -----------------------------------------------------------
    def rollback(self) -> StoreState:
        """Go back to the previous version now (operator action). Ends a probation as ROLLED_BACK."""
        with self._drive_lock:
            m = self._machine
            if m is not None and not m.job.status.terminal and m.job.step is Step.PROBATION:
                self.serving.probation = None
                self._drive(self._advance(ProbationFailed("operator_rollback", "rolled back by the operator")))
                return self.store.state()
            if m is not None and not m.job.status.terminal:
                raise StoreError(f"job {m.job.job_id} is {m.job.step.value}; wait for it to finish")
            with self.store.lock():
                state = self.store.rollback(mark_bad=False)
            assert state.active is not None
            new = self._open(state.active)
            self._generation = state.generation
            old = self.serving.swap(new)
            if old is not None:
                old.retire()
            self._set_drift(new)
            self.telemetry.event("rolled_back", {"version": new.entry.version,
                                                 "from": state.previous.version if state.previous else None,
                                                 "reason": "operator_rollback"})
            log.warning("rolled back to v%s by the operator (from %s)", new.entry.version,
                        f"v{state.previous.version}" if state.previous else "?",
                        extra={"event": "rolled_back", "version": new.entry.version, "reason": "operator_rollback"})
            return state

    def feedback(self, x: Any, y: Any) -> int:
        """Keep a labelled sample on the device for retraining (needs ``[samples] enabled``)."""
        if self.samples is None:
            raise ConfigError("local samples are disabled; set enabled = true in the [samples] section")
        rid = self.samples.add(x, y, self.active_version or "")
        self._score_feedback(x, y)
        return rid

    def _score_feedback(self, x: Any, y: Any) -> None:
        """A label scores the version serving (its labelled accuracy) and, during probation, both versions on that
        input (the quality test's labelled evidence). Best effort: scoring never fails the feedback call."""
        slot = self.serving.slot
        if slot is None or not self.config.telemetry.enabled or not slot.acquire():
            return
        try:
            out = slot.model.predict(x)
        except Exception:
            return
        finally:
            slot.release(None)
        self.telemetry.record_label(slot.entry.version, out, y)
        comparator = self.serving.comparator
        if comparator is not None and comparator.reference is not slot and self.serving.slot is slot:
            comparator.offer_label(x, y, out)

    def status(self) -> dict[str, Any]:
        out = read_status(self.root)
        slot = self.serving.slot
        out["device_id"] = self.config.device_id
        out["serving"] = {"version": slot.entry.version, "id": slot.entry.id, "name": slot.entry.name,
                          "head": _head_kind(slot), "personal": slot.personal} if slot else None
        probation, shadow = self.serving.probation, self.serving.shadow
        out["probation"] = probation.report() if probation else None
        if probation is not None and probation.quality is not None:
            out["probation"]["quality"] = probation.quality.report()
        out["shadow"] = shadow.stats.report() if shadow else None
        out["quality"] = self.telemetry.quality()
        out["telemetry"] = {**self.telemetry.queue.stats(), "window": self.telemetry.snapshot()}
        out["samples"] = {"count": len(self.samples), "encrypted": self.samples.encrypted} if self.samples else None
        node = self.flower_node
        out["federated"] = {"superlink": node.config.superlink, "running": node.running, "pid": node.pid,
                            "restarts": node.restarts} if node else None
        return out

    # -- telemetry ----------------------------------------------------------------------------
    def flush_telemetry(self) -> None:
        self._last_flush = time.monotonic()
        self.telemetry.flush({"store_bytes": self.store.used_bytes()})

    def drain(self, sink: TelemetrySink, batch: int = 500) -> int:
        """Flush aggregated metrics, then send queued records to ``sink``; returns how many it acknowledged."""
        self.flush_telemetry()
        return drain(self.telemetry.queue, sink, batch)

    # -- the monitor ---------------------------------------------------------------------------
    def tick(self) -> None:
        """Periodic work: judge probation and shadow, flush telemetry, follow external store changes."""
        with self._drive_lock:
            m = self._machine
            if m is not None and not m.job.status.terminal:
                if m.job.step is Step.PROBATION and self._external_rollback(m.job):
                    self.serving.probation = None
                    self._drive(self._advance(ProbationFailed("operator_rollback", "rolled back by another process")))
                elif m.job.step is Step.PROBATION and self.serving.probation is not None:
                    event = self._judge_probation()
                    if event is not None:
                        self._drive(self._advance(event))
                elif m.job.step is Step.SHADOWING and self.serving.shadow is not None:
                    event = judge_shadow(self.serving.shadow.stats, time.monotonic())
                    if event is not None:
                        self._drive(self._advance(event))
            else:
                self._follow_store()
        if time.monotonic() - self._last_flush >= self.config.telemetry.flush_seconds:
            self.flush_telemetry()

    def _external_rollback(self, job: Job) -> bool:
        try:
            state = self.store.state()
        except StoreError:
            return False
        return state.generation != self._generation and state.active is not None and state.active.id != job.target_id

    def _follow_store(self) -> None:
        """Another process (``edgefleet agent install``) changed the pointer: serve what it says."""
        try:
            state = self.store.state()
        except StoreError:
            return
        if state.generation == self._generation:
            return
        slot = self.serving.slot
        if state.active is None or (slot is not None and slot.entry.id == state.active.id):
            self._generation = state.generation
            return
        try:
            new = self._open(state.active)
        except EdgefleetError:
            return  # retried at the next tick
        self._generation = state.generation
        old = self.serving.swap(new)
        if old is not None:
            old.retire()
        self._set_drift(new)
        self.telemetry.event("activated", {"version": new.entry.version, "id": new.entry.id, "by": "another process"})
        log.info("another process activated v%s: serving it", new.entry.version,
                 extra={"event": "activated", "version": new.entry.version, "by": "another process"})

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.tick_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.tick()
            except Exception:  # the monitor must survive anything
                log.exception("the agent's monitor failed; it goes on")
                time.sleep(self.tick_seconds)

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        node = getattr(self, "flower_node", None)
        if node is not None:
            node.stop()  # the SuperNode and its process group (superexec, ClientApp)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.serving.stop_shadow()
        try:
            self.flush_telemetry()
        except Exception:
            pass
        self.serving.retire_all()
        self.telemetry.queue.close()
        if self.samples is not None:
            self.samples.close()
        fd = self._owner_fd
        if fd is not None:
            os.close(fd)
            self._owner_fd = None

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    #: the update machine's actions (:mod:`.updates`), each performed by one method
    _PERFORM: Mapping[type, Callable[[Agent, Any], Event | None]] = {
        Verify: _verify,
        SmokeTest: _smoke_action,
        StartShadow: lambda self, a: self._start_shadow(a.target_id),
        Activate: lambda self, a: self._activate(a.target_id),
        StartProbation: lambda self, a: self._start_probation(),
        Rollback: lambda self, a: self._do_rollback(a.to_id),
        Discard: _discard,
    }


def _head_kind(slot: Slot) -> str | None:
    """Which head a loaded version serves: ``personal`` (this device's), ``global`` (the bundle's), or ``None``."""
    if slot.personal is not None:
        return "personal"
    return "global" if slot.model.manifest.head is not None else None


def _log_job(job: Job) -> None:
    """An install job moved: its end at info (installed, already active, canceled) or warning (refused, failed,
    rolled back), with its reason; the steps between at debug."""
    extra = {"event": f"install_{job.status.value.lower()}", "job": job.job_id, "status": job.status.value,
             "step": job.step.value, "reason": job.reason, "version": job.target_version,
             "from_version": job.from_version}
    target = f"v{job.target_version}" if job.target_version else job.source
    if job.status is JobStatus.SUCCEEDED:
        log.info("job %s: installed %s (was %s)%s", job.job_id, target,
                 f"v{job.from_version}" if job.from_version else "nothing",
                 f": {job.reason}" if job.reason not in ("", "healthy", "installed") else "", extra=extra)
    elif job.status.terminal:
        level = logging.INFO if job.status is JobStatus.CANCELED else logging.WARNING
        log.log(level, "job %s: %s of %s: %s%s", job.job_id, job.status.value, target, job.reason,
                f" ({job.message[:300]})" if job.message else "", extra=extra)
    else:
        log.debug("job %s: %s %s", job.job_id, job.step.value or job.status.value, target, extra=extra)


def read_status(state_dir: str | Path) -> dict[str, Any]:
    """What the store and job log say, without loading any model (cheap; used by the CLI)."""
    root = Path(state_dir)
    if not (root / "objects").is_dir() and not (root / "current").exists():
        raise StoreError(f"{root} is not an agent state directory")
    from .store import POINTER

    pointer_error = ""
    try:
        state = StoreState.from_bytes((root / POINTER).read_bytes())
    except FileNotFoundError:
        state = StoreState()
    except (StoreError, OSError) as exc:  # the agent rebuilds it when it next starts (Store.repair_pointer)
        state, pointer_error = StoreState(), str(exc)
    jobs = JobLog(root / "jobs").load_all() if (root / "jobs").is_dir() else []
    last = jobs[-1] if jobs else None
    extra = {"pointer_error": pointer_error} if pointer_error else {}
    return {**extra,
        "state_dir": str(root),
        "agent_version": AGENT_VERSION,
        "active": state.active.to_dict() if state.active else None,
        "previous": state.previous.to_dict() if state.previous else None,
        "generation": state.generation,
        "known_bad": list(state.bad),
        "tuf_root_version": tuf_mode.root_version(root),
        "job": replace(last, history=last.history[-10:]).to_dict() if last else None,
    }


def _io_failure(exc: OSError, what: str = "") -> tuple[str, str]:
    """A named reason for an I/O error: ``disk_full`` (ENOSPC, EDQUOT), ``read_only`` (EROFS) or ``io_error``."""
    reason = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EROFS: "read_only"}.get(exc.errno or 0,
                                                                                                 "io_error")
    where = f"{what}: " if what else ""
    detail = f"{exc.strerror or exc}: {exc.filename or ''}".strip(": ")
    if reason == "disk_full":
        detail = f"no space left on the device ({detail}); the active version keeps serving"
    return reason, where + detail
