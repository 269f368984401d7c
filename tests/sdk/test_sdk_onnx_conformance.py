"""ONNX node conformance through ``edgefleet.load(path).predict`` (issue 11, item 7).

The cases are generated during the run with ``onnx.backend.test.case.node.collect_testcases()``
(the onnx wheel ships the generator, not the data). For each case the model is saved to a
temporary ``.onnx`` and run with plain ONNX Runtime; a case plain ORT cannot load, run or get
right is left out of the assertion (and counted). Every case ORT passes must also pass through
``edgefleet.load(path).predict(inputs_by_name)`` with the case's tolerances, except models
refused at load with ``UnsupportedModelError``, which must have a sequence or optional input or
output and name it.

Outputs are compared the way onnx's own backend runner does
(``onnx.backend.test.runner.Runner.assert_similar_outputs``): same count, sequences element by
element, same shape, strings exactly, same dtype, ``assert_allclose`` (NaN equals NaN) with the
case's ``rtol``/``atol``.

One test over all cases (``-k conformance``); ``-s`` shows the counts. With
``EDGEFLEET_CONFORMANCE_REPORT=FILE`` the categorised report is also written to FILE.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import edgefleet  # noqa: E402

try:  # the lead adds it with issue 11; keep this module importable until then
    from edgefleet.errors import UnsupportedModelError
except ImportError:  # pragma: no cover - only before issue 11 lands

    class UnsupportedModelError(Exception):  # type: ignore[no-redef]
        """Placeholder: never raised, so every refusal is counted as a failure."""


MAX_LISTED = 30  # failing cases listed in the assertion message
EXAMPLES = 3  # example cases per category in the report


# -- cases and comparison ---------------------------------------------------------------------


def collect_cases() -> list[Any]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return [c for c in collect_testcases() if c.kind == "node" and c.model is not None and c.data_sets]


def _normalize(value: Any) -> Any:
    """TensorProto -> ndarray, numpy scalar -> 0-d array, sequences element-wise; None stays."""
    if value is None:
        return None
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    return np.asarray(value)


def _is_str(a: np.ndarray) -> bool:
    return a.dtype.kind in "OUS"


def assert_similar(ref: list[Any], out: list[Any], rtol: float, atol: float) -> None:
    """onnx's Runner.assert_similar_outputs, plus None (empty optional) and str/bytes arrays."""
    np.testing.assert_equal(len(out), len(ref), err_msg="number of outputs")
    for i, (r, o) in enumerate(zip(ref, out)):
        if r is None or o is None:
            if not (r is None and o is None):
                raise AssertionError(f"output {i}: expected {type(r).__name__}, got {type(o).__name__}")
            continue
        if isinstance(r, (list, tuple)) or isinstance(o, (list, tuple)):
            if not (isinstance(r, (list, tuple)) and isinstance(o, (list, tuple))):
                raise AssertionError(f"output {i}: expected {type(r).__name__}, got {type(o).__name__}")
            assert_similar(list(r), list(o), rtol, atol)
            continue
        o = np.asarray(o)
        if o.shape != r.shape:
            raise AssertionError(f"output {i} has incorrect shape {o.shape}, expected {r.shape}")
        if _is_str(r):
            if not _is_str(o):
                raise AssertionError(f"output {i} has dtype {o.dtype}, expected strings")
            np.testing.assert_array_equal(o.astype(str), r.astype(str), err_msg=f"output {i}")
            continue
        if o.dtype != r.dtype:
            raise AssertionError(f"output {i} has dtype {o.dtype}, expected {r.dtype}")
        rt = rtol
        if o.dtype.name == "bfloat16":
            rt = max(rtol, 2**-6)
            o, r = o.astype(np.float32), r.astype(np.float32)
        np.testing.assert_allclose(o, r, rtol=rt, atol=atol, err_msg=f"output {i}")


def input_names(model: Any) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def unsupported_tensors(model: Any) -> list[str]:
    """Graph inputs/outputs whose type is a sequence or an optional (no edgefleet API carries them)."""
    names = []
    for vi in [*model.graph.input, *model.graph.output]:
        if vi.type.HasField("sequence_type") or vi.type.HasField("optional_type"):
            names.append(vi.name)
    return names


# -- outcome bookkeeping ----------------------------------------------------------------------


