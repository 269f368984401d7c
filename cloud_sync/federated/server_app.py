"""The edgefleet ServerApp: Flower strategies, optional central DP, per-round records.

Runs inside Flower's ``flwr-serverapp`` process on the coordinator. Reads a
:class:`~.config.FederatedConfig` from the run config, runs the chosen strategy
(``strategy.start``) and writes into ``out-dir``:

- ``rounds.json`` - rewritten after every round: per-round client train/eval
  metrics, the coordinator's holdout accuracy (when ``holdout`` is set), the
  number of devices that replied or failed, wall time and, with DP, the
  (epsilon, delta) spent so far;
- ``aggregate.npz`` - the final weights (``arr_0``, ``arr_1``... in Keras
  ``get_weights()`` order), written atomically when the run ends.

In a head run (``head-bundle``: the deployed bundle has a trainable head) the weights are the
head's trainable arrays (:func:`~.head_trainer.trainable_keys` order), starting from the deployed
head; the coordinator's holdout is scored by the head on the deployed backbone's features
(computed once, through ``edgefleet.load``), and ``head.npz`` (the whole head file, frozen
arrays included) is written beside ``aggregate.npz``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp

from edgefleet.atomic import write_atomic
from edgefleet.errors import ConfigError

from .aggregate import gaussian_epsilon
from .config import FederatedConfig, StrategyName
from .trainer import evaluate

ROUNDS_FILE = "rounds.json"
AGGREGATE_FILE = "aggregate.npz"
HEAD_FILE = "head.npz"


def build_strategy(cfg: FederatedConfig) -> Any:
    """The Flower strategy for ``cfg`` (wrapped for server-side fixed-clipping DP when ``dp_noise > 0``)."""
    from flwr.serverapp import strategy as fs

    common: dict[str, Any] = dict(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_nodes,
        min_evaluate_nodes=cfg.min_nodes if cfg.fraction_evaluate > 0 else 0,
        min_available_nodes=cfg.min_nodes,
    )
    s = cfg.strategy
    strategy: Any
    if s is StrategyName.FEDAVG:
        strategy = fs.FedAvg(**common)
    elif s is StrategyName.FEDPROX:
        strategy = fs.FedProx(**common, proximal_mu=cfg.proximal_mu)
    elif s is StrategyName.FEDMEDIAN:
        strategy = fs.FedMedian(**common)
    elif s is StrategyName.FEDTRIMMEDAVG:
        strategy = fs.FedTrimmedAvg(**common, beta=cfg.trim_beta)
    else:
        strategy = fs.Krum(**common, num_malicious_nodes=cfg.krum_malicious)
    if cfg.dp_noise > 0:
        strategy = fs.DifferentialPrivacyServerSideFixedClipping(
            strategy, noise_multiplier=cfg.dp_noise, clipping_norm=cfg.dp_clip, num_sampled_clients=cfg.min_nodes)
    return strategy


def deployed_head(cfg: FederatedConfig) -> Any:
    """The head of the deployed bundle of a head run (``edgefleet.head.Head``)."""
    from edgefleet.bundle import open_bundle
    from edgefleet.head import Head

    from .head_trainer import backbone_digest

    b, tmp = open_bundle(cfg.head_bundle)
    try:
        spec = b.manifest.head
        if spec is None or backbone_digest(b.manifest) != cfg.head_backbone:
            raise ConfigError(f"{cfg.head_bundle} is not the head bundle this run was started for")
        return Head.from_npz((b.path / spec.file).read_bytes(), spec.layers, what=f"the head of {cfg.head_bundle}")
    finally:
        if tmp is not None:
            tmp.cleanup()


def initial_weights(cfg: FederatedConfig) -> list[np.ndarray]:
    if cfg.head_mode:
        from .head_trainer import trainable_arrays

        return trainable_arrays(deployed_head(cfg))
    spec = cfg.spec
    if cfg.initial_weights:
        with np.load(cfg.initial_weights, allow_pickle=False) as z:
            return spec.check([z[f"arr_{i}"] for i in range(len(z.files))])
    return spec.init(cfg.seed)


def _write_json(path: Path, doc: Any) -> None:
    write_atomic(path, json.dumps(doc, indent=1, default=float))


def save_weights(path: Path, weights: list[np.ndarray]) -> None:
    write_atomic(path, lambda fh: np.savez(fh, *[np.asarray(w, np.float32) for w in weights]))


def personal_rows(replies: Iterable[Message]) -> list[dict[str, Any]]:
    """The devices' personalisation records (``personal`` in an evaluate reply of a ``--personalize`` run's last
    round): device, both heads' held-back accuracy and loss, whether the local head was kept."""
    rows = []
    for m in replies:
        if m.has_error():
            continue
        rec = m.content.config_records.get("personal")
        if rec is not None:
            rows.append(_personal_row(rec))
    return sorted(rows, key=lambda r: str(r.get("device_id", "")))


