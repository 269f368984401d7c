"""``edgefleet bench``: latency, throughput, CPU time and memory of a model on this machine.

With ``compare_raw`` the bare runtime call (set input, invoke, read output) is
timed on the same prepared inputs in the same run, interleaved with
``predict()`` in alternating blocks so machine noise hits both alike; the
report gives the median overhead in microseconds and the ratio of medians.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ._version import __version__
from .errors import ConfigError

if TYPE_CHECKING:  # .model is imported where a model is loaded
    from .model import Model


@dataclass(frozen=True)
class BenchConfig:
    runs: int = 1000
    warmup: int = 50
    threads: int | None = None
    batch: int = 1
    backend: str | None = None
    compare_raw: bool = False
    block: int = 50
    #: full shapes of inputs (``NAME -> dims``) for models with dynamic dimensions
    input_shapes: Mapping[str, tuple[int, ...]] | None = None
    #: real inputs: an .npz with one array per input name (used as given)
    sample: str | None = None
    #: time a stateful streaming loop (``Session.predict``, state carried) instead of predict
    session: bool = False

    def __post_init__(self) -> None:
        if self.runs < 1 or self.warmup < 0 or self.batch < 1 or self.block < 1:
            raise ConfigError("runs and batch must be >= 1 and warmup >= 0")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "edgefleet": __version__,
        "platform": platform.platform(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def percentiles(samples_ns: list[int]) -> dict[str, Any]:
    """Latency figures in microseconds from samples in nanoseconds."""
    arr = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return {
        "p50_us": float(np.percentile(arr, 50)),
        "p90_us": float(np.percentile(arr, 90)),
        "p99_us": float(np.percentile(arr, 99)),
        "max_us": float(arr.max()),
        "mean_us": float(arr.mean()),
        # the distribution: latency at every whole percentile 0..100
        "quantiles_us": [round(float(v), 3) for v in np.percentile(arr, np.arange(101))],
    }


def sample_inputs(
    model: Any,
    batch: int,
    seed: int = 0,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    sample: Mapping[str, np.ndarray] | None = None,
    skip: Sequence[str] = (),
) -> tuple[Any, list[np.ndarray]]:
    """(inputs for predict(), the same inputs prepared as the runtime takes them).

    Inputs come from ``sample`` (by input name, as given), else are synthetic: ``batch``
    samples along each batch axis, the shapes in ``input_shapes`` as given. A dynamic
    dimension that neither fixes is refused (``ConfigError`` naming it): timing a model at
    a made-up size says nothing. ``skip`` names inputs fed elsewhere (session state).
    """
    from .pack import synthetic_inputs

    names = [s.name for s in model.inputs if s.name not in skip]
    if sample is not None:
        missing = [n for n in names if n not in sample]
        if missing:
            raise ConfigError(f"--sample lacks inputs {missing}; it must hold one array per input name {names}")
        feeds = {n: np.asarray(sample[n]) for n in names}
    else:
        unknown = sorted(set(input_shapes or {}) - {s.name for s in model.inputs})
        if unknown:
            raise ConfigError(f"--input-shape names unknown inputs {unknown}; inputs are {[s.name for s in model.inputs]}")
        rng = np.random.default_rng(seed)
        feeds = {}
        dynamic: list[str] = []
        for plan in model._plans:
            spec = plan.spec
            if spec.name in skip:
                continue
            given = (input_shapes or {}).get(spec.name)
            if given is not None:
                spec = replace(spec, shape=tuple(given), dims=None, batch_axis=None)
                feeds[spec.name] = synthetic_inputs([spec], batch, seed)[spec.name]
                continue
            win = plan.pipeline._window
            if win is not None:  # a stream: enough samples for ``batch`` windows
                feats = tuple(max(d, 1) for d in (plan.pipeline.input_shape or spec.sample_shape[1:]))
                feeds[spec.name] = rng.standard_normal((win.size + win.hop * (batch - 1),) + feats).astype(np.float32)
                continue
            if not plan.pipeline.is_identity and plan.pipeline.input_shape:
                shape = tuple(plan.pipeline.input_shape)
                stats = model.manifest.reference_stats
                if stats and tuple(stats.get("shape", ())) == shape:
                    mean = np.asarray(stats["mean"], dtype=np.float32).reshape(shape)
                    std = np.asarray(stats["std"], dtype=np.float32).reshape(shape)
                    feeds[spec.name] = mean + std * rng.standard_normal((batch,) + shape).astype(np.float32)
                else:
                    feeds[spec.name] = rng.standard_normal((batch,) + shape).astype(np.float32)
                continue
            dynamic += [d for i, d in zip(range(spec.rank), _dyn_axes(spec)) if d]
            if spec.quantization is not None:
                q = spec.quantization
                shape = tuple(batch if i == spec.batch_axis else max(d, 1) for i, d in enumerate(spec.shape))
                feeds[spec.name] = ((rng.integers(-100, 100, size=shape)) * q.scale).astype(np.float32)
            else:
                feeds[spec.name] = synthetic_inputs([spec], batch, seed)[spec.name]
        if dynamic:
            raise ConfigError(
                f"the model has dynamic dimensions {dynamic}: pass --input-shape NAME=DIMS (e.g. "
                f"{model.inputs[0].name}=1x3x224x224) or --sample FILE.npz to time it at a real size"
            )
    x_in: Any = feeds if len(feeds) != 1 else next(iter(feeds.values()))
    if skip:
        return x_in, []
    return x_in, model.prepare(x_in)


def _dyn_axes(spec: Any) -> list[str | None]:
    """Per axis: the name of a dynamic dimension other than the batch axis, else None."""
    return [
        (spec.dim_name(i) or f"{spec.name}[{i}]") if d == -1 and i != spec.batch_axis else None
        for i, d in enumerate(spec.shape)
    ]


def read_sample(path: str) -> dict[str, np.ndarray]:
    """An .npz of named arrays (never unpickled)."""
    from .errors import InvalidInputError

    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise InvalidInputError(f"{path}: expected an .npz with one array per input name")
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read sample inputs {path}: {exc}") from None


def run_bench(target: str | os.PathLike[str], cfg: BenchConfig = BenchConfig()) -> dict[str, Any]:
    from .model import load

    t0 = time.perf_counter()
    model = load(target, backend=cfg.backend, threads=cfg.threads)
    init_ms = (time.perf_counter() - t0) * 1e3
    try:
        sample = read_sample(cfg.sample) if cfg.sample else None
        if cfg.session:
            if not model.stateful:
                raise ConfigError(f"{model.name} is not stateful (no state pairs or variables): drop --session")
            state_names = [st.input for st in model.manifest.state]
            x, _ = sample_inputs(model, cfg.batch, 0, cfg.input_shapes, sample, skip=state_names)
            sess = model.session()
            predict: Any = sess.predict
            raw = _raw_session(model, x) if cfg.compare_raw else None
            prepared: Any = None
        else:
            x, prepared = sample_inputs(model, cfg.batch, 0, cfg.input_shapes, sample)
            predict = model.predict
            raw = model.raw_call() if cfg.compare_raw else None
        t0 = time.perf_counter()
        predict(x)
        first_ms = (time.perf_counter() - t0) * 1e3
        for _ in range(cfg.warmup):
            predict(x)
            if raw is not None:
                raw(prepared)
        predict_ns: list[int] = []
        raw_ns: list[int] = []
        clock = time.perf_counter_ns
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        done = 0
        while done < cfg.runs:
            n = min(cfg.block, cfg.runs - done)
            for _ in range(n):
                s = clock()
                predict(x)
                predict_ns.append(clock() - s)
            if raw is not None:
                for _ in range(n):
                    s = clock()
                    raw(prepared)
                    raw_ns.append(clock() - s)
            done += n
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        calls = len(predict_ns) + len(raw_ns)
        size = sum(e.size for e in model.manifest.files.values())
        result: dict[str, Any] = {
            "target": str(target),
            "model": {"name": model.name, "version": model.version, "format": model.manifest.model_format.value, "size_bytes": size},
            "backend": model.backend_name,
            "runtime_version": model.runtime_version,
            "config": {**asdict(cfg), "input_shapes": {k: list(v) for k, v in (cfg.input_shapes or {}).items()}},
            "inputs": {k: list(np.shape(v)) for k, v in (x.items() if isinstance(x, dict) else [(_only_input(model, cfg.session), x)])},
            "init_ms": init_ms,
            "first_inference_ms": first_ms,
            "predict": percentiles(predict_ns),
            "throughput_per_s": cfg.batch * len(predict_ns) / (sum(predict_ns) / 1e9),
            "cpu_seconds_per_inference": cpu / calls,
            "cpu_utilisation": cpu / wall if wall else 0.0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "machine": machine_info(),
        }
        if raw is not None:
            result["raw"] = percentiles(raw_ns)
            result["overhead_us_p50"] = result["predict"]["p50_us"] - result["raw"]["p50_us"]
            result["ratio_p50"] = result["predict"]["p50_us"] / result["raw"]["p50_us"]
            result["overhead_us_median_of_blocks"] = statistics.median(
                statistics.median(predict_ns[i : i + cfg.block]) / 1e3 - statistics.median(raw_ns[i : i + cfg.block]) / 1e3
                for i in range(0, len(predict_ns), cfg.block)
            )
        return result
    finally:
        model.close()


def _only_input(model: Model, session: bool) -> str:
    state: set[str] = {st.input for st in model.manifest.state} if session else set()
    return next(s.name for s in model.inputs if s.name not in state)


def _raw_session(model: Any, x: Any) -> Any:
    """The bare runtime loop a session stands for: prepared inputs, the state outputs fed
    back by hand as the next call's state inputs (in the runtime's own dtypes)."""
    state = model.manifest.state
    names = [s.name for s in model.inputs]
    out_index = {s.name: i for i, s in enumerate(model.outputs)}
    feeds = dict(x) if isinstance(x, dict) else {_only_input(model, True): x}
    for st in state:
        feeds[st.input] = model._initial_for(st.input, None, None)
    arrays = model.prepare(feeds)
    call = model.raw_call()
    pairs = [(names.index(st.input), out_index[st.output]) for st in state]

    def loop(_: Any) -> Any:
        outs = call(arrays)
        for i, j in pairs:
            arrays[i] = outs[j]
        return outs

    return loop


def format_report(r: dict[str, Any]) -> str:
    p = r["predict"]
    lines = [
        f"{r['model']['name']} v{r['model']['version']} ({r['model']['format']}, {r['model']['size_bytes']:,} bytes) on {r['runtime_version']}",
        f"machine: {r['machine']['cpu']} ({r['machine']['cores']} cores)",
        f"init {r['init_ms']:.1f} ms, first inference {r['first_inference_ms']:.2f} ms",
        "inputs " + ", ".join(f"{k}{tuple(v)}" for k, v in r.get("inputs", {}).items()),
        f"{'session step' if r['config'].get('session') else 'predict'} latency over {r['config']['runs']} runs (batch {r['config']['batch']}): "
        f"p50 {p['p50_us']:.1f} us  p90 {p['p90_us']:.1f} us  p99 {p['p99_us']:.1f} us  max {p['max_us']:.1f} us",
        f"throughput {r['throughput_per_s']:,.0f} samples/s; CPU {r['cpu_seconds_per_inference'] * 1e6:.1f} us per inference "
        f"(utilisation {r['cpu_utilisation']:.2f}); peak RSS {r['peak_rss_mb']:.1f} MB",
    ]
    if "raw" in r:
        lines.append(
            f"raw runtime call: p50 {r['raw']['p50_us']:.1f} us; {'session step' if r['config'].get('session') else 'predict()'} overhead {r['overhead_us_p50']:.2f} us "
            f"(median of blocks {r['overhead_us_median_of_blocks']:.2f} us), ratio {r['ratio_p50']:.3f}"
        )
    return "\n".join(lines)
