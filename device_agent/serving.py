"""Serving: what ``Agent.predict`` runs on, and hot swap.

Each loaded version sits in a :class:`Slot` that counts the predictions in flight. ``predict`` reads the
current slot (one attribute read) and holds it for the duration of the call; a swap replaces the attribute
and the old model is closed only when its last in-flight call returns. No predict ever fails or waits
because of a swap. A candidate may run as a :class:`Shadow` beside the active version, fed copies of live
inputs on its own thread. :class:`AgentSession` carries a stateful model's state across swaps.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from edgefleet.errors import InvalidInputError, SessionError, StoreError
from edgefleet.keys import PublicKey
from edgefleet.manifest import Manifest

from .health import LatencyHistogram, outputs_agree
from .probation import Probation, QualityProbe, ShadowStats
from .store import Entry
from .telemetry import Telemetry

if TYPE_CHECKING:
    from edgefleet.model import Inputs, SmokeResult


log = logging.getLogger(__name__)


class ModelLike(Protocol):
    """What the agent serves: :class:`edgefleet.Model`'s part of it (loaded by a :data:`Loader`)."""

    manifest: Manifest

    def predict(self, x: Inputs = None, *, raw: bool = False, preprocess: bool = True) -> Any: ...

    def run_smoke_tests(self) -> SmokeResult: ...

    def close(self) -> None: ...


Loader = Callable[[Path, Sequence[PublicKey], bool], ModelLike]


def sdk_loader(backend: str | None = None, threads: int | None = None) -> Loader:
    """Load a stored bundle with ``edgefleet.load`` (verifies signature, sizes and hashes again)."""

    def load(path: Path, keys: Sequence[PublicKey], require_signature: bool) -> ModelLike:
        from edgefleet.model import load as sdk_load

        return sdk_load(path, trusted_keys=list(keys) or None, require_signature=require_signature,
                        backend=backend, threads=threads)

    return load


class Slot:
    """A loaded version and the count of predictions running on it."""

    def __init__(self, model: ModelLike, entry: Entry) -> None:
        self.model = model
        self.entry = entry
        self.hist = LatencyHistogram()
        self._lock = threading.Lock()
        self._inflight = 0
        self._retired = False
        self._closed = False
        self.failures = 0  # predictions that raised (the log names the first ones)
        #: the personal head this version serves (.personal: its summary), or None for the bundle's own
        self.personal: dict[str, Any] | None = None

    def acquire(self) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._inflight += 1
            return True

    def release(self, latency_ms: float | None) -> None:
        with self._lock:
            self._inflight -= 1
            if latency_ms is not None:
                self.hist.add(latency_ms)
            close = self._retired and self._inflight == 0 and not self._closed
            if close:
                self._closed = True
        if close:
            self._close_model()

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            close = self._inflight == 0 and not self._closed
            if close:
                self._closed = True
        if close:
            self._close_model()

    def _close_model(self) -> None:
        try:
            self.model.close()
        except Exception as exc:
            log.warning("closing v%s failed: %s", self.entry.version, exc,
                        extra={"event": "close_failed", "version": self.entry.version})


class Shadow:
    """A candidate fed copies of live inputs on a worker thread; never blocks ``predict``."""

    def __init__(self, slot: Slot, stats: ShadowStats, atol: float) -> None:
        self.slot = slot
        self.stats = stats
        self.atol = atol
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=32)
        self.thread = threading.Thread(target=self._run, name="edgefleet-shadow", daemon=True)
        self.thread.start()

    def offer(self, x: Any, kwargs: Mapping[str, Any], out: Any, ms: float) -> None:
        if self.queue.full():
            self.stats.dropped += 1
            return
        if isinstance(x, np.ndarray):  # the caller may reuse its buffer once predict returns
            x = x.copy()
        elif isinstance(x, Mapping):
            x = {k: np.array(v, copy=True) for k, v in x.items()}
        try:
            self.queue.put_nowait((x, kwargs, out, ms))
        except queue.Full:
            self.stats.dropped += 1

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            x, kwargs, out, ms = item
            t0 = time.perf_counter()
            try:
                got = self.slot.model.predict(x, **kwargs)
            except Exception:
                self.stats.record(None, 0.0, ms)
                continue
            cms = (time.perf_counter() - t0) * 1000
            self.stats.record(outputs_agree(out, got, self.atol), cms, ms)
            probe = self.stats.quality
            if probe is not None and probe.wants():
                probe.observe(got, out)  # the candidate is the new version, the active one its reference

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=5)


