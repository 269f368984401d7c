"""The edgefleet ClientApp: local training on the samples the device agent captured.

Runs inside Flower's ``flwr-clientapp`` process on a device. Where the data is
comes from the SuperNode's node config (set by :mod:`edgefleet.device_agent.flower_node`):

=================  =================================================================
``samples-db``     path of the agent's ``samples.db`` (written by ``Agent.feedback``)
``samples-key``    optional device key file when samples are encrypted at rest
``device-id``      the device's name (reported in metrics)
``model-store``    the agent's state directory: its active bundle is the model a head run
                   trains (set by ``FlowerNodeConfig.for_agent``)
``model-bundle``   or a bundle path (nodes that are not an agent's)
``trusted-keys``   public key files the bundle is verified with (comma-separated; the
                   store's ``trust/`` keys count too)
``imports-log``    diagnostics: a file the ClientApp writes the top-level modules it has
                   loaded into after each reply (what a device's training imports)
``fault-*``        fault injection for robustness tests only (``fault-update-scale``:
                   send ``w_global + s * (w_local - w_global)``; ``fault-flip-labels``)
=================  =================================================================

Training settings come from the run config (``layers``, ``local-epochs``,
``batch-size``, ``learning-rate``, ``holdout-fraction``, ``min-samples``,
``preprocessing``) and the train message's config (``proximal-mu`` from FedProx,
``learning-rate`` overrides). A device with fewer than ``min-samples`` samples
declines: it answers with a Flower error reply (code 0, reason starting with
``declined:``) which the strategies count as a failure, not a crash.

**Head runs** (``head-backbone`` in the run config: the deployed bundle has a trainable
head): the device loads its installed bundle, declines unless its backbone is the run's
(:func:`~.head_trainer.backbone_digest`), computes the backbone's features of its samples
with LiteRT or ONNX Runtime (``Model.features``: the bundle's own preprocessing) and trains
the head in numpy (:mod:`.head_trainer`: ``optimizer``, ``class-weight``, the FedProx term);
the messages carry the head's trainable arrays only. No TensorFlow is imported.

**Personalisation** (``personalize`` in a head run's config, ``federated run --personalize``): in the
evaluate step of the last round the device also fine-tunes the final global head on its training features
(``personal-epochs``) and scores both heads on its held-back features
(:func:`~.head_trainer.personalize`). A local head that wins (by more than ``personal-margin``) is kept in
the agent's state directory under the global head's sha256 (:mod:`edgefleet.device_agent.personal`), which
is the head of the version the coordinator promotes from this run; the agent serves it once that version
is installed. The reply carries both accuracies (``global-accuracy``, ``personal-accuracy``,
``personal-kept`` in its metrics; the device's record in a ``personal`` config record).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
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
    device, x, y = _read_samples(node_config, run_config)
    spec = str(run_config.get("preprocessing", "") or "")
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


@dataclass
class HeadData:
    """A head run's local data: the backbone's features of the device's samples, split as ``LocalData``, and
    the head of the installed bundle."""

    device_id: str
    head: Any  # edgefleet.head.Head
    f_train: np.ndarray
    y_train: np.ndarray
    f_hold: np.ndarray
    y_hold: np.ndarray
    feature_seconds: float


def _read_samples(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> tuple[str, np.ndarray, np.ndarray]:
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
    return device, np.asarray(x), np.asarray(y)


def device_model(node_config: Mapping[str, Any]) -> Any:
    """The bundle this device runs, loaded and verified (``edgefleet.load``): ``model-bundle``, or the active
    version of the agent's store at ``model-store``."""
    import edgefleet
    from edgefleet.keys import load_public_key

    keys = [load_public_key(k.strip()) for k in str(node_config.get("trusted-keys", "") or "").split(",") if k.strip()]
    path = node_config.get("model-bundle")
    if not path:
        root = node_config.get("model-store")
        if not root:
            raise Declined(f"{DECLINED} this node names no model (model-store or model-bundle in its node config): "
                           "it cannot train a bundle's head")
        from edgefleet.device_agent.store import Store

        store = Store(str(root))
        active = store.state().active
        if active is None:
            raise Declined(f"{DECLINED} no version is installed on this device")
        path = store.object_path(active.id)
        seen = {k.key_id for k in keys}
        keys += [k for k in store.verify_keys if k.key_id not in seen]
    return edgefleet.load(Path(str(path)), trusted_keys=keys or None, require_signature=bool(keys), threads=1)


