"""The edgefleet ClientApp: local training on the samples the device agent captured.

Runs inside Flower's ``flwr-clientapp`` process on a device. Where the data is
comes from the SuperNode's node config (set by :mod:`edgefleet.device_agent.flower_node`):

=================  =================================================================
``samples-db``     path of the agent's ``samples.db`` (written by ``Agent.feedback``)
``samples-key``    optional device key file when samples are encrypted at rest
``device-id``      the device's name (reported in metrics)
``fault-*``        fault injection for robustness tests only (``fault-update-scale``:
                   send ``w_global + s * (w_local - w_global)``; ``fault-flip-labels``)
=================  =================================================================

Training settings come from the run config (``layers``, ``local-epochs``,
``batch-size``, ``learning-rate``, ``holdout-fraction``, ``min-samples``,
``preprocessing``) and the train message's config (``proximal-mu`` from FedProx,
``learning-rate`` overrides). A device with fewer than ``min-samples`` samples
declines: it answers with a Flower error reply (code 0, reason starting with
``declined:``) which the strategies count as a failure, not a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgefleet.errors import EdgefleetError

from .trainer import MLPSpec, TrainConfig, evaluate, split_holdout, train

DECLINED = "declined:"
DECLINE_CODE = 0


@dataclass
class LocalData:
    device_id: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_hold: np.ndarray
    y_hold: np.ndarray

    @property
    def total(self) -> int:
        return len(self.x_train) + len(self.x_hold)


class Declined(Exception):
    pass


def _flag(value: Any) -> bool:
    return value in (True, 1) or str(value).lower() in ("1", "true", "yes")


def load_local_data(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> LocalData:
    """Read the device's samples (through the agent's ``SampleStore``), preprocess and split off a holdout."""
    from edgefleet.device_agent.samples import SampleStore, load_device_key

    device = str(node_config.get("device-id", "device"))
    path = node_config.get("samples-db")
    if not path:
        raise Declined(f"{DECLINED} node config has no samples-db")
    key_file = node_config.get("samples-key")
    key = load_device_key(str(key_file)) if key_file else None
    store = SampleStore(str(path), key=key)
    try:
        x, y = store.arrays()
    finally:
        store.close()
    min_samples = int(run_config.get("min-samples", 20))
    if len(x) < min_samples:
        raise Declined(f"{DECLINED} {device} has {len(x)} samples, fewer than min-samples={min_samples}")
    spec = str(run_config.get("preprocessing", "") or "")
    x = np.asarray(x)
    if spec:
        from edgefleet.preprocess import Pipeline

        x = Pipeline.from_spec(json.loads(spec)).apply(x)
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    y = np.asarray(y)
    if _flag(node_config.get("fault-flip-labels", False)):
        n_classes = MLPSpec.parse(str(run_config["layers"])).n_classes
        y = (n_classes - 1 - y.astype(np.int64)) % n_classes
    xt, yt, xh, yh = split_holdout(x, y, float(run_config.get("holdout-fraction", 0.2)), seed=0)
    return LocalData(device, xt, yt, xh, yh)


def _weights(msg: Message, spec: MLPSpec) -> list[np.ndarray]:
    arrays = msg.content.array_records.get("arrays")
    if arrays is None:
        raise Declined(f"{DECLINED} the message carries no model arrays")
    return spec.check(arrays.to_numpy_ndarrays())


def _decline(msg: Message, reason: str) -> Message:
    return Message(error=Error(code=DECLINE_CODE, reason=reason), reply_to=msg)


def _local_setup(msg: Message, context: Context) -> tuple[Any, list[np.ndarray]] | Message:
    """(the device's local data, the weights the server sent), or a decline message."""
    run, node = context.run_config, context.node_config
    try:
        data = load_local_data(node, run)
        spec = MLPSpec.parse(str(run["layers"]))
        return data, _weights(msg, spec)
    except Declined as exc:
        return _decline(msg, str(exc))
    except EdgefleetError as exc:
        return _decline(msg, f"{DECLINED} {exc}")


app = ClientApp()


@app.train()
def train_step(msg: Message, context: Context) -> Message:
    run, node = context.run_config, context.node_config
    setup = _local_setup(msg, context)
    if isinstance(setup, Message):
        return setup
    data, global_w = setup
    cfg: Mapping[str, Any] = msg.content.config_records.get("config") or {}
    server_round = int(cfg.get("server-round", 0))
    tc = TrainConfig(
        epochs=int(run.get("local-epochs", 1)),
        batch_size=int(run.get("batch-size", 32)),
        learning_rate=float(cfg.get("learning-rate", run.get("learning-rate", 0.1))),
        proximal_mu=float(cfg.get("proximal-mu", 0.0)),
        seed=server_round,
    )
    res = train(global_w, data.x_train, data.y_train, tc, global_weights=global_w)
    out = res.weights
    scale = float(node.get("fault-update-scale", 1.0))
    if scale != 1.0:
        out = [g + scale * (w - g) for w, g in zip(out, global_w)]
    metrics = MetricRecord({
        "num-examples": res.num_examples,
        "train-loss": res.loss,
        "train-accuracy": res.accuracy,
        "proximal-mu": tc.proximal_mu,
    })
    content = RecordDict({"arrays": ArrayRecord([np.asarray(a, np.float32) for a in out]), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_step(msg: Message, context: Context) -> Message:
    setup = _local_setup(msg, context)
    if isinstance(setup, Message):
        return setup
    data, w = setup
    x, y = (data.x_hold, data.y_hold) if len(data.x_hold) else (data.x_train, data.y_train)
    loss, acc = evaluate(w, x, y)
    metrics = MetricRecord({"num-examples": len(x), "eval-loss": loss, "eval-accuracy": acc})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
