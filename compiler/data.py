"""Datasets for fine-tuning, calibration and evaluation.

DATA is a ``.npz`` file with an array ``x`` (and optionally ``y``; never
pickled) or a CSV file of numbers whose label is the last column (set
``data.csv_label_column`` to another index, or to nothing for unlabeled
rows). Arrays hold *raw* inputs: the bundle's preprocessing pipeline turns
them into model inputs, the same code a device runs.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.errors import InvalidInputError


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray
    y: np.ndarray | None
    source: str
    fingerprint: str

    def __len__(self) -> int:
        return int(self.x.shape[0])

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
        return Dataset(self.x[:n], None if self.y is None else self.y[:n], self.source, self.fingerprint)


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_data(path: str | os.PathLike, *, csv_label_column: int | None = -1, what: str = "data") -> Dataset:
    """Load DATA; raises :class:`InvalidInputError` naming the file and what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"{what} file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                if "x" not in z.files:
                    raise InvalidInputError(f"{what} file {p} has arrays {z.files}; it needs 'x' (and 'y' for labels)")
                x = np.asarray(z["x"])
                y = np.asarray(z["y"]) if "y" in z.files else None
        except (ValueError, OSError) as exc:
            raise InvalidInputError(f"cannot read {what} file {p}: {exc}") from None
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


__all__ = ["Dataset", "load_data", "from_arrays"]
