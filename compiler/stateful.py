"""Stateful models in the compiler: state pairs, their names in each converted file, and state calibration.

A stateful model takes its previous state as an input and returns the next one (a GRU with
inputs ``x``, ``h0`` and outputs ``y``, ``hn``). The compiler:

- decides the state pairs (output -> input) in the *source's* names: ``--state OUT=IN``
  (``--state none`` for none), else the SDK's proposal from names and shapes
  (:func:`edgefleet.pack.propose_state_pairs`), checked by :func:`edgefleet.pack.state_specs`;
- finds each pair's names in every converted file (converters rename tensors: TFLite calls a
  Keras model's outputs ``StatefulPartitionedCall_1:0``, its inputs ``serving_default_h0:0``)
  and packs every bundle with them, so ``model.session()`` carries the state;
- calibrates state inputs from the calibration data when it holds them, else from a recorded
  stream: the float32 model's :class:`edgefleet.Session` run over the calibration samples in
  order (state carried from the initial state), recording the state fed at every step. A state
  calibrated on zeros (or random values) gets a range that the real state leaves at once;
- evaluates with the initial state (zeros) for every eval sample unless the eval data holds
  the state, and scores the first non-state output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgefleet.errors import ConfigError, InvalidInputError

from .data import Inputs, n_samples, take
from .evaluate import align_order

PROBE_SEED = 20240602


def keras_signature(model: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The Keras model's inputs and outputs as SDK ``TensorSpec`` in Keras's names (batch axis 0)."""
    from edgefleet.manifest import DTYPES, TensorSpec

    def spec(name: str, t: Any) -> TensorSpec:
        shape = tuple(-1 if d is None else int(d) for d in t.shape)
        dtype = str(getattr(t.dtype, "name", t.dtype))
        dtype = dtype if dtype in DTYPES else "float32"  # bfloat16 & co: only names and shapes matter here
        return TensorSpec(name, shape, dtype, batch_axis=0 if shape and shape[0] == -1 else None)

    inputs = tuple(spec(t.name, t) for t in model.inputs)
    names = getattr(model, "output_names", None) or [t.name for t in model.outputs]  # Sequential has no output_names
    outputs = tuple(spec(n, t) for n, t in zip(names, model.outputs))
    return inputs, outputs


def file_signature(path: Path) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """An ``.onnx``/``.tflite`` file's inputs and outputs (batch axes inferred) as the SDK reads them."""
    from edgefleet.pack import manifest_for_model

    manifest, be = manifest_for_model(path)
    be.close()
    return manifest.inputs, manifest.outputs


def resolve_pairs(given: Mapping[str, str] | None, inputs: Sequence[Any], outputs: Sequence[Any]) -> dict[str, str]:
    """State pairs (output -> input) in source names: ``given`` checked against the model, or the SDK's proposal."""
    from edgefleet.pack import propose_state_pairs, state_specs

    pairs = propose_state_pairs(inputs, outputs) if given is None else dict(given)
    state_specs(pairs, inputs, outputs)  # ConfigError naming the pair, the tensors and their shapes
    return pairs


def score_index(outputs: Sequence[Any], pairs: Mapping[str, str]) -> int:
    """The output the eval data scores: the first one that is not a state output."""
    return next((i for i, s in enumerate(outputs) if s.name not in pairs), 0)


def check_batch_first(specs: Sequence[Any], names: Sequence[str], what: str) -> None:
    """State values the compiler makes (zeros, a recorded stream) stack samples on axis 0."""
    for s in specs:
        if s.name in names and (s.batch_axis != 0 or any(d == -1 for d in s.sample_shape)):
            raise ConfigError(
                f"state input {s.name!r} {s.shape_text()} has its batch on axis {s.batch_axis} or other dynamic "
                f"dimensions, so {what} cannot be made for it: store its values in the data file under {s.name!r}"
            )


def initial_states(specs: Sequence[Any], names: Sequence[str], n: int) -> dict[str, np.ndarray]:
    """The initial state (zeros, as the compiler's bundles declare it) of ``names`` for ``n`` samples."""
    return {s.name: np.zeros((n, *s.sample_shape), np.dtype(s.dtype)) for s in specs if s.name in names}


