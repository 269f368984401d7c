"""Datasets for fine-tuning, calibration and evaluation.

DATA is a ``.npz`` file with an array ``x`` (and optionally ``y``; never
pickled) or a CSV file of numbers whose label is the last column (set
``data.csv_label_column`` to another index, or to nothing for unlabeled
rows). Arrays hold *raw* inputs: the bundle's preprocessing pipeline turns
them into model inputs, the same code a device runs.

Multi-input models: a ``.npz`` without ``x`` holds one array per input, keyed
by input name, plus the labels under ``y`` or the key given as ``label``
(``--label KEY``). ``Dataset.x`` is then a dict by input name.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from edgefleet.errors import InvalidInputError

Inputs = Union[np.ndarray, dict[str, np.ndarray]]


def take(x: Inputs, sl: slice) -> Inputs:
    """Rows ``sl`` of one array or of every array of a dict by input name."""
    return {k: v[sl] for k, v in x.items()} if isinstance(x, dict) else x[sl]


def n_samples(x: Inputs) -> int:
    return int(next(iter(x.values())).shape[0]) if isinstance(x, dict) else int(x.shape[0])


@dataclass(frozen=True)
class Dataset:
    x: Inputs
    y: np.ndarray | None
    source: str
    fingerprint: str

    def __len__(self) -> int:
        return n_samples(self.x)

    @property
    def multi(self) -> bool:
        return isinstance(self.x, dict)

    @property
    def task(self) -> str:
        """``classification`` (integer labels), ``regression`` (real targets) or ``unlabeled``."""
        if self.y is None:
            return "unlabeled"
        if self.y.dtype.kind in "iub" or (self.y.dtype.kind == "f" and np.all(np.mod(self.y, 1) == 0) and self.y.ndim == 1):
            return "classification"
        return "regression"

    def head(self, n: int) -> Dataset:
        if n >= len(self):
            return self
        return Dataset(take(self.x, slice(0, n)), None if self.y is None else self.y[:n], self.source, self.fingerprint)


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_inputs(x: dict[str, np.ndarray], what: str, p: Path) -> None:
    for k, v in x.items():
        if v.dtype.kind not in "fiub":
            raise InvalidInputError(f"{what} file {p}: array {k!r} must be numeric, got dtype {v.dtype}")
        if v.ndim == 0 or v.shape[0] == 0:
            raise InvalidInputError(f"{what} file {p}: array {k!r} holds no samples; give at least one row")
    counts = {k: int(v.shape[0]) for k, v in x.items()}
    if len(set(counts.values())) > 1:
        raise InvalidInputError(f"{what} file {p}: the input arrays have different sample counts {counts}")


def load_data(path: str | os.PathLike, *, csv_label_column: int | None = -1, what: str = "data",
              label: str | None = None, require_label: bool = True) -> Dataset:
    """Load DATA; raises :class:`InvalidInputError` naming the file and what is wrong.

    ``label`` names the npz array holding the labels (default ``y``); given explicitly, it must exist
    unless ``require_label`` is false (calibration files need no labels).
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"{what} file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        ykey = label or "y"
        try:
            with np.load(p, allow_pickle=False) as z:
                if label is not None and label not in z.files and require_label:
                    raise InvalidInputError(f"{what} file {p} has arrays {z.files}; --label {label} names none of them")
                y = np.asarray(z[ykey]) if ykey in z.files else None
                if "x" in z.files and ykey != "x":
                    x: Inputs = np.asarray(z["x"])
                else:
                    x = {k: np.asarray(z[k]) for k in z.files if k != ykey}
                    if not x:
                        raise InvalidInputError(f"{what} file {p} has arrays {z.files}: it needs 'x', or one array per "
                                                "input name (and 'y' or --label KEY for labels)")
        except (ValueError, OSError) as exc:
            raise InvalidInputError(f"cannot read {what} file {p}: {exc}") from None
        if isinstance(x, dict):
            _check_inputs(x, what, p)
            if y is not None and y.shape[0] != n_samples(x):
                raise InvalidInputError(f"{what} file {p}: the inputs have {n_samples(x)} samples but {ykey!r} has {y.shape[0]}")
            return Dataset(x, y, str(p), _fingerprint(p))
    elif suffix in (".csv", ".txt"):
        try:
            lines = p.read_text("utf-8").splitlines()
            skip = 1 if lines and any(c.isalpha() and c not in "eE" for c in lines[0].lower().replace("nan", "")) else 0
            table = np.loadtxt(p, delimiter=",", dtype=np.float64, skiprows=skip, ndmin=2)
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"cannot read {what} CSV {p}: {exc}") from None
        if csv_label_column is None:
            x, y = table.astype(np.float32), None
        else:
            col = csv_label_column % table.shape[1] if table.shape[1] else 0
            y = table[:, col]
            x = np.delete(table, col, axis=1).astype(np.float32)
            if np.all(np.mod(y, 1) == 0):
                y = y.astype(np.int64)
    else:
        raise InvalidInputError(f"{what} file {p}: unsupported type {suffix or '(none)'}; use .npz (arrays x, y) or .csv")
    if x.dtype.kind not in "fiub":
        raise InvalidInputError(f"{what} file {p}: x must be numeric, got dtype {x.dtype}")
    if x.ndim == 0 or x.shape[0] == 0:
        raise InvalidInputError(f"{what} file {p} holds no samples; give at least one row")
    if y is not None and y.shape[0] != x.shape[0]:
        raise InvalidInputError(f"{what} file {p}: x has {x.shape[0]} samples but y has {y.shape[0]}")
    return Dataset(x, y, str(p), _fingerprint(p))


def from_arrays(x: np.ndarray, y: np.ndarray | None = None, source: str = "<arrays>") -> Dataset:
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise InvalidInputError(f"{source} holds no samples")
    h = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    if y is not None:
        y = np.asarray(y)
        h.update(np.ascontiguousarray(y).tobytes())
    return Dataset(x, y, source, h.hexdigest())


__all__ = ["Dataset", "Inputs", "load_data", "from_arrays", "take", "n_samples"]
