"""Import hygiene: the device path never loads heavy frameworks; package import rules hold."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.pack import pack

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "keras", "tf_keras", "flwr", "paho", "tf2onnx", "onnx", "torch", "sklearn")


def _modules_after(code: str) -> set[str]:
    script = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_import_edgefleet_is_light() -> None:
    mods = _modules_after("import edgefleet")
    assert not {m.split(".")[0] for m in mods} & set(HEAVY + ("onnxruntime", "ai_edge_litert"))


@pytest.mark.parametrize("model", ["digits_float.tflite", "digits.onnx"])
def test_load_and_predict_never_import_frameworks(tmp_path: Path, model_dir: Path, model: str) -> None:
    bundle, _ = pack(model_dir / model, tmp_path / "b", name="d", version="1")
    mods = _modules_after(
        "import numpy as np, edgefleet\n"
        f"m = edgefleet.load({str(bundle.path)!r})\n"
        "m.predict(np.zeros((1, 64), np.float32))\n"
    )
    loaded = {m.split(".")[0] for m in mods}
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_cli_help_does_not_import_frameworks() -> None:
    mods = _modules_after("import edgefleet.cli as c, click\n"
                          "for name in c.cli.list_commands(click.Context(c.cli)):\n"
                          "    c.cli.get_command(click.Context(c.cli), name)")
    assert not {m.split(".")[0] for m in mods} & set(HEAVY + ("sqlalchemy", "fastapi", "uvicorn", "onnxruntime"))


# Which top-level folder may import which (ARCHITECTURE.md).
ALLOWED = {
    "sdk": set(),
    "compiler": {"sdk"},
    "device_agent": {"sdk"},
    "cloud_sync": {"sdk", "device_agent", "compiler"},
}
PACKAGE_OF = {"edgefleet.compiler": "compiler", "edgefleet.device_agent": "device_agent", "edgefleet.cloud_sync": "cloud_sync"}


def _imported_packages(path: Path, folder: str) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    found: set[str] = set()
    rel_parts = path.relative_to(ROOT / folder).parts[:-1]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # a relative import stays inside its own top-level folder unless it climbs out
                if node.level - 1 > len(rel_parts):
                    found.add("sdk")
                continue
            names = [node.module or ""]
        for name in names:
            if not name.startswith("edgefleet"):
                continue
            owner = "sdk"
            for prefix, pkg in PACKAGE_OF.items():
                if name == prefix or name.startswith(prefix + "."):
                    owner = pkg
            found.add(owner)
    return found - {folder}


def test_package_import_rules() -> None:
    problems = []
    for folder, allowed in ALLOWED.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            bad = _imported_packages(path, folder) - allowed
            if bad:
                problems.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not problems, "\n".join(problems)
