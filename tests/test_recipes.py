"""The README's "Your own model" recipes run exactly as written (scripts/recipes.sh runs the
README's own bash blocks), and the Python files the README shows are the ones that ran."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_recipes_run_as_written(tmp_path: Path) -> None:
    env = {**os.environ, "EDGEFLEET_SKIP_SETUP": "1", "EDGEFLEET_RECIPES_ROOT": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "recipes.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    # recipe 1: state proposed from the names, batch axis of the state found at axis 1, windows streamed
    assert "state  stateN -> state (initial: zeros)" in out
    assert "input  state: float32(2, batch, 128) batch axis 1" in out
    assert "input  sr: int64() batch axis none" in out
    assert len(re.findall(r"^\d+ samples -> speech probability \[", out, re.M)) == 7
    assert "session step overhead" in out
    # recipe 2: two inputs by name, one sample and a batch
    assert "one sample -> (3,), a batch of 5 -> (5, 3)" in out
    # recipe 3: pack refuses made-up 1x1 inputs, bench names the dynamic dimensions, sizes vary per call
    assert "exit 2: pack asks for --sample" in out and "Pass real inputs with --sample" in out
    assert "exit 2: bench names the dynamic dimensions" in out and "['H', 'W']" in out
    assert "image 1x3x120x160 -> heatmap (1, 1, 118, 158)" in out
    assert (tmp_path / "recipes-work" / "detector" / "manifest.json").is_file()


def test_readme_shows_the_recipe_files_that_run() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme.split("<!-- recipes:start -->", 1)[1].split("<!-- recipes:end -->", 1)[0]
    for name in ("stream_vad.py", "fusion_predict.py", "detector_sizes.py"):
        body = (ROOT / "scripts" / "recipes" / name).read_text("utf-8")
        assert f"`scripts/recipes/{name}`:\n\n```python\n{body}```" in section, name
