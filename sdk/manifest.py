"""The bundle manifest: typed, validated, and serialised canonically.

A manifest is the contract between the compiler (which writes it), the device
agent (which installs it) and the SDK (which runs it). ``Manifest.from_dict``
validates everything it is given and raises ``BundleFormatError`` naming the
field at fault; unknown top-level fields are kept (``extra``) so that newer
writers stay readable, but ``format_version`` newer than we know is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Mapping

from .canonical import canonical_json
from .errors import BundleFormatError, UnsupportedFormatError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "signature"
_VERSION_RE = re.compile(r"^\d+(\.\d+){0,3}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")


class ModelFormat(str, Enum):
    TFLITE = "tflite"
    ONNX = "onnx"

    @property
    def runtime(self) -> str:
        return "litert" if self is ModelFormat.TFLITE else "onnxruntime"


def parse_version(text: str) -> tuple[int, ...]:
    """'1.2.3' -> (1, 2, 3); versions compare as integer tuples."""
    if not isinstance(text, str) or not _VERSION_RE.match(text):
        raise BundleFormatError(f"version {text!r} must be dotted integers such as '3' or '1.4.0'")
    parts = tuple(int(p) for p in text.split("."))
    return parts + (0,) * (4 - len(parts))


def check_name(name: Any, what: str = "name") -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise BundleFormatError(
            f"{what} {name!r} must be 1-128 characters of letters, digits, '.', '_' or '-'"
        )
    return name


def check_file_name(name: Any) -> str:
    if not isinstance(name, str) or not _FILE_RE.match(name) or name in (MANIFEST_NAME, SIGNATURE_NAME):
        raise BundleFormatError(f"bundle file name {name!r} is not allowed (plain names only, no paths)")
    return name


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise BundleFormatError(f"manifest {where} is missing {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BundleFormatError(f"manifest {where}.{key} has the wrong type ({type(value).__name__})")
    return value


@dataclass(frozen=True)
class Quantization:
    scale: float
    zero_point: int

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "zero_point": self.zero_point}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output. ``shape`` uses -1 for dynamic dimensions (batch first)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    quantization: Quantization | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise BundleFormatError(f"tensor {self.name!r} has unsupported dtype {self.dtype!r}")
        if any((not isinstance(d, int)) or d < -1 or d == 0 for d in self.shape):
            raise BundleFormatError(f"tensor {self.name!r} has an invalid shape {list(self.shape)}")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        out["quantization"] = self.quantization.to_dict() if self.quantization else None
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TensorSpec:
        if not isinstance(data, dict):
            raise BundleFormatError(f"manifest {where} must be an object")
        name = _require(data, "name", str, where)
        shape = _require(data, "shape", list, where)
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise BundleFormatError(f"manifest {where}.shape must be a list of integers")
        dtype = _require(data, "dtype", str, where)
        q = data.get("quantization")
        quant = None
        if q is not None:
            if not isinstance(q, dict):
                raise BundleFormatError(f"manifest {where}.quantization must be an object or null")
            scale = _require(q, "scale", (int, float), where + ".quantization")
            zp = _require(q, "zero_point", int, where + ".quantization")
            if not scale > 0:
                raise BundleFormatError(f"manifest {where}.quantization.scale must be > 0")
            quant = Quantization(float(scale), int(zp))
        return cls(name=name, shape=tuple(shape), dtype=dtype, quantization=quant)


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class Target:
    runtime: str
    min_agent_version: str = "0.1.0"
    hardware_tags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "min_agent_version": self.min_agent_version,
            "hardware_tags": list(self.hardware_tags),
        }


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    model_file: str
    model_format: ModelFormat
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: Mapping[str, FileEntry]
    target: Target
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    labels: tuple[str, ...] = ()
    reference_stats: Mapping[str, Any] | None = None
    smoke_tests: Mapping[str, Any] | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    lineage: Mapping[str, Any] = field(default_factory=dict)
    created_at: str = ""
    format_version: int = FORMAT_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return parse_version(self.version)

    def with_files(self, files: Mapping[str, FileEntry]) -> Manifest:
        return replace(self, files=dict(files))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(
            {
                "format_version": self.format_version,
                "name": self.name,
                "version": self.version,
                "created_at": self.created_at,
                "model": {"file": self.model_file, "format": self.model_format.value},
                "target": self.target.to_dict(),
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
                "preprocessing": dict(self.preprocessing),
                "labels": list(self.labels),
                "files": {k: v.to_dict() for k, v in sorted(self.files.items())},
                "reference_stats": self.reference_stats,
                "smoke_tests": self.smoke_tests,
                "metrics": dict(self.metrics),
                "lineage": dict(self.lineage),
            }
        )
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise BundleFormatError("manifest must be a JSON object")
        try:
            canonical_json(data)
        except (TypeError, ValueError) as exc:
            raise BundleFormatError(f"manifest is not canonical JSON (NaN/Infinity or non-JSON values): {exc}") from None
        fmt = _require(data, "format_version", int, "")
        if fmt > FORMAT_VERSION or fmt < 1:
            raise UnsupportedFormatError(
                f"manifest format_version {fmt} is not supported by this edgefleet "
                f"(supports {FORMAT_VERSION}); upgrade edgefleet"
            )
        name = check_name(_require(data, "name", str, ""), "model name")
        version = _require(data, "version", str, "")
        parse_version(version)
        model = _require(data, "model", dict, "")
        model_file = check_file_name(_require(model, "file", str, "model"))
        fmt_text = _require(model, "format", str, "model")
        try:
            model_format = ModelFormat(fmt_text)
        except ValueError:
            raise UnsupportedFormatError(
                f"model format {fmt_text!r} is not supported (supported: tflite, onnx)"
            ) from None
        tgt = _require(data, "target", dict, "")
        tags = tgt.get("hardware_tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise BundleFormatError("manifest target.hardware_tags must be a list of strings")
        min_agent = tgt.get("min_agent_version", "0.1.0")
        parse_version(min_agent)
        target = Target(
            runtime=_require(tgt, "runtime", str, "target"),
            min_agent_version=min_agent,
            hardware_tags=tuple(tags),
        )
        inputs = tuple(
            TensorSpec.from_dict(t, f"inputs[{i}]") for i, t in enumerate(_require(data, "inputs", list, ""))
        )
        outputs = tuple(
            TensorSpec.from_dict(t, f"outputs[{i}]") for i, t in enumerate(_require(data, "outputs", list, ""))
        )
        if not inputs or not outputs:
            raise BundleFormatError("manifest must declare at least one input and one output")
        files_raw = _require(data, "files", dict, "")
        files: dict[str, FileEntry] = {}
        for fname, entry in files_raw.items():
            check_file_name(fname)
            if not isinstance(entry, dict):
                raise BundleFormatError(f"manifest files[{fname!r}] must be an object")
            digest = _require(entry, "sha256", str, f"files[{fname!r}]")
            size = _require(entry, "size", int, f"files[{fname!r}]")
            if not re.fullmatch(r"[0-9a-f]{64}", digest) or size < 0:
                raise BundleFormatError(f"manifest files[{fname!r}] has an invalid sha256 or size")
            files[fname] = FileEntry(digest, size)
        if model_file not in files:
            raise BundleFormatError(f"manifest files does not list the model file {model_file!r}")
        labels = data.get("labels") or []
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise BundleFormatError("manifest labels must be a list of strings")
        for key in ("preprocessing", "metrics", "lineage"):
            if not isinstance(data.get(key) or {}, dict):
                raise BundleFormatError(f"manifest {key} must be an object")
        for key in ("reference_stats", "smoke_tests"):
            if data.get(key) is not None and not isinstance(data[key], dict):
                raise BundleFormatError(f"manifest {key} must be an object or null")
        known = {
            "format_version", "name", "version", "created_at", "model", "target", "inputs",
            "outputs", "preprocessing", "labels", "files", "reference_stats", "smoke_tests",
            "metrics", "lineage",
        }
        return cls(
            name=name,
            version=version,
            model_file=model_file,
            model_format=model_format,
            inputs=inputs,
            outputs=outputs,
            files=files,
            target=target,
            preprocessing=data.get("preprocessing") or {},
            labels=tuple(labels),
            reference_stats=data.get("reference_stats"),
            smoke_tests=data.get("smoke_tests"),
            metrics=data.get("metrics") or {},
            lineage=data.get("lineage") or {},
            created_at=str(data.get("created_at", "")),
            format_version=fmt,
            extra={k: v for k, v in data.items() if k not in known},
        )
