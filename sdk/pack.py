"""Pack a ``.tflite``/``.onnx`` model into a (signed) bundle, reading its specs from the model."""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ._version import __version__
from .bundle import Bundle, write_archive, write_bundle
from .canonical import sha256_file
from .errors import ConfigError, EdgefleetError, SampleRequiredError
from .head import HEAD_FILE, Head
from .keys import PrivateKey
from .manifest import (
    HEAD_FORMAT_VERSION,
    FileEntry,
    HeadSpec,
    Manifest,
    StateSpec,
    Target,
    TensorSpec,
    check_name,
    parse_version,
    with_batch_axes,
)
from .preprocess import Pipeline
from .runtime import Backend, format_of, open_backend

SMOKE_SEED = 20240601


def manifest_for_model(
    model_path: str | os.PathLike[str],
    name: str | None = None,
    version: str = "0",
    backend: str | None = None,
    threads: int | None = None,
    batch_axes: Mapping[str, int | None] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    finite: bool | Sequence[str] = True,
) -> tuple[Manifest, Backend]:
    """A minimal manifest read off the model file itself (used for bare model files):
    the signatures with their inferred batch axes, then the overrides. ``finite``: whether
    inputs refuse NaN/inf (True: all, False: none, or the names of those that may hold them)."""
    path = Path(model_path)
    fmt = format_of(path)
    be = open_backend(path, fmt, backend=backend, threads=threads)
    try:
        inputs, outputs = signatures(be, batch_axes, input_shapes)
        if finite is not True:
            lifted = [s.name for s in inputs] if finite is False else list(finite)
            unknown = sorted(set(lifted) - {s.name for s in inputs})
            if unknown:
                raise ConfigError(f"--allow-non-finite names unknown inputs {unknown}; inputs are {[s.name for s in inputs]}")
            inputs = tuple(replace(s, finite=s.name not in lifted) for s in inputs)
    except BaseException:
        be.close()
        raise
    digest, size = sha256_file(str(path))
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in path.stem) or "model"
    manifest = Manifest(
        name=name or stem,
        version=version,
        model_file=f"model.{fmt.value}",
        model_format=fmt,
        inputs=inputs,
        outputs=outputs,
        files={f"model.{fmt.value}": FileEntry(digest, size)},
        target=Target(runtime=fmt.runtime, min_agent_version=__version__),
        stateful_variables=be.has_variables,
    )
    return manifest, be


