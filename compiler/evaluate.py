"""Evaluate model variants exactly as a device runs them: through ``edgefleet.load``.

Each variant is packed into an unsigned scratch bundle with the recipe's
preprocessing and loaded with the SDK, so accuracy is measured on *raw* eval
data through the same preprocessing and runtime a device uses. Metrics:

* classification (integer labels): top-1 accuracy in percent; drop in points;
* regression (real targets): mean absolute error; drop = increase of the MAE;
* unlabeled data: top-1 agreement with the source model in percent (or the
  MAE to the source's outputs for non-class outputs).

Latency is the median (p50) of single-sample ``predict()`` calls with one
thread, after a warm-up, plus the p50 of the bare runtime call on the same
prepared input (what the model costs without Python-side checks). It is
measured for every variant, with or without eval data: on an eval sample, else
a calibration sample, else synthetic inputs of the model's declared shapes.

A quantized variant larger or slower than the float32 model of its format is a
*regression* (``VariantResult.regressions``, with both figures): the report
flags it, ``auto`` never chooses it and an explicit ``--quantize`` warns.
"""

from __future__ import annotations

import gzip
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgefleet.errors import InvalidInputError


@dataclass(frozen=True)
class Score:
    metric: str  # accuracy | mae | agreement
    value: float
    higher_is_better: bool

    def drop_from(self, baseline: Score) -> float:
        """How much worse than ``baseline`` (points of accuracy, or MAE units); negative = better."""
        return baseline.value - self.value if self.higher_is_better else self.value - baseline.value


@dataclass(eq=False)
class VariantResult:
    name: str
    format: str
    quantization: str
    model_path: Path | None
    size: int = 0
    gzip_size: int = 0
    score: Score | None = None
    drop: float = 0.0
    p50_ms: float = 0.0
    p50_invoke_ms: float = 0.0
    sparsity: float = 0.0
    params: int = 0
    within_budget: bool | None = None
    chosen: bool = False
    regressions: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    outputs: list[np.ndarray] | None = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        return {
            "variant": self.name,
            "format": self.format,
            "quantization": self.quantization,
            "sparsity": round(self.sparsity, 4),
            "params": self.params,
            "size_bytes": self.size,
            "gzip_bytes": self.gzip_size,
            "metric": self.score.metric if self.score else None,
            "score": None if self.score is None else round(self.score.value, 4),
            "drop": round(self.drop, 4),
            "p50_ms": round(self.p50_ms, 4),
            "p50_invoke_ms": round(self.p50_invoke_ms, 4),
            "within_budget": self.within_budget,
            "chosen": self.chosen,
            "regressions": self.regressions,
            "notes": self.notes,
        }


# p50 noise between two runs of the same tiny model is a few percent: "slower" means beyond this margin.
SLOWER_MARGIN = 0.05


def regressions_of(r: VariantResult, float32: VariantResult | None) -> dict[str, dict[str, float]]:
    """How ``r`` is worse than the float32 variant of its format: ``larger`` (bytes) and/or ``slower`` (p50)."""
    if float32 is None or r is float32 or r.model_path is None or r.quantization == "float32":
        return {}
    out: dict[str, dict[str, float]] = {}
    if float32.size and r.size > float32.size:
        out["larger"] = {"size_bytes": r.size, "float32_size_bytes": float32.size}
    if float32.p50_ms > 0 and r.p50_ms > float32.p50_ms * (1 + SLOWER_MARGIN):
        out["slower"] = {"p50_ms": round(r.p50_ms, 4), "float32_p50_ms": round(float32.p50_ms, 4)}
    return out


def describe_regressions(r: VariantResult) -> str:
    """``onnx-int8 is larger than float32 (756,136 vs 585,532 bytes) and slower (p50 12.8 vs 1.5 ms)``."""
    parts = []
    if "larger" in r.regressions:
        g = r.regressions["larger"]
        parts.append(f"larger than float32 ({g['size_bytes']:,} vs {g['float32_size_bytes']:,} bytes)")
    if "slower" in r.regressions:
        g = r.regressions["slower"]
        parts.append(f"slower than float32 (p50 {g['p50_ms']:.4g} vs {g['float32_p50_ms']:.4g} ms)")
    return f"{r.name} is " + " and ".join(parts) if parts else ""


