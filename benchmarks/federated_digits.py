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

    python -m benchmarks.federated_digits --head [--quick]

Part 3 (issue 17; its own result, benchmarks/results/federated_head.json) - head-only federated
fine-tuning of the compiler's example CNN, compiled ``--trainable-head 1 --prune 0.8 --quantize
int8``: devices train only the float head, in numpy (``head_trainer``), on their frozen backbone's
features (LiteRT). Accuracy lost to injected drifts and how much of it FedAvg over the heads of 10
non-IID devices recovers (target: >= 90% of the loss; in-process rounds as in part 1); then a real
Flower run on devices with the device extras only (no TensorFlow in their ClientApp, checked):
local training time per round, and the promoted v2 (the same backbone, the new head, gated and
signed) with the size of the head-only update a device holding v1 needs.
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


# -- part 3: head-only federated fine-tuning of the example CNN ----------------------------------------------------
#: injected drifts of the raw 0..16 pixels, and whether the target applies (sensor drifts) or not, with the reason
DRIFTS: dict[str, tuple[str, bool, str]] = {
    "demo": ("sensor gain 0.5, offset +6 (the demo's drift)", True, ""),
    "sensor": ("sensor gain 0.25, offset +10", True, ""),
    "shift": ("every image one pixel to the right", False,
              "a geometric drift: the frozen backbone's features lose what moved; only retraining it recovers that"),
    "noise": ("Gaussian noise, sigma 4 (clipped to 0..16)", False,
              "noise destroys information before the backbone; no head can get it back"),
    "dead": ("two dead pixel columns", False, "the dead pixels' information is gone before the backbone"),
}


