"""Stateful models through the compiler (issue 11, item 5): a recurrent Keras model with explicit state
(``x``, ``h0`` -> ``hn``, ``y``) compiled with ``edgefleet compile`` to TFLite and ONNX, float32 and int8.

``make_stateful_models.py`` builds the model (with ``tests/sdk/make_signature_models.py``'s GRU builder,
which also records Keras's own ``stateful=True`` loop) and runs every compile in one child process:
this process never imports TensorFlow. Here the bundles are loaded with the SDK and their
``model.session()`` loops are compared with Keras's loop.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgefleet
from edgefleet.errors import ConfigError

HERE = Path(__file__).parent
SCRIPT = HERE / "make_stateful_models.py"
UNITS = 8

# Session loop against Keras's stateful loop (4 chunks of 5 steps, batch 2; y in [-0.95, 1.03]).
FLOAT_TOL = 1e-4
# int8: measured max |dy| 0.106 (TFLite and ONNX; the reference stream's state leaves the calibrated
# range at chunk 4), mean |dy| <= 0.013 per chunk. Bounds: 10% and 2% of y's range of ~2.
INT8_MAX, INT8_MEAN = 0.2, 0.04


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stateful")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(built: Path) -> dict[str, Any]:
    return json.loads((built / "runs.json").read_text())


@pytest.fixture(scope="module")
def ref(built: Path) -> dict[str, np.ndarray]:
    with np.load(built / "sig" / "gru_ref.npz") as z:
        return {k: z[k] for k in z.files}


def report(built: Path, name: str) -> dict[str, Any]:
    return json.loads((built / f"{name}.report" / "report.json").read_text())


def session_loop(bundle: Path, chunks: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], Any]:
    """y and the state after each chunk of one session; the manifest."""
    with edgefleet.load(bundle) as m:
        (st,) = m.manifest.state
        sess = m.session()
        ys, hs = [], []
        for chunk in chunks:
            ys.append(sess.predict(chunk))  # the one non-state input, given bare
            hs.append(sess.state[st.input])
        return ys, hs, m.manifest


@pytest.mark.parametrize("name", ["tflite-float32", "tflite-int8", "onnx-float32", "onnx-int8"])
def test_session_loop_of_compiled_bundle_matches_keras_stateful_loop(
    built: Path, runs: dict[str, Any], ref: dict[str, np.ndarray], name: str
) -> None:
    assert runs[name]["code"] == 0, runs[name]["stderr"]
    ys, hs, manifest = session_loop(built / name, ref["chunks"])
    (st,) = manifest.state
    ins = {s.name: s for s in manifest.inputs}
    outs = {s.name: s for s in manifest.outputs}
    # the pair is the Keras model's hn -> h0, in the file's own names (TFLite renames both)
    assert st.input.split(":")[0].removeprefix("serving_default_") == "h0"
    assert outs[st.output].shape == ins[st.input].shape == (-1, UNITS)
    assert st.initial is None  # zeros
    with edgefleet.load(built / name) as m:
        assert m.run_smoke_tests().ok
    dy = [np.abs(y - r) for y, r in zip(ys, ref["y"])]
    dh = [np.abs(h - r) for h, r in zip(hs, ref["h"])]
    assert all(y.shape == r.shape for y, r in zip(ys, ref["y"]))
    if name.endswith("float32"):
        assert max(float(d.max()) for d in dy + dh) <= FLOAT_TOL
    else:
        assert max(float(d.max()) for d in dy) <= INT8_MAX
        assert max(float(d.mean()) for d in dy) <= INT8_MEAN
        assert max(float(d.mean()) for d in dh) <= INT8_MEAN
    # the state carries: a fresh session's last chunk is far from the loop's
    with edgefleet.load(built / name) as m:
        assert float(np.abs(m.session().predict(ref["chunks"][-1]) - ref["y"][-1]).max()) > 0.05


def test_state_inputs_are_calibrated_from_the_recorded_stream_not_zeros(
    built: Path, runs: dict[str, Any], ref: dict[str, np.ndarray]
) -> None:
    import onnx
    from onnx import numpy_helper

    for name in ("onnx-int8-given", "tflite-int8-zeros"):
        assert runs[name]["code"] == 0, runs[name]["stderr"]
    notes = {n: next(v["notes"] for v in report(built, n)["variants"] if v["quantization"] == "int8")
             for n in ("onnx-int8", "tflite-int8", "onnx-int8-given")}
    assert notes["onnx-int8"]["state_calibration"].startswith("recorded stream of ['h0']: the float32 onnx model's session "
                                                             "over the 64 calibration samples")
    assert notes["tflite-int8"]["state_calibration"].startswith("recorded stream of ['h0']: the float32 tflite")
    assert notes["onnx-int8-given"]["state_calibration"] == "from the calibration data (arrays ['h0'])"
    assert "recorded stream" in (built / "onnx-int8.report" / "report.md").read_text()

    def h0_scale(name: str) -> float:
        g = onnx.load(str(built / name / "model.onnx")).graph
        inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        (q,) = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == "h0"]
        return float(inits[q.input[1]])

    # the recorded stream is the state Keras itself carries along the calibration stream (calib_state.npz)
    with np.load(built / "calib_state.npz") as z:
        h = z["h0"]
    assert np.abs(h).max() > 0.3
    assert h0_scale("onnx-int8") == pytest.approx(h0_scale("onnx-int8-given"), rel=1e-4)
    assert h0_scale("onnx-int8") == pytest.approx((max(h.max(), 0) - min(h.min(), 0)) / 255, rel=0.02)
    with edgefleet.load(built / "tflite-int8") as m, edgefleet.load(built / "tflite-int8-zeros") as z0:
        stream_q = next(s for s in m.manifest.inputs if "h0" in s.name).quantization
        zeros_q = next(s for s in z0.manifest.inputs if "h0" in s.name).quantization
    assert stream_q.scale == pytest.approx(h0_scale("onnx-int8"), rel=0.02)
    assert zeros_q.scale < 1e-6  # a zero state calibrates to no range: every real state clips to 0
    stream_err = max(float(np.abs(y - r).mean()) for y, r in zip(session_loop(built / "tflite-int8", ref["chunks"])[0], ref["y"]))
    zeros_err = max(float(np.abs(y - r).mean()) for y, r in zip(session_loop(built / "tflite-int8-zeros", ref["chunks"])[0], ref["y"]))
    assert zeros_err > 3 * stream_err, (zeros_err, stream_err)


def test_eval_scores_the_first_non_state_output(built: Path, ref: dict[str, np.ndarray]) -> None:
    doc = report(built, "tflite-int8")
    assert doc["state"]["pairs"] == {"hn": "h0"}  # proposed from the Keras names: no --state given
    assert doc["state"]["scored_output"] == 1  # outputs are (hn, y): y is scored
    assert doc["state"]["eval"] == "initial state (zeros) of ['h0'] for every eval sample"
    assert doc["baseline"]["metric"] == "mae"
    with np.load(built / "eval.npz") as z:
        x, target = z["x"], z["target"]
    scores = {v["quantization"]: v["score"] for v in doc["variants"]}
    with edgefleet.load(built / "tflite-float32") as m:
        out = m.predict({next(s.name for s in m.manifest.inputs if "x" in s.name): x})  # h0: its initial value
        y = next(v for v in out.values() if v.shape == target.shape)
        assert m.manifest.metrics["mae"] == pytest.approx(float(np.abs(y - target).mean()), abs=1e-4)
    assert scores["float32"] == pytest.approx(float(np.abs(y - target).mean()), abs=1e-4)
    assert doc["baseline"]["value"] == pytest.approx(scores["float32"], abs=1e-4)
    assert scores["int8"] - scores["float32"] < 0.01  # fresh 5-step sequences: int8 barely moves the MAE


def test_state_none_and_unknown_state_names(built: Path, runs: dict[str, Any]) -> None:
    assert runs["tflite-none"]["code"] == 0
    with edgefleet.load(built / "tflite-none") as m:
        assert m.manifest.state == () and not m.stateful
        assert report(built, "tflite-none")["state"] is None
    bad = runs["bad-state"]
    assert bad["code"] == ConfigError.exit_code
    assert "edgefleet: error: --state hn=nope: the model has no input 'nope'; inputs are ['h0', 'x']" in bad["stderr"]
    assert "Traceback" not in bad["stderr"]
    assert not (built / "bad-state").exists()


def test_onnx_source_with_state_compiles_to_int8(built: Path, ref: dict[str, np.ndarray], tmp_path: Path) -> None:
    """The same GRU as an ONNX source (names x, h0 -> y, hn) compiled in this process (no TensorFlow):
    calibration holds x only, so h0 is calibrated from the float32 session's recorded stream."""
    from edgefleet.compiler.api import compile_model
    from edgefleet.compiler.config import CompileConfig, DataConfig, OutputConfig, OutputFormat, QuantMode

    cfg = CompileConfig(quantize=QuantMode.INT8, format=OutputFormat.ONNX,
                        data=DataConfig(calibration=str(built / "calib.npz")), output=OutputConfig(latency_runs=10))
    result = compile_model(built / "sig" / "gru.onnx", tmp_path / "b", cfg)
    assert result.report["state"]["pairs"] == {"hn": "h0"}
    assert result.chosen.notes["state_calibration"].startswith("recorded stream of ['h0']")
    ys, _, manifest = session_loop(tmp_path / "b", ref["chunks"])
    assert [(s.output, s.input) for s in manifest.state] == [("hn", "h0")]
    dy = [np.abs(y - r) for y, r in zip(ys, ref["y"])]
    assert max(float(d.max()) for d in dy) <= INT8_MAX and max(float(d.mean()) for d in dy) <= INT8_MEAN
    with pytest.raises(ConfigError, match=r"--state y=h0: output float32\(N, 5, 2\) cannot feed input float32\(N, 8\)"):
        compile_model(built / "sig" / "gru.onnx", tmp_path / "bad", CompileConfig(format=OutputFormat.ONNX, state=("y=h0",)))
    assert not (tmp_path / "bad").exists()


def test_state_flag_and_recipe() -> None:
    from types import SimpleNamespace

    from edgefleet.compiler.cli import compile_command
    from edgefleet.compiler.config import CompileConfig, config_from_args

    def cfg(*flags: str) -> CompileConfig:
        return config_from_args(SimpleNamespace(**compile_command.make_context("compile", ["m.keras", "-o", "b", *flags]).params))

    assert cfg().state_pairs is None
    assert cfg("--state", "none").state_pairs == {}
    assert cfg("--state", "hn=h0", "--state", "cn=c0").state_pairs == {"hn": "h0", "cn": "c0"}
    with pytest.raises(ConfigError, match="cannot be combined"):
        cfg("--state", "none", "--state", "hn=h0")
    with pytest.raises(ConfigError, match="must be OUTPUT=INPUT"):
        cfg("--state", "hn")
    for c in (cfg("--state", "hn=h0"), cfg("--state", "none")):
        import tomllib

        assert CompileConfig.from_dict(tomllib.loads(c.to_toml())).state_pairs == c.state_pairs
