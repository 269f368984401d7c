"""Typed, frozen compile configuration and TOML recipes.

Every ``edgefleet compile`` flag is a field here, and every field can be set
in a TOML recipe. A recipe looks like::

    quantize = "int8"            # none | dynamic | float16 | int8 | int16x8 | auto
    format = "tflite"            # tflite | onnx | both
    max_accuracy_drop = 0.5      # accuracy points
    seed = 0
    state = ["hn=h0"]            # stateful models: OUTPUT=INPUT pairs ([] for none; default: proposed)

    [data]
    train = "train.npz"
    calibration = "train.npz"
    eval = "test.npz"

    [prune]
    sparsity = 0.8
    epochs = 2

    [structured]
    fraction = 0.5

    [distill]
    width = 0.5
    temperature = 4.0

    [head]                       # a trainable head: the last layers kept as float weights
    layers = 2                   # the last N layers (or names = ["fc1", "probs"])

    [quantize_options]
    onnx_calibration = "minmax"   # minmax | entropy | percentile
    onnx_per_channel = true

    [output]
    name = "digits"
    version = "1"

Unknown keys are a :class:`~edgefleet.errors.ConfigError`, so a typo never
silently changes what gets compiled. ``CompileConfig.to_dict()`` is the
effective recipe written into the bundle lineage; ``to_toml()`` writes it back
as a recipe file that reproduces the run.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, TypeVar

from edgefleet.errors import ConfigError
from edgefleet.tables import Wording, from_table, read_toml

T = TypeVar("T")


class QuantMode(str, Enum):
    NONE = "none"
    DYNAMIC = "dynamic"
    FLOAT16 = "float16"
    INT8 = "int8"
    INT16X8 = "int16x8"
    AUTO = "auto"


class OutputFormat(str, Enum):
    TFLITE = "tflite"
    ONNX = "onnx"
    BOTH = "both"

    def formats(self) -> tuple[str, ...]:
        return ("tflite", "onnx") if self is OutputFormat.BOTH else (self.value,)


class CalibrationMethod(str, Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


def _check_fraction(value: float, name: str, *, allow_one: bool = False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if value < 0.0 or not upper_ok:
        raise ConfigError(f"{name} must be in [0, 1{']' if allow_one else ')'}, got {value}")


def _check_positive(value: Any, name: str, kind: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
        raise ConfigError(f"{name} must be a positive {'number' if kind is float else 'integer'}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Data files: ``.npz`` with arrays ``x`` (and ``y``), or CSV (label in the last column)."""

    train: str | None = None
    calibration: str | None = None
    eval: str | None = None
    csv_label_column: int | None = -1
    label: str | None = None  # npz key of the labels (default "y"); the other arrays are inputs by name
    max_calibration_samples: int = 300
    max_eval_samples: int = 2000

    def __post_init__(self) -> None:
        _check_positive(self.max_calibration_samples, "data.max_calibration_samples")
        _check_positive(self.max_eval_samples, "data.max_eval_samples")


@dataclass(frozen=True)
class PruneConfig:
    """Unstructured magnitude pruning with a polynomial-decay sparsity schedule."""

    sparsity: float = 0.0
    initial_sparsity: float = 0.0
    power: float = 3.0
    frequency: int = 10
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 5e-4
    min_weights: int = 64

    def __post_init__(self) -> None:
        _check_fraction(self.sparsity, "prune.sparsity")
        _check_fraction(self.initial_sparsity, "prune.initial_sparsity")
        if self.initial_sparsity > self.sparsity and self.sparsity > 0:
            raise ConfigError("prune.initial_sparsity must not exceed prune.sparsity")
        _check_positive(self.power, "prune.power", float)
        for name in ("frequency", "epochs", "batch_size", "min_weights"):
            _check_positive(getattr(self, name), f"prune.{name}")
        _check_positive(self.learning_rate, "prune.learning_rate", float)

    @property
    def enabled(self) -> bool:
        return self.sparsity > 0


@dataclass(frozen=True)
class StructuredConfig:
    """Remove whole Conv2D filters / Dense units (smallest L1 norm) and fine-tune."""

    fraction: float = 0.0
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 5e-4

    def __post_init__(self) -> None:
        _check_fraction(self.fraction, "structured.fraction")
        _check_positive(self.epochs, "structured.epochs")
        _check_positive(self.batch_size, "structured.batch_size")
        _check_positive(self.learning_rate, "structured.learning_rate", float)

    @property
    def enabled(self) -> bool:
        return self.fraction > 0


