"""Configs and recipes: typed fields, unknown keys refused, recipe <-> flags equivalence. No TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgefleet.compiler.config import CompileConfig, QuantMode, config_from_args, load_recipe
from edgefleet.errors import ConfigError


def _parse(argv: list[str]) -> SimpleNamespace:
    from edgefleet.compiler.cli import compile_command

    assert argv[0] == "compile"
    return SimpleNamespace(**compile_command.make_context("compile", argv[1:]).params)


def test_recipe_and_flags_give_the_same_config(tmp_path: Path) -> None:
    for name in ("train.npz", "test.npz"):
        (tmp_path / name).write_bytes(b"")
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'quantize = "int8"\nformat = "both"\nmax_accuracy_drop = 0.5\nseed = 3\n'
        '[data]\ntrain = "train.npz"\ncalibration = "train.npz"\neval = "test.npz"\n'
        "[prune]\nsparsity = 0.8\n[structured]\nfraction = 0.5\n[distill]\nwidth = 0.25\n"
        '[quantize_options]\nonnx_calibration = "entropy"\nonnx_per_channel = false\nonnx_exclude_ops = ["Softmax"]\n'
        '[output]\nname = "digits"\nversion = "7"\n'
    )
    from_recipe = load_recipe(recipe)
    args = _parse([
        "compile", "m.keras", "-o", "out", "--quantize", "int8", "--format", "both", "--max-accuracy-drop", "0.5",
        "--seed", "3", "--train", str(tmp_path / "train.npz"), "--calibration", str(tmp_path / "train.npz"),
        "--eval", str(tmp_path / "test.npz"), "--prune", "0.8", "--prune-structured", "0.5", "--distill-width", "0.25",
        "--onnx-calibration", "entropy", "--no-per-channel", "--exclude-ops", "Softmax", "--name", "digits", "--version", "7",
    ])
    from_flags = config_from_args(args)
    assert from_flags == from_recipe
    assert from_recipe.quantize is QuantMode.INT8 and from_recipe.prune.sparsity == 0.8


def test_flags_override_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('quantize = "dynamic"\n[prune]\nsparsity = 0.5\nepochs = 1\n')
    args = _parse(["compile", "m.keras", "-o", "out", "--prune", "0.7"])
    cfg = config_from_args(args, load_recipe(recipe))
    assert cfg.quantize is QuantMode.DYNAMIC and cfg.prune.sparsity == 0.7 and cfg.prune.epochs == 1


def test_effective_recipe_round_trips_through_toml(tmp_path: Path) -> None:
    cfg = CompileConfig.from_dict({"quantize": "auto", "max_accuracy_drop": 1.0, "labels": ["a", "b"],
                                   "preprocessing": [{"op": "scale", "factor": 0.5}],
                                   "prune": {"sparsity": 0.6}, "output": {"name": "m"}})
    path = tmp_path / "again.toml"
    path.write_text(cfg.to_toml())
    assert load_recipe(path) == cfg


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('quantise = "int8"\n', "unknown key"),
        ("[prune]\nsparsity = 0.8\nepoch = 2\n", "unknown key"),
        ('quantize = "int4"\n', "one of"),
        ("[prune]\nsparsity = 1.5\n", "prune.sparsity"),
        ('[prune]\nsparsity = "high"\n', "number"),
        ("max_accuracy_drop = -1\n", "max_accuracy_drop"),
        ("[data\n", "not valid TOML"),
    ],
)
def test_bad_recipes_are_config_errors(tmp_path: Path, text: str, fragment: str) -> None:
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_recipe(recipe)


def test_cli_module_is_light() -> None:
    code = "import sys, edgefleet.compiler.cli, edgefleet.compiler, edgefleet.compiler.config; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False False"
