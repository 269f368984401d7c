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
from typing import Any, Mapping, Sequence

from .canonical import canonical_json
from .errors import BundleFormatError, UnsupportedFormatError
from .head import HeadLayer, check_chain

#: the format a manifest is written in unless it needs a newer one
FORMAT_VERSION = 1
#: a bundle with a trainable head (``head``) is format 2, so an edgefleet that predates heads
#: refuses it (``UnsupportedFormatError``) instead of serving the backbone's features as predictions
HEAD_FORMAT_VERSION = 2
#: the newest format this edgefleet reads
MAX_FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "signature"
#: a version: 1 to 4 dot-separated components of 1 to 9 ASCII digits each (no signs, spaces or
#: trailing newline), so every parse is cheap and every comparison is of small integers
_VERSION_RE = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,3}")
MAX_VERSION_CHARS = 4 * 9 + 3
#: the most files one bundle may list (and so the most members an archive may have, plus two)
MAX_FILES = 256
#: the most inputs or outputs a manifest may declare, and the most labels
MAX_TENSORS = 1024
MAX_LABELS = 100_000
#: the largest dimension and the largest file size a manifest may declare
MAX_DIM = 2**31 - 1
MAX_FILE_BYTES = 1 << 40
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DTYPES = (
    "float32", "float16", "float64",
    "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64",
    "bool", "string",
)
_DIM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")


class ModelFormat(str, Enum):
    TFLITE = "tflite"
    ONNX = "onnx"

    @property
    def runtime(self) -> str:
        return "litert" if self is ModelFormat.TFLITE else "onnxruntime"


def parse_version(text: str) -> tuple[int, ...]:
    """'1.2.3' -> (1, 2, 3); versions compare as integer tuples."""
    if not isinstance(text, str) or len(text) > MAX_VERSION_CHARS or not _VERSION_RE.fullmatch(text):
        shown = repr(text) if not isinstance(text, str) or len(text) <= 40 else f"{text[:20]!r}... ({len(text)} characters)"
        raise BundleFormatError(
            f"version {shown} must be 1 to 4 dotted integers of at most 9 digits, such as '3' or '1.4.0'"
        )
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


def _check_preprocessing_shape(input_name: str, spec: Any) -> None:
    """The manifest's preprocessing for one input is a list of step objects with an ``op``, or
    an object whose ``steps`` is one (parameters are checked when the pipeline is built)."""
    steps = spec.get("steps", []) if isinstance(spec, dict) else spec
    if not isinstance(steps, list) or not all(isinstance(st, dict) and isinstance(st.get("op"), str) for st in steps):
        raise BundleFormatError(
            f"manifest preprocessing[{input_name[:60]!r}] must be a list of steps (objects with an 'op') "
            "or an object with such a 'steps' list"
        )


