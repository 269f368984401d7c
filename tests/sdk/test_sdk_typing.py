"""mypy sees the package as it is imported, and holds sdk/ and cloud_sync/wire/ to --strict.

The lint step of scripts/test.sh (so CI) runs ``mypy`` with pyproject.toml's [tool.mypy]; these tests
check what that configuration means: every folder of setup.py's ``ROOTS`` is visible to mypy under its
import name (typecheck/), an ``edgefleet`` import is typed outside the SDK, and which modules are strict.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# --strict's per-module flags (mypy --help); warn_redundant_casts and warn_unused_configs are global
STRICT_FLAGS = {
    "disallow_any_generics": True,
    "disallow_subclassing_any": True,
    "disallow_untyped_calls": True,
    "disallow_untyped_defs": True,
    "disallow_incomplete_defs": True,
    "check_untyped_defs": True,
    "disallow_untyped_decorators": True,
    "warn_unused_ignores": True,
    "warn_return_any": True,
    "implicit_reexport": False,
    "strict_equality": True,
    "extra_checks": True,
}


def _setup_roots() -> dict[str, str]:
    """setup.py's ROOTS (import name -> folder), read without running setup()."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ROOTS" for t in node.targets):
            roots = ast.literal_eval(node.value)
            assert isinstance(roots, dict)
            return {str(k): str(v) for k, v in roots.items()}
    raise AssertionError("setup.py has no ROOTS")


def test_every_package_root_is_linked_for_mypy() -> None:
    roots = _setup_roots()
    assert roots["edgefleet"] == "sdk"
    for package, folder in roots.items():
        parts = package.split(".")
        link = ROOT / "typecheck" / ("" if package == "edgefleet" else "parts") / Path(*parts)
        assert link.is_symlink(), f"{link.relative_to(ROOT)} should link to {folder}/ (see typecheck/README.md)"
        assert link.resolve() == (ROOT / folder).resolve(), f"{link.relative_to(ROOT)} links elsewhere than {folder}/"
    # nothing but the links (parts/edgefleet is a namespace joined to typecheck/edgefleet by mypy)
    assert not (ROOT / "typecheck" / "parts" / "edgefleet" / "__init__.py").exists()


def _options() -> object:
    from mypy.main import process_options

    _, options = process_options(["--config-file", str(ROOT / "pyproject.toml")])
    return options


def _flags(options: object, module: str) -> dict[str, object]:
    per_module = options.clone_for_module(module)  # type: ignore[attr-defined]
    return {k: getattr(per_module, k) for k in STRICT_FLAGS}


@pytest.mark.parametrize(
    "module",
    ["edgefleet", "edgefleet.model", "edgefleet.trust", "edgefleet.runtime.onnxrt", "edgefleet.atomic",
     "edgefleet.cloud_sync.wire", "edgefleet.cloud_sync.wire.transfer", "edgefleet.cloud_sync.wire.protocol"],
)
def test_sdk_and_wire_are_strict(module: str) -> None:
    options = _options()
    assert _flags(options, module) == STRICT_FLAGS
    assert options.warn_redundant_casts  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "module",
    ["edgefleet.compiler.api", "edgefleet.device_agent.agent", "edgefleet.cloud_sync.coordinator.service",
     "edgefleet.cloud_sync", "edgefleet.cloud_sync.transport"],
)
def test_other_packages_keep_the_default_flags(module: str) -> None:
    flags = _flags(_options(), module)
    assert not flags["disallow_untyped_defs"] and flags["implicit_reexport"], flags


def test_an_edgefleet_import_is_typed_outside_the_sdk(tmp_path: Path) -> None:
    """Before typecheck/, mypy could not follow the editable install: ``edgefleet.load`` was an Any."""
    from mypy import api

    probe = tmp_path / "probe.py"
    probe.write_text(
        "import edgefleet\n"
        "from edgefleet.cloud_sync.wire.transfer import Receiver\n"
        "reveal_type(edgefleet.load)\n"
        "reveal_type(Receiver)\n"
    )
    out, err, code = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache"),
                              "--follow-imports", "silent", str(probe)])
    revealed = [line.split("Revealed type is ", 1)[1] for line in out.splitlines() if "Revealed type is" in line]
    assert len(revealed) == 2, out + err
    assert revealed[0].startswith('"def (path: ') and revealed[0].endswith('-> edgefleet.model.Model"'), revealed[0]
    assert "edgefleet.cloud_sync.wire.transfer.Receiver" in revealed[1], revealed[1]
