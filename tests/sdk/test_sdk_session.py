"""Stateful models (issue 11): ``Model.session()`` loops, state pairs, resource variables, push.

The reference for the recurrent model is Keras's own ``stateful=True`` GRU with the same
weights run on successive chunks (saved by ``make_signature_models.py``, which runs in a
subprocess: this process never imports TensorFlow).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import edgefleet
from edgefleet.errors import EdgefleetError
from edgefleet.pack import pack

HERE = Path(__file__).parent
SCRIPT = HERE / "make_signature_models.py"
UNITS, T, F = 8, 5, 3
FORMATS = ["tflite", "onnx"]
TOL = 1e-5  # LiteRT / ONNX Runtime against Keras (float32, different kernels)


@pytest.fixture(scope="module")
def ref(sig_dir: Path) -> dict[str, np.ndarray]:
    with np.load(sig_dir / "gru_ref.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def gru(sig_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """gru.tflite / gru.onnx packed without a state option (pack proposes h0 -> hn)."""
    out = tmp_path_factory.mktemp("gru_bundles")
    return {fmt: pack(sig_dir / f"gru.{fmt}", out / fmt, name=f"gru-{fmt}", version="1")[0].path for fmt in FORMATS}


@pytest.fixture(scope="module")
def rv(sig_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pack(sig_dir / "rv_acc.tflite", tmp_path_factory.mktemp("rv") / "rv", name="rv-acc", version="1")[0].path


def raw_loop(path: Path, chunks: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The raw runtime with the state fed back by hand."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def call(x: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            y, hn = s.run(["y", "hn"], {"x": x, "h0": h})
            return y, hn
    else:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path))
        ins = {d["name"]: d["index"] for d in it.get_input_details()}
        outs = {d["name"]: d["index"] for d in it.get_output_details()}
        it.resize_tensor_input(ins["x"], list(chunks.shape[1:]), strict=True)
        it.resize_tensor_input(ins["h0"], [chunks.shape[1], UNITS], strict=True)
        it.allocate_tensors()

        def call(x: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            it.set_tensor(ins["x"], x)
            it.set_tensor(ins["h0"], h)
            it.invoke()
            return it.get_tensor(outs["y"]).copy(), it.get_tensor(outs["hn"]).copy()

    h = np.zeros((chunks.shape[1], UNITS), np.float32)
    ys, hs = [], []
    for chunk in chunks:
        y, h = call(chunk, h)
        ys.append(y)
        hs.append(h)
    return ys, hs


# -- state pairs -------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_pack_proposes_h0_hn_state_pair(gru: dict[str, Path], sig_dir: Path, tmp_path: Path, fmt: str) -> None:
    with edgefleet.load(gru[fmt]) as m:
        assert [(s.output, s.input) for s in m.manifest.state] == [("hn", "h0")]
        assert m.manifest.to_dict()["state"] == [{"output": "hn", "input": "h0", "initial": {"zeros": True}}]
        assert not m.manifest.stateful_variables
        assert {s.name: s.batch_axis for s in m.inputs} == {"x": 0, "h0": 0}
    explicit, _ = pack(sig_dir / f"gru.{fmt}", tmp_path / "e", name="g", version="1", state={"hn": "h0"})
    assert [(s.output, s.input) for s in explicit.manifest.state] == [("hn", "h0")]
    for bad in ({"y": "h0"}, {"hn": "x"}, {"nope": "h0"}, {"hn": "nope"}):
        # y (N,5,2) and x (N,5,3) do not have the state's shape; the others do not exist
        with pytest.raises(EdgefleetError):
            pack(sig_dir / f"gru.{fmt}", tmp_path / "bad", name="g", version="1", state=bad)
        assert not (tmp_path / "bad").exists()


def test_stateless_models_get_no_state_pairs(sig_dir: Path, tmp_path: Path) -> None:
    b, _ = pack(sig_dir / "two_float.tflite", tmp_path / "b", name="t", version="1")
    assert b.manifest.state == () and not b.manifest.stateful_variables
    assert "state" not in b.manifest.to_dict()


# -- the GRU loop against Keras ----------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_session_loop_equals_keras_stateful_loop(
    gru: dict[str, Path], sig_dir: Path, ref: dict[str, np.ndarray], fmt: str
) -> None:
    chunks = ref["chunks"]
    raw_y, raw_h = raw_loop(sig_dir / f"gru.{fmt}", chunks)
    with edgefleet.load(gru[fmt]) as m:
        sess = m.session()
        assert isinstance(sess, edgefleet.Session)
        for k, chunk in enumerate(chunks):
            y = sess.predict(chunk if k % 2 else {"x": chunk})  # one non-state input: array or dict
            assert isinstance(y, np.ndarray), type(y)  # the only non-state output
            np.testing.assert_allclose(y, ref["y"][k], atol=TOL, rtol=0)
            np.testing.assert_array_equal(y, raw_y[k])  # exactly the raw runtime's loop
            state = sess.state
            assert set(state) == {"h0"}
            np.testing.assert_allclose(state["h0"], ref["h"][k], atol=TOL, rtol=0)
            np.testing.assert_array_equal(state["h0"], raw_h[k])
        # the state really carries: a fresh session gives other outputs for the last chunk
        fresh = m.session().predict(chunks[-1])
        assert np.abs(fresh - ref["y"][-1]).max() > 1e-3


@pytest.mark.parametrize("fmt", FORMATS)
def test_reset_and_state_get_set(gru: dict[str, Path], ref: dict[str, np.ndarray], fmt: str) -> None:
    chunks = ref["chunks"]
    with edgefleet.load(gru[fmt]) as m:
        sess = m.session()
        sess.predict(chunks[0])
        sess.predict(chunks[1])
        sess.reset()
        np.testing.assert_array_equal(sess.state["h0"], np.zeros_like(sess.state["h0"]))
        np.testing.assert_allclose(sess.predict(chunks[0]), ref["y"][0], atol=TOL, rtol=0)
        np.testing.assert_allclose(sess.predict(chunks[1]), ref["y"][1], atol=TOL, rtol=0)
        saved = sess.state
        saved["h0"][:] = 123.0  # a copy: the session is not changed through it
        np.testing.assert_allclose(sess.state["h0"], ref["h"][1], atol=TOL, rtol=0)
        # a new session set to the state after chunk 1 continues the Keras loop
        other = m.session()
        other.state = {"h0": ref["h"][1]}
        np.testing.assert_allclose(other.predict(chunks[2]), ref["y"][2], atol=TOL, rtol=0)
        np.testing.assert_allclose(other.predict(chunks[3]), ref["y"][3], atol=TOL, rtol=0)
        # validated: names and shapes; a refused value leaves the state as it was
        before = other.state["h0"]
        for bad in (
            {"hn": ref["h"][1]},
            {"h0": np.zeros((2, UNITS + 1), np.float32)},
            {"h0": np.zeros(UNITS, np.float32)[None, None]},
            {"h0": ref["h"][1], "x": chunks[0]},
        ):
            with pytest.raises(EdgefleetError):
                other.state = bad
            np.testing.assert_array_equal(other.state["h0"], before)
        # the original session was not disturbed by the other one
        np.testing.assert_allclose(sess.predict(chunks[2]), ref["y"][2], atol=TOL, rtol=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_sessions_are_independent_and_model_predict_is_stateless(
    gru: dict[str, Path], ref: dict[str, np.ndarray], fmt: str
) -> None:
    chunks = ref["chunks"]
    rng = np.random.default_rng(5)
    noise = rng.standard_normal(chunks.shape).astype(np.float32)
    with edgefleet.load(gru[fmt]) as m:
        s1, s2 = m.session(), m.session()
        for k in range(len(chunks)):
            s2.predict(noise[k])  # interleaved: another stream through another session
            full = m.predict({"x": noise[k], "h0": np.ones((2, UNITS), np.float32)})  # the model itself, all inputs
            assert set(full) == {"y", "hn"}
            np.testing.assert_allclose(s1.predict(chunks[k]), ref["y"][k], atol=TOL, rtol=0)
        # Model.predict with the state passed explicitly continues the loop too
        out = m.predict({"x": chunks[2], "h0": ref["h"][1]})
        np.testing.assert_allclose(out["y"], ref["y"][2], atol=TOL, rtol=0)
        np.testing.assert_allclose(out["hn"], ref["h"][2], atol=TOL, rtol=0)
        # one sample (no batch axis on x and h0): the output drops it
        one = m.predict({"x": chunks[2][0], "h0": ref["h"][1][0]})
        assert one["y"].shape == (T, 2) and one["hn"].shape == (UNITS,)
        np.testing.assert_allclose(one["y"], ref["y"][2][0], atol=TOL, rtol=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_session_shared_by_threads_is_serialised(gru: dict[str, Path], ref: dict[str, np.ndarray], fmt: str) -> None:
    """Threads push the same chunk through one session: the final state is that of the
    sequential loop of as many steps, and every output is one of that loop's outputs."""
    chunk = ref["chunks"][0]
    n_threads, per_thread = 6, 8
    with edgefleet.load(gru[fmt]) as m:
        seq = m.session()
        expected = [seq.predict(chunk) for _ in range(n_threads * per_thread)]
        final = seq.state["h0"]
        shared = m.session()
        results: list[np.ndarray] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        start = threading.Barrier(n_threads)

        def work() -> None:
            try:
                start.wait()
                for _ in range(per_thread):
                    y = shared.predict(chunk)
                    with lock:
                        results.append(y)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len(results) == n_threads * per_thread
        np.testing.assert_array_equal(shared.state["h0"], final)
        for y in results:
            assert any(np.array_equal(y, e) for e in expected)
        # the first step's output (from the zero state) happened exactly once
        assert sum(np.array_equal(y, expected[0]) for y in results) == 1


