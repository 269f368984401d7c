"""``Session``: a stateful model's state, carried from call to call.

A streaming model (voice activity, keyword spotting, a recurrent sensor model) takes
its previous state as an input and returns the next one. The manifest declares these
pairs (``state``: output -> input, with an initial value); a ``Session`` feeds each
state input from the previous call's output, so the caller passes only the real
inputs::

    with edgefleet.load("vad") as model:
        sess = model.session()
        for chunk in microphone():          # 512 samples each
            prob = sess.predict(chunk)

LiteRT models that keep their state in resource variables instead (``stateful_variables``
in the manifest) get an interpreter of their own in every session, so sessions never
share state; ``reset()`` starts it afresh.

Each session has its own state; a session serialises its calls, so it can be shared
between threads (one stream at a time through it).
"""

from __future__ import annotations

import copy
import threading
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .errors import ConfigError, InvalidInputError, SessionError
from .preprocess import PipelineStream

if TYPE_CHECKING:
    from .model import Inputs, Model


def signature_key(model: Model) -> tuple[Any, ...]:
    """What a session depends on: names, dtypes, shapes and batch axes of every tensor,
    the state pairs and the preprocessing. Two models with the same key can take over
    each other's sessions."""
    m = model.manifest
    head = (m.head.output,) if m.head is not None else ()  # what a trainable head returns, too
    tensors = tuple((s.name, s.dtype, s.shape, s.batch_axis) for s in (*m.inputs, *m.outputs, *head))
    return tensors, tuple((st.output, st.input) for st in m.state), m.stateful_variables, repr(sorted(m.preprocessing.items()))


