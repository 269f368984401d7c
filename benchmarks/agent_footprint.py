"""Device agent footprint: idle RSS and cold start to first prediction (LiteRT and ONNX).

Targets (issue 4): idle RSS <= 60 MB with LiteRT, cold start to first prediction <= 300 ms.

Each measurement runs in a fresh process (``--child``) that imports the agent, opens
its state directory (verifying the stored bundle), serves one prediction, then
idles with its monitor thread running while we read its resident memory. The
LiteRT model is a small Keras MLP (64-32-10) converted with TensorFlow in a
separate process (the agent processes never import TensorFlow), or any .tflite
given with ``--tflite``.

    python -m benchmarks.agent_footprint [--tflite MODEL.tflite] [--runs 5] [--quick] [--out OUT]

``--quick`` (CI-sized): 2 runs per runtime, 0.5 s idle; writes agent_footprint_quick.json.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # the child's clock starts before any edgefleet/numpy import

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
FORBIDDEN = ("tensorflow", "keras", "tf_keras", "flwr", "paho")

MAKE_TFLITE = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
tf.random.set_seed(0)
model = tf.keras.Sequential([tf.keras.Input((64,)), tf.keras.layers.Dense(32, activation="relu"),
                             tf.keras.layers.Dense(10, activation="softmax")])
open(sys.argv[1], "wb").write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
"""