def drift(x: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if kind == "demo":
        return x * 0.5 + 6.0
    if kind == "sensor":
        return x * 0.25 + 10.0
    if kind == "shift":
        return np.roll(x, 1, axis=-1)
    if kind == "noise":
        return np.clip(x + np.random.default_rng(seed).normal(0, 4, x.shape), 0, 16).astype(np.float32)
    out = x.copy()
    out[..., 2] = 0
    out[..., 5] = 0
    return out


def _head_v1(work: Path, quick: bool) -> tuple[Path, Path, Path, dict[str, Any]]:
    """v1: the example CNN compiled --trainable-head 1 --prune 0.8 --quantize int8, signed (TensorFlow, here)."""
    from edgefleet.compiler import compile_model
    from edgefleet.compiler.config import CompileConfig, DataConfig, HeadConfig, OutputConfig, PruneConfig, QuantMode
    from edgefleet.compiler.examples import train_digits, write_digits
    from edgefleet.keys import generate_keypair

    epochs = {"train": 4, "prune": 1} if quick else {"train": 12, "prune": 4}
    train, test = write_digits(work / "data")
    info = train_digits(work / "digits.keras", epochs=epochs["train"])
    priv, pub = generate_keypair(work / "keys")
    t = time.perf_counter()
    cfg = CompileConfig(
        data=DataConfig(train=str(train), calibration=str(train), eval=str(test)),
        output=OutputConfig(latency_runs=20, report=False, key=str(priv), name="digits", version="1", archive=True),
        quantize=QuantMode.INT8, prune=PruneConfig(sparsity=0.8, epochs=epochs["prune"]), head=HeadConfig(layers=1))
    res = compile_model(work / "digits.keras", work / "v1", cfg)
    return res.bundle_path, priv, pub, {"epochs": epochs, "keras_test_accuracy": round(info["test_accuracy"], 3),
                                        "params": info["params"], "compile_s": round(time.perf_counter() - t, 1),
                                        "recipe": "--trainable-head 1 --prune 0.8 --quantize int8"}


def simulate_heads(head: Any, feats: np.ndarray, y: np.ndarray, test_feats: np.ndarray, yte: np.ndarray,
                   parts: list[np.ndarray], rounds: int, cfg: Any) -> tuple[list[float], Any]:
    """FedAvg over the heads devices train in numpy (head_trainer), in this process: accuracy after each round,
    and the final global head."""
    from edgefleet.cloud_sync.federated import aggregate as agg
    from edgefleet.cloud_sync.federated.head_trainer import evaluate_head, train_head, trainable_arrays, with_trainable

    accs = []
    for r in range(rounds):
        ups, counts = [], []
        for i, p in enumerate(parts):
            res = train_head(head, feats[p], y[p], replace(cfg, seed=r * 100 + i), head)
            ups.append(trainable_arrays(res.head))
            counts.append(res.num_examples)
        head = with_trainable(head, agg.fedavg(ups, counts))
        accs.append(round(evaluate_head(head, test_feats, yte)[1], 4))
    return accs, head


def _class_mix_accuracy(head: Any, feats: np.ndarray, y: np.ndarray, mix: np.ndarray) -> float:
    """Accuracy on samples drawn with class shares ``mix``: the per-class accuracies weighted by it."""
    right = np.asarray(head.forward(feats)).argmax(1) == y
    per_class = np.array([right[y == c].mean() if np.any(y == c) else 0.0 for c in range(len(mix))])
    return float(per_class @ mix)


def personalization_part(head: Any, feats: np.ndarray, y: np.ndarray, test_feats: np.ndarray, yte: np.ndarray,
                         parts: list[np.ndarray], cfg: Any) -> dict[str, Any]:
    """``--personalize`` on each device of a non-IID fleet (in this process): the device fine-tunes the final global
    head on 80% of its samples and keeps it when it wins on the other 20% (head_trainer.personalize, what the
    ClientApp runs). Both heads are then scored on the test set weighted by the device's own class mix (samples
    neither head trained on): the accuracy a device's users see, with the global head and with what it serves."""
    from edgefleet.cloud_sync.federated.head_trainer import personalize
    from edgefleet.cloud_sync.federated.trainer import split_holdout

    k = int(max(int(y.max()), int(yte.max())) + 1)
    rows: list[dict[str, Any]] = []
    for i, p in enumerate(parts):
        order = np.arange(len(p))
        it, _, ih, _ = split_holdout(order, y[p], 0.2, seed=0)
        t = time.perf_counter()
        v = personalize(head, feats[p][it], y[p][it], feats[p][ih], y[p][ih], replace(cfg, seed=i))
        seconds = time.perf_counter() - t
        mix = np.bincount(y[p], minlength=k) / len(p)
        g, pers = _class_mix_accuracy(head, test_feats, yte, mix), _class_mix_accuracy(v.head, test_feats, yte, mix)
        rows.append({"device": i, "samples": len(p), "dominant_classes": [int(c) for c in np.argsort(-mix)[:2]],
                     "heldback_global": round(v.global_accuracy, 4), "heldback_personal": round(v.personal_accuracy, 4),
                     "kept": v.kept, "mix_global": round(g, 4), "mix_personal": round(pers, 4),
                     "mix_served": round(pers if v.kept else g, 4), "seconds": round(seconds, 3)})
    mean = lambda key: round(float(np.mean([r[key] for r in rows])), 4)  # noqa: E731
    return {"devices": rows, "kept": sum(r["kept"] for r in rows), "epochs": cfg.epochs,
            "mean_mix_global": mean("mix_global"), "mean_mix_personal": mean("mix_personal"),
            "mean_mix_served": mean("mix_served"), "worst_mix_global": min(r["mix_global"] for r in rows),
            "worst_mix_served": min(r["mix_served"] for r in rows),
            "served_below_global": sum(1 for r in rows if r["mix_served"] < r["mix_global"])}


def _head_flower(v1: Path, pub: Path, priv: Path, root: Path, devices: int, rounds: int, kind: str,
                 train_cfg: dict[str, Any]) -> dict[str, Any]:
    """A real Flower run of the head: SuperLink, SuperNodes whose ClientApp loads v1 (LiteRT) and trains the head in
    numpy; then v2 promoted (close_head_loop) and the head-only update a device holding v1 needs."""
    from edgefleet.bundle import open_bundle, verify_bundle_dir, write_archive
    from edgefleet.cloud_sync.federated.config import FederatedConfig
    from edgefleet.cloud_sync.federated.head_trainer import backbone_digest
    from edgefleet.cloud_sync.federated.loop import close_head_loop
    from edgefleet.cloud_sync.federated.partition import non_iid_partitions
    from edgefleet.cloud_sync.federated.runner import SuperLink, SuperLinkConfig, run_federated
    from edgefleet.cloud_sync.wire.transfer import make_delta
    from edgefleet.compiler.examples import digits_split
    from edgefleet.device_agent.flower_node import FlowerNode, FlowerNodeConfig
    from edgefleet.device_agent.samples import SampleStore
    from edgefleet.headupdate import head_update_of

    xtr, ytr, xte, yte = digits_split()
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "holdout.npz", x=drift(xte, kind), y=yte)
    heavy = ("tensorflow", "keras", "tf_keras", "torch", "tf2onnx", "onnx", "sklearn", "jax")
    link = SuperLink(SuperLinkConfig(port=_port(), log_path=str(root / "link.log"))).start()
    nodes = []
    try:
        link.wait_ready()
        for i, p in enumerate(non_iid_partitions(ytr, devices, seed=0)):
            store = SampleStore(root / f"dev{i}" / "samples.db")
            for j in p:
                store.add(drift(xtr[j], kind), int(ytr[j]))
            store.close()
            extra = {"model-bundle": str(v1), "trusted-keys": str(pub), "imports-log": str(root / f"dev{i}.imports")}
            nodes.append(FlowerNode(FlowerNodeConfig(superlink=link.address, samples_db=str(root / f"dev{i}" / "samples.db"),
                                                     device_id=f"dev{i}", port=_port(), insecure=True,
                                                     extra_node_config=extra)).start())
        b1 = verify_bundle_dir(v1, pub)
        cfg = FederatedConfig(rounds=rounds, min_nodes=devices, fraction_evaluate=0.0, round_timeout=120,
                              local_epochs=train_cfg["epochs"], learning_rate=train_cfg["learning_rate"],
                              optimizer=train_cfg["optimizer"], holdout=str(root / "holdout.npz"),
                              head_bundle=str(v1), head_backbone=backbone_digest(b1.manifest), out_dir=str(root / "out"))
        t0 = time.perf_counter()
        doc = run_federated(cfg, link.address, work_dir=root / "run")
        total = time.perf_counter() - t0
    finally:
        for n in nodes:
            n.stop()
        link.stop()
    rows = [r for r in doc["rounds"] if r.get("round", 0) > 0]
    loaded = set()
    for i in range(devices):
        loaded |= set(json.loads((root / f"dev{i}.imports").read_text()))
    res = close_head_loop(doc["aggregate"], v1, root / "holdout.npz", root / "v2", private_key=str(priv), margin=0.0,
                          trusted_keys=[pub], lineage={"federated": {"rounds": rounds, "strategy": "fedavg"}})
    out: dict[str, Any] = {
        "devices": devices, "rounds": rounds, "drift": kind, "total_s": round(total, 2),
        "per_round": [{"round": r["round"], "wall_s": r.get("seconds"),
                       "device_train_s": round(r["train"]["train-seconds"], 4),
                       "device_features_s": round(r["train"]["features-seconds"], 4),
                       "examples": r.get("examples"), "holdout_accuracy": r.get("central", {}).get("accuracy")}
                      for r in rows],
        "device_imports_heavy": sorted(loaded & set(heavy)),
        "device_runtime": sorted(loaded & {"ai_edge_litert", "tflite_runtime", "onnxruntime"}),
        "gate": res.to_dict(),
    }
    if res.promoted and res.bundle:
        v2 = verify_bundle_dir(res.bundle, pub)
        v1_efb, v2_efb = Path(str(v1) + ".efb"), write_archive(v2.path, root / "v2.efb")
        update = head_update_of(v2, b1).to_bytes()
        bsdiff = make_delta(v1_efb.read_bytes(), v2_efb.read_bytes())
        b2, tmp = open_bundle(v2_efb, pub)
        same = (v1 / b1.manifest.model_file).read_bytes() == (b2.path / b2.manifest.model_file).read_bytes()
        if tmp is not None:
            tmp.cleanup()
        out["update"] = {"v2_efb_bytes": v2_efb.stat().st_size, "head_update_bytes": len(update),
                         "ratio": round(len(update) / v2_efb.stat().st_size, 4),
                         "bsdiff4_bytes": len(bsdiff) if bsdiff else None, "backbone_identical": same,
                         "sparsity": v2.manifest.metrics.get("sparsity"),
                         "quantization": v2.manifest.metrics.get("quantization")}
    return out


