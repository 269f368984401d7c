"""``compile_model(source, output, config)``: the whole compiler in one call.

Order of work: read the data and the source; compute the training reference
statistics and run the SDK preprocessing on every data set; apply the Keras
passes (distill -> structured prune -> prune); export float models and check
them against the source; build, pack and measure quantized variants through
``edgefleet.load`` as the gate asks for them; pack the chosen one (signed,
with preprocessing, reference statistics, smoke tests from real eval data,
metrics and lineage) atomically; write the report beside it.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgefleet.errors import ConfigError, InvalidInputError

from .config import CompileConfig, QuantMode
from .data import Dataset, Inputs, load_data, n_samples, take
from .evaluate import (
    Score,
    VariantResult,
    describe_regressions,
    evaluate_bundle,
    file_sizes,
    measure_latency,
    predict_all,
    regressions_of,
    score_outputs,
)
from .gate import GateDecision, run_gate
from .progress import Progress
from .report import report_dir_for, rows_of, write_report
from .source import Source, check_model_file, identify, load_keras, read_sidecar

NEEDS_CALIBRATION = (QuantMode.INT8, QuantMode.INT16X8, QuantMode.AUTO)


@dataclass
class CompileResult:
    bundle_path: Path
    report_dir: Path | None
    chosen: VariantResult
    variants: list[VariantResult]
    baseline: Score | None
    gate_message: str
    report: dict[str, Any]

    @property
    def warnings(self) -> list[str]:
        return list(self.report.get("warnings", []))


def _sanitize(name: str) -> str:
    s = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip("._-")
    return s[:128] or "model"


# Reference statistics are per feature (every element of a sample) in the manifest, which the SDK caps
# at 16 MiB: a 3x320x320 image's would be ~30 MB and the bundle could not be opened. Wider inputs get none;
# histograms are kept for at most REFERENCE_HISTOGRAM_FEATURES evenly spaced features.
MAX_REFERENCE_FEATURES = 32768
REFERENCE_HISTOGRAM_FEATURES = 4096


def _reference_stats(x: np.ndarray) -> dict[str, Any] | None:
    from edgefleet.stats import compute_reference_stats

    if int(np.prod(x.shape[1:])) > MAX_REFERENCE_FEATURES:
        return None
    return compute_reference_stats(x, max_features=REFERENCE_HISTOGRAM_FEATURES)


def _single_spec(spec: Any) -> Any:
    """The pipeline spec of the single input (dicts keyed by input name hold one entry)."""
    if isinstance(spec, dict) and "steps" not in spec and len(spec) == 1:
        return next(iter(spec.values()))
    return spec


def match_name(name: str, bundle_names: list[str]) -> str:
    """The bundle input called ``name``: exactly, or as TFLite's converter spells it (``serving_default_NAME:0``)."""
    if name in bundle_names:
        return name
    for b in bundle_names:
        bare = b.split(":")[0]
        if bare == name or bare.removeprefix("serving_default_") == name:
            return b
    raise InvalidInputError(f"data array {name!r} names no input of the model; its inputs are {bundle_names}")