def _one_line(msg: str, limit: int = 300) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def category_of(stage: str, exc: BaseException) -> str:
    """stage + exception type + message prefix with names, numbers and shapes blanked out."""
    msg = str(exc).strip()
    if isinstance(exc, AssertionError):
        # numpy's messages start with a blank line and "Not equal to tolerance ..."
        first = next((ln.strip() for ln in msg.splitlines() if ln.strip()), "")
        if first.startswith("Not equal to tolerance") or "Mismatched elements" in msg:
            first = "values differ beyond the case's tolerance"
        elif first.startswith("Arrays are not equal"):
            first = "values differ (exact comparison)"
        msg = first
    msg = msg.splitlines()[0] if msg else ""
    msg = re.sub(r"(?:/[\w.\-]+){2,}", "/…", msg)  # file paths (temp dirs differ per run)
    msg = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", msg)
    msg = re.sub(r"\[[^\[\]]*\]|\([^()]*\)", "(…)", msg)
    msg = re.sub(r"\d+", "N", msg)
    msg = _one_line(msg, 80)
    return f"{stage}: {type(exc).__name__}: {msg}" if msg else f"{stage}: {type(exc).__name__}"


@dataclass
class Tally:
    total: int = 0
    ort_pass: int = 0
    ef_pass: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # case -> message
    ort_fail: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))
    failures: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))
    seconds: float = 0.0
    collect_seconds: float = 0.0

    @property
    def n_failures(self) -> int:
        return sum(len(v) for v in self.failures.values())

    def counts_line(self) -> str:
        return (
            f"ONNX node conformance: {self.total} cases, {self.ort_pass} pass plain ONNX Runtime "
            f"({self.total - self.ort_pass} do not), {self.ef_pass} pass edgefleet, "
            f"{len(self.refused)} refused at load (UnsupportedModelError), {self.n_failures} fail; "
            f"{self.seconds:.1f} s ({self.collect_seconds:.1f} s generating the cases)"
        )

    def refused_summary(self) -> str:
        kinds = Counter(category_of("load", UnsupportedModelError(m)).split(": ", 2)[-1] for m in self.refused.values())
        return "; ".join(f"{n} x {k}" for k, n in kinds.most_common())

    def failure_listing(self, limit: int = MAX_LISTED) -> str:
        """Every category (largest first) with some of its cases, about ``limit`` cases in all."""
        cats = sorted(self.failures.items(), key=lambda kv: -len(kv[1]))
        quota = max(1, limit // max(1, len(cats)))
        lines: list[str] = []
        shown = 0
        for cat, items in cats:
            lines.append(f"[{len(items)}] {cat}")
            for name, msg in items[:quota]:
                lines.append(f"    {name}: {_one_line(msg, 160)}")
                shown += 1
        if self.n_failures > shown:
            lines.append(f"(and {self.n_failures - shown} more cases)")
        return "\n".join(lines)

    def report(self) -> str:
        out = [self.counts_line(), ""]
        if self.refused:
            out.append(f"Refused at load ({len(self.refused)}): {self.refused_summary()}")
            for name, msg in list(self.refused.items())[:EXAMPLES]:
                out.append(f"    {name}: {_one_line(msg, 400)}")
            out.append("")
        out.append(f"edgefleet failures by category ({self.n_failures}):")
        for cat, items in sorted(self.failures.items(), key=lambda kv: -len(kv[1])):
            out.append(f"  [{len(items)}] {cat}")
            for name, msg in items[:EXAMPLES]:
                out.append(f"      {name}: {_one_line(msg, 400)}")
        out.append("")
        out.append(f"Cases plain ONNX Runtime does not pass (excluded), by category ({self.total - self.ort_pass}):")
        for cat, items in sorted(self.ort_fail.items(), key=lambda kv: -len(kv[1])):
            out.append(f"  [{len(items)}] {cat}: {', '.join(n for n, _ in items[:EXAMPLES])}")
        return "\n".join(out) + "\n"


# -- running one case -------------------------------------------------------------------------


def _raw_ort(path: Path, names: list[str], inputs: list[Any], so: Any) -> list[Any]:
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    got = [i.name for i in sess.get_inputs()]
    if sorted(got) != sorted(names):
        raise AssertionError(f"session inputs {got} differ from the graph's {names}")
    return sess.run(None, dict(zip(names, inputs)))


def _edgefleet(
    path: Path, case: Any, names: list[str], datasets: list[tuple[list[Any], list[Any]]], tally: Tally
) -> None:
    """Load once, predict every data set; record a pass, a refusal or the first failure."""
    model, name = case.model, case.name
    out_names = [o.name for o in model.graph.output]
    try:
        m = edgefleet.load(path)
    except UnsupportedModelError as e:
        bad = unsupported_tensors(model)
        if not bad:
            tally.failures[category_of("refused a model of plain tensors", e)].append(
                (name, f"{type(e).__name__}: {e}")
            )
        elif not any(b in str(e) for b in bad):
            tally.failures[category_of(f"refused without naming {bad}", e)].append((name, f"{type(e).__name__}: {e}"))
        else:
            tally.refused[name] = str(e)
        return
    except Exception as e:
        tally.failures[category_of("load", e)].append((name, f"{type(e).__name__}: {e}"))
        return
    try:
        for ins, refs in datasets:
            try:
                got = m.predict(dict(zip(names, ins)))
            except Exception as e:
                tally.failures[category_of("predict", e)].append((name, f"{type(e).__name__}: {e}"))
                return
            try:
                if len(out_names) == 1:
                    if isinstance(got, dict):
                        raise AssertionError(f"one output, predict returned a dict with keys {list(got)}")
                    outs = [got]
                else:
                    if not isinstance(got, dict) or sorted(got) != sorted(out_names):
                        keys = list(got) if isinstance(got, dict) else type(got).__name__
                        raise AssertionError(f"outputs must be a dict keyed {out_names}, got {keys}")
                    outs = [got[n] for n in out_names]
                assert_similar(refs, outs, case.rtol, case.atol)
            except AssertionError as e:
                tally.failures[category_of("wrong output", e)].append((name, f"{type(e).__name__}: {e}"))
                return
        tally.ef_pass += 1
    finally:
        close = getattr(m, "close", None)
        if close is not None:
            close()


def run_conformance(cases: list[Any], workdir: Path) -> Tally:
    tally = Tally()
    so = ort.SessionOptions()
    so.log_severity_level = 4  # its errors are recorded as exceptions; keep stderr quiet
    so.intra_op_num_threads = 1  # node-sized models: a thread pool per session costs more than it saves
    t0 = time.perf_counter()
    for case in cases:
        tally.total += 1
        path = workdir / f"{case.name}.onnx"
        onnx.save(case.model, str(path))
        names = input_names(case.model)
        datasets = [([_normalize(x) for x in ins], [_normalize(y) for y in outs]) for ins, outs in case.data_sets]
        try:
            for ins, refs in datasets:
                assert_similar(refs, _raw_ort(path, names, ins, so), case.rtol, case.atol)
        except Exception as e:
            stage = "wrong output" if isinstance(e, AssertionError) else "error"
            tally.ort_fail[category_of(f"ORT {stage}", e)].append((case.name, str(e)))
        else:
            tally.ort_pass += 1
            _edgefleet(path, case, names, datasets, tally)
        path.unlink()
    tally.seconds = time.perf_counter() - t0
    return tally


# -- the test ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_onnx_node_conformance() -> None:
    ort.set_default_logger_severity(3)
    t0 = time.perf_counter()
    cases = collect_cases()
    t1 = time.perf_counter()
    assert len(cases) > 1000, f"onnx generated only {len(cases)} node cases"
    with tempfile.TemporaryDirectory(prefix="ef-onnx-conf-") as d, warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        tally = run_conformance(cases, Path(d))
    tally.collect_seconds = t1 - t0
    tally.seconds = time.perf_counter() - t0
    report = tally.report()
    print("\n" + tally.counts_line())
    if tally.refused:
        print(f"refused at load: {tally.refused_summary()}")
    if tally.failures:
        print(tally.failure_listing())
    dest = os.environ.get("EDGEFLEET_CONFORMANCE_REPORT")
    if dest:
        Path(dest).write_text(report)
    if tally.ort_pass < 1000:
        pytest.fail(f"plain ONNX Runtime passes only {tally.ort_pass} cases\n{report}", pytrace=False)
    if tally.failures:
        pytest.fail(
            f"{tally.counts_line()}\nrefused at load: {tally.refused_summary() or 'none'}\n"
            f"first failing cases by category:\n{tally.failure_listing()}",
            pytrace=False,
        )
