"""Run the benchmark scripts as one suite, record how each went, regenerate BENCHMARKS.md.

Every suite is one script in this folder, run as a subprocess with the same
interpreter (so a crash, a hang or a leaked thread in one cannot take the others
down), writing its JSON to the results folder: ``NAME.json`` in a full run,
``NAME_quick.json`` with ``--quick`` (so a CI-sized run never overwrites the
published figures). Each suite's status, exit code, duration, the load average
around it and the package versions are kept in ``suite_runs[_quick].json``;
the suite's console output goes to ``logs/NAME[_quick].log``. A suite fails when
it exits non-zero, times out, or does not write a fresh, valid JSON file; the
others still run and the exit code is 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
REPORT = REPO / "BENCHMARKS.md"

# Distributions whose versions a run records (whatever is installed; nothing is imported).
PACKAGES = ("edgefleet", "numpy", "ai-edge-litert", "onnxruntime", "tensorflow", "tf-keras", "tensorflow-model-optimization",
            "onnx", "tf2onnx", "flwr", "paho-mqtt", "bsdiff4", "SQLAlchemy", "scikit-learn", "matplotlib")


@dataclass(frozen=True)
class Suite:
    """One benchmark script: ``python ARGV... [MODE ARGS] OUT_FLAG RESULTS/NAME[_quick].json``."""

    name: str
    title: str
    argv: tuple[str, ...]
    full_args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ("--quick",)
    out_flag: str = "--out"
    default: bool = True
    timeout_s: float = 1800.0
    quick_timeout_s: float = 600.0
    note: str = ""

    def result_file(self, results_dir: Path, quick: bool) -> Path:
        return Path(results_dir) / f"{self.name}{'_quick' if quick else ''}.json"

    def command(self, results_dir: Path, quick: bool, python: str = sys.executable) -> list[str]:
        mode = self.quick_args if quick else self.full_args
        return [python, *self.argv, *mode, self.out_flag, str(self.result_file(results_dir, quick))]

    def rerun(self, quick: bool = False) -> str:
        """The command a reader types to reproduce this suite's figures (from the repository root)."""
        return " ".join(["python", *self.argv, *(self.quick_args if quick else self.full_args)])