@dataclass(frozen=True)
class Quantization:
    scale: float
    zero_point: int

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "zero_point": self.zero_point}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: its signature.

    ``shape`` uses -1 for dynamic dimensions; ``dims`` names them where the model does
    (ONNX symbolic dimensions such as ``"batch"``), ``None`` elsewhere. ``batch_axis`` is
    the axis that stacks samples, or ``None``: a tensor without one is passed exactly as
    given (a scalar stays 0-d). See :func:`infer_batch_axes` for how it is inferred.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    quantization: Quantization | None = None
    dims: tuple[str | None, ...] | None = None
    batch_axis: int | None = None
    #: inputs only: NaN and inf are refused (``InvalidInputError``) unless this is False.
    #: Bundles check by default (``pack --allow-non-finite NAME`` lifts it); a bare model
    #: file, which declares nothing, takes what its runtime takes.
    finite: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise BundleFormatError(f"tensor {self.name!r} has unsupported dtype {self.dtype!r}")
        if any((not isinstance(d, int)) or d < -1 or d == 0 for d in self.shape):
            raise BundleFormatError(f"tensor {self.name!r} has an invalid shape {list(self.shape)}")
        if self.dims is not None:
            if len(self.dims) != len(self.shape) or not all(
                d is None or (isinstance(d, str) and _DIM_NAME_RE.match(d)) for d in self.dims
            ):
                raise BundleFormatError(f"tensor {self.name!r} has invalid dimension names {list(self.dims)}")
            if all(d is None for d in self.dims):
                object.__setattr__(self, "dims", None)
        if self.batch_axis is not None:
            if isinstance(self.batch_axis, bool) or not isinstance(self.batch_axis, int) or not 0 <= self.batch_axis < len(self.shape):
                raise BundleFormatError(
                    f"tensor {self.name!r}: batch_axis {self.batch_axis!r} is not an axis of shape {list(self.shape)}"
                )

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: ``shape`` without the batch axis (all of it when there is none)."""
        ax = self.batch_axis
        if ax is None:
            return self.shape
        return self.shape[:ax] + self.shape[ax + 1 :]

    def dim_name(self, axis: int) -> str | None:
        return self.dims[axis] if self.dims is not None else None

    @property
    def dynamic_dims(self) -> list[str]:
        """Readable names of the dynamic dimensions (``name[axis]`` where the model gives none)."""
        return [self.dim_name(i) or f"{self.name}[{i}]" for i, d in enumerate(self.shape) if d == -1]

    def shape_text(self) -> str:
        """``(batch, 3, H, W)``: dynamic dimensions by name (``N`` for an unnamed batch axis,
        ``?`` for other unnamed ones)."""
        parts = [
            str(d) if d != -1 else (self.dim_name(i) or ("N" if i == self.batch_axis else "?"))
            for i, d in enumerate(self.shape)
        ]
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        out["quantization"] = self.quantization.to_dict() if self.quantization else None
        if self.dims is not None:
            out["dims"] = list(self.dims)
        out["batch_axis"] = self.batch_axis
        if not self.finite:
            out["finite"] = False
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TensorSpec:
        """Parse one tensor; a manifest written before signatures (no ``batch_axis`` key) is
        given the inferred batch axes by :meth:`Manifest.from_dict`."""
        if not isinstance(data, dict):
            raise BundleFormatError(f"manifest {where} must be an object")
        name = _require(data, "name", str, where)
        shape = _require(data, "shape", list, where)
        if len(shape) > 64 or not all(isinstance(d, int) and not isinstance(d, bool) and d <= MAX_DIM for d in shape):
            raise BundleFormatError(f"manifest {where}.shape must be a list of at most 64 integers up to {MAX_DIM}")
        dtype = _require(data, "dtype", str, where)
        q = data.get("quantization")
        quant = None
        if q is not None:
            if not isinstance(q, dict):
                raise BundleFormatError(f"manifest {where}.quantization must be an object or null")
            scale = _require(q, "scale", (int, float), where + ".quantization")
            zp = _require(q, "zero_point", int, where + ".quantization")
            if not scale > 0 or not abs(zp) <= MAX_DIM:
                raise BundleFormatError(f"manifest {where}.quantization needs scale > 0 and a 32-bit zero_point")
            quant = Quantization(float(scale), int(zp))
        dims = data.get("dims")
        if dims is not None and not isinstance(dims, list):
            raise BundleFormatError(f"manifest {where}.dims must be a list of names or null")
        batch_axis = data.get("batch_axis")
        if batch_axis is not None and (isinstance(batch_axis, bool) or not isinstance(batch_axis, int)):
            raise BundleFormatError(f"manifest {where}.batch_axis must be an integer or null")
        finite = data.get("finite", True)
        if not isinstance(finite, bool):
            raise BundleFormatError(f"manifest {where}.finite must be true or false")
        return cls(
            name=name,
            shape=tuple(shape),
            dtype=dtype,
            quantization=quant,
            dims=tuple(dims) if dims is not None else None,
            batch_axis=batch_axis,
            finite=finite,
        )


def _same_dim(a: TensorSpec, ax_a: int, b: TensorSpec, ax_b: int) -> bool:
    """Whether two dynamic dimensions are the same one: equal names, or both unnamed."""
    return a.dim_name(ax_a) == b.dim_name(ax_b)


def infer_batch_axes(
    inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> tuple[list[int | None], list[int | None]]:
    """The batch axis of every input and output, read off the model's shapes.

    - A dynamic axis 0 shared by the inputs is the batch axis: the first input with a
      dynamic axis 0 names it, and every input whose axis 0 is dynamic with the same name
      (or, unnamed, as TFLite's are) shares it. Where the model names that dimension, a
      tensor holding it once at another axis (a recurrent state shaped (layers, batch,
      units)) has its batch axis there. Other inputs (scalars, a dimension named
      differently) have none.
    - Without any dynamic axis 0: when every input has rank >= 2 and axis 0 of size 1
      (a fixed batch of one, as many exported TFLite models have), axis 0 is the batch axis.
    - An output shares the batch axis when its axis 0 is the same dimension (same name or
      both unnamed dynamic; size 1 for a fixed batch of one). Never guessed otherwise.
    """
    none_in: list[int | None] = [None] * len(inputs)
    none_out: list[int | None] = [None] * len(outputs)
    lead = next((s for s in inputs if s.rank >= 1 and s.shape[0] == -1), None)
    if lead is not None:
        name = lead.dim_name(0)

        def axis_of(s: TensorSpec) -> int | None:
            if s.rank >= 1 and s.shape[0] == -1 and _same_dim(s, 0, lead, 0):
                return 0
            if name is not None and s.dims is not None and s.dims.count(name) == 1:
                return s.dims.index(name)  # a named batch elsewhere: a state (layers, batch, units)
            return None

        return [axis_of(s) for s in inputs], [axis_of(s) for s in outputs]
    if inputs and all(s.rank >= 2 and s.shape[0] == 1 for s in inputs):
        return [0] * len(inputs), [0 if s.rank >= 1 and s.shape[0] in (1, -1) else None for s in outputs]
    return none_in, none_out


def with_batch_axes(
    inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """``inputs`` and ``outputs`` with their inferred batch axes set."""
    ins, outs = infer_batch_axes(inputs, outputs)
    return (
        tuple(replace(s, batch_axis=a) for s, a in zip(inputs, ins)),
        tuple(replace(s, batch_axis=a) for s, a in zip(outputs, outs)),
    )


@dataclass(frozen=True)
class StateSpec:
    """A recurrent state: the model's ``output`` is fed back as its ``input`` on the next call.

    ``initial`` is ``None`` for zeros of the input's shape, or the name of a ``.npy`` file
    in the bundle holding the initial value.
    """

    output: str
    input: str
    initial: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "input": self.input, "initial": {"file": self.initial} if self.initial else {"zeros": True}}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> StateSpec:
        if not isinstance(data, dict):
            raise BundleFormatError(f"manifest {where} must be an object")
        out = _require(data, "output", str, where)
        inp = _require(data, "input", str, where)
        init = data.get("initial") or {"zeros": True}
        if not isinstance(init, dict):
            raise BundleFormatError(f"manifest {where}.initial must be an object")
        initial = None
        if "file" in init:
            initial = check_file_name(init["file"])
        elif init.get("zeros") is not True:
            raise BundleFormatError(f"manifest {where}.initial must be {{\"zeros\": true}} or {{\"file\": NAME}}")
        return cls(out, inp, initial)


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
class HeadSpec:
    """A trainable head (:mod:`edgefleet.head`): float32 weights in ``file`` (whose sha256 is
    repeated here, so a head-only update names the head it ships), run after the model file on
    its output ``input`` (the backbone's features), through ``layers``; ``output`` is what
    ``Model.predict`` returns."""

    file: str
    sha256: str
    input: str
    layers: tuple[HeadLayer, ...]
    output: TensorSpec

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "input": self.input,
            "layers": [layer.to_dict() for layer in self.layers],
            "output": self.output.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> HeadSpec:
        if not isinstance(data, dict):
            raise BundleFormatError("manifest head must be an object")
        unknown = sorted(set(data) - {"file", "sha256", "input", "layers", "output"})
        if unknown:
            raise BundleFormatError(f"manifest head has unknown fields {unknown}")
        digest = _require(data, "sha256", str, "head")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise BundleFormatError("manifest head.sha256 must be 64 lowercase hex digits")
        layers_raw = _require(data, "layers", list, "head")
        if len(layers_raw) > 64:
            raise BundleFormatError("manifest head has more than 64 layers")
        return cls(
            file=check_file_name(_require(data, "file", str, "head")),
            sha256=digest,
            input=_require(data, "input", str, "head"),
            layers=check_chain([HeadLayer.from_dict(v, f"layers[{i}]") for i, v in enumerate(layers_raw)]),
            output=TensorSpec.from_dict(_require(data, "output", dict, "head"), "head.output"),
        )


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
    state: tuple[StateSpec, ...] = ()
    stateful_variables: bool = False
    head: HeadSpec | None = None

    def __post_init__(self) -> None:
        in_names = [s.name for s in self.inputs]
        out_names = [s.name for s in self.outputs]
        for what, names in (("input", in_names), ("output", out_names)):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise BundleFormatError(f"manifest has several {what}s named {dup}")
        seen_in: set[str] = set()
        seen_out: set[str] = set()
        for i, st in enumerate(self.state):
            if st.output not in out_names:
                raise BundleFormatError(f"manifest state[{i}]: the model has no output {st.output!r}; outputs are {out_names}")
            if st.input not in in_names:
                raise BundleFormatError(f"manifest state[{i}]: the model has no input {st.input!r}; inputs are {in_names}")
            if st.input in seen_in or st.output in seen_out:
                raise BundleFormatError(f"manifest state[{i}]: {st.output!r} -> {st.input!r} repeats a state tensor")
            seen_in.add(st.input)
            seen_out.add(st.output)
            if st.initial is not None and st.initial not in self.files:
                raise BundleFormatError(f"manifest state[{i}]: initial value file {st.initial!r} is not listed in files")
        if self.head is not None:
            self._check_head(self.head)

    def _check_head(self, head: HeadSpec) -> None:
        """A head reads the model file's one output, batch first, of the shape its first layer
        takes; its file is listed with the same sha256; the model is stateless."""
        if self.format_version < HEAD_FORMAT_VERSION:
            raise BundleFormatError(f"manifest has a head but format_version {self.format_version}; heads need {HEAD_FORMAT_VERSION}")
        if self.state or self.stateful_variables:
            raise BundleFormatError("manifest has a head and state; a model with a trainable head must be stateless")
        if [s.name for s in self.outputs] != [head.input]:
            raise BundleFormatError(
                f"manifest head reads {head.input!r}, but the model's outputs are {[s.name for s in self.outputs]}: "
                "a head reads the model file's one output"
            )
        features = self.outputs[0]
        if features.batch_axis != 0 or not (features.dtype.startswith("float") or features.quantization is not None):
            raise BundleFormatError(
                f"manifest head reads {features.name!r}, which is not a batch-first float (or quantized) tensor"
            )
        first = head.layers[0].input_shape
        sample = features.sample_shape
        if len(sample) != len(first) or any(b != -1 and a != b for a, b in zip(sample, first)):
            raise BundleFormatError(
                f"manifest head takes samples of shape {list(first)}, but {features.name!r} gives {list(sample)}"
            )
        last = head.layers[-1]
        if head.output.dtype != "float32" or head.output.batch_axis != 0 or head.output.shape != (-1, *last.output_shape):
            raise BundleFormatError(
                f"manifest head.output must be float32 of shape {[-1, *last.output_shape]} with batch axis 0"
            )
        entry = self.files.get(head.file)
        if entry is None or head.file == self.model_file:
            raise BundleFormatError(f"manifest head file {head.file!r} is not listed in files (apart from the model file)")
        if entry.sha256 != head.sha256:
            raise BundleFormatError(f"manifest head.sha256 differs from files[{head.file!r}].sha256")

    @property
    def stateful(self) -> bool:
        return bool(self.state) or self.stateful_variables

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return parse_version(self.version)

    @property
    def served_outputs(self) -> tuple[TensorSpec, ...]:
        """What ``Model.predict`` returns: the head's output, or else the model file's outputs."""
        return (self.head.output,) if self.head is not None else self.outputs

    def with_files(self, files: Mapping[str, FileEntry]) -> Manifest:
        """The manifest listing ``files`` (a head's sha256 follows its file's entry)."""
        head = self.head
        if head is not None and head.file in files:
            head = replace(head, sha256=files[head.file].sha256)
        return replace(self, files=dict(files), head=head)

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
        if self.state:
            out["state"] = [st.to_dict() for st in self.state]
        if self.stateful_variables:
            out["stateful_variables"] = True
        if self.head is not None:
            out["head"] = self.head.to_dict()
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
        if fmt > MAX_FORMAT_VERSION or fmt < 1:
            raise UnsupportedFormatError(
                f"manifest format_version {fmt} is not supported by this edgefleet "
                f"(supports 1 to {MAX_FORMAT_VERSION}); upgrade edgefleet"
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
        for key in ("inputs", "outputs"):
            if len(_require(data, key, list, "")) > MAX_TENSORS:
                raise BundleFormatError(f"manifest declares more than {MAX_TENSORS} {key}")
        inputs = tuple(
            TensorSpec.from_dict(t, f"inputs[{i}]") for i, t in enumerate(_require(data, "inputs", list, ""))
        )
        outputs = tuple(
            TensorSpec.from_dict(t, f"outputs[{i}]") for i, t in enumerate(_require(data, "outputs", list, ""))
        )
        if not outputs:
            raise BundleFormatError("manifest must declare at least one output")
        raw_tensors = [t for t in data["inputs"] + data["outputs"] if isinstance(t, dict)]
        if any("batch_axis" not in t for t in raw_tensors):
            # written before signatures: batch axes as this version infers them
            inputs, outputs = with_batch_axes(inputs, outputs)
        state_raw = data.get("state") or []
        if not isinstance(state_raw, list):
            raise BundleFormatError("manifest state must be a list")
        state = tuple(StateSpec.from_dict(t, f"state[{i}]") for i, t in enumerate(state_raw))
        stateful_variables = data.get("stateful_variables", False)
        if not isinstance(stateful_variables, bool):
            raise BundleFormatError("manifest stateful_variables must be true or false")
        files_raw = _require(data, "files", dict, "")
        if len(files_raw) > MAX_FILES:
            raise BundleFormatError(f"manifest lists {len(files_raw)} files; a bundle has at most {MAX_FILES}")
        files: dict[str, FileEntry] = {}
        for fname, entry in files_raw.items():
            check_file_name(fname)
            if not isinstance(entry, dict):
                raise BundleFormatError(f"manifest files[{fname!r}] must be an object")
            digest = _require(entry, "sha256", str, f"files[{fname!r}]")
            size = _require(entry, "size", int, f"files[{fname!r}]")
            if not re.fullmatch(r"[0-9a-f]{64}", digest) or not 0 <= size <= MAX_FILE_BYTES:
                raise BundleFormatError(f"manifest files[{fname!r}] has an invalid sha256 or size")
            files[fname] = FileEntry(digest, size)
        if model_file not in files:
            raise BundleFormatError(f"manifest files does not list the model file {model_file!r}")
        labels = data.get("labels") or []
        if not isinstance(labels, list) or len(labels) > MAX_LABELS or not all(isinstance(x, str) for x in labels):
            raise BundleFormatError(f"manifest labels must be a list of at most {MAX_LABELS} strings")
        for key in ("preprocessing", "metrics", "lineage"):
            if not isinstance(data.get(key) or {}, dict):
                raise BundleFormatError(f"manifest {key} must be an object")
        for input_name, spec in (data.get("preprocessing") or {}).items():
            _check_preprocessing_shape(input_name, spec)
        for key in ("reference_stats", "smoke_tests"):
            if data.get(key) is not None and not isinstance(data[key], dict):
                raise BundleFormatError(f"manifest {key} must be an object or null")
        known = {
            "format_version", "name", "version", "created_at", "model", "target", "inputs",
            "outputs", "preprocessing", "labels", "files", "reference_stats", "smoke_tests",
            "metrics", "lineage", "state", "stateful_variables", "head",
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
            state=state,
            stateful_variables=stateful_variables,
            head=HeadSpec.from_dict(data["head"]) if data.get("head") is not None else None,
        )
