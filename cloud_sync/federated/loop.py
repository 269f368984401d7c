"""Closing the loop: federated aggregate -> Keras -> compiled bundle -> gate -> signed next version.

The coordinator (which may use TensorFlow and the compiler; devices never do):

1. :func:`keras_from_weights` loads the aggregate (Keras ``Dense`` layout) into a
   ``Sequential`` and saves it as ``.keras``;
2. :func:`compile_candidate` compiles it with the recipe of the deployed version
   (read from its manifest's lineage) through :func:`edgefleet.compiler.compile_model`,
   unsigned, into a scratch directory;
3. :func:`bundle_accuracy` scores candidate and deployed bundle on the coordinator's
   holdout through ``edgefleet.load`` - the code devices run;
4. :func:`close_loop` signs the candidate as the next version only if it beats the
   deployed one by ``margin``; the result names the signed bundle, which the cloud
   sync deployment path (another module) rolls out: see :func:`promote_aggregate`.

A deployed bundle with a trainable head takes another road, :func:`close_head_loop`: nothing
is recompiled. The aggregate is the head's trainable arrays; the candidate is the deployed
bundle with that head (:func:`edgefleet.headupdate.update_head`: the backbone's files byte for
byte, so its pruning and int8 stay), scored on the holdout through ``edgefleet.load`` against
the deployed bundle, and signed as the next version with its lineage. No TensorFlow either.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgefleet.errors import ConfigError

from .trainer import MLPSpec


def keras_from_weights(weights: Sequence[np.ndarray], spec: MLPSpec) -> Any:
    """A Keras ``Sequential`` of ``Dense`` layers (ReLU, softmax last) holding ``weights``."""
    import keras

    layers: list[Any] = [keras.Input(shape=(spec.n_inputs,), name="x")]
    widths = spec.layers[1:]
    for i, n in enumerate(widths):
        last = i == len(widths) - 1
        layers.append(keras.layers.Dense(n, activation="softmax" if last else "relu", name=f"dense_{i}"))
    model = keras.Sequential(layers)
    model.set_weights([np.asarray(w, np.float32) for w in spec.check(weights)])
    return model


def weights_from_keras(path: str | Path) -> tuple[list[np.ndarray], MLPSpec]:
    """Weights and layer spec of a Keras ``Sequential`` of ``Dense`` layers (the deployed source)."""
    import keras

    model = keras.models.load_model(str(path), compile=False)
    weights = [np.asarray(w, np.float32) for w in model.get_weights()]
    if len(weights) % 2 or any(w.ndim != 2 for w in weights[0::2]):
        raise ConfigError(f"{path} is not a stack of Dense layers; federated training needs the Dense layout")
    spec = MLPSpec(tuple([int(weights[0].shape[0])] + [int(w.shape[1]) for w in weights[0::2]]))
    return spec.check(weights), spec


def load_weights(path: str | Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return [np.asarray(z[f"arr_{i}"]) for i in range(len(z.files))]


def save_keras(weights: Sequence[np.ndarray], spec: MLPSpec, path: str | Path) -> Path:
    p = Path(path)
    keras_from_weights(weights, spec).save(str(p))
    return p


def _next_version(version: str) -> str:
    from edgefleet.manifest import parse_version

    parse_version(version)
    parts = [int(p) for p in version.split(".")]
    parts[-1] += 1
    return ".".join(str(p) for p in parts)


def _manifest(bundle: str | Path) -> Any:
    from edgefleet.bundle import open_bundle

    b, _ = open_bundle(Path(bundle))
    return b.manifest


def bundle_accuracy(bundle: str | Path, x: np.ndarray, y: np.ndarray, trusted_keys: Sequence[Any] | None = None) -> float:
    """Accuracy of a bundle on raw inputs ``x`` (its own preprocessing applies), through ``edgefleet.load``."""
    import edgefleet
    from edgefleet.compiler.evaluate import predict_all

    with edgefleet.load(bundle, trusted_keys=list(trusted_keys) if trusted_keys else None, threads=1) as m:
        out = predict_all(m, np.asarray(x, np.float32))[0]  # the first output holds the class scores
    return float(np.mean(out.reshape(len(out), -1).argmax(axis=1) == np.asarray(y).reshape(-1)))


def compile_candidate(keras_path: str | Path, out: str | Path, holdout_npz: str | Path, *, deployed: str | Path | None,
                      version: str, recipe: Any = None, private_key: str | None = None, name: str | None = None,
                      preprocessing: Any = None) -> Path:
    """Compile the aggregate with the deployed version's recipe (or ``recipe``); returns the bundle path."""
    from edgefleet.compiler import CompileConfig, compile_model

    base: dict[str, Any] = {}
    man = _manifest(deployed) if deployed else None
    if recipe is not None:
        base = recipe.to_dict() if hasattr(recipe, "to_dict") else dict(recipe)
    elif man is not None and isinstance(man.lineage, dict) and isinstance(man.lineage.get("recipe"), dict):
        base = json.loads(json.dumps(man.lineage["recipe"]))
    base.setdefault("output", {})
    base.setdefault("data", {})
    base["output"].update({"version": version, "key": private_key, "overwrite": True, "report": False,
                           "name": name or (man.name if man is not None else "federated")})
    base["data"].update({"eval": str(holdout_npz)})
    base["data"]["calibration"] = _local_data_file(base["data"].get("calibration"), Path(holdout_npz))
    base["data"]["train"] = None
    for p in ("prune", "structured", "distill"):  # passes that fine-tune need the training data the cloud lacks
        base.pop(p, None)
    if preprocessing is not None:
        base["preprocessing"] = preprocessing
    elif man is not None and base.get("preprocessing") is None and man.preprocessing:
        base["preprocessing"] = json.loads(json.dumps(dict(man.preprocessing)))
    if base.get("max_accuracy_drop") is None:
        base.pop("max_accuracy_drop", None)
    cfg = CompileConfig.from_dict(base, "federated recipe")
    if cfg.quantize.value not in ("none",) and not cfg.data.calibration:
        cfg = cfg.with_overrides({"data.calibration": str(holdout_npz)})
    return compile_model(keras_path, out, cfg).bundle_path


