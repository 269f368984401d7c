"""Quality probation without labels: how often it catches a bad candidate, how often it rolls back a good one;
write benchmarks/results/quality_probation.json.

Targets (issue 17): over seeded runs, quality probation catches the bad candidate in >= 95% of them and rolls a
good candidate back in <= 5%.

Each seeded run is a pair of real installs on a real agent (``Agent``, ONNX Runtime, the agent's default
``[quality]`` thresholds with ``mode = "enforce"``): v1 serving, then the candidate installed and put on probation
while a thread feeds the agent live inputs (held-out digits, one a call, no labels). The agent compares the
candidate with v1 on those inputs and its sequential test promotes it or rolls it back (reason ``quality``).

The models are softmax regressions on the 8x8 digits (numpy-trained, exported to ONNX), v1 trained on a few hundred
clean digits. The runs rotate through three scenarios, so the good candidate is the kind a fleet really ships:

* ``fine_tuned``: v1 trained further on more clean digits; the live inputs are clean digits;
* ``drift_retrained``: v1 retrained on digits with a drift (lower contrast, a brighter background, pixel noise)
  after the live inputs drifted the same way, as a federated run after a drift alert would: v1 is wrong on more
  drifted inputs and v2 right, so the two legitimately disagree more;
* ``severe_drift_retrained``: the same with the digits also shifted by a pixel: v1 falls to about a third right,
  v2 recovers to nearly 90%, and they agree on about 40% of the inputs only;

and the bad candidate of each run is, alternately, the good candidate with its output classes permuted (a random
permutation without fixed points: runs, passes smoke tests, predicts the wrong class) or a model trained on the
same digits with shuffled labels (the issue's example of a deliberately bad candidate). Outside the targets, each
run also installs a third candidate, ``partly_shuffled``: v1 fine-tuned on shuffled labels for a while (what a
poisoned round of federated fine-tuning would leave): worse than v1 on clean digits, yet sometimes better than a
drift-broken v1; its rates are recorded per scenario, with its accuracy against v1's.

A replay part then feeds the same sequential test (``device_agent.quality.judge``, pure) with the two models'
outputs on the live inputs in many more seeded orders, without agents: the error rates of the test itself, with
tighter intervals. Rates come with Wilson 95% intervals.

Run: ``python -m benchmarks.quality_probation [--quick] [--runs N] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CATCH_TARGET = 0.95
FALSE_TARGET = 0.05


# -- data and models (numpy) -------------------------------------------------------------------------------------
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


DRIFTS = {"drift_retrained": (0.4, 0.45, 0.12, 0), "severe_drift_retrained": (0.5, 0.3, 0.1, 1)}
KINDS = ("fine_tuned", "drift_retrained", "severe_drift_retrained")


def drift(x: np.ndarray, rng: np.random.Generator, contrast: float, background: float, noise: float,
          shift: int) -> np.ndarray:
    """Lower contrast, a brighter background, pixel noise (and the image moved ``shift`` pixels right): what a worn
    or moved camera does to the digits."""
    img = np.roll(x.reshape(-1, 8, 8), shift, axis=2).reshape(-1, 64) if shift else x
    return np.clip(contrast * img + background + rng.normal(0.0, noise, img.shape), 0.0, 1.0).astype(np.float32)


def train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int, init: tuple[np.ndarray, np.ndarray] | None = None,
          lr: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression by full-batch gradient descent (from ``init`` if given)."""
    rng = np.random.default_rng(seed)
    w, b = (init[0].copy(), init[1].copy()) if init else (rng.normal(0, 0.01, (64, 10)), np.zeros(10))
    onehot = np.eye(10)[y]
    for _ in range(epochs):
        z = x @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(x)
        w -= lr * (x.T @ g)
        b -= lr * g.sum(0)
    return w, b


