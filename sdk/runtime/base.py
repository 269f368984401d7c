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
    #: the model keeps state inside the runtime between calls (LiteRT resource variables)
    has_variables: bool

    def run(self, arrays: Sequence[np.ndarray], reset: bool = False) -> list[np.ndarray]:
        """Run on arrays in the order of ``inputs`` (already the right dtype). Thread-safe.

        ``reset=True`` first resets the model's variables, so the call does not depend on
        earlier ones."""
        ...

    def reset_variables(self) -> None:
        """Back to the variables' initial values (nothing to do for a model without any)."""
        ...

    def clone(self) -> Backend:
        """A second, independent instance of the same model (its own variables)."""
        ...

    def raw_call(self) -> RawCall:
        """The bare runtime call (set input, invoke, read output) for overhead benchmarks."""
        ...

    def close(self) -> None: ...


class RawCall(Protocol):
    def __call__(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]: ...