def _local_data_file(name: Any, holdout_npz: Path) -> str | None:
    """A data file the recipe names, found on this host: a bundle's lineage records file names only
    (no build-host paths), so the name is looked up beside the holdout, then in the working
    directory; ``None`` (calibrate on the holdout) when neither has it."""
    if not isinstance(name, str) or not name:
        return None
    for candidate in (Path(name), holdout_npz.parent / Path(name).name, Path(Path(name).name)):
        if candidate.is_file():
            return str(candidate)
    return None


@dataclass(frozen=True)
class LoopResult:
    promoted: bool
    reason: str
    candidate_accuracy: float
    deployed_accuracy: float | None
    margin: float
    version: str | None
    bundle: str | None  # the signed next version when promoted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sign_with_lineage(scratch: str | Path, out: str | Path, private_key: str, lineage: Mapping[str, Any]) -> Path:
    """Write the unsigned bundle ``scratch`` to ``out`` with ``lineage`` merged into its manifest, signed."""
    from dataclasses import replace

    from edgefleet.bundle import read_manifest, write_bundle
    from edgefleet.keys import load_private_key
    from edgefleet.manifest import MANIFEST_NAME

    man, _ = read_manifest(scratch)
    man = replace(man, lineage={**dict(man.lineage), **dict(lineage)})
    files = {name: Path(scratch) / name for name in man.files if name != MANIFEST_NAME}
    return write_bundle(out, man, files, private_key=load_private_key(private_key), overwrite=True).path