def _personal_row(rec: Any) -> dict[str, Any]:
    """One device's personalisation record, as the run keeps it: the known fields only, bounded (a device's reply
    is not trusted: a long name is cut, an accuracy outside [0, 1] or a loss that is not finite is recorded as
    unknown)."""
    def number(key: str, hi: float) -> float | None:
        v = rec.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not -1e300 < v < 1e300:
            return None
        return float(v) if 0 <= v <= hi else None

    holdout = rec.get("holdout")
    row: dict[str, Any] = {
        "device_id": str(rec.get("device-id", ""))[:128], "base": str(rec.get("base", ""))[:64],
        "holdout": holdout if isinstance(holdout, int) and not isinstance(holdout, bool) and holdout >= 0 else 0,
        "global_accuracy": number("global-accuracy", 1.0), "personal_accuracy": number("personal-accuracy", 1.0),
        "global_loss": number("global-loss", 1e6), "personal_loss": number("personal-loss", 1e6),
        "margin": number("margin", 1.0), "kept": rec.get("kept") is True, "stored": rec.get("stored") is True,
    }
    return row


def personalization_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Both heads reported: the mean held-back accuracy of the global head and of what devices serve with
    personalisation (their local head where kept, else the global one), over the devices that reported."""
    def mean(values: list[Any]) -> float | None:
        finite = [v for v in values if isinstance(v, (int, float)) and np.isfinite(v)]
        return float(np.mean(finite)) if finite else None

    served = [r["personal_accuracy"] if r.get("stored") else r.get("global_accuracy") for r in rows]
    return {"devices": rows, "reported": len(rows), "kept": sum(1 for r in rows if r.get("stored")),
            "mean_global_accuracy": mean([r.get("global_accuracy") for r in rows]),
            "mean_personal_accuracy": mean([r.get("personal_accuracy") for r in rows]),
            "mean_served_accuracy": mean(served)}


class _Recorder:
    """Wraps the strategy to see replies; keeps and writes the per-round log."""

    def __init__(self, strategy: Any, cfg: FederatedConfig, out: Path | None) -> None:
        self.strategy = strategy
        self.cfg = cfg
        self.out = out
        self.rounds: dict[int, dict[str, Any]] = {}
        self.t0 = time.time()
        self.t_round = time.time()
        self.status = "running"
        self._wrap()

    def _row(self, rnd: int) -> dict[str, Any]:
        return self.rounds.setdefault(rnd, {"round": rnd})

    def _wrap(self) -> None:
        s = self.strategy
        orig_cfg, orig_train, orig_eval = s.configure_train, s.aggregate_train, s.aggregate_evaluate

        def configure_train(server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
            self.t_round = time.time()
            return orig_cfg(server_round, arrays, config, grid)

        def aggregate_train(server_round: int, replies: Iterable[Message]) -> Any:
            replies = list(replies)
            ok = [m for m in replies if not m.has_error()]
            row = self._row(server_round)
            row["train_replies"] = len(ok)
            row["train_failures"] = len(replies) - len(ok)
            row["declined"] = sum(1 for m in replies if m.has_error() and str(m.error.reason).startswith("declined:"))
            examples = 0
            for m in ok:
                mr = m.content.metric_records.get("metrics")
                value = mr.get("num-examples", 0) if mr is not None else 0
                examples += int(value) if isinstance(value, (int, float)) else 0
            row["examples"] = examples
            arrays, metrics = orig_train(server_round, replies)
            if metrics is not None:
                row["train"] = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            row["aggregated"] = arrays is not None
            return arrays, metrics

        def aggregate_evaluate(server_round: int, replies: Iterable[Message]) -> Any:
            replies = list(replies)
            metrics = orig_eval(server_round, replies)
            if metrics is not None:
                self._row(server_round)["evaluate"] = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            personal = personal_rows(replies)
            if personal:
                self._row(server_round)["personal"] = personal
            return metrics

        s.configure_train, s.aggregate_train, s.aggregate_evaluate = configure_train, aggregate_train, aggregate_evaluate

    def central(self, holdout: tuple[np.ndarray, np.ndarray] | None, head: Any = None) -> Any:
        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            row = self._row(server_round)
            if server_round > 0:
                row["seconds"] = round(time.time() - self.t_round, 3)
                if self.cfg.dp_noise > 0:
                    row["dp_epsilon"] = gaussian_epsilon(self.cfg.dp_noise, server_round, self.cfg.dp_delta)
            result = None
            if holdout is not None:
                if head is not None:  # a head run: holdout[0] holds the deployed backbone's features
                    from .head_trainer import evaluate_head, with_trainable

                    loss, acc = evaluate_head(with_trainable(head, arrays.to_numpy_ndarrays()), holdout[0], holdout[1])
                else:
                    loss, acc = evaluate(arrays.to_numpy_ndarrays(), holdout[0], holdout[1])
                row["central"] = {"loss": loss, "accuracy": acc}
                result = MetricRecord({"loss": loss, "accuracy": acc})
            self.write()
            return result

        return evaluate_fn

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "status": self.status,
            "config": self.cfg.to_run_config(),
            "rounds": [self.rounds[k] for k in sorted(self.rounds)],
            "seconds": round(time.time() - self.t0, 3),
        }
        personal = [self.rounds[k]["personal"] for k in sorted(self.rounds) if "personal" in self.rounds[k]]
        if personal:  # the last round's (devices personalise in the evaluate step of the run's last round)
            doc["personalization"] = personalization_summary(personal[-1])
        if self.cfg.dp_noise > 0:
            done = sum(1 for k in self.rounds if k > 0)
            doc["privacy"] = {"mechanism": "gaussian, server-side fixed clipping", "noise_multiplier": self.cfg.dp_noise,
                              "clipping_norm": self.cfg.dp_clip, "delta": self.cfg.dp_delta,
                              "epsilon": gaussian_epsilon(self.cfg.dp_noise, done, self.cfg.dp_delta), "rounds": done}
        return doc

    def write(self) -> None:
        if self.out is not None:
            _write_json(self.out / ROUNDS_FILE, self.document())


def load_holdout(path: str, preprocessing: str = "") -> tuple[np.ndarray, np.ndarray] | None:
    """The coordinator's holdout (raw ``x`` and ``y`` in an ``.npz``), preprocessed as devices do."""
    if not path:
        return None
    with np.load(path, allow_pickle=False) as z:
        x, y = np.asarray(z["x"]), np.asarray(z["y"])
    if preprocessing:
        from edgefleet.preprocess import Pipeline

        x = Pipeline.from_spec(json.loads(preprocessing)).apply(x)
    return np.asarray(x, np.float32).reshape(len(x), -1), y