def _rss_kib(pid: int | str = "self") -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def child(state_dir: str, idle: float) -> None:
    t_import = time.perf_counter()
    import numpy as np

    from edgefleet.device_agent.agent import Agent
    from edgefleet.device_agent.config import AgentConfig

    t_open = time.perf_counter()
    agent = Agent(AgentConfig(state_dir=state_dir, require_signature=False), tick_seconds=0.5)
    model = agent.model
    assert model is not None
    spec = model.manifest.inputs[0]
    x = np.zeros((1, *[d if d > 0 else 1 for d in spec.shape[1:]]), dtype=np.float32)
    t_pred = time.perf_counter()
    agent.predict(x)
    t_done = time.perf_counter()
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    first = {
        "cold_start_ms": (t_done - _T0) * 1000,
        "cold_start_cpu_ms": (ru.ru_utime + ru.ru_stime) * 1000,
        "imports_ms": (t_open - t_import) * 1000,
        "open_agent_ms": (t_pred - t_open) * 1000,
        "first_predict_ms": (t_done - t_pred) * 1000,
    }
    print(json.dumps({"first": first}), flush=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    time.sleep(idle)  # idle: monitor thread ticking, telemetry flushing
    idle_cpu = (time.process_time() - cpu0) / max(1e-9, time.perf_counter() - wall0) * 100
    n = 2000
    t = time.perf_counter()
    for _ in range(n):
        agent.predict(x)
    agent_us = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for _ in range(n):
        model.predict(x)
    model_us = (time.perf_counter() - t) / n * 1e6
    rss = _rss_kib()
    bad = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
    agent.close()
    print(json.dumps({"idle_cpu_percent": idle_cpu, "rss_kib": rss, "agent_predict_us": agent_us, "model_predict_us": model_us,
                      "forbidden_modules": bad}), flush=True)


def _measure(state_dir: Path, idle: float) -> dict[str, float]:
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, __file__, "--child", str(state_dir), "--idle", str(idle)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    first = json.loads(p.stdout.readline())["first"]
    first["process_to_first_prediction_ms"] = (time.perf_counter() - t0) * 1000
    idle_rss = _rss_kib(p.pid)
    rest = json.loads(p.stdout.readline())
    p.wait(timeout=60)
    return {**first, "idle_rss_mb": idle_rss["VmRSS"] / 1024, "peak_rss_mb": rest["rss_kib"]["VmHWM"] / 1024,
            "idle_cpu_percent": rest["idle_cpu_percent"], "agent_predict_us": rest["agent_predict_us"], "model_predict_us": rest["model_predict_us"],
            "forbidden_modules": rest["forbidden_modules"]}


def _bundle(model: Path, out: Path, state_dir: Path) -> None:
    from edgefleet.device_agent.agent import Agent
    from edgefleet.device_agent.config import AgentConfig, UpdateConfig
    from edgefleet.pack import pack

    bundle, _ = pack(model, out, name=model.stem.replace("_", "-"), version="1", overwrite=True)
    with Agent(AgentConfig(state_dir=str(state_dir), require_signature=False,
                           update=UpdateConfig(probation_seconds=0)), monitor=False) as agent:
        job = agent.install(bundle.path)
        assert job.status.value == "SUCCEEDED", job


def _summary(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if isinstance(runs[0][k], float)]
    return {k: {"median": statistics.median(r[k] for r in runs), "min": min(r[k] for r in runs),
                "max": max(r[k] for r in runs)} for k in keys} | {
        "forbidden_modules": sorted({m for r in runs for m in r["forbidden_modules"]})}


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    ap.add_argument("--tflite", help="use this .tflite model instead of building one")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--idle", type=float, default=2.0, help="seconds idle before reading RSS")
    ap.add_argument("--quick", action="store_true", help="2 runs per runtime, 0.5 s idle (CI-sized)")
    ap.add_argument("--out", "--json", dest="json", help="JSON file (default benchmarks/results/agent_footprint[_quick].json)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.idle)
        return
    if args.json is None:
        args.json = str(HERE / "results" / f"agent_footprint{'_quick' if args.quick else ''}.json")
    if args.quick:
        args.runs, args.idle = min(args.runs, 2), min(args.idle, 0.5)
    work = Path(tempfile.mkdtemp(prefix="agent-footprint-"))
    models: dict[str, Path] = {}
    if args.tflite:
        models["litert"] = Path(args.tflite)
    else:
        models["litert"] = work / "mlp.tflite"
        subprocess.run([sys.executable, "-c", MAKE_TFLITE, str(models["litert"])], check=True)
    sys.path.insert(0, str(HERE.parent / "tests"))
    from make_models import build_onnx  # the SDK tests' 64->10 digits classifier, built without TF

    build_onnx(work)
    models["onnxruntime"] = work / "digits.onnx"
    results: dict[str, object] = {}
    for runtime, model in models.items():
        state = work / f"state-{runtime}"
        _bundle(model, work / f"bundle-{runtime}", state)
        _measure(state, 0.2)  # warm the page cache once; cold start here means a fresh process
        runs = [_measure(state, args.idle) for _ in range(args.runs)]
        results[runtime] = {"model": model.name, "model_bytes": model.stat().st_size, "runs": runs,
                            "summary": _summary(runs)}

    lit = results["litert"]["summary"]  # type: ignore[index]
    from .schema import envelope, machine

    out = {
        **envelope("agent_footprint", args.quick, machine_doc={**machine(), "cpus": os.cpu_count(),
                                                              "load_average_at_end": os.getloadavg()}),
        "runs_per_runtime": args.runs,
        "targets": {"idle_rss_mb_litert": 60, "cold_start_ms": 300},
        "met": {"idle_rss": lit["idle_rss_mb"]["median"] <= 60, "cold_start": lit["cold_start_ms"]["median"] <= 300},
        "definitions": {
            "cold_start_ms": "fresh process: imports (numpy, edgefleet, runtime) + open the agent's state dir "
                             "(recover, verify the stored bundle's hashes, load the model) + first predict; "
                             "excludes interpreter start-up",
            "cold_start_cpu_ms": "CPU time (user + system) the process used up to its first prediction, "
                                 "interpreter start-up included: insensitive to other load on the machine",
            "process_to_first_prediction_ms": "spawn of a new python process until its first prediction is reported",
            "idle_cpu_percent": "CPU used while idling (monitor ticking every 0.5 s), percent of one core",
            "idle_rss_mb": "VmRSS of the agent process idling (monitor thread running) after its first prediction",
            "agent_predict_us": "mean Agent.predict (telemetry, drift, probation hooks) batch 1; model_predict_us "
                                "is the bare Model.predict in the same process",
        },
        "results": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    for runtime, r in results.items():
        s = r["summary"]  # type: ignore[index]
        print(f"{runtime:12s} idle RSS {s['idle_rss_mb']['median']:.1f} MB, cold start {s['cold_start_ms']['median']:.0f} ms "
              f"(min {s['cold_start_ms']['min']:.0f} ms, CPU {s['cold_start_cpu_ms']['median']:.0f} ms) "
              f"(process spawn to first prediction {s['process_to_first_prediction_ms']['median']:.0f} ms), "
              f"agent.predict {s['agent_predict_us']['median']:.0f} us vs model {s['model_predict_us']['median']:.0f} us")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