def close_loop(
    aggregate: str | Path | Sequence[np.ndarray],
    spec: MLPSpec,
    holdout_npz: str | Path,
    out: str | Path,
    *,
    private_key: str,
    deployed: str | Path | None = None,
    margin: float = 0.01,
    recipe: Any = None,
    preprocessing: Any = None,
    name: str | None = None,
    trusted_keys: Sequence[Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> LoopResult:
    """Compile the aggregate, score it and the deployed bundle on the holdout, sign it as the next
    version at ``out`` only when ``candidate >= deployed + margin``. ``out`` is untouched otherwise.

    The signed manifest's lineage names ``parent_version`` (the deployed version it beat) and carries
    ``lineage`` (e.g. ``{"federated": {"run_id", "rounds", "strategy", ...}}``)."""
    weights = load_weights(aggregate) if isinstance(aggregate, (str, Path)) else list(aggregate)
    with np.load(holdout_npz, allow_pickle=False) as z:
        hx, hy = np.asarray(z["x"]), np.asarray(z["y"])
    man = _manifest(deployed) if deployed else None
    version = _next_version(man.version) if man is not None else "1"
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="edgefleet-loop-") as tmp:
        kpath = save_keras(weights, spec, Path(tmp) / "aggregate.keras")
        scratch = compile_candidate(kpath, Path(tmp) / "candidate", holdout_npz, deployed=deployed, version=version,
                                    recipe=recipe, private_key=None, name=name, preprocessing=preprocessing)
        cand = bundle_accuracy(scratch, hx, hy)
        dep = bundle_accuracy(deployed, hx, hy, trusted_keys) if deployed else None
        if dep is not None and cand < dep + margin:
            return LoopResult(False, f"candidate {cand:.4f} does not beat deployed {dep:.4f} by {margin:.4f}",
                              cand, dep, margin, None, None)
        extra = {"parent_version": man.version if man is not None else None,
                 "parent_name": man.name if man is not None else None,
                 "gate": {"candidate_accuracy": cand, "deployed_accuracy": dep, "margin": margin}, **dict(lineage or {})}
        sign_with_lineage(scratch, out, private_key, extra)
    reason = f"candidate {cand:.4f} beats deployed {dep:.4f} by >= {margin:.4f}" if dep is not None else "no deployed version"
    return LoopResult(True, reason, cand, dep, margin, version, str(out))


def close_head_loop(
    aggregate: str | Path | Sequence[np.ndarray],
    deployed: str | Path,
    holdout_npz: str | Path,
    out: str | Path,
    *,
    private_key: str,
    margin: float = 0.01,
    trusted_keys: Sequence[Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> LoopResult:
    """The deployed head bundle with the aggregated head (its trainable arrays, :mod:`.head_trainer` order),
    scored with the SDK on the holdout against the deployed bundle, signed as the next version at ``out`` only
    when ``candidate >= deployed + margin`` (``out`` untouched otherwise). The backbone is not recompiled: the
    next version's backbone files are the deployed ones, byte for byte. Its lineage names the deployed version
    (``parent_version``, ``head_update``) and carries ``lineage`` and the gate's figures."""
    from edgefleet.bundle import open_bundle
    from edgefleet.head import Head
    from edgefleet.headupdate import update_head
    from edgefleet.keys import load_private_key

    from .head_trainer import with_trainable

    arrays = load_weights(aggregate) if isinstance(aggregate, (str, Path)) else list(aggregate)
    b, tmp = open_bundle(Path(deployed), list(trusted_keys) if trusted_keys else None)
    try:
        man = b.manifest
        if man.head is None:
            raise ConfigError(f"{deployed}: {man.name} v{man.version} has no trainable head")
        base_head = Head.from_npz((b.path / man.head.file).read_bytes(), man.head.layers, what=f"the head of {deployed}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    head = with_trainable(base_head, arrays)
    with np.load(holdout_npz, allow_pickle=False) as z:
        hx, hy = np.asarray(z["x"]), np.asarray(z["y"])
    version = _next_version(man.version)
    keys = list(trusted_keys) if trusted_keys else None
    with tempfile.TemporaryDirectory(prefix="edgefleet-loop-") as work:
        candidate, _ = update_head(deployed, head, Path(work) / "candidate", version=version, trusted_keys=keys)
        cand = bundle_accuracy(candidate.path, hx, hy)
    dep = bundle_accuracy(deployed, hx, hy, trusted_keys)
    if cand < dep + margin:
        return LoopResult(False, f"candidate {cand:.4f} does not beat deployed {dep:.4f} by {margin:.4f}",
                          cand, dep, margin, None, None)
    extra = {"parent_name": man.name, "gate": {"candidate_accuracy": cand, "deployed_accuracy": dep, "margin": margin},
             **dict(lineage or {})}
    bundle, _ = update_head(deployed, head, out, version=version, private_key=load_private_key(private_key),
                            trusted_keys=keys, overwrite=True, lineage=extra)
    return LoopResult(True, f"candidate {cand:.4f} beats deployed {dep:.4f} by >= {margin:.4f}", cand, dep, margin,
                      version, str(bundle.path))


def promote_head_aggregate(run_doc: dict[str, Any], deployed: str | Path, holdout_npz: str | Path, out: str | Path,
                           **kwargs: Any) -> LoopResult:
    """:func:`close_head_loop` on the result of a head run of :func:`~.runner.run_federated`."""
    if not run_doc.get("aggregate"):
        raise ConfigError("the federated run produced no aggregate")
    return close_head_loop(run_doc["aggregate"], deployed, holdout_npz, out, **kwargs)


def promote_aggregate(run_doc: dict[str, Any], spec: MLPSpec, holdout_npz: str | Path, out: str | Path, **kwargs: Any) -> LoopResult:
    """:func:`close_loop` on the result of :func:`~.runner.run_federated` (the hook cloud sync calls before a rollout)."""
    if not run_doc.get("aggregate"):
        raise ConfigError("the federated run produced no aggregate")
    return close_loop(run_doc["aggregate"], spec, holdout_npz, out, **kwargs)


__all__ = ["keras_from_weights", "weights_from_keras", "save_keras", "load_weights", "bundle_accuracy",
           "compile_candidate", "sign_with_lineage", "close_loop", "promote_aggregate", "close_head_loop",
           "promote_head_aggregate", "LoopResult"]