def probs(model: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    z = x @ model[0] + model[1]
    p = np.exp(z - z.max(1, keepdims=True))
    out: np.ndarray = p / p.sum(1, keepdims=True)
    return out


def derangement(rng: np.random.Generator, k: int = 10) -> list[int]:
    while True:
        p = rng.permutation(k)
        if not np.any(p == np.arange(k)):
            return [int(i) for i in p]


def scenario(seed: int, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """One seeded run's models and live inputs."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    base, more, live = order[:300], order[300:1200], order[1200:]
    v1 = train(x[base], y[base], 150, seed)
    kind = KINDS[seed % len(KINDS)]
    if kind == "fine_tuned":
        tx, live_x = x[more], x[live]
        good = train(tx, y[more], 100, seed, init=v1)
    else:
        tx, live_x = drift(x[more], rng, *DRIFTS[kind]), drift(x[live], rng, *DRIFTS[kind])
        good = train(tx, y[more], 200, seed, init=v1)
    shuffled = rng.permutation(y[more])
    bad_kind = "permuted" if (seed // len(KINDS)) % 2 == 0 else "shuffled_labels"
    if bad_kind == "permuted":
        perm = derangement(rng)
        bad = (good[0][:, perm], good[1][perm])
    else:
        bad = train(tx, shuffled, 300, seed + 1)
    partly = train(tx, shuffled, 200, seed + 1, init=v1)
    return {"seed": seed, "kind": kind, "bad_kind": bad_kind, "v1": v1, "good": good, "bad": bad,
            "partly_shuffled": partly, "live_x": live_x, "live_y": y[live]}


def accuracy(model: tuple[np.ndarray, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs(model, x), 1) == y))


def onnx_model(path: Path, model: tuple[np.ndarray, np.ndarray]) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        "digits_softmax",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(model[0].astype(np.float32), "W"),
         numpy_helper.from_array(model[1].astype(np.float32), "B")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


# -- the agent runs -------------------------------------------------------------------------------------------------
def agent_run(work: Path, key: Any, pub: Path, sc: dict[str, Any], which: str) -> dict[str, Any]:
    """Install v1, then the candidate ``which`` (good or bad) with live inputs flowing; the job's outcome."""
    from edgefleet.device_agent.agent import Agent
    from edgefleet.device_agent.config import AgentConfig, QualityConfig, UpdateConfig
    from edgefleet.pack import pack

    root = work / f"s{sc['seed']}-{which}"
    root.mkdir(parents=True)
    bundles = {}
    for version, model in (("1", sc["v1"]), ("2", sc[which])):
        src = onnx_model(root / f"v{version}.onnx", model)
        bundles[version] = pack(src, root / f"digits-v{version}", name="digits", version=version,
                                private_key=key)[0].path
    cfg = AgentConfig(state_dir=str(root / "state"), device_id=f"bench-{sc['seed']}", trusted_keys=(str(pub),),
                      update=UpdateConfig(probation_seconds=0.5), quality=QualityConfig(mode="enforce"))
    stop = threading.Event()
    with Agent(cfg, tick_seconds=0.05) as agent:
        agent.install(bundles["1"], wait=True, timeout=30)
        live = sc["live_x"]
        rng = np.random.default_rng(sc["seed"] + 7)

        def feed() -> None:
            while not stop.is_set():
                agent.predict(live[rng.integers(len(live))][None, :])
                stop.wait(0.001)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        t0 = time.perf_counter()
        job = agent.install(bundles["2"])
        job = agent.wait(job.job_id, timeout=120)
        seconds = time.perf_counter() - t0
        stop.set()
        feeder.join(5)
    q = (job.details.get("probation") or {}).get("quality") or {}
    return {"seed": sc["seed"], "kind": sc["kind"], "candidate": which,
            "bad_kind": sc["bad_kind"] if which == "bad" else "", "status": job.status.value, "reason": job.reason,
            "rolled_back_on_quality": job.status.value == "ROLLED_BACK" and job.reason == "quality",
            "verdict": q.get("verdict"), "signal": q.get("signal"), "compared": q.get("compared"),
            "agreement": q.get("agreement"), "psi": q.get("psi"), "confidence_shift": q.get("confidence_shift"),
            "dropped": q.get("dropped"), "seconds": round(seconds, 3)}


# -- the replay of the sequential test --------------------------------------------------------------------------------
def replay(sc: dict[str, Any], which: str, orders: int, seed: int) -> dict[str, Any]:
    """The pure test (``judge``) fed the two models' outputs on the live inputs in ``orders`` seeded orders, judged
    after each input as the agent's comparator does; how often it rolls back and after how many inputs. The counts
    are what ``observe`` makes of each pair, computed once per input (``observe`` itself is the agent runs')."""
    from edgefleet.device_agent.config import QualityConfig
    from edgefleet.device_agent.quality import CONF_BINS, QualityStats, entropy, judge

    t = QualityConfig(mode="enforce").thresholds()
    new, old = probs(sc[which], sc["live_x"]), probs(sc["v1"], sc["live_x"])
    tn, to = np.argmax(new, 1), np.argmax(old, 1)
    cn, co, en, eo = new.max(1), old.max(1), entropy(new), entropy(old)
    bins = np.minimum((co * CONF_BINS).astype(np.int64), CONF_BINS - 1)
    agree = tn == to
    rng = np.random.default_rng(seed)
    rollbacks, lengths = 0, []
    for _ in range(orders):
        stats = QualityStats(classes=10, top_new=[0] * 10, top_old=[0] * 10)
        verdict = None
        for i in rng.integers(len(new), size=t.max_samples):
            a = int(agree[i])
            stats.compared += 1
            stats.agreed += a
            stats.conf_new += float(cn[i])
            stats.conf_old += float(co[i])
            stats.ent_new += float(en[i])
            stats.ent_old += float(eo[i])
            stats.top_new[int(tn[i])] += 1
            stats.top_old[int(to[i])] += 1
            stats.by_conf[int(bins[i])] += 1
            stats.agreed_by_conf[int(bins[i])] += a
            if stats.compared >= t.min_samples:
                verdict = judge(stats, t)
                if verdict is not None:
                    break
        assert verdict is not None  # the truncated test always decides at max_samples
        rollbacks += int(not verdict.ok)
        lengths.append(stats.compared)
    return {"rollbacks": rollbacks, "orders": orders, "mean_inputs": round(float(np.mean(lengths)), 1),
            "max_inputs": int(np.max(lengths))}


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(max(0.0, c - h), 4), round(min(1.0, c + h), 4)]


def rate(k: int, n: int) -> dict[str, Any]:
    return {"count": k, "runs": n, "rate": round(k / n, 4) if n else None, "wilson95": wilson(k, n)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer seeds (CI-sized)")
    ap.add_argument("--runs", type=int, help="seeded runs (each: a good and a bad candidate on a real agent)")
    ap.add_argument("--orders", type=int, help="replayed orders per model pair (the pure test)")
    ap.add_argument("--out", help="JSON file (default benchmarks/results/quality_probation[_quick].json)")
    args = ap.parse_args(argv)
    runs = args.runs or (8 if args.quick else 100)
    orders = args.orders or (20 if args.quick else 100)
    if args.out is None:
        args.out = str(HERE / "results" / f"quality_probation{'_quick' if args.quick else ''}.json")

    from edgefleet.device_agent.config import QualityConfig
    from edgefleet.keys import generate_keypair, load_private_key

    from .schema import envelope

    logging.getLogger("edgefleet").setLevel(logging.ERROR)  # (each rollback is a warning of the agent's)
    x, y = digits()
    started = time.time()
    results: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    replays: dict[str, dict[str, int]] = {"good": {"rollbacks": 0, "orders": 0}, "bad": {"rollbacks": 0, "orders": 0}}
    lengths: dict[str, list[float]] = {"good": [], "bad": []}
    with tempfile.TemporaryDirectory(prefix="ef-quality-") as tmp:
        work = Path(tmp)
        priv, pub = generate_keypair(work / "keys", "bench")
        key = load_private_key(priv)
        for seed in range(runs):
            sc = scenario(seed, x, y)
            models.append({"seed": seed, "kind": sc["kind"], "bad_kind": sc["bad_kind"],
                           **{f"{m}_accuracy": round(accuracy(sc[m], sc["live_x"], sc["live_y"]), 4)
                              for m in ("v1", "good", "bad", "partly_shuffled")},
                           **{f"{m}_agreement_with_v1": round(float(np.mean(
                               np.argmax(probs(sc[m], sc["live_x"]), 1) == np.argmax(probs(sc["v1"], sc["live_x"]), 1))), 4)
                              for m in ("good", "bad", "partly_shuffled")}})
            for which in ("good", "bad", "partly_shuffled"):
                r = agent_run(work, key, pub, sc, which)
                results.append(r)
                if which == "partly_shuffled":
                    print(f"seed {seed:3d} {sc['kind']:22s} {which:15s} -> {r['status']:11s} {r['reason']}", flush=True)
                    continue
                rp = replay(sc, which, orders, 1000 + seed)
                replays[which]["rollbacks"] += rp["rollbacks"]
                replays[which]["orders"] += rp["orders"]
                lengths[which].append(rp["mean_inputs"])
                print(f"seed {seed:3d} {sc['kind']:22s} {which:4s} {r['bad_kind'] or '':16s} -> {r['status']:11s} "
                      f"{r['reason']:8s} {r['signal'] or '':18s} compared {r['compared']} agreement "
                      f"{r['agreement']} ({r['seconds']} s); replay {rp['rollbacks']}/{rp['orders']} rolled back",
                      flush=True)

    partly = [r for r in results if r["candidate"] == "partly_shuffled"]
    bad = [r for r in results if r["candidate"] == "bad"]
    good = [r for r in results if r["candidate"] == "good"]
    caught = sum(r["rolled_back_on_quality"] for r in bad)
    false = sum(r["status"] == "ROLLED_BACK" for r in good)
    catch, false_rate = rate(caught, len(bad)), rate(false, len(good))

    def by(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in sorted({r[key] for r in rows}):
            sub = [r for r in rows if r[key] == k]
            out[k] = {**rate(sum(r["status"] == "ROLLED_BACK" for r in sub), len(sub)),
                      "compared_mean": round(float(np.mean([r["compared"] or 0 for r in sub])), 1),
                      "agreement_mean": round(float(np.mean([r["agreement"] or 0 for r in sub])), 4),
                      "seconds_mean": round(float(np.mean([r["seconds"] for r in sub])), 3)}
        return out

    gap = {k: round(float(np.mean([m["partly_shuffled_accuracy"] - m["v1_accuracy"] for m in models
                                   if m["kind"] == k])), 4) for k in {m["kind"] for m in models}}
    partly_by = by(partly, "kind")
    for k, v in partly_by.items():
        v["accuracy_minus_v1_mean"] = gap[k]
    cfg = QualityConfig(mode="enforce")
    doc: dict[str, Any] = {
        **envelope("quality_probation", args.quick, ("onnx", "scikit-learn")),
        "runs": runs, "orders_per_pair": orders, "seconds": round(time.time() - started, 1),
        "thresholds": {k: getattr(cfg, k) for k in ("min_samples", "max_samples", "agreement_good", "agreement_bad",
                                                     "alpha", "beta", "max_confidence_drop", "max_psi")},
        "agent": {"catch": catch, "false_rollbacks": false_rate,
                  "bad_by_kind": by(bad, "bad_kind"), "bad_by_scenario": by(bad, "kind"),
                  "good_by_scenario": by(good, "kind"), "partly_shuffled_by_scenario": partly_by,
                  "signals": {s: sum(r["signal"] == s for r in bad) for s in sorted({str(r["signal"]) for r in bad})}},
        "replay": {"catch": rate(replays["bad"]["rollbacks"], replays["bad"]["orders"]),
                   "false_rollbacks": rate(replays["good"]["rollbacks"], replays["good"]["orders"]),
                   "mean_inputs_bad": round(float(np.mean(lengths["bad"])), 1),
                   "mean_inputs_good": round(float(np.mean(lengths["good"])), 1)},
        "models": models,
        "results": results,
        "checks": [
            {"what": "bad candidates rolled back on quality (real agents, live inputs, no labels)",
             "value": catch["rate"], "op": ">=", "limit": CATCH_TARGET, "wilson95": catch["wilson95"]},
            {"what": "good candidates rolled back (real agents)", "value": false_rate["rate"], "op": "<=",
             "limit": FALSE_TARGET, "wilson95": false_rate["wilson95"]},
            {"what": "bad candidates rolled back (the sequential test replayed, many orders)",
             "value": rate(replays["bad"]["rollbacks"], replays["bad"]["orders"])["rate"], "op": ">=",
             "limit": CATCH_TARGET, "wilson95": wilson(replays["bad"]["rollbacks"], replays["bad"]["orders"])},
            {"what": "good candidates rolled back (the sequential test replayed)",
             "value": rate(replays["good"]["rollbacks"], replays["good"]["orders"])["rate"], "op": "<=",
             "limit": FALSE_TARGET, "wilson95": wilson(replays["good"]["rollbacks"], replays["good"]["orders"])},
        ],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"caught {caught}/{len(bad)} bad candidates, rolled back {false}/{len(good)} good ones; "
          f"replay: {replays['bad']['rollbacks']}/{replays['bad']['orders']} and "
          f"{replays['good']['rollbacks']}/{replays['good']['orders']} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