def _copy_inputs(x: Any) -> Any:
    """A copy of live inputs for another thread (the caller may reuse its buffer once predict returns)."""
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, Mapping):
        return {k: np.array(v, copy=True) for k, v in x.items()}
    return x


class Comparator:
    """During probation, the version a new one replaced (the standby, still loaded) run on copies of the live
    inputs on a worker thread, never blocking ``predict``: each pair of outputs goes to the probation's
    :class:`.probation.QualityProbe`. Feedback labels go the same way (:meth:`offer_label`). Inputs that find the
    worker busy are dropped (counted); once the probe has a verdict nothing more is compared."""

    def __init__(self, reference: Slot, probe: QualityProbe, depth: int = 32) -> None:
        self.reference = reference
        self.probe = probe
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._run, name="edgefleet-quality", daemon=True)
        self.thread.start()

    def offer(self, x: Any, kwargs: Mapping[str, Any], out: Any, labels: Any = None) -> None:
        if not self.probe.wants():
            return
        if self.queue.full():
            self.probe.dropped += 1
            return
        try:
            self.queue.put_nowait((_copy_inputs(x), dict(kwargs), _copy_inputs(out), labels))
        except queue.Full:
            self.probe.dropped += 1

    def offer_label(self, x: Any, labels: Any, out: Any) -> None:
        """A labelled input (``Agent.feedback``) and the new version's output on it: scored on both versions."""
        self.offer(x, {}, out, labels)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            x, kwargs, out, labels = item
            if not self.probe.wants() or not self.reference.acquire():
                continue
            try:
                ref = self.reference.model.predict(x, **kwargs)
            except Exception:
                self.probe.errors += 1
                continue
            finally:
                self.reference.release(None)
            self.probe.observe(out, ref, labels)

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=5)


