"""Recognise and open a SOURCE model: Keras ``.keras``/``.h5``, SavedModel directory, ``.onnx``, ``.tflite``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.errors import CompileError, ConfigError

SIDECAR_SUFFIX = ".edgefleet.json"


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str  # keras | savedmodel | onnx | tflite
    sha256: str

    @property
    def is_keras(self) -> bool:
        return self.kind == "keras"


def _hash_path(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def identify(source: str | Path) -> Source:
    p = Path(source)
    if not p.exists():
        raise ConfigError(f"source model {p} does not exist")
    if p.is_dir():
        if (p / "saved_model.pb").is_file():
            return Source(p, "savedmodel", _hash_path(p))
        raise CompileError(f"load: {p} is a directory without saved_model.pb; give a SavedModel directory or a model file")
    suffix = p.suffix.lower()
    kinds = {".keras": "keras", ".h5": "keras", ".hdf5": "keras", ".onnx": "onnx", ".tflite": "tflite"}
    kind = kinds.get(suffix)
    if kind is None:
        raise CompileError(
            f"load: unknown model type {suffix or '(no suffix)'} for {p.name}; "
            "give a Keras .keras/.h5 file, a SavedModel directory, an .onnx file or a .tflite file"
        )
    return Source(p, kind, _hash_path(p))


def load_keras(src: Source) -> Any:
    import keras

    try:
        from .passes.export import quiet

        with quiet():
            return keras.models.load_model(str(src.path), compile=False)
    except Exception as exc:
        raise CompileError(f"load: cannot read Keras model {src.path.name} (corrupt or not a Keras file?): {str(exc)[:300]}") from None


def check_model_file(src: Source) -> None:
    """Open an .onnx/.tflite source with its runtime once, so a corrupt file fails early and clearly."""
    from edgefleet.errors import EdgefleetError
    from edgefleet.manifest import ModelFormat
    from edgefleet.runtime import open_backend

    fmt = ModelFormat.ONNX if src.kind == "onnx" else ModelFormat.TFLITE
    try:
        be = open_backend(src.path, fmt)
        be.close()
    except EdgefleetError as exc:
        raise CompileError(f"load: cannot open {src.path.name} (corrupt or not a {src.kind} model?): {exc}") from None
    except Exception as exc:  # runtimes raise their own types on garbage
        raise CompileError(f"load: cannot open {src.path.name} (corrupt or not a {src.kind} model?): {str(exc)[:300]}") from None


def read_sidecar(src: Source) -> dict[str, Any]:
    """Optional ``<SOURCE>.edgefleet.json`` with ``preprocessing`` and ``labels`` written by the training code."""
    side = src.path.parent / (src.path.name + SIDECAR_SUFFIX)
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {side}: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"preprocessing", "labels"}:
        raise ConfigError(f"{side} must be an object with optional keys 'preprocessing' and 'labels'")
    return data


__all__ = ["Source", "identify", "load_keras", "check_model_file", "read_sidecar", "SIDECAR_SUFFIX"]