def signatures(
    be: Backend,
    batch_axes: Mapping[str, int | None] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The model's inputs and outputs with batch axes inferred, then overridden.

    ``input_shapes`` narrows an input's declared shape (each dimension must fit the model's:
    a fixed dimension stays, a dynamic one may be fixed or stay -1). ``batch_axes`` sets an
    input's batch axis (``None``: none); outputs keep the inferred ones unless every input's
    batch axis was turned off, which turns theirs off too.
    """
    inputs, outputs = with_batch_axes(be.inputs, be.outputs)
    names = [s.name for s in inputs]
    for what, table in (("--input-shape", input_shapes), ("--batch-axis", batch_axes)):
        unknown = sorted(set(table or {}) - set(names))
        if unknown:
            raise ConfigError(f"{what} names unknown inputs {unknown}; inputs are {names}")
    new_inputs = []
    for spec in inputs:
        if input_shapes and spec.name in input_shapes:
            shape = tuple(int(d) for d in input_shapes[spec.name])
            if len(shape) != spec.rank or any(
                (d < 1 and d != -1) or (m > 0 and d != m) for d, m in zip(shape, spec.shape)
            ):
                raise ConfigError(
                    f"--input-shape {spec.name}={'x'.join(str(d) for d in shape)} does not fit the model's "
                    f"input {spec.shape_text()}"
                )
            spec = replace(spec, shape=shape, dims=tuple(n if d == -1 else None for n, d in zip(spec.dims or (None,) * len(shape), shape)))
        if batch_axes and spec.name in batch_axes:
            ax = batch_axes[spec.name]
            if ax is not None and not 0 <= ax < spec.rank:
                raise ConfigError(f"--batch-axis {spec.name}={ax}: the input has rank {spec.rank}, axes 0..{spec.rank - 1}")
            spec = replace(spec, batch_axis=ax)
        new_inputs.append(spec)
    if batch_axes and all(s.batch_axis is None for s in new_inputs):
        outputs = tuple(replace(s, batch_axis=None) for s in outputs)
    elif batch_axes:
        # an input given a batch axis the model did not show: outputs whose axis 0 is
        # dynamic share it
        outputs = tuple(
            replace(s, batch_axis=0) if s.batch_axis is None and s.rank >= 1 and s.shape[0] == -1 else s for s in outputs
        )
    return tuple(new_inputs), outputs


_STATE_NAME_PAIRS = (
    ("state", "stateN"),
    ("state", "state_out"),
    ("state_in", "state_out"),
    ("h0", "hn"),
    ("c0", "cn"),
    ("h_in", "h_out"),
    ("c_in", "c_out"),
    ("hidden", "hidden_out"),
)


def _digits_free(name: str) -> tuple[str, str]:
    """``state2`` -> (``state``, ``2``): numbered states pair up by number."""
    core = name.rstrip("0123456789")
    return core, name[len(core) :]


def propose_state_pairs(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> dict[str, str]:
    """State pairs (output -> input) read off names and shapes: ``state``/``stateN``,
    ``h0``/``hn``, ``c0``/``cn``, ``X_in``/``X_out`` (also with a prefix such as
    ``gru/h0``), where the two tensors have the same dtype and shape."""
    pairs: dict[str, str] = {}
    out_by_name = {s.name: s for s in outputs}
    for inp in inputs:
        for want_in, want_out in _STATE_NAME_PAIRS:
            if not inp.name.endswith(want_in) and not inp.name.startswith(want_in):
                continue
            candidates = []
            if inp.name.endswith(want_in):
                candidates.append(inp.name[: len(inp.name) - len(want_in)] + want_out)
            if inp.name.startswith(want_in):
                candidates.append(want_out + inp.name[len(want_in) :])
            for cand in candidates:
                out = out_by_name.get(cand)
                if out is not None and cand not in pairs and out.dtype == inp.dtype and _same_shape(out.shape, inp.shape):
                    pairs[cand] = inp.name
                    break
            if inp.name in pairs.values():
                break
    return pairs


def _same_shape(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b))


def state_specs(
    state: Mapping[str, str],
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    initial: Mapping[str, np.ndarray] | None = None,
) -> tuple[tuple[StateSpec, ...], dict[str, bytes]]:
    """Typed state pairs (checked against the model) and the initial-value files to ship."""
    ins = {s.name: s for s in inputs}
    outs = {s.name: s for s in outputs}
    specs = []
    files: dict[str, bytes] = {}
    for out_name, in_name in state.items():
        if out_name not in outs:
            raise ConfigError(f"--state {out_name}={in_name}: the model has no output {out_name!r}; outputs are {sorted(outs)}")
        if in_name not in ins:
            raise ConfigError(f"--state {out_name}={in_name}: the model has no input {in_name!r}; inputs are {sorted(ins)}")
        o, i = outs[out_name], ins[in_name]
        if o.dtype != i.dtype or not _same_shape(o.shape, i.shape):
            raise ConfigError(
                f"--state {out_name}={in_name}: output {o.dtype}{o.shape_text()} cannot feed input {i.dtype}{i.shape_text()}"
            )
        fname = None
        if initial and in_name in initial:
            value = np.asarray(initial[in_name])
            if value.dtype.kind not in "fiub" or not _same_shape(value.shape, i.shape):
                raise ConfigError(f"initial state for {in_name!r} has shape {value.shape}; the input takes {i.shape_text()}")
            fname = "state_" + "".join(c if c.isalnum() or c in "._-" else "_" for c in in_name) + ".npy"
            buf = io.BytesIO()
            np.save(buf, value, allow_pickle=False)
            files[fname] = buf.getvalue()
        specs.append(StateSpec(out_name, in_name, fname))
    unknown = sorted(set(initial or {}) - set(state.values()))
    if unknown:
        raise ConfigError(f"initial state given for {unknown}, which are not state inputs")
    return tuple(specs), files


def normalize_preprocessing(spec: Any, inputs: Sequence[TensorSpec], reference: Mapping[str, Any] | None) -> dict[str, Any]:
    """Accept a list of steps, ``{"input_shape", "steps"}`` or a dict by input name; return by input name."""
    if spec is None:
        return {}
    names = [s.name for s in inputs]
    if isinstance(spec, list) or (isinstance(spec, dict) and "steps" in spec):
        if len(names) != 1:
            raise ConfigError(f"the model has inputs {names}: key the preprocessing by input name")
        by_name = {names[0]: spec}
    elif isinstance(spec, dict):
        by_name = dict(spec)
        unknown = set(by_name) - set(names)
        if unknown:
            raise ConfigError(f"preprocessing names unknown inputs {sorted(unknown)}; inputs are {names}")
    else:
        raise ConfigError("preprocessing must be a list of steps or an object")
    return {k: Pipeline.from_spec(v, dict(reference) if reference else None).to_spec() for k, v in by_name.items()}


def synthetic_inputs(inputs: Sequence[TensorSpec], batch: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs honouring the declared shapes: ``batch`` samples along each batch axis,
    other dynamic dimensions 1, inputs without a batch axis exactly their shape."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        shape = tuple(
            (batch if d == -1 else d) if i == spec.batch_axis else (d if d > 0 else 1) for i, d in enumerate(spec.shape)
        )
        dt = np.dtype(object) if spec.dtype == "string" else np.dtype(spec.dtype)
        if spec.quantization is not None and dt.kind in "iu":
            info = np.iinfo(dt)  # type: ignore[type-var]
            q = spec.quantization
            lo, hi = (info.min - q.zero_point) * q.scale, (info.max - q.zero_point) * q.scale
            feeds[spec.name] = rng.uniform(lo, hi, size=shape).astype(np.float32)
        elif dt.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif dt.kind == "O":
            words = np.array(["edge", "fleet", "smoke", "test"], dtype=object)
            feeds[spec.name] = words[rng.integers(0, len(words), size=shape)]
        else:
            feeds[spec.name] = rng.integers(0, 10, size=shape).astype(dt)
    return feeds


def _jsonable(value: Any) -> Any:
    arr = np.asarray(value)
    if arr.dtype.kind in "OSU":
        return np.vectorize(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v), otypes=[object])(arr).tolist() if arr.size else arr.tolist()
    return arr.tolist()


def make_smoke_tests(
    model_path: str | os.PathLike[str],
    manifest: Manifest,
    sample_inputs: Mapping[str, np.ndarray] | None = None,
    atol: float | None = None,
    rtol: float = 1e-3,
    head: Head | None = None,
) -> dict[str, Any]:
    """Record model outputs for a few inputs so a device can check its runtime gives the same.

    Without ``sample_inputs`` the inputs are synthetic (seeded, declared shapes, dynamic
    dimensions 1, state inputs at their initial value); a model that cannot run on them
    raises ``SampleRequiredError``: give real inputs (``--sample FILE.npz``). A manifest with
    a head records the head's output (``head`` holds its weights).
    """
    from .model import Model

    be = open_backend(model_path, manifest.model_format)
    model = Model(manifest, be, head=head)
    try:
        names = [s.name for s in manifest.inputs]
        if sample_inputs is not None:
            missing = [n for n in names if n not in sample_inputs]
            extra = sorted(set(sample_inputs) - set(names))
            if missing or extra:
                raise ConfigError(f"--sample must hold one array per input {names}; missing {missing}, unexpected {extra}")
            feeds = {n: np.asarray(sample_inputs[n]) for n in names}
        else:
            feeds = synthetic_inputs(manifest.inputs, 2, SMOKE_SEED)
            for st in manifest.state:  # a stream starts from its initial state
                spec = next(s for s in manifest.inputs if s.name == st.input)
                if st.initial is None:
                    feeds[st.input] = np.zeros_like(feeds[st.input])
                    if spec.quantization is not None:
                        feeds[st.input] = feeds[st.input].astype(np.float32)
        try:
            given = feeds if len(feeds) != 1 else next(iter(feeds.values()))
            out = model.predict(given, preprocess=False)
            if atol is None and model.head is not None:
                atol = _head_atol(model, model.head, given)
        except EdgefleetError as exc:
            if sample_inputs is not None:
                raise ConfigError(f"the model failed on the --sample inputs: {exc}") from None
            dyn = [d for s in manifest.inputs for d in s.dynamic_dims if s.batch_axis is None or d != (s.dim_name(s.batch_axis) or f"{s.name}[{s.batch_axis}]")]
            raise SampleRequiredError(
                "the model failed on synthetic smoke-test inputs "
                f"({', '.join(f'{k}{tuple(v.shape)}' for k, v in feeds.items())}"
                + (f"; dynamic dimensions {dyn} set to 1" if dyn else "")
                + f"): {exc}. Pass real inputs with --sample FILE.npz (one array per input name) "
                "or declare shapes with --input-shape NAME=DIMS"
            ) from None
    finally:
        model.close()
    outs = out if isinstance(out, dict) else {manifest.served_outputs[0].name: out}
    for name, value in outs.items():
        v = np.asarray(value)
        if v.dtype.kind == "f" and v.size and not np.isfinite(v).all():
            raise SampleRequiredError(
                f"the model's output {name!r} holds NaN or inf on the "
                + ("--sample inputs" if sample_inputs is not None else "synthetic smoke-test inputs")
                + ": pass real inputs with --sample FILE.npz"
            )
    if atol is None:
        steps = [s.quantization.scale for s in manifest.outputs if s.quantization]
        atol = max([1e-4] + [2 * s for s in steps])
    return {
        "inputs": {k: _jsonable(v) for k, v in feeds.items()},
        "outputs": {k: _jsonable(v if np.asarray(v).dtype.kind in "OSU" else np.asarray(v, dtype=np.float64)) for k, v in outs.items()},
        "atol": atol,
        "rtol": rtol,
    }


def _head_atol(model: Any, head: Head, given: Any) -> float:
    """The smoke tests' tolerance for a head's output: where the backbone's features are
    quantized, a runtime may round a feature one step the other way, so the tolerance is twice
    the largest change of the head's output when every feature moves one step (signs seeded)."""
    q = model.manifest.outputs[0].quantization
    if q is None:
        return 1e-4
    feats = np.asarray(model.features(given, preprocess=False), dtype=np.float32)
    signs = np.random.default_rng(SMOKE_SEED).choice(np.array([-1.0, 1.0], np.float32), size=feats.shape)
    moved = [head.forward(feats + s * np.float32(q.scale)) for s in (signs, -signs)]
    base = head.forward(feats)
    return max(1e-4, 2.0 * max(float(np.max(np.abs(m - base))) if base.size else 0.0 for m in moved))


