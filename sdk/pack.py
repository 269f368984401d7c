"""Pack a ``.tflite``/``.onnx`` model into a (signed) bundle, reading its specs from the model."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ._version import __version__
from .bundle import Bundle, write_archive, write_bundle
from .canonical import sha256_file
from .errors import ConfigError
from .keys import PrivateKey
from .manifest import Manifest, Target, TensorSpec, check_name, parse_version
from .preprocess import Pipeline
from .runtime import Backend, format_of, open_backend

SMOKE_SEED = 20240601


def manifest_for_model(
    model_path: str | os.PathLike,
    name: str | None = None,
    version: str = "0",
    backend: str | None = None,
    threads: int | None = None,
) -> tuple[Manifest, Backend]:
    """A minimal manifest read off the model file itself (used for bare model files)."""
    path = Path(model_path)
    fmt = format_of(path)
    be = open_backend(path, fmt, backend=backend, threads=threads)
    digest, size = sha256_file(str(path))
    from .manifest import FileEntry

    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in path.stem) or "model"
    manifest = Manifest(
        name=name or stem,
        version=version,
        model_file=f"model.{fmt.value}",
        model_format=fmt,
        inputs=be.inputs,
        outputs=be.outputs,
        files={f"model.{fmt.value}": FileEntry(digest, size)},
        target=Target(runtime=fmt.runtime, min_agent_version=__version__),
    )
    return manifest, be


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


def _random_inputs(inputs: Sequence[TensorSpec], batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        shape = (batch,) + tuple(d if d > 0 else 1 for d in spec.sample_shape)
        if spec.quantization is not None:
            info = np.iinfo(np.dtype(spec.dtype))
            q = spec.quantization
            lo, hi = (info.min - q.zero_point) * q.scale, (info.max - q.zero_point) * q.scale
            feeds[spec.name] = rng.uniform(lo, hi, size=shape).astype(np.float32)
        elif np.dtype(spec.dtype).kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif np.dtype(spec.dtype).kind == "b":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            feeds[spec.name] = rng.integers(0, 10, size=shape).astype(spec.dtype)
    return feeds


def make_smoke_tests(
    model_path: str | os.PathLike,
    manifest: Manifest,
    sample_inputs: Mapping[str, np.ndarray] | None = None,
    atol: float | None = None,
    rtol: float = 1e-3,
) -> dict[str, Any]:
    """Record model outputs for a few inputs so a device can check its runtime gives the same."""
    from .model import Model

    be = open_backend(model_path, manifest.model_format)
    model = Model(manifest, be)
    try:
        feeds = dict(sample_inputs) if sample_inputs is not None else _random_inputs(manifest.inputs, 2, SMOKE_SEED)
        out = model.predict(feeds if len(feeds) > 1 else next(iter(feeds.values())), preprocess=False)
    finally:
        model.close()
    outs = out if isinstance(out, dict) else {manifest.outputs[0].name: out}
    if atol is None:
        steps = [s.quantization.scale for s in manifest.outputs if s.quantization]
        atol = max([1e-4] + [2 * s for s in steps])
    return {
        "inputs": {k: np.asarray(v).tolist() for k, v in feeds.items()},
        "outputs": {k: np.asarray(v, dtype=np.float64).tolist() for k, v in outs.items()},
        "atol": atol,
        "rtol": rtol,
    }


def read_labels(path: str | os.PathLike) -> list[str]:
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
    model_path: str | os.PathLike,
    out: str | os.PathLike,
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
    extra_files: Mapping[str, str | os.PathLike | bytes] | None = None,
    overwrite: bool = False,
) -> tuple[Bundle, Path | None]:
    """Write a bundle for ``model_path``; with ``archive=True`` also ``<out>.efb``.

    Input/output specs come from the model file; smoke-test vectors are recorded
    from the model's own outputs on ``smoke_inputs`` (or seeded random inputs).
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
    base, be = manifest_for_model(model_path, name=name, version=version)
    be.close()
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
        files=base.files,
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
    )
    if labels:
        width = [d for d in manifest.outputs[0].shape[1:]]
        if width and width[-1] > 0 and width[-1] != len(labels):
            raise ConfigError(f"{len(labels)} labels given but the model's first output has {width[-1]} classes")
    from dataclasses import replace

    manifest = replace(manifest, smoke_tests=make_smoke_tests(model_path, manifest, smoke_inputs))
    files: dict[str, str | os.PathLike | bytes] = {manifest.model_file: model_path}
    files.update(extra_files or {})
    bundle = write_bundle(out, manifest, files, private_key=private_key, overwrite=overwrite)
    archive_path = None
    if archive:
        archive_path = write_archive(bundle.path, Path(str(out).rstrip("/") + ".efb"))
    return bundle, archive_path
