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