def load_head_data(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> HeadData:
    """The installed bundle's head and the backbone's features of the device's samples, split off a holdout
    (the same split as ``load_local_data``); declines when this device cannot train the run's head."""
    from .head_trainer import backbone_digest, n_classes

    device, x, y = _read_samples(node_config, run_config)
    with device_model(node_config) as model:
        head = model.head
        if head is None:
            raise Declined(f"{DECLINED} {device} runs {model.name} v{model.version}, which has no trainable head")
        want = str(run_config.get("head-backbone", ""))
        if backbone_digest(model.manifest) != want:
            raise Declined(f"{DECLINED} {device} runs {model.name} v{model.version}, whose backbone is not the "
                           f"run's (backbone {want[:12]})")
        t = time.perf_counter()
        feats = np.asarray(model.features(x), dtype=np.float32)
        seconds = time.perf_counter() - t
    if _flag(node_config.get("fault-flip-labels", False)):
        k = n_classes(head)
        y = (k - 1 - y.astype(np.int64)) % k
    order = np.arange(len(feats))
    it, yt, ih, yh = split_holdout(order, y, float(run_config.get("holdout-fraction", 0.2)), seed=0)
    return HeadData(device, head, feats[it], yt, feats[ih], yh, seconds)


def _log_imports(node_config: Mapping[str, Any]) -> None:
    """Diagnostics (``imports-log``): the top-level modules this ClientApp process has loaded."""
    path = node_config.get("imports-log")
    if path:
        Path(str(path)).write_text(json.dumps(sorted({m.split(".")[0] for m in list(sys.modules)})))


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


def _head_setup(msg: Message, context: Context) -> tuple[HeadData, Any] | Message:
    """(the device's head data, the global head the server sent), or a decline message."""
    from .head_trainer import with_trainable

    try:
        data = load_head_data(context.node_config, context.run_config)
        arrays = msg.content.array_records.get("arrays")
        if arrays is None:
            raise Declined(f"{DECLINED} the message carries no head arrays")
        return data, with_trainable(data.head, arrays.to_numpy_ndarrays())
    except Declined as exc:
        return _decline(msg, str(exc))
    except EdgefleetError as exc:
        return _decline(msg, f"{DECLINED} {exc}")


def _head_train(msg: Message, context: Context) -> Message:
    from .head_trainer import HeadTrainConfig, train_head, trainable_arrays

    run, node = context.run_config, context.node_config
    setup = _head_setup(msg, context)
    if isinstance(setup, Message):
        return setup
    data, global_head = setup
    cfg: Mapping[str, Any] = msg.content.config_records.get("config") or {}
    try:
        tc = HeadTrainConfig(
            epochs=int(run.get("local-epochs", 1)), batch_size=int(run.get("batch-size", 32)),
            learning_rate=float(cfg.get("learning-rate", run.get("learning-rate", 0.05))),
            optimizer=str(run.get("optimizer", "sgd")), class_weight=str(run.get("class-weight", "none")),
            proximal_mu=float(cfg.get("proximal-mu", 0.0)), seed=int(cfg.get("server-round", 0)))
        t = time.perf_counter()
        res = train_head(global_head, data.f_train, data.y_train, tc, global_head)
        seconds = time.perf_counter() - t
    except EdgefleetError as exc:
        return _decline(msg, f"{DECLINED} {exc}")
    out = trainable_arrays(res.head)
    scale = float(node.get("fault-update-scale", 1.0))
    if scale != 1.0:
        out = [g + scale * (w - g) for w, g in zip(out, trainable_arrays(global_head))]
    metrics = MetricRecord({
        "num-examples": res.num_examples,
        "train-loss": res.loss,
        "train-accuracy": res.accuracy,
        "proximal-mu": tc.proximal_mu,
        "train-seconds": seconds,
        "features-seconds": data.feature_seconds,
    })
    _log_imports(node)
    content = RecordDict({"arrays": ArrayRecord([np.asarray(a, np.float32) for a in out]), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def _personalize(msg: Message, context: Context, data: HeadData, head: Any) -> tuple[dict[str, float], ConfigRecord]:
    """FedPer-style personalisation after a run's last round: fine-tune the final global ``head`` on this
    device's training features, score both on its held-back ones, keep the local head in the agent's state
    directory when it wins (or forget an older one that lost); metrics and this device's record for the server."""
    from edgefleet.device_agent.personal import PersonalHeads

    from .head_trainer import HeadTrainConfig, personalize

    run, node = context.run_config, context.node_config
    tc = HeadTrainConfig(
        epochs=int(run.get("personal-epochs", 5)), batch_size=int(run.get("batch-size", 32)),
        learning_rate=float(run.get("learning-rate", 0.05)), optimizer=str(run.get("optimizer", "sgd")),
        class_weight=str(run.get("class-weight", "none")), seed=int(run.get("seed", 0)))
    t = time.perf_counter()
    verdict = personalize(head, data.f_train, data.y_train, data.f_hold, data.y_hold, tc,
                          float(run.get("personal-margin", 0.0)))
    seconds = time.perf_counter() - t
    base = hashlib.sha256(head.to_npz()).hexdigest()  # the head of the version this run's aggregate becomes
    root = node.get("model-store")
    stored = False
    if root:
        heads = PersonalHeads(str(root))
        if verdict.kept:
            heads.save(base=base, backbone=str(run.get("head-backbone", "")), head=verdict.head,
                       global_accuracy=verdict.global_accuracy, personal_accuracy=verdict.personal_accuracy,
                       holdout=verdict.holdout, run=str(context.run_id))
            stored = True
        else:
            heads.remove(base)
    metrics = {"global-accuracy": verdict.global_accuracy, "personal-accuracy": verdict.personal_accuracy,
               "personal-kept": float(stored), "personal-seconds": seconds}
    record = ConfigRecord({"device-id": data.device_id, "base": base, "stored": stored,
                           **{k.replace("_", "-"): v for k, v in verdict.to_dict().items()}})
    return metrics, record


def _last_round(msg: Message, context: Context) -> bool:
    cfg: Mapping[str, Any] = msg.content.config_records.get("config") or {}
    return int(cfg.get("server-round", 0) or 0) >= int(context.run_config.get("rounds", 1) or 1)


def _head_evaluate(msg: Message, context: Context) -> Message:
    from .head_trainer import evaluate_head

    setup = _head_setup(msg, context)
    if isinstance(setup, Message):
        return setup
    data, head = setup
    x, y = (data.f_hold, data.y_hold) if len(data.f_hold) else (data.f_train, data.y_train)
    loss, acc = evaluate_head(head, x, y)
    values: dict[str, Any] = {"num-examples": len(x), "eval-loss": loss, "eval-accuracy": acc}
    content = RecordDict()
    if _flag(context.run_config.get("personalize", False)) and _last_round(msg, context):
        try:
            personal, record = _personalize(msg, context, data, head)
        except EdgefleetError as exc:
            return _decline(msg, f"{DECLINED} personalisation failed: {exc}")
        values.update(personal)
        content["personal"] = record
    _log_imports(context.node_config)
    content["metrics"] = MetricRecord(values)
    return Message(content=content, reply_to=msg)


@app.train()
def train_step(msg: Message, context: Context) -> Message:
    run, node = context.run_config, context.node_config
    if run.get("head-backbone"):
        return _head_train(msg, context)
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
    if context.run_config.get("head-backbone"):
        return _head_evaluate(msg, context)
    setup = _local_setup(msg, context)
    if isinstance(setup, Message):
        return setup
    data, w = setup
    x, y = (data.x_hold, data.y_hold) if len(data.x_hold) else (data.x_train, data.y_train)
    loss, acc = evaluate(w, x, y)
    metrics = MetricRecord({"num-examples": len(x), "eval-loss": loss, "eval-accuracy": acc})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