def head_part(quick: bool, root: Path) -> dict[str, Any]:
    import edgefleet
    from edgefleet.cloud_sync.federated.head_trainer import HeadTrainConfig, evaluate_head, train_head
    from edgefleet.cloud_sync.federated.partition import non_iid_partitions
    from edgefleet.compiler.examples import digits_split

    from .schema import target

    v1, priv, pub, model = _head_v1(root / "model", quick)
    xtr, ytr, xte, yte = digits_split()
    rounds, devices = (5, 10) if quick else (10, 10)
    cfg = HeadTrainConfig(epochs=5, learning_rate=0.003, optimizer="adam")
    parts = non_iid_partitions(ytr, devices, seed=0)
    out: dict[str, Any] = {"model": model, "devices": devices, "rounds": rounds,
                           "train": {"optimizer": cfg.optimizer, "learning_rate": cfg.learning_rate, "epochs": cfg.epochs},
                           "train_samples": len(ytr), "test_samples": len(yte), "drifts": {}}
    verdicts = []
    with edgefleet.load(v1, trusted_keys=pub) as m:
        assert m.head is not None
        clean = float(np.mean(np.asarray(m.predict(xte)).argmax(1) == yte))
        out["v1_clean_accuracy"] = round(clean, 4)
        for kind, (what, applies, why) in DRIFTS.items():
            t = time.perf_counter()
            f_tr, f_te = m.features(drift(xtr, kind, 1)), m.features(drift(xte, kind, 2))
            feat_s = time.perf_counter() - t
            drifted = evaluate_head(m.head, f_te, yte)[1]
            t = time.perf_counter()
            curve, final_head = simulate_heads(m.head, f_tr, ytr, f_te, yte, parts, rounds, cfg)
            sim_s = time.perf_counter() - t
            central = train_head(m.head, f_tr, ytr, replace(cfg, epochs=cfg.epochs * rounds))
            final = curve[-1]
            recovered = (final - drifted) / (clean - drifted) if clean > drifted else None
            out["drifts"][kind] = {"what": what, "v1_drifted_accuracy": round(drifted, 4), "federated": curve,
                                   "central_head": round(evaluate_head(central.head, f_te, yte)[1], 4),
                                   "lost_points": round((clean - drifted) * 100, 2),
                                   "recovered_fraction": None if recovered is None else round(recovered, 4),
                                   "features_s": round(feat_s, 3), "simulation_s": round(sim_s, 2)}
            if kind == "demo":
                pz = out["personalization"] = personalization_part(final_head, f_tr, ytr, f_te, yte, parts, cfg)
                verdicts.append(target(
                    f"--personalize after head-only FedAvg ({what}, {devices} non-IID devices): mean accuracy on each "
                    "device's own class mix, global head -> what devices serve", f"{pz['mean_mix_global']:.4f} -> "
                    f"{pz['mean_mix_served']:.4f}", "no target", None,
                    f"{pz['kept']}/{devices} devices kept a local head; {pz['served_below_global']} serve worse than "
                    f"the global head would; worst device {pz['worst_mix_global']:.4f} -> {pz['worst_mix_served']:.4f}"))
            measured = None if recovered is None else round(recovered, 4)
            if applies:
                verdicts.append(target(f"head-only FedAvg, {what}: share of the lost accuracy recovered after {rounds} "
                                       f"rounds ({(clean - drifted) * 100:.1f} points lost)", measured, ">= 0.9",
                                       None if recovered is None else recovered >= 0.9,
                                       "" if recovered is None or recovered >= 0.9 else
                                       "quick mode: fewer rounds and a less trained model" if quick else
                                       "the head alone did not get there"))
            else:
                verdicts.append(target(f"(no target) {what}: share recovered", measured, "no target", None, why))
    flower_devices, flower_rounds = (3, 2) if quick else (5, 3)
    fl = _head_flower(v1, pub, priv, root / "flower", flower_devices, flower_rounds, "sensor",
                      {"epochs": cfg.epochs, "learning_rate": cfg.learning_rate, "optimizer": cfg.optimizer})
    out["flower"] = fl
    train_s = [r["device_train_s"] for r in fl["per_round"]]
    verdicts.append(target("devices' ClientApp imported no TensorFlow, Keras, torch, ONNX or scikit-learn (a real "
                           "Flower round, device extras)", ", ".join(fl["device_imports_heavy"]) or "none", "none",
                           not fl["device_imports_heavy"], f"runtime: {', '.join(fl['device_runtime'])}"))
    verdicts.append(target(f"local head training time per round on a device (mean of {flower_devices} devices, "
                           f"{cfg.epochs} epochs of ~{len(ytr) // flower_devices} samples, median round), s",
                           round(float(np.median(train_s)), 4), "no target", None,
                           f"plus the backbone's features: {np.median([r['device_features_s'] for r in fl['per_round']]):.3f} s"))
    up = fl.get("update")
    if up:
        verdicts.append(target("head-only update of the federated v2 / full v2 (.efb)", up["ratio"], "<= 0.05",
                               up["ratio"] <= 0.05, f"{up['head_update_bytes']:,} of {up['v2_efb_bytes']:,} bytes"))
        verdicts.append(target("v2's backbone is v1's pruned int8 model file, byte for byte",
                               "yes" if up["backbone_identical"] else "no", "yes", bool(up["backbone_identical"]),
                               f"sparsity {up['sparsity']}, {up['quantization']}"))
    else:
        verdicts.append(target("head-only update of the federated v2 / full v2 (.efb)", None, "<= 0.05", None,
                               f"v2 was not promoted: {fl['gate']['reason']}"))
    out["verdicts"] = verdicts
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and real devices (CI-sized)")
    ap.add_argument("--no-flower", action="store_true", help="skip part 2 (real Flower processes)")
    ap.add_argument("--head", action="store_true", help="part 3 only: head-only fine-tuning of the example CNN "
                    "(writes federated_head[_quick].json)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.head:
        return _main_head(args)
    args.out = args.out or str(RESULTS / "federated_digits.json")

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


def _main_head(args: Any) -> int:
    from .schema import envelope

    out = Path(args.out or RESULTS / f"federated_head{'_quick' if args.quick else ''}.json")
    doc: dict[str, Any] = envelope("federated_head", args.quick, ("flwr", "tensorflow", "keras"))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgefleet-fedhead-") as tmp:
        part = head_part(args.quick, Path(tmp))
    doc.update(part)
    doc["total_s"] = round(time.perf_counter() - t0, 1)
    for kind, d in doc["drifts"].items():
        print(f"{kind:7s} v1 clean {doc['v1_clean_accuracy']:.3f} drifted {d['v1_drifted_accuracy']:.3f} -> federated "
              f"head {d['federated'][-1]:.3f} (central head {d['central_head']:.3f}): recovered {d['recovered_fraction']}",
              flush=True)
    for v in doc["verdicts"]:
        print(f"  {v['what']}: {v['measured']} ({v['limit']}) {v['met']} {v['reason']}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