def _toolchain() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("edgefleet", "tensorflow", "keras", "onnxruntime", "onnx", "tf2onnx", "ai-edge-litert", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


class _Compiler:
    def __init__(self, source: str | Path, output: str | Path, cfg: CompileConfig, progress: Progress) -> None:
        self.cfg = cfg
        self.out = Path(output)
        self.progress = progress
        self.src: Source = identify(source)
        self.timings: dict[str, float] = {}
        self.passes: list[str] = []
        self._results: dict[tuple[str, str], VariantResult] = {}
        self._params = 0
        self._sparsity = 0.0
        # stateful models (see stateful.py): pairs output -> input in source names; None: unknown (SavedModel)
        self.state_pairs: dict[str, str] | None = None
        self.state_names: Any = None
        self.state_notes: dict[str, str] = {}
        self.score_index = 0
        self._recorded: dict[str, np.ndarray] | None = None
        # a trainable head (split.py): the head's float weights beside the compiled backbone
        self.head: Any = None
        self.backbone: Any = None

    # -- inputs ---------------------------------------------------------
    def _check_options(self) -> None:
        cfg, kind = self.cfg, self.src.kind
        if self.out.exists() and not cfg.output.overwrite:
            raise ConfigError(f"{self.out} already exists; remove it or pass --force")
        keras_passes = cfg.prune.enabled or cfg.structured.enabled or cfg.distill.enabled
        if keras_passes and kind != "keras":
            raise ConfigError(f"pruning and distillation need a Keras source (.keras/.h5); {self.src.path.name} is {kind}")
        if keras_passes and not cfg.data.train:
            raise ConfigError("pruning and distillation fine-tune the model: give --train DATA")
        if kind == "tflite" and cfg.quantize is not QuantMode.NONE and "tflite" in cfg.format.formats():
            raise ConfigError("a .tflite source can only be packed as it is, or converted to ONNX to be quantized: "
                              "use --quantize none, or --format onnx")
        if kind == "onnx" and "tflite" in cfg.format.formats():
            raise ConfigError("an .onnx source cannot be converted to TFLite here: use --format onnx")
        if cfg.quantize in NEEDS_CALIBRATION and not (cfg.data.calibration or cfg.data.train):
            raise ConfigError(f"--quantize {cfg.quantize.value} calibrates activation ranges: give --calibration DATA (or --train DATA)")
        if (cfg.max_accuracy_drop is not None or cfg.quantize is QuantMode.AUTO) and not cfg.data.eval:
            raise ConfigError("the accuracy gate needs held-out data: give --eval DATA")
        if cfg.head.from_output is not None and kind != "onnx":
            raise ConfigError(f"--trainable-head-from names a tensor of an ONNX source; {self.src.path.name} is {kind}"
                              + (": use --trainable-head N" if kind == "keras" else ""))
        if cfg.head.count and kind != "keras":
            raise ConfigError(f"--trainable-head N splits a Keras model (.keras/.h5); {self.src.path.name} is {kind}"
                              + (": name the tensor where the head starts with --trainable-head-from" if kind == "onnx" else ""))

    def _load_data(self) -> None:
        d = self.cfg.data
        col = d.csv_label_column
        self.train = load_data(d.train, csv_label_column=col, what="training", label=d.label) if d.train else None
        calib = (load_data(d.calibration, csv_label_column=col, what="calibration", label=d.label, require_label=False)
                 if d.calibration else self.train)
        self.calib = calib.head(d.max_calibration_samples) if calib is not None else None
        ev = load_data(d.eval, csv_label_column=col, what="eval", label=d.label) if d.eval else None
        self.eval: Dataset | None = ev.head(d.max_eval_samples) if ev is not None else None
        ref_data = self.train or self.calib or self.eval
        # reference statistics describe one input; multi-input models get none (drift checks are per single input)
        self.reference = _reference_stats(ref_data.x) if ref_data is not None and isinstance(ref_data.x, np.ndarray) else None

    def _preprocessing(self) -> None:
        from edgefleet.preprocess import Pipeline

        side = read_sidecar(self.src)
        self.prep_spec = self.cfg.preprocessing if self.cfg.preprocessing is not None else side.get("preprocessing")
        labels = self.cfg.labels if self.cfg.labels is not None else side.get("labels")
        self.labels = tuple(str(v) for v in labels) if labels else None
        spec = _single_spec(self.prep_spec)
        self.pipeline = None
        self.pipelines: dict[str, Any] = {}
        if isinstance(spec, dict) and "steps" not in spec:  # several inputs: a pipeline per input name
            self.pipelines = {k: Pipeline.from_spec(v, None) for k, v in spec.items()}
        elif spec is not None:
            self.pipeline = Pipeline.from_spec(spec, self.reference)

    def prep(self, x: Inputs, what: str) -> Inputs:
        if isinstance(x, dict):
            unknown = sorted(set(self.pipelines) - set(x))
            if unknown:
                raise InvalidInputError(f"{what} data has arrays {sorted(x)}; the preprocessing names inputs {unknown}")
            return {k: self._prep_one(v, self.pipelines.get(k), f"{what} data {k!r}") for k, v in x.items()}
        if self.pipelines:
            raise InvalidInputError(f"{what} data is one array 'x', but the preprocessing is keyed by input names "
                                    f"{sorted(self.pipelines)}: store one array per input name")
        return self._prep_one(x, self.pipeline, f"{what} data")

    @staticmethod
    def _prep_one(x: np.ndarray, pipeline: Any, what: str) -> np.ndarray:
        if pipeline is not None:
            try:
                x = pipeline.apply(x)
            except (InvalidInputError, ConfigError, ValueError) as exc:
                raise InvalidInputError(f"{what} does not fit the preprocessing: {exc}") from None
        x = np.asarray(x)
        return x.astype(np.float32) if x.dtype.kind == "f" or pipeline is not None or x.dtype == np.float64 else x

    def _check_inputs(self, names: list[str], x: Inputs, what: str, optional: Sequence[str] = ()) -> None:
        """Multi-input data must hold exactly one array per model input name (``optional``: state inputs
        the compiler can fill)."""
        if len(names) == 1 and not isinstance(x, dict):
            return
        if not isinstance(x, dict):
            raise InvalidInputError(f"the model has inputs {names}: the {what} .npz must hold one array per input name "
                                    "(and 'y' or --label KEY for labels), not 'x'")
        missing, extra = [n for n in names if n not in x and n not in optional], sorted(set(x) - set(names))
        if missing or extra:
            raise InvalidInputError(f"the {what} data has arrays {sorted(x)} but the model's inputs are {names}: "
                                    f"missing {missing}, unexpected {extra}" + (" (name the labels with --label KEY)" if extra else ""))

    def _check_shape(self, shape: tuple[int, ...], x: np.ndarray, what: str) -> None:
        got = tuple(x.shape[1:])
        if len(got) != len(shape) or any(w > 0 and g != w for g, w in zip(got, shape)):
            raise InvalidInputError(
                f"{what} data has samples of shape {got} after preprocessing, but the model takes {shape}; "
                "fix the data or add a reshape step to the preprocessing"
            )

    # -- the run ----------------------------------------------------------
    def run(self) -> CompileResult:
        self._check_options()
        t0 = time.perf_counter()
        self._load_data()
        self._preprocessing()
        from edgefleet.preprocess import Pipeline  # noqa: F401  (fail early if the SDK lacks it)

        with tempfile.TemporaryDirectory(prefix="edgefleet-compile-") as tmp:
            self.work = Path(tmp)
            self._prepare_model()
            self.timings["prepare_s"] = time.perf_counter() - t0
            decision = run_gate(self.cfg.format.formats(), self.cfg.quantize, self.cfg.max_accuracy_drop, self.evaluate)
            self.timings["variants_s"] = time.perf_counter() - t0 - self.timings["prepare_s"]
            return self._finish(decision)

    def _prepare_model(self) -> None:
        kind = self.src.kind
        self.model: Any = None
        self.float_onnx: Path | None = None
        ev = self.eval
        self.eval_x = self.prep(ev.x, "eval") if ev is not None else None
        self.calib_x = self.prep(self.calib.x, "calibration") if self.calib is not None else None
        if self.calib_x is not None and n_samples(self.calib_x) == 0:
            raise InvalidInputError("quantize: the calibration set is empty")
        self.source_outputs: list[np.ndarray] | None = None
        self.baseline: Score | None = None
        if kind == "keras":
            from .passes._train import set_seed

            set_seed(self.cfg.seed)
            self.model = load_keras(self.src)
            from .stateful import keras_signature

            self._setup_state(*keras_signature(self.model))
            names = [t.name for t in self.model.inputs]
            shapes = {t.name: tuple(int(d) if d is not None else -1 for d in t.shape[1:]) for t in self.model.inputs}
            for name, arr in (("eval", self.eval_x), ("calibration", self.calib_x)):
                if arr is not None:
                    self._check_inputs(names, arr, name, optional=self._state_inputs())
                    for k, a in (arr.items() if isinstance(arr, dict) else [(names[0], arr)]):
                        self._check_shape(shapes[k], a, name if len(names) == 1 else f"{name} {k!r}")
            if self.eval_x is not None:
                self.source_outputs = self._keras_outputs(self.eval_x)
            shape = shapes[names[0]]
            if len(names) > 1 and (self.cfg.prune.enabled or self.cfg.structured.enabled or self.cfg.distill.enabled):
                raise ConfigError(f"pruning and distillation take single-input models; this one has inputs {names}")
            self._keras_passes(shape)
            from .passes.distill import count_params
            from .passes.prune import sparsity_of

            self.backbone = self.model
            if self.cfg.head.enabled:
                self._split_head()
            self._params = count_params(self.model)
            self._sparsity = sparsity_of(self.backbone)
            self.opt_outputs = self._keras_outputs(self.eval_x) if self.eval_x is not None else None
        else:
            if kind in ("onnx", "tflite"):
                check_model_file(self.src)
                from .stateful import file_signature

                self._setup_state(*file_signature(self.src.path))
            if kind == "onnx":
                import onnx

                graph = onnx.load(str(self.src.path), load_external_data=False).graph
                inits = {t.name for t in graph.initializer}
                names = [i.name for i in graph.input if i.name not in inits]
                for what, arr in (("eval", self.eval_x), ("calibration", self.calib_x)):
                    if arr is not None:
                        self._check_inputs(names, arr, what, optional=self._state_inputs())
                if self.cfg.head.from_output is not None:
                    self._split_onnx_head()
            if kind == "savedmodel" and self.cfg.prune.enabled:
                raise ConfigError("pruning needs a Keras source")
            self.opt_outputs = None
        if self.eval is not None and self.source_outputs is not None:
            first = self.source_outputs[self.score_index]
            self.baseline = score_outputs(first, self.eval.y, self.eval.task, first)

    def _split_onnx_head(self) -> None:
        """Cut the ONNX source at --trainable-head-from: the backbone is what the variants are built from; the
        source's own outputs on the eval data are the reference the split bundles are checked and scored against."""
        import edgefleet

        from .evaluate import predict_all
        from .split_onnx import split_onnx

        if self.state_pairs:
            raise ConfigError(f"--trainable-head-from needs a stateless model; this one has state pairs {self.state_pairs}")
        self.backbone, self.head = split_onnx(self.src.path, str(self.cfg.head.from_output), self.work / "backbone.onnx")
        kinds = ", ".join(f"{layer.name} ({layer.kind})" for layer in self.head.layers)
        self.passes.append(f"trainable head from {self.cfg.head.from_output}: {kinds} kept float32 "
                           f"({self.head.n_params:,} weights), the rest is the backbone")
        if self.eval_x is not None:
            with edgefleet.load(self.src.path, threads=1) as m:
                self.source_outputs = predict_all(m, self.eval_x)

    def _split_head(self) -> None:
        from .split import split_keras

        if self.state_pairs:
            raise ConfigError(f"--trainable-head needs a stateless model; this one has state pairs {self.state_pairs}")
        self.backbone, self.head = split_keras(self.model, self.cfg.head)
        kinds = ", ".join(f"{layer.name} ({layer.kind})" for layer in self.head.layers)
        self.passes.append(f"trainable head: {kinds} kept float32 ({self.head.n_params:,} weights), the rest is the backbone")

    # -- stateful models (stateful.py) -------------------------------------
    def _state_inputs(self) -> list[str]:
        return list((self.state_pairs or {}).values())

    def _setup_state(self, inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
        """Decide the state pairs in the source's names; give eval data the initial state where it holds none,
        and calibration data the state it stores beside ``x``."""
        from .stateful import (
            StateNames,
            check_batch_first,
            complete,
            initial_states,
            resolve_pairs,
            score_index,
            states_from_file,
        )

        self.state_pairs = resolve_pairs(self.cfg.state_pairs, inputs, outputs)
        if not self.state_pairs:
            return
        self.src_inputs = tuple(inputs)
        self.score_index = score_index(outputs, self.state_pairs)
        self.state_names = StateNames(inputs, outputs, self._probe_reference)
        state_in = self._state_inputs()
        free = [s.name for s in inputs if s.name not in state_in]
        if self.eval is not None:
            x = complete(self.eval.x, free)
            if isinstance(x, dict):
                x = {**x, **states_from_file(self.eval.source, [n for n in state_in if n not in x], len(self.eval))}
                missing = [n for n in state_in if n not in x]
                check_batch_first(inputs, missing, "the initial state of every eval sample")
                x.update(initial_states(inputs, missing, len(self.eval)))
                self.state_notes["eval"] = (f"initial state (zeros) of {missing} for every eval sample" if missing
                                            else "from the eval data")
            self.eval = replace(self.eval, x=x)
            self.eval_x = self.prep(x, "eval")
        if self.calib is not None:
            x = complete(self.calib.x, free)
            if isinstance(x, dict):
                x = {**x, **states_from_file(self.calib.source, [n for n in state_in if n not in x], len(self.calib))}
                if all(n in x for n in state_in):
                    self.state_notes["calibration"] = f"from the calibration data (arrays {state_in})"
            self.calib = replace(self.calib, x=x)
            self.calib_x = self.prep(x, "calibration")

    def _probe_reference(self, probe: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The source's outputs (source order) on model-ready inputs by source name: finds outputs in converted files."""
        if self.src.kind == "keras":
            return self._keras_outputs(probe)
        import edgefleet

        with edgefleet.load(self.src.path, threads=1) as m:
            out = m.predict(probe, preprocess=False)
            return [np.asarray(out[s.name]) for s in m.manifest.outputs] if isinstance(out, dict) else [np.asarray(out)]

    def _state_for(self, model_path: Path) -> dict[str, Any]:
        """``pack``'s ``state`` argument for a converted file: the pairs in the file's own names."""
        if self.state_pairs is None:  # a SavedModel source: names as given, or pack's proposal
            pairs = self.cfg.state_pairs
            return {} if pairs is None else {"state": pairs}
        if not self.state_pairs:
            return {"state": {}}
        return {"state": self.state_names.pairs_in(model_path, self.state_pairs)}

    def _calibration(self, fmt: str) -> Inputs | None:
        """Calibration data with every state input: stored in the data, else a recorded stream of the float32
        model's session over the calibration samples (state carried), never zeros or random values."""
        calib = self.calib_x
        if not self.state_pairs or not isinstance(calib, dict):
            return calib
        missing = [n for n in self._state_inputs() if n not in calib]
        if not missing:
            return calib
        if self._recorded is None:
            from .stateful import check_batch_first, record_state_stream

            check_batch_first(self.src_inputs, missing, "a recorded stream of states")
            f32 = self.evaluate(fmt, "float32")
            assert f32.model_path is not None
            ins, _ = self.state_names.of(f32.model_path)
            self._recorded = record_state_stream(self.work / "bundles" / f32.name, {ins[k]: v for k, v in calib.items()},
                                                 {n: ins[n] for n in missing})
            self.state_notes["calibration"] = (
                f"recorded stream of {missing}: the float32 {fmt} model's session over the {n_samples(calib)} "
                "calibration samples in order, state carried from the initial state (zeros)")
        return {**calib, **self._recorded}

    def _keras_outputs(self, x: Inputs) -> list[np.ndarray]:
        """The Keras model's outputs on ``x``, as a list in ``model.outputs`` order."""
        out = self.model.predict(x, batch_size=256, verbose=0)
        if isinstance(out, dict):
            out = [out[n] for n in self.model.output_names]
        elif not isinstance(out, (list, tuple)):
            out = [out]
        return [np.asarray(o) for o in out]

    def _keras_passes(self, shape: tuple[int, ...]) -> None:
        cfg = self.cfg
        if not (cfg.prune.enabled or cfg.structured.enabled or cfg.distill.enabled):
            return
        assert self.train is not None
        prepped = self.prep(self.train.x, "training")
        # the passes take single-input models: data keyed by that one input's name is its array
        tx = next(iter(prepped.values())) if isinstance(prepped, dict) and len(prepped) == 1 else prepped
        if isinstance(tx, dict):
            raise InvalidInputError(f"pruning and distillation take one input; the training data has arrays {sorted(tx)}")
        self._check_shape(shape, tx, "training")
        ty = self.train.y
        if cfg.distill.enabled:
            from .passes.distill import count_params, distill

            student = load_keras(identify(cfg.distill.student)) if cfg.distill.student else None
            before = count_params(self.model)
            self.model = distill(self.model, tx, ty, cfg.distill, student=student,
                                 progress=self.progress.keras_callback("distill: training student", cfg.distill.epochs))
            self.passes.append(f"distill (width {cfg.distill.width:g}, params {before:,} -> {count_params(self.model):,})")
        if cfg.structured.enabled:
            from .passes.structured import structured_prune

            self.model = structured_prune(self.model, tx, ty, cfg.structured,
                                          progress=self.progress.keras_callback("structured prune: fine-tune", cfg.structured.epochs))
            self.passes.append(f"structured prune ({cfg.structured.fraction:.0%} of filters/units)")
        if cfg.prune.enabled:
            from .passes.prune import prune

            exclude: list[str] = []
            if cfg.head.enabled:  # the head stays dense: it is what later training changes
                from .split import head_layer_names

                exclude = head_layer_names(self.model, cfg.head)
            cb = self.progress.keras_callback("prune: fine-tune", cfg.prune.epochs)
            self.model = prune(self.model, tx, ty, cfg.prune, progress=cb, exclude=exclude)
            self.passes.append(f"magnitude prune ({cfg.prune.sparsity:.0%} sparsity" + (", backbone only)" if exclude else ")"))

    # -- variants -----------------------------------------------------------
    def _float_onnx(self) -> Path:
        if self.float_onnx is None:
            from .passes.export import to_onnx

            out = self.work / "float32.onnx"
            if self.src.kind == "onnx":
                shutil.copyfile(self.backbone if self.head is not None else self.src.path, out)
            elif self.src.kind == "keras":
                to_onnx(self.backbone, out, "keras")
            else:
                to_onnx(self.src.path, out, self.src.kind)
            self.float_onnx = out
        return self.float_onnx

    def build(self, fmt: str, variant: str) -> tuple[Path, dict[str, Any]]:
        out = self.work / f"{fmt}-{variant}.{fmt}"
        calib = self.calib_x
        if variant in ("int8", "int8-mixed", "int16x8"):
            if calib is None or n_samples(calib) == 0:
                raise InvalidInputError(f"quantize: {variant} needs a non-empty calibration set (--calibration DATA)")
            calib = self._calibration(fmt)
            path, notes = self._build(fmt, variant, out, calib)
            if "calibration" in self.state_notes:
                notes["state_calibration"] = self.state_notes["calibration"]
            return path, notes
        return self._build(fmt, variant, out, calib)

    def _build(self, fmt: str, variant: str, out: Path, calib: Inputs | None) -> tuple[Path, dict[str, Any]]:
        if fmt == "tflite":
            if self.src.kind == "tflite":
                shutil.copyfile(self.src.path, out)
                return out, {}
            from .passes.quantize import quantize_tflite

            target = self.backbone if self.src.kind == "keras" else self.src.path
            return quantize_tflite(target, variant, out, calib, self.cfg.quantize_options)
        from .passes.quantize import quantize_onnx

        return quantize_onnx(self._float_onnx(), variant, out, calib, self.cfg.quantize_options)

    def _pack_scratch(self, model_path: Path, name: str) -> Any:
        from edgefleet.pack import pack

        bundle, _ = pack(model_path, self.work / "bundles" / name, name=self._name(), version=self.cfg.output.version,
                         labels=self.labels, preprocessing=self.prep_spec, reference_stats=self.reference, overwrite=True,
                         head=self.head, **self._batch_axes(model_path), **self._state_for(model_path))
        return bundle

    def _batch_axes(self, model_path: Path) -> dict[str, Any]:
        """Keras models take batches on axis 0 of every input; say so, since exporters give each input's batch
        dimension its own name (``unk__74``, ``unk__75``) and pack would otherwise infer no shared batch axis."""
        if self.src.kind != "keras" or len(self.model.inputs) < 2:
            return {}
        from edgefleet.pack import manifest_for_model

        manifest, be = manifest_for_model(model_path)
        be.close()
        return {"batch_axes": {s.name: 0 for s in manifest.inputs}}

    def _name(self) -> str:
        return self.cfg.output.name or _sanitize(self.src.path.stem if self.src.path.is_file() else self.src.path.name)

    def evaluate(self, fmt: str, variant: str) -> VariantResult:
        key = (fmt, variant)
        if key in self._results:
            return self._results[key]
        if variant != "float32" and (fmt, "float32") not in self._results:
            self.evaluate(fmt, "float32")  # export check first; also gives the baseline for non-Keras sources
        with self.progress.task(f"{fmt} {variant}: convert + evaluate", 2) as advance:
            path, notes = self.build(fmt, variant)
            advance()
            bundle = self._pack_scratch(path, f"{fmt}-{variant}")
            size, gz = file_sizes(path)
            r = VariantResult(name=f"{fmt}-{variant}", format=fmt, quantization=variant, model_path=path,
                              size=size, gzip_size=gz, sparsity=self._sparsity_of(path), params=self._params, notes=notes)
            if self.eval is not None:
                assert self.eval_x is not None
                ref = self.source_outputs
                if ref is None and variant == "float32":
                    ref = None
                score, outputs, p50, p50_invoke = evaluate_bundle(
                    bundle.path, self._by_bundle_names(bundle, self.eval.x), self.eval.y, self.eval.task,
                    ref if ref is not None else self._float_reference(fmt, bundle.path), self.cfg.output.latency_runs,
                    self.score_index)
                r.score, r.outputs, r.p50_ms, r.p50_invoke_ms = score, outputs, p50, p50_invoke
                if variant == "float32":
                    self._check_export(fmt, outputs)
                if self.baseline is None:
                    self.baseline = score if variant == "float32" else self.baseline
                r.drop = score.drop_from(self.baseline) if self.baseline is not None else 0.0
            else:
                sample = self._latency_sample()
                sample = self._by_bundle_names(bundle, sample) if sample is not None else None
                r.p50_ms, r.p50_invoke_ms = measure_latency(bundle.path, sample, self.cfg.output.latency_runs)
            r.regressions = regressions_of(r, self._results.get((fmt, "float32")))
            advance()
        self._results[key] = r
        return r

    def _latency_sample(self) -> Any:
        """Without eval data: one raw calibration sample, else None (synthetic inputs of the declared shapes)."""
        if self.calib is not None:
            self.latency_input = "calibration sample"
            sample = take(self.calib.x, slice(0, 1))
            if self.state_pairs and isinstance(sample, dict):  # the stream's first step: the initial state
                from .stateful import initial_states

                missing = [n for n in self._state_inputs() if n not in sample]
                sample = {**sample, **initial_states(self.src_inputs, missing, 1)}
            return sample
        self.latency_input = "synthetic inputs of the declared shapes"
        return None

    def _float_reference(self, fmt: str, bundle_path: Path) -> list[np.ndarray]:
        """Outputs of the unmodified source on the eval data (non-Keras sources: its float32 export)."""
        if self.source_outputs is None:
            import edgefleet

            assert self.eval is not None
            with edgefleet.load(bundle_path, threads=1) as m:
                self.source_outputs = predict_all(m, self._by_bundle_names(m, self.eval.x))
        return self.source_outputs

    def _by_bundle_names(self, bundle: Any, x: Inputs) -> Inputs:
        """Data keyed by the source's input names, keyed by the bundle's (TFLite names them serving_default_NAME:0)."""
        if not isinstance(x, dict):
            return x
        names = [s.name for s in bundle.manifest.inputs]
        return {match_name(k, names): v for k, v in x.items()}

    def _check_export(self, fmt: str, outputs: list[np.ndarray]) -> None:
        from .passes.export import check_export

        ref = self.opt_outputs if self.opt_outputs is not None else self.source_outputs
        if ref is not None:
            self.export_check = getattr(self, "export_check", {})
            self.export_check[fmt] = check_export(ref, outputs, fmt)

    def _sparsity_of(self, path: Path) -> float:
        return self._sparsity if self.src.kind == "keras" else 0.0

    # -- output -------------------------------------------------------------
    def _finish(self, decision: GateDecision) -> CompileResult:
        from edgefleet.keys import load_private_key
        from edgefleet.pack import pack

        cfg, chosen = self.cfg, decision.chosen
        order = {v: i for i, v in enumerate(("float32", "float16", "dynamic", "int16x8", "int8-mixed", "int8"))}
        extra = [r for r in self._results.values() if not any(r is x for x in decision.results)]
        decision.results = sorted(decision.results + extra, key=lambda r: (r.format, order.get(r.quantization, 9)))
        assert chosen.model_path is not None
        warnings = [describe_regressions(chosen)] if chosen.regressions else []
        for w in warnings:
            self.progress.warn(f"{w}; pick another --quantize mode, or --quantize auto, which skips such variants")
        key = load_private_key(cfg.output.key) if cfg.output.key else None
        smoke: dict[str, np.ndarray] | None = None
        if self.eval_x is not None:
            scratch = self.work / "bundles" / chosen.name
            from edgefleet.bundle import open_bundle

            b, _ = open_bundle(scratch)
            first = self._by_bundle_names(b, take(self.eval_x, slice(0, 4)))
            smoke = first if isinstance(first, dict) else {b.manifest.inputs[0].name: first}
        metrics: dict[str, Any] = {
            "variant": chosen.name,
            "quantization": chosen.quantization,
            "size_bytes": chosen.size,
            "gzip_bytes": chosen.gzip_size,
            "p50_latency_ms": round(chosen.p50_ms, 4),
            "sparsity": round(chosen.sparsity, 4),
        }
        if chosen.params:
            metrics["params"] = chosen.params
        if self.head is not None:
            metrics["head_params"] = self.head.n_params
        if chosen.score is not None and self.baseline is not None:
            metrics[chosen.score.metric] = round(chosen.score.value, 4)
            metrics[f"source_{self.baseline.metric}"] = round(self.baseline.value, 4)
            metrics["accuracy_drop" if chosen.score.higher_is_better else "mae_increase"] = round(chosen.drop, 4)
            metrics["eval_samples"] = len(self.eval) if self.eval is not None else 0
        datasets = {k: {"file": Path(d.source).name, "sha256": d.fingerprint, "samples": len(d)}
                    for k, d in (("train", self.train), ("calibration", self.calib), ("eval", self.eval)) if d is not None}
        lineage = {
            "source": {"file": self.src.path.name, "kind": self.src.kind, "sha256": self.src.sha256},
            "recipe": _file_names_only(cfg.to_dict()),
            "datasets": datasets,
            "passes": self.passes,
            "variant": chosen.name,
            "gate": decision.message,
            "toolchain": _toolchain(),
            "parent_version": None,
            # the model given to compile, not the packed (quantized) file, whose hash is in the manifest's files
            "source_model_sha256": self.src.sha256,
        }
        bundle, archive = pack(
            chosen.model_path, self.out, name=self._name(), version=cfg.output.version, labels=self.labels,
            preprocessing=self.prep_spec, private_key=key, archive=cfg.output.archive, reference_stats=self.reference,
            smoke_inputs=smoke, metrics=metrics, lineage=lineage, overwrite=cfg.output.overwrite, head=self.head,
            **self._batch_axes(chosen.model_path), **self._state_for(chosen.model_path),
        )
        from edgefleet.bench import machine_info

        doc: dict[str, Any] = {
            "bundle": {"path": str(bundle.path), "name": bundle.manifest.name, "version": bundle.manifest.version,
                       "signed": key is not None, "archive": str(archive) if archive else None},
            "source": {"file": str(self.src.path), "kind": self.src.kind, "sha256": self.src.sha256},
            "baseline": None if self.baseline is None else {"metric": self.baseline.metric, "value": self.baseline.value},
            "budget": decision.budget,
            "gate": decision.message,
            "chosen": chosen.name,
            "variants": rows_of(decision.results),
            "passes": self.passes,
            "export_check": getattr(self, "export_check", {}),
            "eval_samples": len(self.eval) if self.eval is not None else 0,
            "latency_input": "eval sample" if self.eval is not None else getattr(self, "latency_input", None),
            "regressions": {r.name: r.regressions for r in decision.results if r.regressions},
            "state": ({"pairs": self.state_pairs, "bundle_pairs": {s.output: s.input for s in bundle.manifest.state},
                       "scored_output": self.score_index, **self.state_notes} if self.state_pairs else None),
            "head": None if bundle.manifest.head is None else {
                "layers": [layer.to_dict() for layer in bundle.manifest.head.layers], "input": bundle.manifest.head.input,
                "params": self.head.n_params, "bytes": bundle.manifest.files[bundle.manifest.head.file].size},
            "warnings": warnings,
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "recipe": cfg.to_dict(),
            "machine": machine_info(),
        }
        report_dir = write_report(report_dir_for(self.out), doc, cfg.to_toml()) if cfg.output.report else None
        return CompileResult(bundle.path, report_dir, chosen, decision.results, self.baseline, decision.message, doc)


def compile_model(
    source: str | Path,
    output: str | Path,
    config: CompileConfig | None = None,
    *,
    progress: bool = False,
    on_log: Callable[[str], None] | None = None,
) -> CompileResult:
    """Compile ``source`` into a bundle at ``output`` (see the module docstring).

    Raises ``ConfigError`` for bad options, ``InvalidInputError`` for bad data,
    ``CompileError`` when a pass fails, ``AccuracyBudgetError`` when no variant
    meets the budget. Nothing is left at ``output`` unless it succeeds.
    """
    cfg = config or CompileConfig()
    with Progress(progress) as prog:
        result = _Compiler(source, output, cfg, prog).run()
        if on_log is not None:
            on_log(result.gate_message)
    return result


__all__ = ["compile_model", "CompileResult"]


def _file_names_only(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe with every path replaced by its file name: a bundle goes to devices and must not
    carry the build host's paths (data files, the signing key)."""
    return {
        section: {k: Path(v).name if isinstance(v, str) and ("/" in v or "\\" in v) else v for k, v in fields.items()}
        if isinstance(fields, dict) else fields
        for section, fields in recipe.items()
    }