# -- resource variables ------------------------------------------------------------------
INIT = np.array([[1, 2, 3, 4]], np.float32)
ONE = np.ones((1, 4), np.float32)


@pytest.mark.parametrize("how", ["bare", "packed"])
def test_resource_variable_model(rv: Path, sig_dir: Path, how: str) -> None:
    with edgefleet.load(sig_dir / "rv_acc.tflite" if how == "bare" else rv) as m:
        assert m.manifest.stateful_variables is True
        assert m.manifest.stateful
        assert m.manifest.state == ()
        # Model.predict is stateless: the variables start afresh on every call
        for _ in range(3):
            np.testing.assert_array_equal(m.predict(ONE), INIT + 1)
        np.testing.assert_array_equal(m.predict(2 * ONE), INIT + 2)
        s1 = m.session()
        for k in range(1, 4):
            np.testing.assert_array_equal(s1.predict(ONE), INIT + k)
        # another session and Model.predict neither see nor change s1's variables
        s2 = m.session()
        np.testing.assert_array_equal(s2.predict(10 * ONE), INIT + 10)
        np.testing.assert_array_equal(m.predict(ONE), INIT + 1)
        np.testing.assert_array_equal(s1.predict(ONE), INIT + 4)
        np.testing.assert_array_equal(s2.predict(ONE), INIT + 11)
        # reset() goes back to the variables' initial values (not zeros)
        s1.reset()
        np.testing.assert_array_equal(s1.predict(ONE), INIT + 1)
        np.testing.assert_array_equal(s1.predict(ONE), INIT + 2)
        np.testing.assert_array_equal(s2.predict(ONE), INIT + 12)