@dataclass(frozen=True)
class DistillConfig:
    """Train a narrower student (``width`` x the teacher's filters/units, or ``student`` model file)."""

    width: float = 0.0
    student: str | None = None
    temperature: float = 4.0
    alpha: float = 0.3
    epochs: int = 15
    batch_size: int = 32
    learning_rate: float = 2e-3

    def __post_init__(self) -> None:
        _check_fraction(self.width, "distill.width")
        _check_fraction(self.alpha, "distill.alpha", allow_one=True)
        _check_positive(self.temperature, "distill.temperature", float)
        _check_positive(self.epochs, "distill.epochs")
        _check_positive(self.batch_size, "distill.batch_size")
        _check_positive(self.learning_rate, "distill.learning_rate", float)

    @property
    def enabled(self) -> bool:
        return self.width > 0 or self.student is not None


@dataclass(frozen=True)
class HeadConfig:
    """A trainable head (``--trainable-head``): the model's last layers kept as float32 weights
    beside the compiled backbone, run in numpy, replaceable by a head-only update.

    ``layers``: the last N layers; ``names``: those layers by name (the model's last ones, in
    order); ``from_output``: an ONNX source's tensor where the head starts (the nodes from it to the
    model's output are the head)."""

    layers: int = 0
    names: tuple[str, ...] = ()
    from_output: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 0:
            raise ConfigError(f"head.layers must be an integer >= 0, got {self.layers!r}")
        given = [k for k, on in (("layers", self.layers > 0), ("names", bool(self.names)), ("from_output", self.from_output is not None)) if on]
        if len(given) > 1:
            raise ConfigError(f"give the trainable head one way: head.{given[0]} or head.{given[1]}, not both")
        if any(not isinstance(n, str) or not n.strip() for n in self.names):
            raise ConfigError(f"head.names must be layer names, got {list(self.names)!r}")

    @property
    def enabled(self) -> bool:
        return self.layers > 0 or bool(self.names) or self.from_output is not None

    @property
    def count(self) -> int:
        """How many layers the head has (0 for ``from_output``)."""
        return self.layers or len(self.names)


@dataclass(frozen=True)
class QuantizeOptions:
    """Options of the quantize pass beyond the mode."""

    onnx_per_channel: bool = True
    onnx_calibration: CalibrationMethod = CalibrationMethod.MINMAX
    onnx_exclude_ops: tuple[str, ...] = ()
    onnx_exclude_nodes: tuple[str, ...] = ()
    tflite_exclude_nodes: tuple[str, ...] = ()
    sensitive_layers: int = 2
    percentile: float = 99.999

    def __post_init__(self) -> None:
        _check_positive(self.sensitive_layers, "quantize_options.sensitive_layers")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"quantize_options.percentile must be in (50, 100], got {self.percentile}")


@dataclass(frozen=True)
class OutputConfig:
    name: str | None = None
    version: str = "1"
    key: str | None = None
    archive: bool = False
    overwrite: bool = False
    report: bool = True
    latency_runs: int = 200

    def __post_init__(self) -> None:
        _check_positive(self.latency_runs, "output.latency_runs")