class Serving:
    """What ``predict`` runs on: the active :class:`Slot` (swapped in one attribute write), the standby (the
    version replaced, kept loaded during probation so a rollback is instant), the candidate (loaded for smoke
    tests and shadow runs), the :class:`Shadow`, and the probation that every call is recorded to. Telemetry
    records every prediction; ``on_failure`` is called when a prediction fails during probation (the agent
    wakes its monitor to judge at once)."""

    def __init__(self, telemetry: Telemetry, record_telemetry: bool, on_failure: Callable[[], None]) -> None:
        self.telemetry = telemetry
        self.record_telemetry = record_telemetry
        self.on_failure = on_failure
        self.slot: Slot | None = None
        self.standby: Slot | None = None
        self.candidate: Slot | None = None
        self.shadow: Shadow | None = None
        self.probation: Probation | None = None
        self.comparator: Comparator | None = None  # during probation: the new version against the standby

    def serve(self, call: Callable[[Slot], Any], x: Any, kwargs: Mapping[str, Any], shadow: bool) -> Any:
        """Run ``call(slot)`` on the active version with telemetry, probation and shadow."""
        while True:
            slot = self.slot
            if slot is None:
                raise StoreError("no model is installed; install one with 'edgefleet agent install'")
            if slot.acquire():
                break
            if self.slot is slot:  # closed and not replaced by a swap: the agent closed (retire_all)
                raise StoreError("the agent is closed: no version is served any more")
        version = slot.entry.version
        t0 = time.perf_counter()
        try:
            out = call(slot)
        except (InvalidInputError, SessionError):
            slot.release(None)
            if self.record_telemetry:
                self.telemetry.record_prediction(version, 0.0, "invalid")
            raise
        except Exception as exc:
            slot.release(None)
            if self.record_telemetry:
                self.telemetry.record_prediction(version, 0.0, "error")
            probation = self.probation
            on_probation = probation is not None and self.slot is slot
            slot.failures += 1
            if slot.failures in (1, 10, 100, 1000) or slot.failures % 10_000 == 0:  # not a line per failed call
                log.warning("a prediction on v%s failed%s: %s: %s (%d so far)", version,
                            " during its probation" if on_probation else "", type(exc).__name__, exc, slot.failures,
                            extra={"event": "prediction_failed", "version": version, "failures": slot.failures})
            if probation is not None and on_probation:
                probation.record(False, 0.0)
                self.on_failure()
            raise
        ms = (time.perf_counter() - t0) * 1000
        slot.release(ms)
        if self.record_telemetry:
            self.telemetry.record_prediction(version, ms, "ok", x, out)
        probation = self.probation
        if probation is not None and self.slot is slot:
            probation.record(True, ms)
        shadow_ = self.shadow if shadow else None
        if shadow_ is not None:
            shadow_.offer(x, kwargs, out, ms)
        comparator = self.comparator if shadow else None  # (a stateful session's steps are not compared)
        if comparator is not None and self.slot is slot and comparator.reference is not slot:
            comparator.offer(x, kwargs, out)
        return out

    def swap(self, new: Slot) -> Slot | None:
        """Serve ``new`` from the next call on; returns the slot it replaced (still serving its calls in flight)."""
        old, self.slot = self.slot, new
        if old is not new:
            log.info("serving v%s (was %s)", new.entry.version, f"v{old.entry.version}" if old else "nothing",
                     extra={"event": "serving", "version": new.entry.version,
                            "previous": old.entry.version if old else ""})
        return old

    def stop_shadow(self) -> None:
        shadow, self.shadow = self.shadow, None
        if shadow is not None:
            shadow.stop()
            self._record_comparison(shadow.stats.quality)

    def stop_comparator(self) -> None:
        """Stop comparing the new version with the standby; the outcome goes into the new version's telemetry."""
        comparator, self.comparator = self.comparator, None
        if comparator is not None:
            comparator.stop()
            self._record_comparison(comparator.probe)

    def _record_comparison(self, probe: QualityProbe | None) -> None:
        if probe is not None and self.record_telemetry and (probe.stats.compared or probe.stats.labelled):
            self.telemetry.record_comparison(probe.version, probe.report())

    def retire_all(self) -> None:
        """Close every loaded version once its calls in flight end (the agent is closing)."""
        self.stop_shadow()
        self.stop_comparator()
        for slot in {id(s): s for s in (self.slot, self.standby, self.candidate) if s is not None}.values():
            slot.retire()


class AgentSession:
    """A stateful model session that follows the version served (see :meth:`.Agent.session`). Thread-safe:
    calls are serialised."""

    def __init__(self, serving: Serving) -> None:
        self._serving = serving
        self._lock = threading.RLock()
        self._slot: Slot | None = None
        self._session: Any = None
        self._broken: str | None = None

    def _bind(self, slot: Slot) -> Any:
        if slot is self._slot and self._session is not None:
            return self._session
        if self._broken is not None:
            raise SessionError(self._broken)
        model = slot.model
        if self._session is None:
            self._session = model.session()  # type: ignore[attr-defined]
        else:
            try:
                self._session.move_to(model)
            except SessionError as exc:
                self._broken = f"the agent swapped to v{slot.entry.version}: {exc}"
                raise SessionError(self._broken) from None
        self._slot = slot
        return self._session

    def predict(self, x: Any = None, **kwargs: Any) -> Any:
        """One step on the active version (state carried, see ``edgefleet.Session``)."""
        with self._lock:
            return self._serving.serve(lambda slot: self._bind(slot).predict(x, **kwargs), x, kwargs, shadow=False)

    def push(self, chunk: Any) -> Any:
        with self._lock:
            return self._serving.serve(lambda slot: self._bind(slot).push(chunk), chunk, {}, shadow=False)

    @property
    def version(self) -> str | None:
        return self._slot.entry.version if self._slot is not None else None

    @property
    def state(self) -> dict[str, Any]:
        with self._lock:
            return {} if self._session is None else self._session.state

    def reset(self) -> None:
        """Start again (initial state) on whatever version is active at the next call."""
        with self._lock:
            self._slot, self._session, self._broken = None, None, None


__all__ = ["AgentSession", "Comparator", "Loader", "ModelLike", "Serving", "Shadow", "Slot", "sdk_loader"]
