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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .errors import ConfigError


@dataclass(frozen=True)
class BenchConfig:
    runs: int = 1000
    warmup: int = 50
    threads: int | None = None
    batch: int = 1
    backend: str | None = None
    compare_raw: bool = False
    block: int = 50

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


def _percentiles(samples_ns: list[int]) -> dict[str, Any]:
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


def sample_inputs(model: Any, batch: int, seed: int = 0) -> tuple[Any, list[np.ndarray]]:
    """(inputs for predict(), the same inputs prepared as the runtime takes them)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for plan in model._plans:
        spec = plan.spec
        shape = plan.pipeline.input_shape if not plan.pipeline.is_identity and plan.pipeline.input_shape else spec.sample_shape
        shape = tuple(d if d > 0 else 1 for d in shape)
        stats = model.manifest.reference_stats
        if not plan.pipeline.is_identity and stats and tuple(stats.get("shape", ())) == shape:
            mean = np.asarray(stats["mean"], dtype=np.float32).reshape(shape)
            std = np.asarray(stats["std"], dtype=np.float32).reshape(shape)
            x = mean + std * rng.standard_normal((batch,) + shape).astype(np.float32)
        elif spec.quantization is not None:
            q = spec.quantization
            x = ((rng.integers(-100, 100, size=(batch,) + shape)) * q.scale).astype(np.float32)
        else:
            x = rng.standard_normal((batch,) + shape).astype(np.float32)
        feeds[spec.name] = x
    x_in: Any = feeds if len(feeds) > 1 else next(iter(feeds.values()))
    return x_in, model.prepare(x_in)


def run_bench(target: str | os.PathLike, cfg: BenchConfig = BenchConfig()) -> dict[str, Any]:
    from .model import load

    t0 = time.perf_counter()
    model = load(target, backend=cfg.backend, threads=cfg.threads)
    init_ms = (time.perf_counter() - t0) * 1e3
    try:
        x, prepared = sample_inputs(model, cfg.batch)
        t0 = time.perf_counter()
        model.predict(x)
        first_ms = (time.perf_counter() - t0) * 1e3
        raw = model.raw_call() if cfg.compare_raw else None
        for _ in range(cfg.warmup):
            model.predict(x)
            if raw is not None:
                raw(prepared)
        predict_ns: list[int] = []
        raw_ns: list[int] = []
        clock = time.perf_counter_ns
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        predict = model.predict
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
            "config": asdict(cfg),
            "init_ms": init_ms,
            "first_inference_ms": first_ms,
            "predict": _percentiles(predict_ns),
            "throughput_per_s": cfg.batch * len(predict_ns) / (sum(predict_ns) / 1e9),
            "cpu_seconds_per_inference": cpu / calls,
            "cpu_utilisation": cpu / wall if wall else 0.0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "machine": machine_info(),
        }
        if raw is not None:
            result["raw"] = _percentiles(raw_ns)
            result["overhead_us_p50"] = result["predict"]["p50_us"] - result["raw"]["p50_us"]
            result["ratio_p50"] = result["predict"]["p50_us"] / result["raw"]["p50_us"]
            result["overhead_us_median_of_blocks"] = statistics.median(
                statistics.median(predict_ns[i : i + cfg.block]) / 1e3 - statistics.median(raw_ns[i : i + cfg.block]) / 1e3
                for i in range(0, len(predict_ns), cfg.block)
            )
        return result
    finally:
        model.close()


def format_report(r: dict[str, Any]) -> str:
    p = r["predict"]
    lines = [
        f"{r['model']['name']} v{r['model']['version']} ({r['model']['format']}, {r['model']['size_bytes']:,} bytes) on {r['runtime_version']}",
        f"machine: {r['machine']['cpu']} ({r['machine']['cores']} cores)",
        f"init {r['init_ms']:.1f} ms, first inference {r['first_inference_ms']:.2f} ms",
        f"predict latency over {r['config']['runs']} runs (batch {r['config']['batch']}): "
        f"p50 {p['p50_us']:.1f} us  p90 {p['p90_us']:.1f} us  p99 {p['p99_us']:.1f} us  max {p['max_us']:.1f} us",
        f"throughput {r['throughput_per_s']:,.0f} samples/s; CPU {r['cpu_seconds_per_inference'] * 1e6:.1f} us per inference "
        f"(utilisation {r['cpu_utilisation']:.2f}); peak RSS {r['peak_rss_mb']:.1f} MB",
    ]
    if "raw" in r:
        lines.append(
            f"raw runtime call: p50 {r['raw']['p50_us']:.1f} us; predict() overhead {r['overhead_us_p50']:.2f} us "
            f"(median of blocks {r['overhead_us_median_of_blocks']:.2f} us), ratio {r['ratio_p50']:.3f}"
        )
    return "\n".join(lines)
