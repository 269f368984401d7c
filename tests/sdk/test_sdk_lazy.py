"""Lazy package attributes: dir() lists the public names, and the TYPE_CHECKING imports match the lazy table."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGES = (
    "edgefleet",
    "edgefleet.compiler",
    "edgefleet.device_agent",
    "edgefleet.cloud_sync",
    "edgefleet.cloud_sync.coordinator",
    "edgefleet.cloud_sync.federated",
)


def _type_checking_imports(package: str) -> dict[str, tuple[str, str]]:
    """``name -> (module, attribute)`` of the imports under ``if TYPE_CHECKING:`` in the package's __init__."""
    module = importlib.import_module(package)
    tree = ast.parse(Path(str(module.__file__)).read_text("utf-8"))
    blocks = [n for n in tree.body if isinstance(n, ast.If) and isinstance(n.test, ast.Name)
              and n.test.id == "TYPE_CHECKING"]
    assert len(blocks) == 1, f"{package}: expected one 'if TYPE_CHECKING:' block beside the lazy table"
    found: dict[str, tuple[str, str]] = {}
    for node in blocks[0].body:
        assert isinstance(node, ast.ImportFrom), ast.dump(node)
        base = package.split(".")
        absolute = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
        for alias in node.names:
            name = alias.asname or alias.name
            assert name not in found, f"{package}: {name} imported twice"
            found[name] = (absolute if node.level else str(node.module), alias.name)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_type_checking_imports_match_the_lazy_table(package: str) -> None:
    module = importlib.import_module(package)
    assert _type_checking_imports(package) == dict(module._LAZY)


@pytest.mark.parametrize("package", PACKAGES)
def test_dir_lists_the_public_names(package: str) -> None:
    module = importlib.import_module(package)
    listed = dir(module)
    assert set(module._LAZY) <= set(listed), sorted(set(module._LAZY) - set(listed))
    assert set(module.__all__) <= set(listed)
    assert listed == sorted(listed)
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018


def test_lazy_names_load_on_first_use_and_stay() -> None:
    code = (
        "import sys, edgefleet, edgefleet.device_agent as da\n"
        "assert 'edgefleet.model' not in sys.modules and 'edgefleet.device_agent.store' not in sys.modules\n"
        "assert 'load' in dir(edgefleet) and 'Store' in dir(da)\n"
        "assert 'edgefleet.model' not in sys.modules and 'edgefleet.device_agent.store' not in sys.modules\n"
        "from edgefleet.model import load\n"
        "from edgefleet.device_agent.store import Store\n"
        "assert edgefleet.load is load and da.Store is Store\n"
        "assert vars(edgefleet)['load'] is load and vars(da)['Store'] is Store\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