SUITES: tuple[Suite, ...] = (
    Suite("sdk_overhead", "SDK overhead: predict() vs the bare runtime call (issue 2)",
          ("-m", "benchmarks.sdk_overhead"), timeout_s=1200, quick_timeout_s=300),
    Suite("compiler_digits", "Compiler variants on the digits CNN (issue 3)",
          ("-m", "benchmarks.compiler_digits"), timeout_s=2400, quick_timeout_s=900),
    Suite("agent_footprint", "Device agent footprint (issue 4)",
          ("-m", "benchmarks.agent_footprint"), timeout_s=900, quick_timeout_s=300),
    Suite("fleet_ota", "Fleet OTA and telemetry over a real Mosquitto (issue 5)",
          ("-m", "benchmarks.fleet_ota"), timeout_s=3600, quick_timeout_s=900),
    Suite("fleet_dispatch", "Dispatching a 10,000-device stage, SQLite and PostgreSQL (issue 16)",
          ("-m", "benchmarks.fleet_dispatch"), timeout_s=900, quick_timeout_s=300),
    Suite("soak", "Soak: 1,000 devices for an hour through a broker restart and a coordinator crash (issue 16)",
          ("-m", "benchmarks.soak"), timeout_s=5400, quick_timeout_s=900, default=False,
          note="an hour: run it with --only soak (--quick: 3 minutes, 300 devices)"),
    Suite("fleet_scale", "10,000 devices: a rollout with the bundle over HTTP from nginx (issue 16)",
          ("-m", "benchmarks.fleet_scale"), timeout_s=5400, quick_timeout_s=900, default=False,
          note="thousands of simulated devices: run it with --only fleet_scale"),
    Suite("multi_coordinator", "Two coordinator processes, one PostgreSQL registry: each stage and each job once "
          "(issue 16)", ("-m", "benchmarks.multi_coordinator"), timeout_s=3600, quick_timeout_s=900, default=False,
          note="needs PostgreSQL (bash scripts/postgres.sh); run it with --only multi_coordinator"),
    Suite("federated_digits", "Federated retraining on non-IID digits (issue 6)",
          ("-m", "benchmarks.federated_digits"), timeout_s=3600, quick_timeout_s=1200),
    Suite("demo_loop", "The closed loop end to end: edgefleet demo (issue 7)",
          ("-m", "benchmarks.demo_loop"), timeout_s=3000, quick_timeout_s=900),
    Suite("head_update", "Head-only updates of the example CNN: backbone + trainable head (issue 17)",
          ("-m", "benchmarks.head_update"), timeout_s=1800, quick_timeout_s=900),
    Suite("federated_head", "Head-only federated fine-tuning of the example CNN: drift recovered, device training "
          "time, update size (issue 17)", ("-m", "benchmarks.federated_digits", "--head"), timeout_s=1800,
          quick_timeout_s=900),
    Suite("quality_probation", "Quality probation without labels: bad candidates caught, good ones kept (issue 17)",
          ("-m", "benchmarks.quality_probation"), timeout_s=1800, quick_timeout_s=600),
    Suite("onnx_conformance", "ONNX operator conformance through edgefleet.load().predict (issue 11)",
          ("-m", "benchmarks.onnx_conformance"), quick_args=(), timeout_s=600, quick_timeout_s=600),
    Suite("compiler_thirdparty", "The compiler on third-party models from PyPI packages (issue 3)",
          ("-m", "benchmarks.compiler_thirdparty"), quick_args=("--runs", "20"), out_flag="--json", default=False,
          timeout_s=3600, quick_timeout_s=1800,
          note="needs extra packages: pip install --no-deps rapidocr-onnxruntime==1.4.4 silero-vad==6.2.3 "
               "mediapipe==0.10.21; run it with --only compiler_thirdparty"),
)


@dataclass
class SuiteRun:
    name: str
    status: str  # ok | failed | timeout | interrupted
    returncode: int | None
    seconds: float
    started_utc: str
    finished_utc: str
    command: str
    result: str
    log: str
    load_average_start: list[float]
    load_average_end: list[float]
    message: str = ""
    log_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def package_versions() -> dict[str, str]:
    out = {}
    for dist in PACKAGES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def environment() -> dict[str, Any]:
    """The machine and package versions of this run (recorded beside the suite statuses)."""
    from .schema import machine

    return machine(PACKAGES)


def suite_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    # Flower's CLI tools, mosquitto helpers... next to the interpreter come first
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    return env


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _fresh_json(path: Path, before_ns: int | None) -> tuple[bool, str]:
    if not path.exists():
        return False, "wrote no results file"
    if before_ns is not None and path.stat().st_mtime_ns <= before_ns:
        return False, "did not rewrite its results file (the one there is from an earlier run)"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return False, f"its results file is not valid JSON ({exc})"
    if not isinstance(doc, dict):
        return False, "its results file does not hold a JSON object"
    return True, ""


def run_suite(suite: Suite, results_dir: Path, quick: bool, *, echo: Callable[[str], None] | None = print,
              timeout_s: float | None = None, python: str = sys.executable) -> SuiteRun:
    """Run one suite in its own process group; never raises for a failing suite (KeyboardInterrupt passes)."""
    results_dir = Path(results_dir)
    out = suite.result_file(results_dir, quick)
    log = results_dir / "logs" / f"{out.stem}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    before = out.stat().st_mtime_ns if out.exists() else None
    cmd = suite.command(results_dir, quick, python)
    limit = timeout_s or (suite.quick_timeout_s if quick else suite.timeout_s)
    started, load0, t0 = utc_now(), _load(), time.monotonic()
    tail: list[str] = []
    status, rc, message = "failed", None, ""
    with open(log, "w", encoding="utf-8", errors="replace") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=suite_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                fh.write(line + "\n")
                fh.flush()
                tail.append(line)
                del tail[:-20]
                if echo is not None:
                    echo(f"  [{suite.name}] {line}")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            status, message = "timeout", f"killed after the {limit:.0f} s time limit"
        except KeyboardInterrupt:
            _kill_group(proc)
            reader.join(5)
            raise
        finally:
            reader.join(10)
    if status != "timeout":
        fresh, why = _fresh_json(out, before)
        if rc == 0 and fresh:
            status = "ok"
        else:
            message = "; ".join(filter(None, [f"exit code {rc}" if rc else "", why or "results written"]))
    return SuiteRun(suite.name, status, rc, round(time.monotonic() - t0, 1), started, utc_now(), " ".join(cmd),
                    str(out), str(log), load0, _load(), message, tail if status != "ok" else [])