@dataclass(frozen=True)
class CompileConfig:
    """Everything one compile run needs. Flat keys are the CLI's main flags."""

    quantize: QuantMode = QuantMode.NONE
    format: OutputFormat = OutputFormat.TFLITE
    max_accuracy_drop: float | None = None
    seed: int = 0
    preprocessing: Any = None
    labels: tuple[str, ...] | None = None
    data: DataConfig = field(default_factory=DataConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    structured: StructuredConfig = field(default_factory=StructuredConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    quantize_options: QuantizeOptions = field(default_factory=QuantizeOptions)
    output: OutputConfig = field(default_factory=OutputConfig)
    #: state pairs ``"OUT=IN"`` in the source's tensor names; ``None``: proposed from names and shapes; ``()``: none
    state: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.state_pairs  # noqa: B018  (validates the pairs)
        if self.max_accuracy_drop is not None:
            if isinstance(self.max_accuracy_drop, bool) or not isinstance(self.max_accuracy_drop, (int, float)) or self.max_accuracy_drop < 0:
                raise ConfigError(f"max_accuracy_drop must be a number of points >= 0, got {self.max_accuracy_drop!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")

    @property
    def state_pairs(self) -> dict[str, str] | None:
        """``state`` as output -> input (``None``: let the compiler propose them)."""
        if self.state is None:
            return None
        pairs: dict[str, str] = {}
        for item in self.state:
            out, sep, inp = str(item).partition("=")
            if not sep or not out.strip() or not inp.strip():
                raise ConfigError(f"state pair {item!r} must be OUTPUT=INPUT (e.g. hn=h0), or give --state none")
            if out.strip() in pairs:
                raise ConfigError(f"state output {out.strip()!r} is paired twice")
            pairs[out.strip()] = inp.strip()
        return pairs

    # -- (de)serialisation ------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "recipe") -> CompileConfig:
        return _build(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())

    def with_overrides(self, overrides: Mapping[str, Any]) -> CompileConfig:
        """Apply dotted overrides such as ``{"prune.sparsity": 0.8, "quantize": "int8"}``."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return CompileConfig.from_dict(data, "overrides")


_WORDING = Wording(bare="recipe")


def _build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    return from_table(cls, data, where, _WORDING)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def load_recipe(path: str | os.PathLike) -> CompileConfig:
    """Read a TOML recipe. Relative data/key/student paths are taken relative to the recipe file."""
    p = Path(path)
    data = read_toml(p, "recipe")
    base = p.resolve().parent

    def rebase(section: str, key: str) -> None:
        table = data.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str) and not os.path.isabs(table[key]):
            table[key] = str(base / table[key])

    for key in ("train", "calibration", "eval"):
        rebase("data", key)
    rebase("output", "key")
    rebase("distill", "student")
    try:
        return CompileConfig.from_dict(data, "recipe")
    except ConfigError as exc:
        raise ConfigError(f"recipe {p}: {exc}") from None


# -- a small TOML writer (tomllib only reads) ------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise ConfigError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k)


def dump_toml(data: Mapping[str, Any]) -> str:
    """Scalars and lists first, then one ``[table]`` per nested mapping; ``None`` values are left out."""
    lines: list[str] = []
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping) and k != "preprocessing"}
    for k, v in data.items():
        if k in tables or v is None:
            continue
        lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for name, table in tables.items():
        lines.append("")
        lines.append(f"[{_toml_key(name)}]")
        for k, v in table.items():
            if v is not None:
                lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def config_from_args(args: Any, base: CompileConfig | None = None) -> CompileConfig:
    """Flags override the recipe; a flag left at ``None`` keeps the recipe's value."""
    mapping = {
        "quantize": "quantize",
        "format": "format",
        "max_accuracy_drop": "max_accuracy_drop",
        "seed": "seed",
        "prune": "prune.sparsity",
        "prune_structured": "structured.fraction",
        "distill_width": "distill.width",
        "student": "distill.student",
        "train": "data.train",
        "calibration": "data.calibration",
        "eval": "data.eval",
        "label": "data.label",
        "name": "output.name",
        "version": "output.version",
        "key": "output.key",
        "archive": "output.archive",
        "force": "output.overwrite",
        "onnx_calibration": "quantize_options.onnx_calibration",
        "exclude_ops": "quantize_options.onnx_exclude_ops",
    }
    cfg = base or CompileConfig()
    overrides: dict[str, Any] = {}
    for attr, dotted in mapping.items():
        value = getattr(args, attr, None)
        if value is None or value is False:
            continue
        if attr in ("train", "calibration", "eval", "key", "student"):
            value = str(Path(value).resolve())
        overrides[dotted] = value
    state = getattr(args, "state", None)
    if state:
        if "none" in state:
            if len(state) > 1:
                raise ConfigError(f"--state none cannot be combined with state pairs {[v for v in state if v != 'none']}")
            overrides["state"] = []
        else:
            overrides["state"] = list(state)
    head = getattr(args, "trainable_head", None)
    if head is not None:
        text = str(head).strip()
        if text.isdigit():
            if int(text) < 1:
                raise ConfigError("--trainable-head N needs N >= 1 (the last N layers)")
            overrides["head.layers"] = int(text)
        else:
            names = [n.strip() for n in text.split(",")]
            if not all(names):
                raise ConfigError(f"--trainable-head {text!r} must be a number of layers or comma-separated layer names")
            overrides["head.names"] = names
    if getattr(args, "trainable_head_from", None):
        overrides["head.from_output"] = args.trainable_head_from
    if getattr(args, "no_per_channel", False):
        overrides["quantize_options.onnx_per_channel"] = False
    if getattr(args, "preprocess", None):
        import json

        try:
            overrides["preprocessing"] = json.loads(Path(args.preprocess).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read preprocessing JSON {args.preprocess}: {exc}") from None
    if getattr(args, "labels", None):
        from edgefleet.pack import read_labels

        overrides["labels"] = read_labels(args.labels)
    return cfg.with_overrides(overrides) if overrides else cfg


__all__ = [
    "QuantMode",
    "OutputFormat",
    "CalibrationMethod",
    "DataConfig",
    "PruneConfig",
    "StructuredConfig",
    "DistillConfig",
    "HeadConfig",
    "QuantizeOptions",
    "OutputConfig",
    "CompileConfig",
    "load_recipe",
    "dump_toml",
    "config_from_args",
    "replace",
]
