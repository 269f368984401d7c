"""The backend interface the SDK's ``Model`` drives."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from ..manifest import TensorSpec


class Backend(Protocol):
    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch_resizable: bool

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run on arrays in the order of ``inputs`` (already the right dtype). Thread-safe."""
        ...

    def raw_call(self) -> RawCall:
        """The bare runtime call (set input, invoke, read output) for overhead benchmarks."""
        ...

    def close(self) -> None: ...


class RawCall(Protocol):
    def __call__(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]: ...