def runs_file(results_dir: Path, quick: bool) -> Path:
    return Path(results_dir) / f"suite_runs{'_quick' if quick else ''}.json"


def load_runs(results_dir: Path, quick: bool) -> dict[str, Any]:
    path = runs_file(results_dir, quick)
    try:
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def save_runs(results_dir: Path, quick: bool, runs: Sequence[SuiteRun], env: dict[str, Any]) -> Path:
    """Merge these runs into the record (a run of some suites keeps the others' last records)."""
    doc = load_runs(results_dir, quick)
    suites = doc.get("suites", {}) if isinstance(doc.get("suites"), dict) else {}
    for r in runs:
        suites[r.name] = {**asdict(r), "environment": env}
    path = runs_file(results_dir, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"suites": suites}, indent=1) + "\n")
    return path


def select(only: Sequence[str] = (), skip: Sequence[str] = (), suites: Sequence[Suite] = SUITES) -> list[Suite]:
    """The suites to run: the default ones, or exactly ``only``; minus ``skip``. Unknown names raise ValueError."""
    known = {s.name: s for s in suites}
    unknown = [n for n in [*only, *skip] if n not in known]
    if unknown:
        raise ValueError(f"unknown suite {', '.join(unknown)}; the suites are: {', '.join(known)}")
    chosen = [known[n] for n in dict.fromkeys(only)] if only else [s for s in suites if s.default]
    return [s for s in chosen if s.name not in set(skip)]


def run_suites(suites: Sequence[Suite], results_dir: Path, quick: bool, *, echo: Callable[[str], None] | None = print,
               timeout_s: float | None = None) -> list[SuiteRun]:
    """Run each suite in turn, recording each as it finishes (so an interrupted run keeps what it did)."""
    results_dir = Path(results_dir)
    env = environment()
    done: list[SuiteRun] = []
    for i, suite in enumerate(suites, 1):
        if echo is not None:
            echo(f"[{i}/{len(suites)}] {suite.name}: {suite.title}")
        try:
            run = run_suite(suite, results_dir, quick, echo=echo, timeout_s=timeout_s)
        except KeyboardInterrupt:
            out = suite.result_file(results_dir, quick)
            done.append(SuiteRun(suite.name, "interrupted", None, 0.0, utc_now(), utc_now(), "", str(out), "",
                                 _load(), _load(), "interrupted (Ctrl-C)"))
            save_runs(results_dir, quick, done[-1:], env)
            raise
        done.append(run)
        save_runs(results_dir, quick, [run], env)
        if echo is not None:
            echo(f"[{i}/{len(suites)}] {suite.name}: {run.status} in {run.seconds:.0f} s"
                 + (f" ({run.message}; log: {run.log})" if not run.ok else ""))
            for line in run.log_tail[-8:] if not run.ok else []:
                echo(f"    | {line}")
    return done


def summary_lines(runs: Sequence[SuiteRun]) -> list[str]:
    width = max([len(r.name) for r in runs] + [5])
    lines = [f"{'suite':{width}}  {'status':11}  {'seconds':>8}  result"]
    for r in runs:
        lines.append(f"{r.name:{width}}  {r.status:11}  {r.seconds:8.1f}  {r.result if r.ok else r.message}")
    return lines
