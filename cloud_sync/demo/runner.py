"""``edgefleet demo``: the whole loop on this machine, with real components, stage by stage.

data -> train a deliberately weak v1, the compiler's example CNN -> compile (its backbone pruned +
int8, its last Dense kept as a float trainable head; signed, with its report) -> Mosquitto ->
coordinator + N device processes -> staged rollout of v1 -> devices predict on their local data
(telemetry); a flower-superlink, and a flower-supernode supervised by each device's agent; the group
opted in to retraining on drift -> drift injected on some devices, alert -> the coordinator starts
``edgefleet federated run --deploy`` by itself: rounds on the devices' own samples (recorded in the
registry) in which they train only the head, in numpy on their backbone's features; the aggregated head
on v1's backbone (nothing recompiled), gated on the holdout, signed as v2 and rolled out in stages as a
head-only update -> a deliberately bad v3 (a head trained on shuffled labels, deployed without the gate)
rolled back by quality probation on the canary, the rollout halted -> summary (also ``summary.json``).

Every process it starts is stopped on the way out, also on Ctrl-C or SIGTERM; see :mod:`.procs`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from edgefleet.errors import ConfigError, EdgefleetError, SyncError

from ..broker import find_mosquitto, free_port
from . import procs
from .device import BATCH, CONTROL, STATUS, agent_toml, read_json, write_json
from .scenario import CNN_PREPROCESSING, LABELS, Scenario, drifted_devices, make_scenario
from .status import local_accuracy, stage_names, status_line, summary_rows

DRIFT = {"gain": 0.5, "offset": 6.0}
GROUP = "demo"


@dataclass(frozen=True)
class DemoConfig:
    devices: int = 3
    workdir: str | None = None  # None: a temporary directory, removed at the end unless keep
    keep: bool = False
    broker: str | None = None  # None: start our own Mosquitto on a free loopback port
    rounds: int = 2
    local_epochs: int = 5
    bad_candidate: bool = True  # after v2: a bad v3 that quality probation rolls back on the canary
    seed: int = 0
    status_interval: float = 2.0
    drift_timeout: float = 45.0
    rollout_timeout: float = 180.0

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= 20:
            raise ConfigError(f"--devices must be within 1..20 (each device is a process here), got {self.devices}")
        if self.rounds < 1 or self.local_epochs < 1:
            raise ConfigError("--rounds and --local-epochs must be >= 1")


def own_head_gain(bundle: str | Path, agent_dir: Path, x: np.ndarray, y: np.ndarray) -> dict[str, float] | None:
    """A device serving its personal head of ``bundle``: the accuracy of that head and of the bundle's global head
    on the device's clean sensor inputs (both through ``edgefleet.load``, the bundle's own preprocessing)."""
    import edgefleet
    from edgefleet.device_agent.personal import PersonalHeads

    from ..federated.head_trainer import evaluate_head

    with edgefleet.load(bundle, threads=1) as m:
        own = PersonalHeads(agent_dir).for_manifest(m.manifest)
        if own is None or m.head is None:
            return None
        feats = m.features(np.asarray(x, np.float32))
        return {"global": evaluate_head(m.head, feats, y)[1], "personal": evaluate_head(own.head, feats, y)[1]}

class Demo:
    def __init__(self, config: DemoConfig, out: Callable[[str], None] | None = None) -> None:
        self.cfg = config
        self._out = out or (lambda s: print(s, flush=True))
        self._lock = threading.Lock()
        self.t0 = time.monotonic()
        self.stages: dict[str, float] = {}
        self.step = 0
        self.workdir = Path()
        self.children: procs.Children | None = None
        self.superlink: Any = None
        self.api = ""
        self.token = secrets.token_hex(16)
        self.fleet = f"demo-{secrets.token_hex(3)}"
        self.device_dirs: dict[str, Path] = {}
        self.device_procs: dict[str, procs.Child] = {}
        self.controls: dict[str, dict[str, Any]] = {}
        self.coordinator: procs.Child | None = None
        self.stage_labels: list[str] = []
        self._status_stop = threading.Event()
        self._status_thread: threading.Thread | None = None
        self.rounds_shown = 0
        self.summary: dict[str, Any] = {}

    # -- output -------------------------------------------------------------------------------
    def say(self, text: str = "") -> None:
        with self._lock:
            self._out(text)

    @contextlib.contextmanager
    def stage(self, name: str, title: str) -> Iterator[None]:
        self.step += 1
        self.say(f"\n==> [{self.step}] {title}")
        t = time.monotonic()
        try:
            yield
        finally:
            self.stages[name] = round(time.monotonic() - t, 2)

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """TensorFlow's C++ start-up chatter goes to logs/orchestrator.log instead of the terminal."""
        log = self.workdir / "logs" / "orchestrator.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        sys.stderr.flush()
        saved = os.dup(2)
        with open(log, "ab") as fh:
            os.dup2(fh.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)

    # -- the whole run ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.preflight()
        self.workdir = self._make_workdir()
        temp = self.cfg.workdir is None
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM,)}
        signal.signal(signal.SIGTERM, _raise_interrupt)
        os.environ[procs.MARK] = str(self.workdir)  # inherited by every process started from here
        watchdog = procs.start_watchdog(str(self.workdir))  # sweeps them if this process is killed with SIGKILL
        self.children = procs.Children(self.workdir, self.workdir / "logs")
        outcome = "failed"
        try:
            self.say(f"edgefleet demo: {self.cfg.devices} device(s), fleet {self.fleet}, work in {self.workdir}")
            self._run()
            outcome = "ok"
            return self.summary
        except KeyboardInterrupt:
            outcome = "interrupted"
            raise
        finally:
            self.cleanup()
            watchdog.terminate()
            watchdog.wait()
            for s, h in old.items():
                signal.signal(s, h)
            os.environ.pop(procs.MARK, None)
            if outcome == "failed":  # keep what explains it, temporary or not
                self.say(f"the logs are in {self.workdir / 'logs'}")
            elif temp and not self.cfg.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)
                if outcome == "ok":
                    self.say(f"(work directory {self.workdir} removed; --keep keeps it)")
            elif outcome == "ok":
                self.say(f"everything is in {self.workdir} (summary.json, logs/, bundles/, devices/)")

    def preflight(self) -> None:
        """Fail before doing anything when a piece cannot start, saying what to install."""
        procs.check_modules([("tensorflow", "compiler"), ("sklearn", "compiler"), ("paho", "device"),
                             ("fastapi", "cloud"), ("sqlalchemy", "cloud"), ("httpx", "cloud"), ("uvicorn", "cloud"),
                             ("flwr", "federated")])
        procs.check_flower_tools()
        if self.cfg.broker:
            procs.check_broker(self.cfg.broker)
        else:
            self.mosquitto = find_mosquitto()

    def _make_workdir(self) -> Path:
        if self.cfg.workdir is None:
            return Path(tempfile.mkdtemp(prefix="edgefleet-demo-")).resolve()
        p = Path(self.cfg.workdir).resolve()
        if p.exists() and any(p.iterdir()):
            raise ConfigError(f"--workdir {p} is not empty: give a new or empty directory")
        p.mkdir(parents=True, exist_ok=True)
        return p

    def _run(self) -> None:
        wd = self.workdir
        with self.stage("data", "data: digits split into a weak cloud set, a holdout, a test set and device partitions"):
            scen = make_scenario(self.cfg.devices, seed=self.cfg.seed)
            paths = scen.write(wd / "data")
            self._describe(scen)
        with self.stage("train", "train the compiler's example digits CNN on the cloud's small set"):
            src, float_acc = self.train(scen)
        with self.stage("compile", "compile v1: the backbone pruned 50% + int8 TFLite, the last Dense a float "
                                   "trainable head; signed, with its report"):
            keys = self.keys()
            v1, v1_archive = self.compile_v1(src, paths, keys[0])
        with self.stage("broker", "MQTT broker"):
            url = self.broker()
        plural = "es" if self.cfg.devices != 1 else ""
        with self.stage("fleet", f"start the coordinator, the Flower SuperLink and {self.cfg.devices} device "
                                 f"process{plural}"):
            self.start_fleet(url, scen, keys[1])
        self.start_status()
        with self.stage("rollout_v1", "staged rollout of v1 (canary, then waves)"):
            r1 = self.rollout(v1_archive, "1")
        with self.stage("serve", "devices predict on their local sensor data; telemetry flows to the coordinator"):
            self.serve()
        with self.stage("federation", "opt the group in to federated retraining when its devices report drift"):
            self.retrain_on_drift(paths, v1, keys[0])
        with self.stage("drift", "inject sensor drift on some devices and wait for the drift alert"):
            alerts = self.drift()
        with self.stage("federated", f"the drift alert starts a federated run: {self.cfg.rounds} round(s) with Flower "
                                     "on the devices' own samples"):
            run = self.follow_run(until="aggregated")
        bytes_before = self.device_stats()
        with self.stage("compile_v2", "the run puts the aggregated head on v1's backbone (nothing recompiled: "
                                      "pruning and int8 stay), gates it on the holdout with the SDK, signs v2 and "
                                      "deploys it"):
            run = self.follow_run(run["id"], until="final")
        gate = run["result"].get("gate") or {}
        dep = run["result"].get("deployment") or {}
        rollouts = [r1]
        final_version = "1"
        if gate.get("promoted") and dep.get("id"):
            from edgefleet.bundle import write_archive

            v2_archive = write_archive(Path(gate["bundle"]), wd / "bundles" / f"digits-v{gate['version']}.efb")
            with self.stage("rollout_v2", f"staged rollout of v{gate['version']} (canary, then waves)"):
                rollouts.append(self.rollout(v2_archive, str(gate["version"]), dep["id"], bytes_before))
            final_version = str(gate["version"])
            self.settle(final_version)
        bad: dict[str, Any] | None = None
        if self.cfg.bad_candidate and final_version != "1":
            with self.stage("bad_candidate", f"a bad candidate: v{int(final_version) + 1} is v{final_version} with a "
                                             "head trained on shuffled labels, deployed with the gate skipped; "
                                             "quality probation on the canary compares it with "
                                             f"v{final_version} on live inputs, without labels"):
                bad = self.bad_candidate(scen, Path(gate["bundle"]), final_version, keys[0])
        self.stop_status()
        self.finish(scen, v1, gate, float_acc, rollouts, alerts, run, final_version, bad)

    # -- steps ----------------------------------------------------------------------------------
    def _describe(self, scen: Scenario) -> None:
        self.say(f"  cloud: {len(scen.cloud_y)} labelled digits of classes 0-{scen.known_classes - 1} only; "
                 f"holdout {len(scen.gate_y)}, test {len(scen.test_y)} (all classes)")
        for d in scen.devices:
            self.say(f"  {d.device_id}: mostly classes {','.join(map(str, d.classes))}; {len(d.sample_y)} labelled "
                     f"samples, {len(d.sensor_y)} sensor inputs (never leave the device)")

    def train(self, scen: Scenario) -> tuple[Path, float]:
        src = self.workdir / "model" / "digits-v1.keras"
        src.parent.mkdir(parents=True, exist_ok=True)
        with self.quiet():
            import keras

            from edgefleet.compiler.examples import digits_cnn
            from edgefleet.compiler.passes._train import set_seed

            set_seed(self.cfg.seed)
            model = digits_cnn()
            model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                          metrics=["accuracy"])
            model.fit((scen.cloud_x / 16.0).reshape(-1, 8, 8, 1), scen.cloud_y, epochs=30, batch_size=16, verbose=0)
            _, acc = model.evaluate((scen.test_x / 16.0).reshape(-1, 8, 8, 1), scen.test_y, verbose=0)
            model.save(src)
        (src.parent / (src.name + ".edgefleet.json")).write_text(
            json.dumps({"preprocessing": CNN_PREPROCESSING, "labels": LABELS}, indent=2) + "\n")
        self.say(f"  {src.relative_to(self.workdir)}: conv 32 -> conv 64 -> pool -> dense 256 -> dense 10 "
                 f"({model.count_params():,} parameters); float accuracy on the test set {100 * acc:.1f}% "
                 f"(it never saw classes {scen.known_classes}-9)")
        return src, float(acc)

    def keys(self) -> tuple[Path, Path]:
        from edgefleet.keys import generate_keypair

        priv, pub = generate_keypair(self.workdir / "keys", "edgefleet")
        self.say(f"  signing key {priv.relative_to(self.workdir)} (devices trust {pub.name})")
        return priv, pub

    def compile_v1(self, src: Path, paths: Mapping[str, Path], key: Path) -> tuple[Path, Path]:
        from edgefleet.compiler import CompileConfig, compile_model

        cfg = CompileConfig.from_dict({
            "quantize": "int8", "format": "tflite", "seed": self.cfg.seed,
            "prune": {"sparsity": 0.5, "epochs": 2}, "head": {"layers": 1},
            "data": {"train": str(paths["cloud"]), "calibration": str(paths["cloud"]), "eval": str(paths["test"])},
            "output": {"name": "digits", "version": "1", "key": str(key), "archive": True, "overwrite": True},
        }, "demo recipe")
        with self.quiet():
            res = compile_model(src, self.workdir / "bundles" / "digits-v1", cfg)
        for v in res.variants:
            score = "-" if v.score is None else f"{v.score.value:.1f}%"
            self.say(f"  {v.name:<16} {v.size:>8,} bytes  accuracy {score}{'  <- chosen' if v.chosen else ''}")
        archive = res.bundle_path.with_suffix(".efb")
        if not archive.exists():
            archive = res.bundle_path.parent / (res.bundle_path.name + ".efb")
        self.say(f"  bundle {res.bundle_path.relative_to(self.workdir)} ({archive.stat().st_size:,} B archive), "
                 f"report {res.report_dir.relative_to(self.workdir) if res.report_dir else '-'}/report.md")
        return res.bundle_path, archive

    def broker(self) -> str:
        assert self.children is not None
        if self.cfg.broker:
            self.say(f"  using the broker at {self.cfg.broker} (--broker)")
            return self.cfg.broker
        child, url = procs.start_mosquitto(self.children, self.mosquitto, self.workdir / "broker")
        self.say(f"  {self.mosquitto} on {url} (pid {child.pid})")
        return url

    def start_fleet(self, url: str, scen: Scenario, pub: Path) -> None:
        assert self.children is not None
        for attempt in range(2):
            port = free_port()
            self.coordinator = self.children.spawn("coordinator", [
                sys.executable, "-m", "edgefleet.cli", "cloud", "serve", "--broker", url,
                "--db", f"sqlite:///{self.workdir / 'coordinator' / 'registry.db'}", "--fleet", self.fleet,
                "--api-port", str(port), "--federated-dir", str(self.workdir / "federated"),
                # the operator key signs rollback orders; devices refuse unsigned ones
                "--signing-key", str(pub.with_suffix(".key")),
                # deployments are accepted only of bundles signed by the fleet key (v1, and v2 from the loop)
                "--trust", str(pub)],
                extra_env={"EDGEFLEET_TOKEN": self.token},
                # SIGINT: uvicorn re-raises a SIGTERM with the default handler after its own shutdown, so
                # `cloud serve` would die before stopping the federated runs it started
                stop_signal=signal.SIGINT)
            (self.workdir / "coordinator").mkdir(exist_ok=True)
            self.api = f"http://127.0.0.1:{port}"
            if self._wait_api(self.coordinator):
                break
            tail = self.coordinator.log_tail()
            self.children.stop(self.coordinator)
            if attempt == 1 or "in use" not in tail:
                raise SyncError(f"the coordinator did not start (API port {port}): {tail[-800:] or 'no output'}")
        assert self.coordinator is not None
        self.say(f"  coordinator: edgefleet cloud serve, API {self.api} (pid {self.coordinator.pid})")
        addr = self.start_superlink()
        for d in scen.devices:
            ddir = self.workdir / "devices" / d.device_id
            ddir.mkdir(parents=True, exist_ok=True)
            d.save(ddir / "data.npz")
            (ddir / "agent.toml").write_text(agent_toml(ddir / "agent", d.device_id, pub, addr, free_port()))
            self.controls[d.device_id] = {"drift": None}
            write_json(ddir / CONTROL, self.controls[d.device_id])
            self.device_dirs[d.device_id] = ddir
            self.device_procs[d.device_id] = self.children.spawn(d.device_id, [
                sys.executable, "-m", "edgefleet.cloud_sync.demo.device", "--dir", str(ddir),
                "--config", str(ddir / "agent.toml"), "--data", str(ddir / "data.npz"), "--broker", url,
                "--fleet", self.fleet, "--group", GROUP])
        self.say(f"  devices: {', '.join(f'{k} (pid {c.pid})' for k, c in self.device_procs.items())}")
        n = len(scen.devices)
        self.wait(lambda: sum(1 for x in self.get("/v1/devices") if x["online"]) >= n, 90,
                  f"{n} devices online at the coordinator")
        self.say(f"  {n}/{n} devices registered and online (no model yet)")
        # Groups are assigned by the operator, never taken from what a device announces (issue 13): the
        # devices registered in 'default'; the operator puts them into the demo's group.
        for d in scen.devices:
            self._request("PATCH", f"/v1/devices/{d.device_id}", json={"group": GROUP})
        self.say(f"  the operator assigned them to group {GROUP} (PATCH /v1/devices/ID)")
        self.wait(lambda: all((self.device_status(k) or {}).get("node", {}).get("running") for k in self.device_dirs),
                  30, "a flower-supernode on every device")
        self.say("  each agent supervises its own flower-supernode ([federated] in its agent.toml), which reads only "
                 "that agent's samples.db")
        self.say(f"  (in another terminal while it runs: EDGEFLEET_TOKEN={self.token} edgefleet fleet devices "
                 f"--api {self.api})")

    def _wait_api(self, child: procs.Child, timeout: float = 60.0) -> bool:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                return False
            try:
                r = httpx.get(self.api + "/healthz", timeout=1.0)
                if r.status_code == 200 and r.json().get("broker_connected"):
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return False

    def rollout(self, archive: Path, version: str, dep_id: str | None = None,
                before: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, Any]:
        """Start a staged rollout of ``archive`` (or follow deployment ``dep_id``) until it completes."""
        before = before if before is not None else self.device_stats()
        dep = self.post_deployment(archive) if dep_id is None else self.get(f"/v1/deployments/{dep_id}")
        ends = _stage_ends(len(self.device_dirs))
        self.stage_labels = stage_names(len(ends))
        self.say(f"  deployment {dep['id']}: digits v{version} to {dep['targets']} device(s) of group {GROUP}; stages "
                 + ", ".join(f"{n} ({e} device{'s' if e > 1 else ''})" for n, e in zip(self.stage_labels, ends)))
        stage = -1
        deadline = time.monotonic() + self.cfg.rollout_timeout
        while True:
            self.check_children()
            d = self.get(f"/v1/deployments/{dep['id']}")
            for st in range(stage + 1, int(d["stage"]) + 1):
                name = self.stage_labels[st] if st < len(self.stage_labels) else str(st)
                self.say(f"  -> {name} dispatched ({ends[st] if st < len(ends) else '?'} device(s) in total)")
            stage = max(stage, int(d["stage"]))
            if d["state"] in ("completed", "halted", "rolled_back"):
                break
            if time.monotonic() > deadline:
                raise SyncError(f"the rollout of v{version} did not finish within {self.cfg.rollout_timeout:.0f}s "
                                f"(state {d['state']}, {d['done']}/{d['targets']} done): see {self.workdir}/logs/")
            time.sleep(0.3)
        seconds = max(0.0, float(d.get("updated", 0)) - float(d.get("created", 0))) or 0.0
        if d["state"] != "completed":
            raise SyncError(f"the rollout of v{version} ended {d['state']}: {d.get('reason')}; jobs: "
                            + ", ".join(f"{j['device_id']} {j['status']} {j['reason']}" for j in d["jobs"]))
        self.wait(lambda: all((self.device_status(k) or {}).get("active_version") == version
                              for k in self.device_dirs), 15, f"every device serving v{version}")
        time.sleep(0.6)  # one more status write, so the byte counters are final
        after = self.device_stats()
        got = {k: after[k]["bytes_received"] - before.get(k, {}).get("bytes_received", 0) for k in after}
        deltas = sum(after[k]["delta_used"] - before.get(k, {}).get("delta_used", 0) for k in after)
        heads = sum(after[k]["head_updates_used"] - before.get(k, {}).get("head_updates_used", 0) for k in after)
        per_stage: dict[int, int] = {}
        for j in d["jobs"]:
            if j["action"] == "install":
                per_stage[int(j["stage"])] = per_stage.get(int(j["stage"]), 0) + 1
        stages, total = [], 0
        for st in sorted(per_stage):
            total += per_stage[st]
            stages.append({"name": self.stage_labels[st] if st < len(self.stage_labels) else str(st), "devices": total})
        how = "head-only update" if heads else "bsdiff delta" if deltas else "full bundle"
        self.say(f"  v{version} on {d['done']}/{d['targets']} devices in {seconds:.1f}s; {sum(got.values()):,} bytes "
                 f"shipped ({how}; archive {archive.stat().st_size:,} B)")
        return {"version": version, "deployment": d["id"], "seconds": round(seconds, 2), "stages": stages,
                "bytes": int(sum(got.values())), "bytes_per_device": got, "deltas": int(deltas),
                "head_updates": int(heads), "archive_bytes": archive.stat().st_size, "state": d["state"]}

    def serve(self) -> None:
        n = len(self.device_dirs)
        self.wait(lambda: sum(int(r["predictions"]) for r in self.get("/v1/telemetry")["rows"]) >= 12 * n, 40,
                  "telemetry from the devices")
        tel = self.get("/v1/telemetry")
        for r in tel["rows"]:
            if r["kind"] == "metrics" and r["version"]:
                self.say(f"  telemetry at the coordinator, group {r['group_name']} v{r['version']}: {r['records']} "
                         f"records, {r['predictions']:,} predict() calls of {BATCH} inputs, {r['errors']} errors, "
                         f"{r['invalid']} invalid inputs")
        for k in sorted(self.device_dirs):
            a = local_accuracy(self.device_status(k))
            self.say(f"  {k}: accuracy on its own sensor data {'-' if a is None else f'{100 * a:.1f}%'}")

    def drift(self) -> list[dict[str, Any]]:
        targets = drifted_devices(sorted(self.device_dirs))
        since = time.time()
        for k in targets:
            self.control(k, drift=dict(DRIFT))
        self.say(f"  {', '.join(targets)}: sensor gain {DRIFT['gain']}, offset +{DRIFT['offset']} (inputs shifted and "
                 "scaled); devices compare live inputs with the training statistics in the manifest (PSI)")

        def alerts() -> list[dict[str, Any]]:
            got = [a for a in self.get("/v1/telemetry")["alerts"]
                   if a["kind"] == "drift" and a["device_id"] in targets and float(a["ts"]) >= since - 1]
            return got if {a["device_id"] for a in got} >= set(targets) else []

        found = self.wait(alerts, self.cfg.drift_timeout, f"a drift alert from {', '.join(targets)}")
        for a in sorted(found, key=lambda a: a["ts"]):
            d = a["data"]
            self.say(f"  DRIFT ALERT from {a['device_id']} (v{a['version']}): PSI {d.get('psi_max', 0):.2f} over the "
                     f"threshold {d.get('threshold', 0):g} (worst on pixel {d.get('worst_feature')}) in a window of "
                     f"{d.get('count')} inputs")
        for k in targets:
            self.control(k, drift=None)
        self.say(f"  sensors recalibrated on {', '.join(targets)} (drift injection off); the fleet retrains next")
        return [{"device_id": a["device_id"], "version": a["version"], "psi_max": a["data"].get("psi_max"),
                 "ts": a["ts"]} for a in found]

    def start_superlink(self) -> str:
        """The coordinator side's supervised flower-superlink (another port if the one picked was taken)."""
        from edgefleet.cloud_sync.federated.runner import SuperLinkConfig, start_ready_superlink

        self.superlink = start_ready_superlink(lambda attempt: SuperLinkConfig(
            port=free_port(), log_path=str(self.workdir / "logs" / f"superlink{attempt}.log")), attempts=3)
        self.say(f"  flower-superlink on {self.superlink.address} (pid {self.superlink.pid})")
        return str(self.superlink.address)

    def retrain_on_drift(self, paths: Mapping[str, Path], v1: Path, key: Path) -> None:
        """Opt the group in to retraining on drift (``edgefleet fleet retrain``) with the options of the
        ``federated run`` the coordinator will start: v1 has a trainable head, so the devices train that head
        (Adam, in numpy on their backbone's features) and no Keras source is needed."""
        assert self.superlink is not None
        n = len(self.device_dirs)
        run_args = ["--superlink", self.superlink.address, "--min-nodes", str(n), "--round-timeout", "90",
                    "--local-epochs", str(self.cfg.local_epochs), "--optimizer", "adam", "--learning-rate", "0.01",
                    "--batch-size", "16", "--deployed", str(v1), "--holdout", str(paths["holdout"]), "--key", str(key),
                    "--margin", "0.02", "--personalize", "--deploy", "--canary", "5%", "--waves", "50%,100%",
                    "--max-failure", "0%",
                    "--timeout", str(self.cfg.rounds * 150 + 120)]
        body = {"on_drift": True, "min_devices": 1, "window_s": 3600.0, "cooldown_s": 3600.0,
                "rounds": self.cfg.rounds, "strategy": "fedavg", "args": run_args}
        self._request("PUT", f"/v1/retrain/{GROUP}", json=body)
        shown = " ".join(a if not a.startswith("/") else Path(a).name for a in run_args)
        self.say(f"  edgefleet fleet retrain --group {GROUP} --on-drift on --rounds {self.cfg.rounds} -- {shown}")

    def follow_run(self, run_id: str | None = None, until: str = "final") -> dict[str, Any]:
        """Follow the federated run the drift alert started (through the API) until its rounds are
        aggregated or it is over; prints each round once."""
        if run_id is None:
            runs = self.wait(lambda: [r for r in self.get("/v1/federated/runs") if r["group"] == GROUP
                                      and r["trigger"] == "drift"], 30, "the coordinator to start a federated run")
            run = runs[0]
            self.say(f"  the coordinator started federated run {run['id']}: {run['reason']}")
            self.say(f"  (its output: {self.workdir / 'federated' / run['id'] / 'run.log'})")
            run_id = run["id"]
        deadline = time.monotonic() + self.cfg.rounds * 150 + 180
        while True:
            self.check_children()
            run = self.get(f"/v1/federated/runs/{run_id}")
            for r in run["round_metrics"][self.rounds_shown:]:
                self.rounds_shown += 1
                parts = [f"  round {r['round']}: {r['participants']} device(s) trained on {r['examples']} samples"]
                if r.get("train_accuracy") is not None:
                    parts.append(f"local train acc {r['train_accuracy']:.3f}")
                if r.get("central_accuracy") is not None:
                    parts.append(f"coordinator holdout acc {r['central_accuracy']:.3f}")
                parts.append(f"{r.get('seconds') or 0:.1f}s")
                self.say(", ".join(parts))
            status = str(run["status"])
            if status in ("failed", "stopped"):  # its reason is the run's error
                log = self.workdir / "federated" / run_id / "run.log"
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""
                raise SyncError(f"federated run {run_id} {status}: {run.get('error') or '?'}\n{tail}")
            if status in ("promoted", "deployed", "finished") or (until == "aggregated" and status == "aggregated"):
                break
            if time.monotonic() > deadline:
                raise SyncError(f"federated run {run_id} is still {status}; see {self.workdir / 'federated' / run_id}")
            time.sleep(0.5)
        gate = run["result"].get("gate")
        if gate and until != "aggregated":  # (once: in the stage that gates)
            verdict = f"signed as v{gate['version']}" if gate["promoted"] else "not promoted: v1 stays"
            self.say(f"  gate on the coordinator's holdout: {gate['reason']}: {verdict}")
        if run["result"].get("personalization") and until != "aggregated":
            from ..federated.records import personalization_lines

            for line in personalization_lines(run["result"]["personalization"]):
                self.say("  " + line)
        dep = run["result"].get("deployment")
        if dep:
            self.say(f"  the run started deployment {dep['id']} of v{dep['version']} to group {dep['group']}")
        return dict(run)

    def bad_candidate(self, scen: Scenario, good: Path, version: str, key: Path) -> dict[str, Any]:
        """A deliberately bad next version: ``good`` (the promoted bundle) with a head trained on the holdout's
        labels shuffled, signed with the fleet key and deployed without the gate, the install jobs carrying the
        quality policy ``mode=enforce``. The canary device compares it with the version it replaces on its live
        inputs (no labels) and rolls it back; the failed canary halts the rollout."""
        import numpy as np

        import edgefleet
        from edgefleet.cloud_sync.coordinator.client import deploy_bundle
        from edgefleet.cloud_sync.federated.head_trainer import HeadTrainConfig, train_head
        from edgefleet.headupdate import update_head
        from edgefleet.keys import load_private_key

        bad = str(int(version) + 1)
        rng = np.random.default_rng(self.cfg.seed)
        with edgefleet.load(good) as m:
            assert m.head is not None
            res = train_head(m.head, m.features(scen.gate_x), rng.permutation(scen.gate_y),
                             HeadTrainConfig(epochs=40, learning_rate=0.01, optimizer="adam", seed=self.cfg.seed))
            test_feats = m.features(scen.test_x)
            bad_acc = float(np.mean(res.head.forward(test_feats).argmax(1) == scen.test_y))
            good_acc = float(np.mean(m.head.forward(test_feats).argmax(1) == scen.test_y))
        _, archive = update_head(good, res.head, self.workdir / "bundles" / f"digits-v{bad}", version=bad,
                                 private_key=load_private_key(key), archive=True,
                                 lineage={"note": "deliberately bad: a head trained on shuffled labels, no gate"})
        assert archive is not None
        self.say(f"  v{bad}: accuracy on the test set {100 * bad_acc:.1f}% (v{version}: {100 * good_acc:.1f}%); signed "
                 "with the fleet key, so every check but quality passes")
        before = self.device_stats()
        dep = deploy_bundle(self.api, self.token, archive, GROUP, canary="5%", waves="50%,100%", max_failure="0%",
                            quality="mode=enforce")
        self.say(f"  deployment {dep['id']}: digits v{bad} to {dep['targets']} device(s) of group {GROUP}, quality "
                 f"policy mode=enforce: probation runs v{version} beside v{bad} on the same live inputs")
        deadline = time.monotonic() + self.cfg.rollout_timeout
        while True:
            self.check_children()
            d = self.get(f"/v1/deployments/{dep['id']}")
            if d["state"] not in ("running", "paused"):
                break
            if time.monotonic() > deadline:
                raise SyncError(f"the rollout of v{bad} is still {d['state']} after {self.cfg.rollout_timeout:.0f}s")
            time.sleep(0.3)
        jobs = [j for j in d["jobs"] if j["action"] == "install"]
        rolled = [j for j in jobs if j["status"] == "ROLLED_BACK"]
        for j in rolled:
            self.say(f"  {j['device_id']} (canary) rolled v{bad} back on probation: {j['reason']}: {j['message']}")
        self.say(f"  deployment {d['id']} {d['state']}" + (f": {d['reason']}" if d.get("reason") else "")
                 + f"; {len(jobs)} of {d['targets']} device(s) were sent v{bad}")
        self.wait(lambda: all((self.device_status(k) or {}).get("active_version") == version
                              for k in self.device_dirs), 30, f"every device serving v{version}")
        after = self.device_stats()
        return {"version": bad, "deployment": d["id"], "state": d["state"], "reason": d.get("reason"),
                "test_accuracy": bad_acc, "replaced_accuracy": good_acc, "targets": d["targets"],
                "sent_to": [j["device_id"] for j in jobs],
                "rolled_back": [{"device_id": j["device_id"], "reason": j["reason"], "message": j["message"]}
                                for j in rolled],
                "head_updates": sum(after[k]["head_updates_used"] - before[k]["head_updates_used"] for k in after),
                "bytes": sum(after[k]["bytes_received"] - before[k]["bytes_received"] for k in after)}

    def settle(self, version: str, seconds: float = 3.0) -> None:
        """Let the devices predict with the final version for a moment (their local accuracy)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done = [((self.device_status(k) or {}).get("counts") or {}).get(version, {}).get("predictions", 0) >= 100
                    for k in self.device_dirs]
            if all(done):
                break
            time.sleep(0.5)
        time.sleep(min(seconds, 1.0))

    def finish(self, scen: Scenario, v1: Path, gate: Mapping[str, Any], float_acc: float,
               rollouts: list[dict[str, Any]], alerts: list[dict[str, Any]], run: Mapping[str, Any],
               final_version: str, bad: Mapping[str, Any] | None = None) -> None:
        from edgefleet.cloud_sync.federated.loop import bundle_accuracy

        before = bundle_accuracy(v1, scen.test_x, scen.test_y)
        after = bundle_accuracy(gate["bundle"], scen.test_x, scen.test_y) if gate.get("promoted") else before
        devices = {d["device_id"]: d for d in self.get("/v1/devices")}
        alerted = {a["device_id"] for a in alerts}
        results = []
        for d in scen.devices:
            st = self.device_status(d.device_id) or {}
            results.append({
                "device_id": d.device_id, "version": devices.get(d.device_id, {}).get("active_version"),
                "head": st.get("head"),
                "own_head": own_head_gain(gate["bundle"], self.device_dirs[d.device_id] / "agent", d.sensor_x,
                                          d.sensor_y) if st.get("head") == "personal" and gate.get("promoted") else None,
                "online": devices.get(d.device_id, {}).get("online"), "classes": list(d.classes),
                "local_accuracy_before": local_accuracy(st, "1"),
                "local_accuracy_after": local_accuracy(st, final_version),
                "bytes_received": int((st.get("sync") or {}).get("bytes_received", 0)),
                "samples": st.get("samples"), "drift_alert": d.device_id in alerted,
            })
        self.summary = {
            "devices": len(scen.devices), "fleet": self.fleet, "workdir": str(self.workdir),
            "broker": self.cfg.broker or "own mosquitto", "first_version": "1", "final_version": final_version,
            "accuracy_float_v1": float_acc, "accuracy_before": before, "accuracy_after": after,
            "test_samples": int(len(scen.test_y)),
            "all_on_final": all(r["version"] == final_version for r in results),
            "bytes_shipped": int(sum(r["bytes"] for r in rollouts)),
            "rollouts": rollouts, "stages": dict(self.stages), "drift_alerts": alerts, "device_results": results,
            "federated": {"run_id": run.get("id"), "trigger": run.get("trigger"), "reason": run.get("reason"),
                          "status": run.get("status"), "flower_run_id": run.get("flower_run_id"),
                          "rounds": run.get("round_metrics", []), "gate": dict(gate),
                          "deployment": (run.get("result") or {}).get("deployment"),
                          "personalization": (run.get("result") or {}).get("personalization")},
            "bad_candidate": dict(bad) if bad is not None else None,
            "total_seconds": round(time.monotonic() - self.t0, 2),
        }
        write_json(self.workdir / "summary.json", self.summary)
        self.print_summary()

    def print_summary(self) -> None:
        rows = summary_rows(self.summary)
        s = self.summary
        first, final = f"v{s['first_version']} (before)", f"v{s['final_version']} (after)"
        tables = [
            (["", first, final], rows["head"]),
            (["rollout", "stages (devices)", "time", "bytes shipped", "transfer"], rows["rollouts"]),
            (["device", "version", "mostly classes", f"local acc v{s['first_version']}",
              f"local acc v{s['final_version']}", "bytes received", "drift alert"], rows["devices"]),
            (["stage", "time"], rows["stages"]),
        ]
        self.say("\n==> summary")
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:  # pragma: no cover - rich comes with the cloud extra
            for headers, table in tables:
                for row in [headers] + table:
                    self.say("  " + " | ".join(row))
        else:
            console = Console(width=max(100, shutil.get_terminal_size((120, 20)).columns))
            with self._lock:
                for headers, table in tables:
                    t = Table(*headers)
                    for r in table:
                        t.add_row(*r)
                    console.print(t)
        verdict = "every device" if s["all_on_final"] else "NOT every device"
        self.say(f"accuracy {100 * s['accuracy_before']:.1f}% -> {100 * s['accuracy_after']:.1f}% on "
                 f"{s['test_samples']} held-out digits; {verdict} on v{s['final_version']}; "
                 f"{s['bytes_shipped']:,} bytes shipped; {s['total_seconds']:.0f}s in all")
        for d in s.get("device_results", []):
            own = d.get("own_head")
            if own:
                self.say(f"{d['device_id']} serves its own head of v{s['final_version']} (personalisation): "
                         f"{100 * own['personal']:.1f}% on its sensor inputs, where v{s['final_version']}'s global "
                         f"head scores {100 * own['global']:.1f}%")
        bad = s.get("bad_candidate")
        if bad:
            who = ", ".join(r["device_id"] for r in bad["rolled_back"]) or "no device"
            self.say(f"bad candidate v{bad['version']} ({100 * bad['test_accuracy']:.1f}% on the test set): rolled back "
                     f"by quality probation on {who}; its rollout {bad['state']} after {len(bad['sent_to'])} of "
                     f"{bad['targets']} device(s)")
        self.say(f"summary: {self.workdir / 'summary.json'}")

    # -- live status -------------------------------------------------------------------------------
    def start_status(self) -> None:
        self._status_thread = threading.Thread(target=self._status_loop, name="demo-status", daemon=True)
        self._status_thread.start()

    def stop_status(self) -> None:
        self._status_stop.set()
        if self._status_thread is not None:
            self._status_thread.join(timeout=5)
            self._status_thread = None

    def _status_loop(self) -> None:
        last, last_at = "", 0.0
        while not self._status_stop.wait(self.cfg.status_interval):
            try:
                line = self.status_line()
            except EdgefleetError:
                continue
            key = line.split(" | telemetry")[0]
            if key != last or time.monotonic() - last_at >= 3 * self.cfg.status_interval:
                last, last_at = key, time.monotonic()
                self.say(f"  [{time.monotonic() - self.t0:6.1f}s] {line}")

    def status_line(self) -> str:
        devices = self.get("/v1/devices")
        deps = self.get("/v1/deployments")
        dep = self.get(f"/v1/deployments/{deps[-1]['id']}") if deps else None
        tel = self.get("/v1/telemetry")
        statuses = {k: s for k in self.device_dirs if (s := self.device_status(k))}
        runs = self._request("GET", "/v1/federated/runs", params={"limit": 1})
        return status_line(devices, dep, tel, statuses, self.stage_labels, runs[0] if runs else None)

    # -- helpers --------------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post_deployment(self, archive: Path) -> Any:
        from edgefleet.cloud_sync.coordinator.client import deploy_bundle

        return deploy_bundle(self.api, self.token, archive, GROUP, canary="5%", waves="50%,100%", max_failure="0%")

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        from edgefleet.cloud_sync.coordinator.client import api_call

        return api_call(self.api, self.token, method, path, **kw)

    def device_status(self, device_id: str) -> dict[str, Any] | None:
        doc = read_json(self.device_dirs[device_id] / STATUS)
        return doc if isinstance(doc, dict) else None

    def device_stats(self) -> dict[str, dict[str, int]]:
        out = {}
        for k in self.device_dirs:
            sync = (self.device_status(k) or {}).get("sync") or {}
            out[k] = {"bytes_received": int(sync.get("bytes_received", 0)), "delta_used": int(sync.get("delta_used", 0)),
                      "head_updates_used": int(sync.get("head_updates_used", 0))}
        return out

    def control(self, device_id: str, **changes: Any) -> None:
        self.controls[device_id].update(changes)
        write_json(self.device_dirs[device_id] / CONTROL, self.controls[device_id])

    def check_children(self) -> None:
        for name, child in list(self.device_procs.items()) + [("coordinator", self.coordinator)]:
            if child is not None and not child.alive():
                raise SyncError(f"{name} (pid {child.last_pid}) exited with {child.returncode}: "
                                f"{child.log_tail()[-800:] or 'no output'} (log {child.log_path})")

    def wait(self, cond: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.check_children()
            try:
                v = cond()
            except SyncError:
                v = None
            if v:
                return v
            if time.monotonic() > deadline:
                raise SyncError(f"timed out after {timeout:.0f}s waiting for {what}; logs in {self.workdir}/logs/")
            time.sleep(0.3)

    def cleanup(self) -> None:
        """Stop everything this run started, whatever happened; a second Ctrl-C cannot cut this short."""
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        try:
            self.stop_status()
            if self.children is not None and self.children.children:
                self.say(f"\nstopping {len(self.children.children) + (self.superlink is not None)} process(es) ...")
                self.children.stop_all()  # the devices' agents stop their SuperNodes
            if self.superlink is not None:
                self.superlink.stop()
                self.superlink = None
            left = procs.sweep(str(self.workdir))
            if left:
                self.say(f"ended {len(left)} leftover process(es): {'; '.join(left)}")
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _stage_ends(n: int) -> list[int]:
    from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan

    return RolloutPlan(0.05, (0.5, 1.0), 0.0).stage_ends(n)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_demo(config: DemoConfig, out: Callable[[str], None] | None = None) -> dict[str, Any]:
    return Demo(config, out).run()


__all__ = ["Demo", "DemoConfig", "run_demo"]