def test_resource_variable_session_threads(rv: Path) -> None:
    """Every call adds 1: serialised calls give exactly the values INIT+1 .. INIT+n, once each."""
    n_threads, per_thread = 8, 25
    with edgefleet.load(rv) as m:
        sess = m.session()
        got: list[float] = []
        lock = threading.Lock()
        start = threading.Barrier(n_threads)

        def work() -> None:
            start.wait()
            for _ in range(per_thread):
                y = sess.predict(ONE)
                np.testing.assert_array_equal(y - y[0, 0], INIT - INIT[0, 0])
                with lock:
                    got.append(float(y[0, 0]) - 1)

        threads = [threading.Thread(target=work) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got) == list(range(1, n_threads * per_thread + 1))


def test_gru_tflite_is_not_a_variable_model(gru: dict[str, Path], sig_dir: Path) -> None:
    with edgefleet.load(sig_dir / "gru.tflite") as m:
        assert not m.manifest.stateful_variables
    with edgefleet.load(gru["tflite"]) as m:
        assert not m.manifest.stateful_variables
        x = np.zeros((1, T, F), np.float32)
        h = np.full((1, UNITS), 0.5, np.float32)
        a = m.predict({"x": x, "h0": h})
        b = m.predict({"x": x, "h0": h})
        np.testing.assert_array_equal(a["y"], b["y"])


# -- push: windows and state together ------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_push_cuts_windows_and_carries_state(
    sig_dir: Path, ref: dict[str, np.ndarray], tmp_path: Path, fmt: str
) -> None:
    """A stream of row 0 of the Keras chunks, pushed in uneven pieces, gives row 0 of Keras's loop."""
    bundle, _ = pack(
        sig_dir / f"gru.{fmt}",
        tmp_path / "w",
        name="gru-win",
        version="1",
        preprocessing={"x": [{"op": "window", "size": T}]},
    )
    assert [(s.output, s.input) for s in bundle.manifest.state] == [("hn", "h0")]
    stream = ref["chunks"][:, 0].reshape(-1, F)  # (K*T, F): K windows of T steps
    want = ref["y"][:, 0]  # (K, T, 2)
    with edgefleet.load(bundle.path) as m:
        sess = m.session()
        got = []
        pos = 0
        for size, n_windows in ((3, 0), (4, 1), (6, 1), (7, 2)):
            out = sess.push(stream[pos : pos + size])
            pos += size
            if n_windows == 0:
                assert out is None
            else:
                assert isinstance(out, np.ndarray) and out.shape == (n_windows, T, 2), getattr(out, "shape", out)
                got.append(out)
        assert pos == len(stream)
        np.testing.assert_allclose(np.concatenate(got), want, atol=TOL, rtol=0)
        h = sess.state["h0"]  # one window at a time: (1, UNITS), or (UNITS,) for an unbatched sample
        assert h.shape in ((1, UNITS), (UNITS,)), h.shape
        np.testing.assert_allclose(h.reshape(1, UNITS), ref["h"][-1][:1], atol=TOL, rtol=0)
        # reset: state and window buffer back to the start
        sess.push(stream[:2])
        sess.reset()
        np.testing.assert_allclose(sess.push(stream), want, atol=TOL, rtol=0)
        # another session is independent
        other = m.session()
        np.testing.assert_allclose(other.push(stream[:T]), want[:1], atol=TOL, rtol=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_push_without_window_is_predict(gru: dict[str, Path], ref: dict[str, np.ndarray], fmt: str) -> None:
    with edgefleet.load(gru[fmt]) as m:
        a, b = m.session(), m.session()
        for k in range(2):
            pushed = a.push(ref["chunks"][k])
            np.testing.assert_array_equal(pushed, b.predict(ref["chunks"][k]))
            np.testing.assert_allclose(pushed, ref["y"][k], atol=TOL, rtol=0)
