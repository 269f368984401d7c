"""The compiler on real third-party models that ship inside PyPI packages (issue 3).

None of these models was trained here. Each is located inside its *installed*
package (``importlib.util.find_spec``; nothing is imported from the package and
nothing is downloaded at run time), then:

* packed as it is (``edgefleet.pack``);
* compiled with the modes that apply: ONNX sources with ``--quantize none``,
  ``float16``, ``dynamic`` and static ``int8`` (``--format onnx``); TFLite sources
  packed through the compiler (``--quantize none --format tflite``), converted to
  ONNX (tf2onnx) and quantized there, and asked for a TFLite re-quantization,
  which the compiler refuses by design (a .tflite has no float graph to requantize);
* every variant that worked is loaded with ``edgefleet.load(...)`` and compared with
  the fp32 source (the bare model file through ``edgefleet.load``) on the same
  inputs: max abs diff per output, argmax / thresholded agreement, task accuracy
  where the inputs carry labels, size and p50 single-sample ``predict`` latency.

Inputs are synthetic but shaped and normalised as the packages' own pipelines
do: rendered text lines (some turned 180 degrees, so the OCR direction
classifier has real labels), text pages for the OCR detector, tone/noise
audio frames for the VAD, and simple face-like drawings for MediaPipe.
Calibration (static int8) uses a separate draw of the same generator.

Install the models (``--no-deps``: only their data files are used)::

    pip install --no-deps rapidocr-onnxruntime==1.4.4 silero-vad==6.2.3 mediapipe==0.10.21

(``mediapipe`` 1.x wheels no longer ship the ``modules/*.tflite`` files; 0.10.21 does.
``openwakeword`` 0.6.0 ships no model files at all -- it downloads them at run time,
which this workplace forbids -- so it is not used.)

    python benchmarks/compiler_thirdparty.py [--only KEY ...] [--runs 100] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "compiler_thirdparty.json"


# ---------------------------------------------------------------- inputs
def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


_WORDS = ("edgefleet", "invoice", "TOTAL 42.50", "2026-11-27", "Model v3", "OCR test", "hello world",
          "No. 0815", "quantize", "Berlin", "ONNX int8", "device 17", "batch 256", "latency")


def _text_line(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, int]:
    """A rendered text line (RGB uint8, h x w) and its label: 0 upright, 1 turned 180 degrees."""
    from PIL import Image, ImageDraw

    text = " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 3))))
    bg = int(rng.integers(200, 256))
    img = Image.new("RGB", (w, h), (bg, bg, bg))
    draw = ImageDraw.Draw(img)
    fg = int(rng.integers(0, 70))
    draw.text((int(rng.integers(2, 12)), int(rng.integers(2, max(3, h // 5)))), text, fill=(fg, fg, fg), font=_font(int(h * 0.6)))
    label = int(rng.integers(0, 2))
    if label:
        img = img.rotate(180)
    return np.asarray(img), label


def _ocr_norm(img: np.ndarray) -> np.ndarray:
    """rapidocr cls/rec normalisation: (x/255 - 0.5) / 0.5, HWC -> CHW."""
    return ((img.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def ocr_lines(h: int, w: int) -> Callable[[int, int], tuple[dict[str, np.ndarray], np.ndarray | None]]:
    def gen(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        rng = np.random.default_rng(seed)
        pairs = [_text_line(rng, h, w) for _ in range(n)]
        return {"x": np.stack([_ocr_norm(p[0]) for p in pairs])}, np.array([p[1] for p in pairs])
    return gen


def ocr_lines_upright(h: int, w: int) -> Callable[[int, int], tuple[dict[str, np.ndarray], np.ndarray | None]]:
    def gen(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        rng = np.random.default_rng(seed)
        out: list[np.ndarray] = []
        while len(out) < n:
            img, lab = _text_line(rng, h, w)
            if lab == 0:
                out.append(_ocr_norm(img))
        return {"x": np.stack(out)}, None
    return gen


def ocr_pages(size: int) -> Callable[[int, int], tuple[dict[str, np.ndarray], np.ndarray | None]]:
    """Pages with several text lines, normalised as rapidocr's detector (ImageNet mean/std)."""
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)

    def gen(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        from PIL import Image, ImageDraw

        rng = np.random.default_rng(seed)
        xs = []
        for _ in range(n):
            bg = tuple(int(v) for v in rng.integers(190, 256, size=3))
            img = Image.new("RGB", (size, size), bg)
            d = ImageDraw.Draw(img)
            y = int(rng.integers(4, 30))
            while y < size - 30:
                text = " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 4))))
                fs = int(rng.integers(14, 30))
                d.text((int(rng.integers(4, 60)), y), text, fill=tuple(int(v) for v in rng.integers(0, 80, size=3)), font=_font(fs))
                y += fs + int(rng.integers(8, 30))
            a = np.asarray(img).astype(np.float32) / 255.0
            xs.append(((a - mean) / std).transpose(2, 0, 1))
        return {"x": np.stack(xs).astype(np.float32)}, None
    return gen


def vad_frames(samples: int = 512) -> Callable[[int, int], tuple[dict[str, np.ndarray], np.ndarray | None]]:
    """16 kHz frames: silence, noise, and voiced-like harmonic tones with syllable-rate AM."""
    def gen(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        rng = np.random.default_rng(seed)
        t = np.arange(samples) / 16000.0
        xs = []
        for i in range(n):
            kind = i % 3
            if kind == 0:
                x = rng.normal(0, 1e-3, samples)
            elif kind == 1:
                x = rng.normal(0, float(rng.uniform(0.01, 0.2)), samples)
            else:
                f0 = float(rng.uniform(90, 250))
                x = sum((np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 12)), np.zeros_like(t))
                x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) * float(rng.uniform(0.05, 0.4)) + rng.normal(0, 0.005, samples)
            xs.append(x)
        x = np.asarray(xs, np.float32)
        # silero-vad's own wrapper feeds one 512-sample frame at a time with its state and sr
        return {"input": x, "state": np.zeros((2, n, 128), np.float32), "sr": np.array(16000, np.int64)}, None
    return gen


