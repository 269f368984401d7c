"""Build a recurrent Keras model with explicit state and compile it, in a child process.

``python tests/compiler/make_stateful_models.py OUTDIR`` (this process imports TensorFlow; the
test process never does):

1. runs ``tests/sdk/make_signature_models.py``'s ``build_gru`` (a GRU trained a few epochs on a
   leaky running sum; ``sig/gru_ref.npz`` holds Keras's own ``stateful=True`` loop on K chunks of
   batch B) and keeps the Keras model it exports: inputs ``x`` (N,5,3), ``h0`` (N,8); saved as
   ``gru.keras`` with outputs ``hn`` (N,8) first, then ``y`` (N,5,2) -- the state output first, so
   scoring the first non-state output is tested;
2. writes data: ``calib.npz`` (``x``: 64 consecutive 5-step chunks of one stream, no state),
   ``calib_state.npz`` (the same ``x`` and ``h0``: Keras's states along that stream),
   ``calib_zeros.npz`` (``x`` and an all-zero ``h0``), ``eval.npz`` (``x``: 64 sequences from the
   initial state, ``target``: the running-sum targets);
3. compiles ``gru.keras`` with the ``edgefleet compile`` command (its ``main``, in this process:
   TensorFlow loads once) for every case in ``RUNS``; ``runs.json`` records each exit code and
   stderr.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "sdk"))
import make_signature_models as sig  # noqa: E402

N_CAL, N_EVAL = 64, 64

# name -> compile flags after SOURCE -o BUNDLE (data paths relative to OUTDIR)
RUNS: dict[str, list[str]] = {
    # no --state: the pair hn -> h0 is proposed from the Keras names
    "tflite-int8": ["--format", "tflite", "--quantize", "int8", "--calibration", "calib.npz",
                    "--eval", "eval.npz", "--label", "target"],
    "tflite-float32": ["--format", "tflite", "--quantize", "none", "--state", "hn=h0",
                       "--eval", "eval.npz", "--label", "target"],
    "onnx-int8": ["--format", "onnx", "--quantize", "int8", "--calibration", "calib.npz",
                  "--eval", "eval.npz", "--label", "target"],
    "onnx-float32": ["--format", "onnx", "--quantize", "none", "--state", "hn=h0"],
    "onnx-int8-given": ["--format", "onnx", "--quantize", "int8", "--calibration", "calib_state.npz"],
    "tflite-int8-zeros": ["--format", "tflite", "--quantize", "int8", "--calibration", "calib_zeros.npz"],
    "tflite-none": ["--format", "tflite", "--quantize", "none", "--state", "none"],
    "bad-state": ["--format", "onnx", "--quantize", "none", "--state", "hn=nope"],
}


def build_keras(out: Path) -> object:
    """``build_gru``'s exported Keras model (unrolled GRU, explicit state), outputs renamed ``hn``, ``y``."""
    import keras

    captured = []
    export = keras.Model.export

    def capture(self: keras.Model, filepath: str, format: str = "tf_saved_model", **kw: object) -> object:
        captured.append(self)
        return export(self, filepath, format=format, **kw)

    keras.Model.export = capture
    try:
        (out / "sig").mkdir(exist_ok=True)
        sig.build_gru(out / "sig")
    finally:
        keras.Model.export = export
    (m,) = captured
    y, hn = m.outputs
    model = keras.Model(m.inputs, [keras.layers.Identity(name="hn")(hn), keras.layers.Identity(name="y")(y)])
    model.save(out / "gru.keras")
    return model


def write_data(out: Path, model: object) -> None:
    rng = np.random.default_rng(11)
    stream = rng.standard_normal((N_CAL * sig.T, sig.F)).astype(np.float32)
    x = stream.reshape(N_CAL, sig.T, sig.F)
    h = np.zeros((1, sig.UNITS), np.float32)
    states = []
    for i in range(N_CAL):  # Keras's own states along the stream
        states.append(h[0])
        h, _ = model([x[i : i + 1], h])  # type: ignore[operator]
        h = np.asarray(h)
    np.savez(out / "calib.npz", x=x)
    np.savez(out / "calib_state.npz", x=x, h0=np.stack(states))
    np.savez(out / "calib_zeros.npz", x=x, h0=np.zeros((N_CAL, sig.UNITS), np.float32))
    xe = rng.standard_normal((N_EVAL, sig.T, sig.F)).astype(np.float32)
    target = np.zeros((N_EVAL, sig.T, 2), np.float32)
    acc = np.zeros((N_EVAL, 2), np.float32)
    for t in range(sig.T):  # the task build_gru trains on
        acc = 0.8 * acc + 0.3 * xe[:, t, :2]
        target[:, t] = np.tanh(acc)
    np.savez(out / "eval.npz", x=xe, target=target)
    (out / "fast.toml").write_text("[output]\nlatency_runs = 10\n")


def compile_all(out: Path) -> dict[str, dict[str, object]]:
    from edgefleet.cli import main

    results = {}
    for name, flags in RUNS.items():
        flags = [str(out / f) if f.endswith(".npz") else f for f in flags]
        argv = ["compile", str(out / "gru.keras"), "-o", str(out / name), "--recipe", str(out / "fast.toml"), "--quiet", *flags]
        err, std = io.StringIO(), io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
            code = main(argv)
        results[name] = {"code": code, "stderr": err.getvalue()[-3000:], "seconds": round(time.perf_counter() - t0, 2)}
    return results


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = build_keras(out)
    write_data(out, model)
    t1 = time.perf_counter()
    runs = compile_all(out)
    runs["_build_seconds"] = {"seconds": round(t1 - t0, 2)}
    (out / "runs.json").write_text(json.dumps(runs, indent=1))
    print(json.dumps({k: (v["code"] if "code" in v else None, v["seconds"]) for k, v in runs.items()}))


if __name__ == "__main__":
    main()
