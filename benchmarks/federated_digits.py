"""Federated retraining on non-IID digits: FedAvg vs FedProx vs central, poisoning, and wall time per round.

    python -m benchmarks.federated_digits [--quick]

Part 1 - accuracy per round (10 devices, each holding mostly two classes of
scikit-learn's digits; 30% of the digits kept aside as the global test set):
the devices' ClientApp trainer (``edgefleet.cloud_sync.federated.trainer``) and the
strategies' aggregation rules (``aggregate.py``: the same rules as Flower's
FedAvg/FedProx/FedMedian/FedTrimmedAvg/Krum), run in this process so that the
rounds cost milliseconds. The central model is the same network trained on the
union of the devices' data for the same number of epochs. Target (issue 6):
FedAvg/FedProx within 2 points of central after 10 rounds. With 2 of 10 devices
poisoned (updates scaled by -10): FedAvg vs the robust strategies.

Part 2 - wall time per round with real Flower processes on loopback: edgefleet
(supervised SuperLink/SuperNodes, generated app, ``flwr run``) against bare Flower
(the same ClientApp/ServerApp, ``flower-superlink``/``flower-supernode`` started
with plain ``subprocess.Popen``, the same ``flwr run``), in the same benchmark run.
Target: ratio <= 1.1. Devices in part 2: 3 (--quick) or 5, to spare a small machine.

Writes benchmarks/results/federated_digits.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SCALE = {"steps": [{"op": "scale", "factor": 1 / 16}]}


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xt, xg, yt, yg = train_test_split(x.astype(np.float32), y.astype(np.int64), test_size=0.3, random_state=0, stratify=y)
    return xt, yt, xg, yg


def simulate(parts: list[np.ndarray], x: np.ndarray, y: np.ndarray, xg: np.ndarray, yg: np.ndarray, *, rounds: int,
             aggregate: Callable[[list[list[np.ndarray]], list[int]], list[np.ndarray]], mu: float = 0.0,
             poisoned: tuple[int, ...] = (), epochs: int = 5, lr: float = 0.1, layers: str = "64,32,10") -> list[float]:
    from edgefleet.cloud_sync.federated.trainer import MLPSpec, TrainConfig, evaluate, train

    spec = MLPSpec.parse(layers)
    w = spec.init(0)
    accs = []
    for r in range(rounds):
        ups, counts = [], []
        for i, p in enumerate(parts):
            res = train(w, x[p], y[p], TrainConfig(epochs=epochs, learning_rate=lr, proximal_mu=mu, seed=r * 100 + i),
                        global_weights=w)
            new = res.weights
            if i in poisoned:
                new = [g - 10.0 * (a - g) for a, g in zip(new, w)]
            ups.append(new)
            counts.append(res.num_examples)
        w = aggregate(ups, counts)
        accs.append(round(evaluate(w, xg, yg)[1], 4))
    return accs


def accuracy_part(rounds: int, devices: int) -> dict[str, Any]:
    from edgefleet.cloud_sync.federated import aggregate as agg
    from edgefleet.cloud_sync.federated.partition import non_iid_partitions
    from edgefleet.cloud_sync.federated.trainer import MLPSpec, TrainConfig, evaluate, train

    xt, yt, xg, yg = _data()
    x, g = xt / 16.0, xg / 16.0
    parts = non_iid_partitions(yt, devices, seed=0)
    epochs, lr = 10, 0.3
    t0 = time.perf_counter()
    out: dict[str, Any] = {"devices": devices, "rounds": rounds, "local_epochs": epochs, "learning_rate": lr,
                           "layers": "64,32,10", "train_samples": int(sum(len(p) for p in parts)),
                           "test_samples": int(len(yg)),
                           "dominant_class_share": [round(float(np.sort(np.bincount(yt[p], minlength=10))[-2:].sum() / len(p)), 3)
                                                    for p in parts]}
    fedavg = lambda u, c: agg.fedavg(u, c)  # noqa: E731
    out["fedavg"] = simulate(parts, x, yt, g, yg, rounds=rounds, aggregate=fedavg, epochs=epochs, lr=lr)
    out["fedprox_mu0.01"] = simulate(parts, x, yt, g, yg, rounds=rounds, aggregate=fedavg, mu=0.01, epochs=epochs, lr=lr)
    out["fedprox_mu0.1"] = simulate(parts, x, yt, g, yg, rounds=rounds, aggregate=fedavg, mu=0.1, epochs=epochs, lr=lr)
    union = np.concatenate(parts)
    spec = MLPSpec.parse("64,32,10")
    central = train(spec.init(0), x[union], yt[union], TrainConfig(epochs=rounds * epochs, learning_rate=lr))
    out["central"] = round(evaluate(central.weights, g, yg)[1], 4)
    local = [round(evaluate(train(spec.init(0), x[p], yt[p], TrainConfig(epochs=rounds * epochs, learning_rate=lr)).weights,
                            g, yg)[1], 4) for p in parts]
    out["local_only"] = {"min": min(local), "max": max(local), "mean": round(float(np.mean(local)), 4)}
    out["gap_to_central_points"] = {k: round((out["central"] - out[k][-1]) * 100, 2)
                                    for k in ("fedavg", "fedprox_mu0.01", "fedprox_mu0.1")}
    bad = (0, 5)  # 2 of 10 devices, holding different classes
    poison: dict[str, Any] = {"poisoned_devices": list(bad), "attack": "update scaled by -10"}
    poison["fedavg"] = simulate(parts, x, yt, g, yg, rounds=rounds, aggregate=fedavg, poisoned=bad, epochs=epochs, lr=lr)
    poison["fedmedian"] = simulate(parts, x, yt, g, yg, rounds=rounds, aggregate=lambda u, c: agg.median(u), poisoned=bad,
                                   epochs=epochs, lr=lr)
    poison["fedtrimmedavg_0.2"] = simulate(parts, x, yt, g, yg, rounds=rounds,
                                           aggregate=lambda u, c: agg.trimmed_mean(u, 0.2), poisoned=bad, epochs=epochs, lr=lr)
    poison["krum_f2"] = simulate(parts, x, yt, g, yg, rounds=rounds, aggregate=lambda u, c: agg.krum(u, 2), poisoned=bad,
                                 epochs=epochs, lr=lr)
    out["poisoned"] = poison
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


# -- part 2: real Flower processes -------------------------------------------------------------
def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_devices(root: Path, devices: int) -> tuple[list[Path], Path]:
    from edgefleet.cloud_sync.federated.partition import non_iid_partitions
    from edgefleet.device_agent.samples import SampleStore

    xt, yt, xg, yg = _data()
    dbs = []
    for i, p in enumerate(non_iid_partitions(yt, devices, seed=0)):
        store = SampleStore(root / f"dev{i}" / "samples.db")
        for j in p:
            store.add(xt[j], int(yt[j]))
        store.close()
        dbs.append(root / f"dev{i}" / "samples.db")
    np.savez(root / "holdout.npz", x=xg, y=yg)
    return dbs, root / "holdout.npz"


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"port {port} did not open")


def _per_round(doc: dict[str, Any]) -> list[float]:
    return [float(r["seconds"]) for r in doc["rounds"] if r.get("round", 0) > 0 and "seconds" in r]


def _edgefleet_run(base: Any, dbs: list[Path], root: Path, tag: str) -> dict[str, Any]:
    from edgefleet.cloud_sync.federated.runner import SuperLink, SuperLinkConfig, run_federated
    from edgefleet.device_agent.flower_node import FlowerNode, FlowerNodeConfig

    link = SuperLink(SuperLinkConfig(port=_port(), log_path=str(root / f"{tag}-link.log"))).start()
    nodes = []
    try:
        link.wait_ready()
        for i, db in enumerate(dbs):
            nodes.append(FlowerNode(FlowerNodeConfig(superlink=link.address, samples_db=str(db), device_id=f"dev{i}",
                                                     port=_port(), insecure=True)).start())
        t0 = time.perf_counter()
        doc = run_federated(replace(base, out_dir=str(root / f"{tag}-out")), link.address, work_dir=root / tag)
        return {"total_s": round(time.perf_counter() - t0, 2), "per_round_s": _per_round(doc),
                "final_accuracy": doc["rounds"][-1].get("central", {}).get("accuracy")}
    finally:
        for n in nodes:
            n.stop()
        link.stop()


def _bare_run(base: Any, dbs: list[Path], root: Path, tag: str) -> dict[str, Any]:
    import signal

    from edgefleet.cloud_sync.federated.runner import submit_run, wait_for_run, write_app, write_flwr_home
    from edgefleet.device_agent.flower_node import find_tool, flower_env

    env = flower_env()
    port = _port()
    procs = [subprocess.Popen([find_tool("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    try:
        _wait_port(port)
        for i, db in enumerate(dbs):
            procs.append(subprocess.Popen([find_tool("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                                           "--port", str(_port()), "--node-config",
                                           f'samples-db="{db}" device-id="dev{i}"'], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        cfg = replace(base, out_dir=str(root / f"{tag}-out"))
        app = write_app(root / f"{tag}-app", cfg)
        home = write_flwr_home(root / f"{tag}-home", f"127.0.0.1:{port}")
        t0 = time.perf_counter()
        submit_run(app, home)
        doc = wait_for_run(root / f"{tag}-out", timeout=cfg.rounds * 300)
        return {"total_s": round(time.perf_counter() - t0, 2), "per_round_s": _per_round(doc),
                "final_accuracy": doc["rounds"][-1].get("central", {}).get("accuracy")}
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def flower_part(devices: int, rounds: int, root: Path, pairs: int) -> dict[str, Any]:
    """Interleaved runs (edgefleet, bare, bare, edgefleet, ...) so that load drifts hit both sides alike."""
    from edgefleet.cloud_sync.federated.config import FederatedConfig

    dbs, holdout = _write_devices(root, devices)
    base = FederatedConfig(rounds=rounds, min_nodes=devices, fraction_evaluate=0.0, local_epochs=10, learning_rate=0.3,
                           preprocessing=json.dumps(SCALE), holdout=str(holdout), round_timeout=120)
    runs: dict[str, list[dict[str, Any]]] = {"edgefleet": [], "bare_flower": []}
    order = []
    for k in range(pairs):
        order += ["edgefleet", "bare_flower"] if k % 2 == 0 else ["bare_flower", "edgefleet"]
    for j, kind in enumerate(order):
        fn = _edgefleet_run if kind == "edgefleet" else _bare_run
        runs[kind].append(fn(base, dbs, root, f"{kind}-{j}"))
    out: dict[str, Any] = {"devices": devices, "rounds": rounds, "order": order, "runs": runs,
                           "load_average_1m": round(os.getloadavg()[0], 2)}
    med = {k: float(np.median([s for r in v for s in r["per_round_s"]])) for k, v in runs.items()}
    out["median_round_s"] = {k: round(v, 3) for k, v in med.items()}
    out["ratio_median_round"] = round(med["edgefleet"] / med["bare_flower"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and real devices (CI-sized)")
    ap.add_argument("--no-flower", action="store_true", help="skip part 2 (real Flower processes)")
    ap.add_argument("--out", default=str(RESULTS / "federated_digits.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

    rounds = 5 if args.quick else 10
    from .schema import envelope

    doc: dict[str, Any] = envelope("federated_digits", args.quick, ("flwr", "tensorflow"))
    doc["accuracy"] = accuracy_part(rounds, 10)
    a = doc["accuracy"]
    print(f"accuracy after {rounds} rounds (10 devices): fedavg {a['fedavg'][-1]:.3f}, fedprox(0.01) "
          f"{a['fedprox_mu0.01'][-1]:.3f}, central {a['central']:.3f}, local-only max {a['local_only']['max']:.3f}", flush=True)
    p = a["poisoned"]
    print(f"2 of 10 poisoned: fedavg {p['fedavg'][-1]:.3f}, fedmedian {p['fedmedian'][-1]:.3f}, "
          f"trimmed {p['fedtrimmedavg_0.2'][-1]:.3f}, krum {p['krum_f2'][-1]:.3f}", flush=True)
    if not args.no_flower:
        with tempfile.TemporaryDirectory(prefix="edgefleet-fedbench-") as tmp:
            doc["wall_time"] = flower_part(3 if args.quick else 5, 2 if args.quick else 3, Path(tmp), 1 if args.quick else 2)
        w = doc["wall_time"]
        print(f"median wall time per round ({w['devices']} real devices): edgefleet {w['median_round_s']['edgefleet']:.1f}s, "
              f"bare Flower {w['median_round_s']['bare_flower']:.1f}s, ratio {w['ratio_median_round']} "
              f"(load average {w['load_average_1m']})", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