def head_spec(head: Head, features: TensorSpec, head_bytes: bytes) -> HeadSpec:
    """The manifest entry of ``head`` (whose file holds ``head_bytes``) reading the model output ``features``."""
    output = TensorSpec(name=head.output_name, shape=(-1, *head.output_shape), dtype="float32", batch_axis=0)
    return HeadSpec(file=HEAD_FILE, sha256=hashlib.sha256(head_bytes).hexdigest(), input=features.name,
                    layers=head.layers, output=output)


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read labels file {path}: {exc.strerror}") from None
    if path and str(path).endswith(".json"):
        labels = json.loads(text)
        if not isinstance(labels, list):
            raise ConfigError(f"{path} must hold a JSON list of label strings")
        return [str(x) for x in labels]
    return [line.strip() for line in text.splitlines() if line.strip()]


def pack(
    model_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    labels: Sequence[str] | None = None,
    preprocessing: Any = None,
    private_key: PrivateKey | None = None,
    archive: bool = False,
    reference_stats: Mapping[str, Any] | None = None,
    smoke_inputs: Mapping[str, np.ndarray] | None = None,
    metrics: Mapping[str, Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
    hardware_tags: Sequence[str] = (),
    min_agent_version: str | None = None,
    extra_files: Mapping[str, str | os.PathLike[str] | bytes] | None = None,
    overwrite: bool = False,
    batch_axes: Mapping[str, int | None] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    state: Mapping[str, str] | None = None,
    state_initial: Mapping[str, np.ndarray] | None = None,
    sample_inputs: Mapping[str, np.ndarray] | None = None,
    allow_non_finite: Sequence[str] = (),
    head: Head | None = None,
) -> tuple[Bundle, Path | None]:
    """Write a bundle for ``model_path``; with ``archive=True`` also ``<out>.efb``.

    Input/output signatures come from the model file (batch axes inferred, then
    ``batch_axes``/``input_shapes`` override them). ``state`` declares state pairs
    (output -> input); without it pairs are proposed from names and shapes ({} for none).
    Smoke-test vectors are recorded from the model's own outputs on ``sample_inputs``
    (real inputs by name; ``smoke_inputs`` is the older name) or on synthetic inputs.
    ``head``: a trainable head run on the model's one output (the model is then its backbone),
    stored as float32 weights in ``head.npz`` and declared in the manifest (format 2).
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ConfigError(f"model file {model_path} does not exist")
    check_name(name, "model name")
    try:
        parse_version(version)
    except Exception as exc:
        raise ConfigError(str(exc)) from None
    fmt = format_of(model_path)
    base, be = manifest_for_model(
        model_path, name=name, version=version, batch_axes=batch_axes, input_shapes=input_shapes,
        finite=list(allow_non_finite) if allow_non_finite else True,
    )
    be.close()
    if head is not None and (state or base.stateful_variables or len(base.outputs) != 1):
        raise ConfigError(
            "a trainable head runs on a stateless model with one output; this one has "
            + (f"outputs {[s.name for s in base.outputs]}" if len(base.outputs) != 1 else "state")
        )
    pairs = propose_state_pairs(base.inputs, base.outputs) if state is None and head is None else dict(state or {})
    states, state_files = state_specs(pairs, base.inputs, base.outputs, state_initial)
    head_files: dict[str, bytes] = {}
    head_entry = None
    if head is not None:
        head_files[HEAD_FILE] = head.to_npz()
        head_entry = head_spec(head, base.outputs[0], head_files[HEAD_FILE])
    prep = normalize_preprocessing(preprocessing, base.inputs, reference_stats)
    digest, _ = sha256_file(str(model_path))
    lineage_full = {"source_model_sha256": digest, "packed_by": f"edgefleet {__version__}"}
    lineage_full.update(lineage or {})
    manifest = Manifest(
        name=name,
        version=version,
        model_file=base.model_file,
        model_format=fmt,
        inputs=base.inputs,
        outputs=base.outputs,
        files={**base.files, **{k: FileEntry(hashlib.sha256(v).hexdigest(), len(v)) for k, v in {**state_files, **head_files}.items()}},
        state=states,
        stateful_variables=base.stateful_variables,
        target=Target(
            runtime=fmt.runtime,
            min_agent_version=min_agent_version or __version__,
            hardware_tags=tuple(hardware_tags),
        ),
        preprocessing=prep,
        labels=tuple(labels or ()),
        reference_stats=dict(reference_stats) if reference_stats else None,
        metrics=dict(metrics or {}),
        lineage=lineage_full,
        created_at=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        head=head_entry,
        format_version=HEAD_FORMAT_VERSION if head_entry is not None else base.format_version,
    )
    if labels:
        width = [d for d in manifest.served_outputs[0].sample_shape]
        if width and width[-1] > 0 and width[-1] != len(labels):
            raise ConfigError(f"{len(labels)} labels given but the model's first output has {width[-1]} classes")
    manifest = replace(manifest, smoke_tests=make_smoke_tests(model_path, manifest, sample_inputs if sample_inputs is not None else smoke_inputs,
                                                              head=head))
    files: dict[str, str | os.PathLike[str] | bytes] = {manifest.model_file: model_path, **state_files, **head_files}
    files.update(extra_files or {})
    bundle = write_bundle(out, manifest, files, private_key=private_key, overwrite=overwrite)
    archive_path = None
    if archive:
        archive_path = write_archive(bundle.path, Path(str(out).rstrip("/") + ".efb"))
    return bundle, archive_path
