"""mypy sees the package as it is imported.

The lint step of scripts/test.sh (so CI) runs ``mypy`` with pyproject.toml's [tool.mypy]; these tests
check what that configuration means: every folder of setup.py's ``ROOTS`` is visible to mypy under its
import name (typecheck/), and an ``edgefleet`` import is typed outside the SDK.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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
