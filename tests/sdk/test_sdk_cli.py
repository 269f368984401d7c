"""The edgefleet CLI as a user runs it: real subprocesses, real files, exit codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgefleet.errors import BundleIntegrityError, InvalidInputError, SignatureError


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "edgefleet.cli", *args], capture_output=True, text=True, timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_version_and_help() -> None:
    from edgefleet import __version__

    assert run("--version").stdout.strip() == f"edgefleet {__version__}"
    assert "pack" in run("--help").stdout


def test_keys_pack_verify_inspect_predict(tmp_path: Path, model_dir: Path, digits_data: tuple[np.ndarray, np.ndarray]) -> None:
    run("keys", "generate", "--out", str(tmp_path / "keys"))
    priv, pub = tmp_path / "keys" / "edgefleet.key", tmp_path / "keys" / "edgefleet.pub"
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600 and pub.exists()
    assert run("keys", "generate", "--out", str(tmp_path / "keys"), ok=False).returncode == 2

    (tmp_path / "labels.txt").write_text("\n".join(f"d{i}" for i in range(10)) + "\n")
    (tmp_path / "pre.json").write_text(json.dumps([{"op": "scale", "factor": 0.0625}]))
    x, y = digits_data
    np.savez(tmp_path / "train.npz", x=x[:500], y=y[:500])
    out = run(
        "pack", str(model_dir / "digits_float.tflite"), "-o", str(tmp_path / "bundle"), "--name", "digits",
        "--version", "1.2.0", "--labels", str(tmp_path / "labels.txt"), "--preprocess", str(tmp_path / "pre.json"),
        "--reference", str(tmp_path / "train.npz"), "--key", str(priv), "--archive",
    ).stdout
    assert "signed by key" in out and (tmp_path / "bundle.efb").exists()

    assert "OK" in run("verify", str(tmp_path / "bundle"), "--pub", str(pub)).stdout
    assert "OK" in run("verify", str(tmp_path / "bundle.efb"), "--pub", str(pub)).stdout

    info = json.loads(run("inspect", str(tmp_path / "bundle.efb"), "--json").stdout)
    assert info["version"] == "1.2.0" and info["signed"] and info["reference_stats"]["count"] == 500
    text = run("inspect", str(tmp_path / "bundle")).stdout
    assert "digits" in text and "scale" in text

    np.save(tmp_path / "x.npy", x[:20])
    res = json.loads(run("predict", str(tmp_path / "bundle"), "--input", str(tmp_path / "x.npy"), "--json", "--pub", str(pub)).stdout)
    probs = np.asarray(res[next(k for k in res if k != "labels")])
    assert probs.shape == (20, 10) and (probs.argmax(1) == y[:20]).mean() > 0.8
    assert res["labels"][0] == f"d{int(probs[0].argmax())}"

    np.savetxt(tmp_path / "x.csv", x[:5], delimiter=",")
    run("predict", str(tmp_path / "bundle.efb"), "--input", str(tmp_path / "x.csv"), "--output", str(tmp_path / "y.npy"))
    assert np.load(tmp_path / "y.npy").shape == (5, 10)
    np.savez(tmp_path / "in.npz", x=x[:3])
    labels = run("predict", str(tmp_path / "bundle"), "--input", str(tmp_path / "in.npz")).stdout.split()
    assert len(labels) == 3 and all(lbl.startswith("d") for lbl in labels)


def test_errors_map_to_exit_codes(tmp_path: Path, model_dir: Path, keypair: tuple[Path, Path], other_keypair: tuple[Path, Path]) -> None:
    run("pack", str(model_dir / "digits.onnx"), "-o", str(tmp_path / "b"), "--name", "d", "--version", "1", "--key", str(keypair[0]))
    proc = run("verify", str(tmp_path / "b"), "--pub", str(other_keypair[1]), ok=False)
    assert proc.returncode == SignatureError.exit_code
    assert proc.stderr.startswith("edgefleet: error:") and "Traceback" not in proc.stderr
    np.save(tmp_path / "bad.npy", np.zeros((2, 7), np.float32))
    proc = run("predict", str(tmp_path / "b"), "--input", str(tmp_path / "bad.npy"), ok=False)
    assert proc.returncode == InvalidInputError.exit_code and "expected shape" in proc.stderr
    model = tmp_path / "b" / "model.onnx"
    model.write_bytes(model.read_bytes() + b"x")
    proc = run("--debug", "predict", str(tmp_path / "b"), "--input", str(tmp_path / "bad.npy"), ok=False)
    assert proc.returncode == BundleIntegrityError.exit_code and "Traceback" in proc.stderr
    proc = run("predict", str(tmp_path / "b"), "--input", str(tmp_path / "missing.npy"), ok=False)
    assert proc.returncode in (BundleIntegrityError.exit_code, InvalidInputError.exit_code)


def test_bench_runs_and_writes_json(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "bench.json"
    proc = run("bench", str(model_dir / "digits_float.tflite"), "--runs", "200", "--warmup", "10", "--compare-raw", "--json-out", str(out))
    assert "p50" in proc.stdout and "ratio" in proc.stdout
    data = json.loads(out.read_text())
    for key in ("init_ms", "first_inference_ms", "throughput_per_s", "cpu_seconds_per_inference", "peak_rss_mb"):
        assert data[key] > 0
    assert data["predict"]["p50_us"] <= data["predict"]["p99_us"] <= data["predict"]["max_us"]
    assert data["raw"]["p50_us"] > 0 and data["machine"]["cores"] >= 1