class Session:
    """Carries a model's state from call to call (see the module docstring)."""

    def __init__(self, model: Model) -> None:
        self._lock = threading.RLock()
        #: the next state as real values by name (set by the caller or moved from another
        #: model), used when there is no raw state
        self._state: dict[str, np.ndarray] | None = None
        #: the runtime's own arrays for the next call (previous outputs), and whether that
        #: call was one unbatched sample
        self._raw: list[np.ndarray] | None = None
        self._one = False
        self._stream: PipelineStream | None = None
        self._stream_input: str | None = None
        self._runner: Model = model
        self._model: Model = model
        self._bind(model)

    def _bind(self, model: Model) -> None:
        self._model = model
        if model.manifest.stateful_variables:
            # an interpreter of its own: resource variables are per interpreter
            runner = copy.copy(model)
            runner._backend = model._backend.clone()
            runner._variables = False
            runner._fast = None
            self._runner = runner
        else:
            self._runner = model
        self._state_names = [st.input for st in model.manifest.state]
        state_outputs = {st.output for st in model.manifest.state}
        self._out_names = [s.name for s in model.outputs]
        #: the outputs a call returns: all but the state
        self._keep = [j for j, n in enumerate(self._out_names) if n not in state_outputs] or list(range(len(self._out_names)))
        self._free = [s.name for s in model.inputs if s.name not in model._state_inputs]

    @property
    def model(self) -> Model:
        return self._model

    # -- state ---------------------------------------------------------------
    @property
    def state(self) -> dict[str, np.ndarray]:
        """The state the next call will be fed, by state input name (copies)."""
        with self._lock:
            if self._raw is not None:
                return self._runner._state_values(self._raw, self._one)
            if self._state is None:
                return {n: np.array(self._model.initial_state(n)) for n in self._state_names}
            return {k: np.array(v) for k, v in self._state.items()}

    @state.setter
    def state(self, value: Mapping[str, Any]) -> None:
        if not isinstance(value, Mapping):
            raise InvalidInputError("a session's state is a dict by state input name")
        names = set(self._state_names)
        if set(value) != names:
            raise InvalidInputError(
                f"state must name exactly the state inputs {sorted(names)}; got {sorted(map(str, value))}"
            )
        new: dict[str, np.ndarray] = {}
        for name, v in value.items():
            arr = np.array(v)
            plan = self._model._plans[self._model._index[name]]
            if arr.dtype.kind not in "fiub":
                raise InvalidInputError(f"state {name!r}: expected numbers, got dtype {arr.dtype}")
            ok_full = _fits(arr.shape, plan.shape)
            ok_one = plan.axis is not None and _fits(arr.shape, plan.sample_shape)
            if not (ok_full or ok_one):
                raise InvalidInputError(
                    f"state {name!r}: expected shape {plan.spec.shape_text()} (or one sample of it), got {arr.shape}"
                )
            new[name] = arr
        with self._lock:
            self._state, self._raw = new, None

    def reset(self) -> None:
        """Back to the initial state (and a fresh stream of windows)."""
        with self._lock:
            self._state, self._raw = None, None
            if self._stream is not None:
                self._stream.reset()
            if self._runner is not self._model:
                self._runner._backend.reset_variables()

    # -- calls -----------------------------------------------------------------
    def predict(self, x: Inputs = None, *, raw: bool = False, preprocess: bool = True) -> Any:
        """Run one step: ``x`` holds the non-state inputs; returns the non-state outputs
        (an array for one, a dict by name for several) and keeps the next state."""
        with self._lock:
            if self._runner.head is not None:  # a model with a trainable head is stateless: a step is predict
                return self._runner.predict(x, raw=raw, preprocess=preprocess)
            outs, self._raw, self._one = self._runner._step(x, self._raw, self._state, raw=raw, preprocess=preprocess)
            keep = self._keep
            if len(keep) == 1:
                return outs[keep[0]]
            return {self._out_names[j]: outs[j] for j in keep}

    def push(self, chunk: Any, input_name: str | None = None, *, other_inputs: Mapping[str, Any] | None = None) -> Any:
        """Feed a chunk of a stream (time first).

        With a sliding-window preprocessing step on the input, the chunk is cut into
        windows and each completed window runs through the session in order (state
        carried); returns their outputs stacked (first axis: window), or ``None`` when no
        window completed. ``other_inputs`` gives the model's remaining non-state inputs
        (a sample rate, say), the same for every window. Without a window step, ``push`` is
        ``predict``.
        """
        with self._lock:
            others = dict(other_inputs or {})
            stream = self._window_stream(input_name, others)
            if stream is None:
                name = input_name or next(n for n in self._free if n not in others)
                return self.predict({name: chunk, **others} if others or input_name else chunk)
            return self._run_windows(stream.push(np.asarray(chunk)), others)

    def flush(self, *, other_inputs: Mapping[str, Any] | None = None) -> Any:
        """End the stream: run the zero-padded last window when the window step pads."""
        with self._lock:
            if self._stream is None:
                return None
            return self._run_windows(self._stream.flush(), dict(other_inputs or {}))

    def _window_stream(self, input_name: str | None, others: Mapping[str, Any]) -> PipelineStream | None:
        if self._stream is not None and input_name in (None, self._stream_input):
            return self._stream
        model = self._model
        unknown = sorted(set(others) - set(self._free))
        if unknown:
            raise ConfigError(f"other_inputs names {unknown}, which are not non-state inputs {self._free}")
        streamed = [n for n in self._free if n not in others]
        if input_name is None:
            if len(streamed) != 1:
                raise ConfigError(
                    f"name the input to push to, and give the others with other_inputs: the model takes {self._free}"
                )
            input_name = streamed[0]
        if input_name not in self._free:
            raise ConfigError(f"no non-state input named {input_name!r}; inputs are {self._free}")
        missing = [n for n in streamed if n != input_name]
        if missing:
            raise ConfigError(f"push streams one input: give {missing} with other_inputs")
        plan = model._plans[model._index[input_name]]
        if not plan.pipeline.has_window:
            return None
        self._stream, self._stream_input = plan.pipeline.stream(), input_name
        return self._stream

    def _run_windows(self, windows: np.ndarray, others: Mapping[str, Any]) -> Any:
        if windows.shape[0] == 0:
            return None
        name = self._stream_input
        assert name is not None  # set with the stream
        multi = len(self._model.inputs) > 1
        results = [self.predict({name: w, **others} if multi else w, preprocess=False) for w in windows]
        if isinstance(results[0], dict):
            return {k: np.stack([r[k] for r in results]) for k in results[0]}
        return np.stack(results)

    # -- hot swap --------------------------------------------------------------
    def move_to(self, model: Model) -> None:
        """Carry on with ``model`` (a new version of the same model), keeping the state.

        Raises ``SessionError`` when the new model's signature differs: its state would not
        mean the same thing there."""
        with self._lock:
            if model.manifest.stateful_variables:
                raise SessionError(
                    f"{model.name} keeps its state in the runtime's variables, which cannot move to "
                    f"v{model.version}: open a new session"
                )
            if signature_key(model) != signature_key(self._model):
                raise SessionError(
                    f"{model.name} v{model.version} has another signature than v{self._model.version} "
                    "(inputs, outputs, state or preprocessing): open a new session"
                )
            # real values travel: the new version may quantize its state differently
            state = self._runner._state_values(self._raw, self._one) if self._raw is not None else self._state
            self._bind(model)
            self._state, self._raw = state, None
            self._stream = None

    def __repr__(self) -> str:
        return f"<Session {self._model.name} v{self._model.version} state={self._state_names}>"


def _fits(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    return len(shape) == len(expected) and all(w == -1 or g == w for g, w in zip(shape, expected))