def face_images(size: int, channels_last: bool = True, scale: str = "pm1") -> Callable[[int, int], tuple[dict[str, np.ndarray], np.ndarray | None]]:
    """Drawn face-like ellipses (skin tone, eyes, mouth) on textured backgrounds, in [-1, 1] (MediaPipe) or [0, 1]."""
    def gen(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        from PIL import Image, ImageDraw

        rng = np.random.default_rng(seed)
        xs = []
        for _ in range(n):
            base = rng.integers(0, 255, size=(size // 8, size // 8, 3)).astype(np.uint8)
            img = Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR)
            d = ImageDraw.Draw(img)
            r = int(size * rng.uniform(0.18, 0.35))
            cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
            skin = tuple(int(v) for v in (rng.integers(150, 240), rng.integers(110, 190), rng.integers(80, 160)))
            d.ellipse((cx - r, cy - int(r * 1.2), cx + r, cy + int(r * 1.2)), fill=skin)
            for ex in (cx - r // 2.5, cx + r // 2.5):
                d.ellipse((ex - r // 7, cy - r // 3 - r // 10, ex + r // 7, cy - r // 3 + r // 10), fill=(30, 30, 30))
            d.ellipse((cx - r // 3, cy + r // 2 - r // 10, cx + r // 3, cy + r // 2 + r // 10), fill=(150, 40, 40))
            a = np.asarray(img).astype(np.float32) / 255.0
            xs.append(a * 2.0 - 1.0 if scale == "pm1" else a)
        x = np.stack(xs).astype(np.float32)
        return {"x": x if channels_last else x.transpose(0, 3, 1, 2)}, None
    return gen


# ---------------------------------------------------------------- models
@dataclass
class Spec:
    key: str
    package: str          # import name
    pip: str              # what to install
    rel: str              # path inside the package
    data: Callable[[int, int], tuple[dict[str, np.ndarray], np.ndarray | None]]
    note: str = ""
    threshold: float | None = None   # binary agreement threshold for single-channel outputs (None: skip)
    calib: int = 32
    eval: int = 32
    variants: tuple[str, ...] = field(default=())


SPECS = [
    Spec("rapidocr-cls", "rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
         ocr_lines(48, 192), "PP-OCR mobile v2 text direction classifier (0/180 deg), 1x3x48x192"),
    Spec("rapidocr-det", "rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4", "models/ch_PP-OCRv4_det_infer.onnx",
         ocr_pages(320), "PP-OCRv4 text detector (DB), 1x3x320x320 -> probability map", threshold=0.3, calib=16, eval=8),
    Spec("rapidocr-rec", "rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4", "models/ch_PP-OCRv4_rec_infer.onnx",
         ocr_lines_upright(48, 320), "PP-OCRv4 text recogniser (CTC, 6625 symbols), 1x3x48x320", calib=16, eval=16),
    Spec("silero-vad", "silero_vad", "silero-vad==6.2.3", "data/silero_vad.onnx",
         vad_frames(512), "Silero VAD v6 (3 inputs: audio, LSTM state, sample rate; 2 outputs)", threshold=0.5),
    Spec("mediapipe-face-det", "mediapipe", "mediapipe==0.10.21", "modules/face_detection/face_detection_short_range.tflite",
         face_images(128), "BlazeFace short range, 1x128x128x3 -> 896 anchors (regressors, scores)", threshold=0.0),
    Spec("mediapipe-selfie-seg", "mediapipe", "mediapipe==0.10.21", "modules/selfie_segmentation/selfie_segmentation.tflite",
         face_images(256, scale="01"), "Selfie segmentation, 1x256x256x3 -> 256x256 mask", threshold=0.5, calib=16, eval=8),
]


def locate(spec: Spec) -> Path | None:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / spec.rel
    return path if path.is_file() else None


# ---------------------------------------------------------------- measuring
def _as_dict(out: Any, names: list[str]) -> dict[str, np.ndarray]:
    if isinstance(out, dict):
        return {k: np.asarray(v) for k, v in out.items()}
    return {names[0]: np.asarray(out)}


def _feed(model: Any, feeds: dict[str, np.ndarray]) -> Any:
    """Single-input models take an array; others a dict by input name (renamed to the model's names, in order)."""
    names = [i.name for i in model.inputs]
    if len(names) == 1:
        return next(iter(feeds.values()))
    vals = list(feeds.values())
    return {n: vals[i] for i, n in enumerate(names)}


def run_bundle(path: Path, feeds: dict[str, np.ndarray], runs: int) -> tuple[dict[str, np.ndarray], float]:
    """All outputs on ``feeds`` (one sample at a time, the way a device calls it) and the p50 of ``predict`` in ms."""
    import edgefleet

    with edgefleet.load(path, threads=1) as m:
        names = [o.name for o in m.outputs]
        n = len(next(iter(feeds.values())))
        per: list[dict[str, np.ndarray]] = []
        for i in range(n):
            one = {k: _slice(k, v, i) for k, v in feeds.items()}
            per.append(_as_dict(m.predict(_feed(m, one)), names))
        outs = {k: np.concatenate([p[k] for p in per], axis=1 if k == "stateN" else 0) for k in per[0]}
        one = {k: _slice(k, v, 0) for k, v in feeds.items()}
        x = _feed(m, one)
        for _ in range(20):
            m.predict(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            m.predict(x)
            times.append(time.perf_counter_ns() - t0)
    return outs, statistics.median(times) / 1e6


def _slice(name: str, v: np.ndarray, i: int) -> np.ndarray:
    if v.ndim == 0:
        return v
    if name == "state":  # silero: batch is axis 1 of the LSTM state
        return v[:, i : i + 1]
    return v[i : i + 1]


def run_native(path: Path, feeds: dict[str, np.ndarray], runs: int) -> tuple[dict[str, np.ndarray], float]:
    """Fallback when ``edgefleet.load`` refuses a model: the same per-sample loop on bare onnxruntime."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    n = len(next(iter(feeds.values())))
    per = []
    for i in range(n):
        feed = {d.name: _slice(k, v, i) for d, (k, v) in zip(s.get_inputs(), feeds.items())}
        per.append(dict(zip(names, s.run(None, feed))))
    outs = {k: np.concatenate([p[k] for p in per], axis=1 if k == "stateN" else 0) for k in names}
    return outs, native_p50(path, feeds, runs)


def measure(path: Path, feeds: dict[str, np.ndarray], runs: int, model_path: Path) -> tuple[dict[str, np.ndarray], float, str | None]:
    """(outputs, p50 ms, None) through edgefleet.load, or through bare onnxruntime with the SDK's refusal."""
    from edgefleet.errors import EdgefleetError

    try:
        outs, p = run_bundle(path, feeds, runs)
        return outs, p, None
    except EdgefleetError as exc:
        if model_path.suffix != ".onnx":
            raise
        outs, p = run_native(model_path, feeds, runs)
        return outs, p, f"{type(exc).__name__}: {exc}"


def native_p50(path: Path, feeds: dict[str, np.ndarray], runs: int) -> float:
    """p50 ms of the bare runtime (onnxruntime / LiteRT, one thread) on the first sample: the package's own way to run it."""
    one = {k: _slice(k, v, 0) for k, v in feeds.items()}
    if path.suffix == ".onnx":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {i.name: v for i, v in zip(s.get_inputs(), one.values())}
        call = lambda: s.run(None, feed)  # noqa: E731
    else:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(str(path), num_threads=1)
        it.allocate_tensors()
        idx = it.get_input_details()[0]["index"]
        x = next(iter(one.values()))

        def call() -> None:
            it.set_tensor(idx, x)
            it.invoke()
    for _ in range(20):
        call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e6


def agreement(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], threshold: float | None, y: np.ndarray | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, r in ref.items():
        if k not in got:
            out[k] = {"error": f"output {k} missing; variant has {sorted(got)}"}
            continue
        g = got[k]
        if g.shape != r.shape:
            out[k] = {"error": f"shape {g.shape} vs source {r.shape}"}
            continue
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        d: dict[str, Any] = {"max_abs_diff": float(np.max(np.abs(r64 - g64))), "ref_max_abs": float(np.max(np.abs(r64)))}
        if r.ndim >= 2 and r.shape[-1] > 1 and k not in ("stateN", "regressors"):
            d["argmax_agreement_pct"] = float(np.mean(r.argmax(-1) == g.argmax(-1)) * 100)
        elif threshold is not None and k not in ("stateN", "regressors"):
            d["threshold_agreement_pct"] = float(np.mean((r64 > threshold) == (g64 > threshold)) * 100)
        if y is not None and r.ndim == 2 and r.shape[-1] > 1:
            d["accuracy_pct"] = float(np.mean(g.argmax(-1) == y) * 100)
        out[k] = d
    return out


def _input_names(path: Path) -> list[str]:
    if path.suffix == ".onnx":
        import onnxruntime as ort

        return [i.name for i in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()]
    from ai_edge_litert.interpreter import Interpreter

    return [d["name"] for d in Interpreter(str(path)).get_input_details()]


def model_file(bundle: Path) -> Path:
    files = [p for p in bundle.rglob("*") if p.suffix in (".onnx", ".tflite")]
    if not files:
        raise FileNotFoundError(f"no model file in {bundle}")
    return max(files, key=lambda p: p.stat().st_size)


# ---------------------------------------------------------------- the run
def _compile(src: Path, out: Path, quantize: str, fmt: str, calib: Path | None) -> Path:
    from edgefleet.compiler.api import compile_model
    from edgefleet.compiler.config import CompileConfig, DataConfig, OutputConfig, OutputFormat, QuantMode

    cfg = CompileConfig(quantize=QuantMode(quantize), format=OutputFormat(fmt),
                        data=DataConfig(calibration=str(calib) if calib else None),
                        output=OutputConfig(overwrite=True, report=False))
    return compile_model(src, out, cfg).bundle_path


def variants_for(src: Path) -> list[tuple[str, str, str]]:
    """(label, --quantize, --format) per variant; ``pack`` means edgefleet.pack as-is."""
    if src.suffix == ".onnx":
        return [("pack", "", ""), ("onnx-float32", "none", "onnx"), ("onnx-float16", "float16", "onnx"),
                ("onnx-dynamic", "dynamic", "onnx"), ("onnx-int8", "int8", "onnx")]
    return [("pack", "", ""), ("tflite-as-is", "none", "tflite"), ("tflite-dynamic", "dynamic", "tflite"),
            ("onnx-float32", "none", "onnx"), ("onnx-dynamic", "dynamic", "onnx"), ("onnx-int8", "int8", "onnx")]


def bench_model(spec: Spec, src: Path, work: Path, runs: int) -> dict[str, Any]:
    from edgefleet.errors import EdgefleetError
    from edgefleet.pack import pack

    ev, y = spec.data(spec.eval, 1)
    cal, _ = spec.data(spec.calib, 2)
    calib_path = work / f"{spec.key}-calib.npz"
    np.savez(calib_path, x=next(iter(cal.values())))  # the compiler's DATA holds one input array
    doc: dict[str, Any] = {"key": spec.key, "package": spec.package, "pip": spec.pip, "file": spec.rel, "note": spec.note,
                           "source_bytes": src.stat().st_size, "eval_samples": spec.eval, "calibration_samples": spec.calib}
    ref, p50, refused = measure(src, ev, runs, src)
    doc["source"] = {"p50_ms": round(p50, 3), "native_p50_ms": round(native_p50(src, ev, runs), 3),
                     "outputs": {k: list(v.shape) for k, v in ref.items()}}
    if refused:
        doc["source"]["edgefleet_load_refused"] = refused[:500]
        print(f"  edgefleet.load refused the source ({refused[:160]}); outputs and p50 below are bare onnxruntime", flush=True)
    if y is not None and "x" in ev:
        k0 = next(iter(ref))
        doc["source"]["accuracy_pct"] = float(np.mean(ref[k0].argmax(-1) == y) * 100)
    rows = []
    for label, q, fmt in variants_for(src):
        row: dict[str, Any] = {"variant": label}
        t0 = time.perf_counter()
        try:
            out = work / f"{spec.key}-{label}"
            if label == "pack":
                # smoke-test vectors from a real sample (pack's own random ones are shaped batch-first for every input)
                smoke = {d: _slice(k, v, 0) for d, (k, v) in zip(_input_names(src), ev.items())}
                bundle, _ = pack(src, out, name=spec.key, version="1", overwrite=True, smoke_inputs=smoke)
                bpath = bundle.path
            else:
                bpath = _compile(src, out, q, fmt, calib_path if q == "int8" else None)
            row["compile_s"] = round(time.perf_counter() - t0, 2)
            mf = model_file(Path(bpath))
            row["size_bytes"] = mf.stat().st_size
            outs, p, refused = measure(Path(bpath), ev, runs, mf)
            row["p50_ms"] = round(p, 3)
            if refused:
                row["measured_with"] = "onnxruntime (edgefleet.load refused: " + refused[:300] + ")"
            row["vs_source"] = agreement(ref, outs, spec.threshold, y)
            bad = [k for k, v in row["vs_source"].items() if "error" in v]
            row["ok"] = not bad
            if bad:
                row["error"] = "; ".join(f"{k}: {row['vs_source'][k]['error']}" for k in bad)
        except EdgefleetError as exc:
            row.update(ok=False, error_type=type(exc).__name__, error=str(exc)[:500], compile_s=round(time.perf_counter() - t0, 2))
        except Exception as exc:  # not an edgefleet error: a bug to look at
            row.update(ok=False, error_type=f"UNEXPECTED {type(exc).__name__}", error=str(exc)[:500],
                       trace=traceback.format_exc()[-1500:], compile_s=round(time.perf_counter() - t0, 2))
        rows.append(row)
        print(f"  {spec.key:22s} {label:15s} {'ok' if row.get('ok') else 'FAIL'} {row.get('error_type', '')} {row.get('error', '')[:160]}",
              flush=True)
    doc["variants"] = rows
    return doc


def _summary(r: dict[str, Any]) -> str:
    if "vs_source" not in r:
        return "-"
    parts = []
    for k, v in r["vs_source"].items():
        if "error" in v:
            parts.append(f"{k}: {v['error']}")
            continue
        s = f"{k[:14]}: d={v['max_abs_diff']:.3g}"
        if "argmax_agreement_pct" in v:
            s += f" argmax {v['argmax_agreement_pct']:.1f}%"
        if "threshold_agreement_pct" in v:
            s += f" thr {v['threshold_agreement_pct']:.1f}%"
        if "accuracy_pct" in v:
            s += f" acc {v['accuracy_pct']:.1f}%"
        parts.append(s)
    return "; ".join(parts)


def print_table(results: list[dict[str, Any]]) -> None:
    print()
    print(f"{'model':22s} {'variant':15s} {'ok':4s} {'size KB':>9s} {'p50 ms':>8s} {'src p50':>8s}  agreement with the fp32 source / error")
    for m in results:
        if m.get("skipped"):
            print(f"{m['key']:22s} {'-':15s} skip  {m['skipped']}")
            continue
        src = m["source"]
        acc = f" (source acc {src['accuracy_pct']:.1f}%)" if "accuracy_pct" in src else ""
        print(f"{m['key']:22s} {'source':15s} {'':4s} {m['source_bytes'] / 1024:9.1f} {src['p50_ms']:8.3f} {'':8s}  "
              f"native runtime p50 {src['native_p50_ms']:.3f} ms{acc}")
        for r in m["variants"]:
            if r.get("ok"):
                via = " [bare ORT: edgefleet.load refused]" if r.get("measured_with") else ""
                print(f"{'':22s} {r['variant']:15s} {'yes':4s} {r['size_bytes'] / 1024:9.1f} {r['p50_ms']:8.3f} {src['p50_ms']:8.3f}  {_summary(r)}{via}")
            else:
                size = f"{r['size_bytes'] / 1024:9.1f}" if "size_bytes" in r else f"{'-':>9s}"
                print(f"{'':22s} {r['variant']:15s} {'NO':4s} {size} {'-':>8s} {'':8s}  {r.get('error_type', '')}: {r.get('error', '')[:200]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", metavar="KEY", help=f"models to run: {[s.key for s in SPECS]}")
    ap.add_argument("--runs", type=int, default=100, help="timed predict() calls per variant")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory(prefix="ef-thirdparty-") as tmp:
        for spec in SPECS:
            if args.only and spec.key not in args.only:
                continue
            src = locate(spec)
            if src is None:
                msg = f"{spec.package}/{spec.rel} not found; install it with: pip install --no-deps {spec.pip}"
                print(f"skip {spec.key}: {msg}")
                results.append({"key": spec.key, "skipped": msg})
                continue
            print(f"{spec.key}: {src}", flush=True)
            results.append(bench_model(spec, src, Path(tmp), args.runs))
    print_table(results)
    from .schema import envelope

    packages = ("onnx", "tf2onnx", "tensorflow", "rapidocr-onnxruntime", "silero-vad", "mediapipe")
    doc = {**envelope("compiler_thirdparty", False, packages), "runs": args.runs, "models": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