def head_holdout(cfg: FederatedConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """A head run's holdout: the deployed backbone's features of the raw ``x`` (its own preprocessing), and ``y``."""
    if not cfg.holdout:
        return None
    import edgefleet

    with np.load(cfg.holdout, allow_pickle=False) as z:
        x, y = np.asarray(z["x"]), np.asarray(z["y"])
    with edgefleet.load(cfg.head_bundle, threads=1) as m:
        return np.asarray(m.features(x), np.float32), y


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = FederatedConfig.from_run_config(context.run_config)
    out = Path(cfg.out_dir) if cfg.out_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    strategy = build_strategy(cfg)
    rec = _Recorder(strategy, cfg, out)
    rec.write()
    head = None
    try:
        if cfg.head_mode:
            head = deployed_head(cfg)
            holdout = head_holdout(cfg)
        else:
            holdout = load_holdout(cfg.holdout, cfg.preprocessing)
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial_weights(cfg)),
            num_rounds=cfg.rounds,
            timeout=cfg.round_timeout,
            train_config=ConfigRecord({"learning-rate": cfg.learning_rate}),
            evaluate_fn=rec.central(holdout, head),
        )
    except BaseException as exc:
        rec.status = f"failed: {type(exc).__name__}: {exc}"
        rec.write()
        raise
    if out is not None and result.arrays is not None and len(result.arrays):
        save_weights(out / AGGREGATE_FILE, result.arrays.to_numpy_ndarrays())
        if head is not None:
            from .head_trainer import with_trainable

            write_atomic(out / HEAD_FILE, with_trainable(head, result.arrays.to_numpy_ndarrays()).to_npz())
    rec.status = "finished" if result.arrays is not None and len(result.arrays) else "finished without an aggregate"
    rec.write()