def states_from_file(source: str, names: Sequence[str], n: int) -> dict[str, np.ndarray]:
    """State arrays stored in a data ``.npz`` beside ``x`` (which the data loader reads alone), first ``n`` rows."""
    if not source.lower().endswith(".npz") or not names:
        return {}
    with np.load(source, allow_pickle=False) as z:
        found = {k: np.asarray(z[k][:n]) for k in names if k in z.files}
    short = {k: int(v.shape[0]) if v.ndim else 0 for k, v in found.items() if v.ndim == 0 or v.shape[0] != n}
    if short:
        raise InvalidInputError(f"data file {source}: state arrays {short} hold fewer rows than its {n} samples")
    return found


class StateNames:
    """The source's tensor names in each converted file, found once per file."""

    def __init__(self, inputs: Sequence[Any], outputs: Sequence[Any], reference: Callable[[dict[str, np.ndarray]], list[np.ndarray]]):
        from edgefleet.pack import synthetic_inputs

        self.inputs, self.outputs = inputs, outputs
        self._reference = reference
        self._probe = synthetic_inputs(inputs, 2, PROBE_SEED)
        self._probe_out: list[np.ndarray] | None = None
        self._maps: dict[Path, tuple[dict[str, str], dict[str, str]]] = {}

    def of(self, path: Path) -> tuple[dict[str, str], dict[str, str]]:
        """(inputs, outputs): source name -> the file's name. Inputs by name (TFLite's ``serving_default_NAME:0``);
        outputs by name when the file kept them, else by running the file and the source on one probe input
        and pairing each source output with the same-shaped file output nearest to it."""
        if path in self._maps:
            return self._maps[path]
        from .api import match_name

        f_in, f_out = file_signature(path)
        in_names = [s.name for s in f_in]
        ins = {s.name: match_name(s.name, in_names) for s in self.inputs}
        out_names = [s.name for s in f_out]
        if all(s.name in out_names for s in self.outputs):
            outs = {s.name: s.name for s in self.outputs}
        else:
            import edgefleet

            if self._probe_out is None:
                self._probe_out = [np.asarray(o, np.float64) for o in self._reference(self._probe)]
            with edgefleet.load(path, threads=1) as m:
                got = m.predict({ins[k]: v for k, v in self._probe.items()}, preprocess=False)
            got_list = [np.asarray(got[n]) for n in out_names] if isinstance(got, dict) else [np.asarray(got)]
            order = align_order(self._probe_out, got_list)
            outs = {s.name: out_names[i] for s, i in zip(self.outputs, order)}
        self._maps[path] = (ins, outs)
        return ins, outs

    def pairs_in(self, path: Path, pairs: Mapping[str, str]) -> dict[str, str]:
        ins, outs = self.of(path)
        return {outs[o]: ins[i] for o, i in pairs.items()}


def record_state_stream(bundle_path: Path, x: Mapping[str, np.ndarray], state_inputs: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Run a (float) bundle's :class:`Session` over the samples of ``x`` in order, one at a time, the state carried
    from its initial value; return the state fed at every step, by source name.

    ``x`` holds the non-state inputs by the bundle's names; ``state_inputs`` maps source name -> bundle name."""
    import edgefleet

    n = n_samples(dict(x))
    recorded: dict[str, list[np.ndarray]] = {k: [] for k in state_inputs}
    with edgefleet.load(bundle_path, threads=1) as m:
        sess = m.session()
        for i in range(n):
            state = sess.state
            for src_name, b_name in state_inputs.items():
                recorded[src_name].append(state[b_name])  # a batch of one, batch axis 0 (check_batch_first)
            sess.predict(take(dict(x), slice(i, i + 1)), preprocess=False)
    return {k: np.concatenate(v, axis=0).astype(np.float32) for k, v in recorded.items()}


def complete(x: Inputs, free: Sequence[str]) -> Inputs:
    """Data for a stateful model as a dict by input name (a bare array is the only non-state input)."""
    if isinstance(x, dict) or len(free) != 1:
        return x
    return {free[0]: x}


__all__ = ["keras_signature", "file_signature", "resolve_pairs", "score_index", "StateNames", "record_state_stream",
           "initial_states", "states_from_file", "check_batch_first", "complete"]
