"""Fixtures shared by the SDK tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "make_signature_models.py"


@pytest.fixture(scope="session")
def sig_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The signature test models (make_signature_models.py, TensorFlow in its own process), built once."""
    out = tmp_path_factory.getbasetemp() / "signature_models"
    if not (out / "gru_ref.npz").exists():
        work = tmp_path_factory.mktemp("signature_models_build")
        proc = subprocess.run([sys.executable, str(SCRIPT), str(work)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        os.replace(work, out)
    return out


@pytest.fixture()
def signed_bundle(tmp_path: Path, model_dir: Path, keypair: tuple[Path, Path]) -> Path:
    """The digits ONNX model packed and signed (with labels and a scale step)."""
    from edgefleet.keys import load_private_key
    from edgefleet.pack import pack

    bundle, _ = pack(
        model_dir / "digits.onnx",
        tmp_path / "b",
        name="digits",
        version="1.0.0",
        labels=[str(i) for i in range(10)],
        preprocessing=[{"op": "scale", "factor": 0.0625}],
        private_key=load_private_key(keypair[0]),
    )
    return bundle.path