def file_sizes(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    return len(data), len(gzip.compress(data, compresslevel=9, mtime=0))


def score_outputs(outputs: np.ndarray, y: np.ndarray | None, task: str, reference: np.ndarray | None) -> Score:
    out = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    if task == "classification" and y is not None:
        pred = out.argmax(1) if out.shape[1] > 1 else (out[:, 0] > 0.5).astype(np.int64)
        return Score("accuracy", float(np.mean(pred == y.reshape(-1).astype(np.int64)) * 100.0), True)
    if task == "regression" and y is not None:
        target = np.asarray(y, np.float64)
        if target.size != out.size:
            raise InvalidInputError(f"evaluate: the labels have shape {target.shape} but the scored output has "
                                    f"{np.shape(outputs)}; name the labels with --label KEY")
        return Score("mae", float(np.mean(np.abs(out - target.reshape(out.shape)))), False)
    if reference is None:
        raise InvalidInputError("evaluate: unlabeled eval data needs the source model's outputs to compare with")
    ref = np.asarray(reference, dtype=np.float64).reshape(out.shape)
    if out.shape[1] > 1:
        return Score("agreement", float(np.mean(out.argmax(1) == ref.argmax(1)) * 100.0), True)
    return Score("mae", float(np.mean(np.abs(out - ref))), False)


def predict_all(model: Any, x: Any, batch: int = 512) -> list[np.ndarray]:
    """Every output of ``model`` on ``x`` (an array, or a dict by input name), in the manifest's output order."""
    from .data import n_samples, take

    names = [s.name for s in model.manifest.outputs]
    parts: list[list[np.ndarray]] = []
    for i in range(0, n_samples(x), batch):
        out = model.predict(take(x, slice(i, i + batch)))
        parts.append([np.asarray(out[n]) for n in names] if isinstance(out, dict) else [np.asarray(out)])
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def align_outputs(reference: list[np.ndarray] | None, got: list[np.ndarray]) -> list[np.ndarray]:
    """``got`` reordered like ``reference`` (a converter may reorder outputs: TFLite names them
    ``StatefulPartitionedCall:N``): each reference output takes the same-shaped output nearest to it."""
    if reference is None or len(reference) != len(got) or len(got) == 1:
        return got
    return [got[i] for i in align_order(reference, got)]


def align_order(reference: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> list[int]:
    """For each reference output, the index of the same-shaped output of ``got`` nearest to it (greedy)."""
    left = list(range(len(got)))
    order = []
    for ref in reference:
        same = [i for i in left if got[i].shape == ref.shape] or left
        best = min(same, key=lambda i: float(np.mean(np.abs(np.asarray(got[i], np.float64) - ref)))
                   if got[i].shape == ref.shape else np.inf)
        order.append(best)
        left.remove(best)
    return order


def synthetic_inputs(specs: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """One model-ready input per spec, of its declared shape (a batch of one, other dynamic
    dimensions 1), in its real-valued dtype: the SDK's own synthetic inputs."""
    from edgefleet.pack import synthetic_inputs as sdk_synthetic_inputs

    return sdk_synthetic_inputs(specs, 1, seed)


def latency(model: Any, sample: Any, runs: int, warmup: int = 20, preprocess: bool = True) -> tuple[float, float]:
    """(p50 ms of ``predict`` on one sample, p50 ms of the bare runtime call)."""
    kw = {} if preprocess else {"preprocess": False}
    for _ in range(warmup):
        model.predict(sample, **kw)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        model.predict(sample, **kw)
        times.append(time.perf_counter_ns() - t0)
    p50 = statistics.median(times) / 1e6
    invoke_p50 = 0.0
    try:
        call = model.raw_call()
        arrays = model.prepare(sample, **kw)
        for _ in range(warmup):
            call(arrays)
        raw = []
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            call(arrays)
            raw.append(time.perf_counter_ns() - t0)
        invoke_p50 = statistics.median(raw) / 1e6
    except Exception:  # the bare call is a bonus figure; predict() latency is the contract
        invoke_p50 = 0.0
    return p50, invoke_p50


def evaluate_bundle(
    bundle_path: Path,
    x: Any,
    y: np.ndarray | None,
    task: str,
    reference: list[np.ndarray] | None,
    latency_runs: int,
    score_index: int = 0,
) -> tuple[Score, list[np.ndarray], float, float]:
    """Load a bundle with the SDK and return (score, outputs, p50 ms, p50 invoke ms).

    Outputs come back in ``reference``'s order; output ``score_index`` (the first non-state one of a
    stateful model) is scored against the labels."""
    import edgefleet

    from .data import take

    model = edgefleet.load(bundle_path, threads=1)
    try:
        outputs = align_outputs(reference, predict_all(model, x))
        score = score_outputs(outputs[score_index], y, task, reference[score_index] if reference is not None else None)
        p50, p50_invoke = latency(model, take(x, slice(0, 1)), latency_runs)
    finally:
        model.close()
    return score, outputs, p50, p50_invoke


def measure_latency(bundle_path: Path, sample: Any | None, latency_runs: int) -> tuple[float, float]:
    """p50s of a bundle on one raw ``sample`` (preprocessed by the bundle), or on synthetic model-ready inputs."""
    import edgefleet

    model = edgefleet.load(bundle_path, threads=1)
    try:
        if sample is not None:
            return latency(model, sample, latency_runs)
        feeds = synthetic_inputs(model.manifest.inputs)
        x = next(iter(feeds.values())) if len(feeds) == 1 else feeds
        return latency(model, x, latency_runs, preprocess=False)
    finally:
        model.close()


__all__ = ["Score", "VariantResult", "file_sizes", "score_outputs", "evaluate_bundle", "latency", "predict_all",
           "measure_latency", "synthetic_inputs", "align_outputs", "align_order", "regressions_of", "describe_regressions", "SLOWER_MARGIN"]
