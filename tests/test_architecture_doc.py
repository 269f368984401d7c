"""ARCHITECTURE.md is the map of the tree as it is: every folder and module it names exists, every module of
cloud_sync/ and device_agent/ has its place in it, the names it gives a module are that module's, and its error
tree is sdk/errors.py's. (The import rules it states are enforced by tests/sdk/test_sdk_imports.py.)"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "ARCHITECTURE.md"
PACKAGES = ("sdk", "compiler", "device_agent", "cloud_sync")
#: the folders every module of which must be placed
PLACED = ("cloud_sync", "device_agent")


def _spans(line: str) -> list[str]:
    return [s.strip() for s in re.findall(r"`([^`]+)`", line)]


def _is_path(span: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]*)*", span)) and ("/" in span or span.endswith(".py")) \
        and not span.startswith(("../", "edgefleet."))


def resolve_line(line: str) -> list[tuple[str, str | None]]:
    """Each path the line names, with what it resolves to (repository-relative; folders end in /) or None. A
    name is looked up from the repository root, the packages, and the folders of the paths named before it in
    the line (`cloud_sync/coordinator/` (`registry.py`, `rows.py`); `cloud_sync/coordinator/rows.py`,
    `registry.py`), nearest first."""
    bases = ["", *(f"{p}/" for p in PACKAGES)]
    out: list[tuple[str, str | None]] = []
    for span in filter(_is_path, _spans(line)):
        found = next((b + span for b in reversed(bases) if (ROOT / (b + span)).exists()), None)
        if found is not None and (ROOT / found).is_dir():
            found = found.rstrip("/") + "/"
            bases.append(found)
        elif found is not None:
            bases.append(found.rsplit("/", 1)[0] + "/" if "/" in found else "")
        out.append((span, found))
    return out


def resolve(text: str) -> tuple[set[str], set[str], list[str]]:
    """What ``text`` names (:func:`resolve_line`): the files, the folders a table row names as a whole (no module
    of it named in the row), and the paths that resolve to nothing (with their line)."""
    files: set[str] = set()
    wholes: set[str] = set()
    missing: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        named = resolve_line(line)
        missing += [f"ARCHITECTURE.md:{number}: `{span}`" for span, found in named if found is None]
        named_dirs = [found for _, found in named if found is not None and found.endswith("/")]
        line_files = [found for _, found in named if found is not None and not found.endswith("/")]
        files.update(line_files)
        if line.startswith("|"):
            wholes.update(d for d in named_dirs if not any(f.startswith(d) for f in line_files))
    return files, wholes, missing


def unplaced(text: str) -> list[str]:
    files, wholes, _ = resolve(text)
    modules = [str(p.relative_to(ROOT)) for folder in PLACED for p in sorted((ROOT / folder).rglob("*.py"))
               if p.name != "__init__.py"]
    return [m for m in modules if m not in files and not any(m.startswith(w) for w in wholes)]


def test_every_folder_and_module_architecture_names_exists() -> None:
    files, wholes, missing = resolve(ARCHITECTURE.read_text("utf-8"))
    assert not missing, "\n".join(missing)
    assert len(files) > 60 and "cloud_sync/federated/" in wholes


def test_every_module_of_cloud_sync_and_device_agent_has_its_place() -> None:
    missing = unplaced(ARCHITECTURE.read_text("utf-8"))
    assert not missing, f"modules ARCHITECTURE.md does not place (name them, or their folder in a table row): {missing}"


def test_the_checks_see_a_module_left_out_and_a_name_that_does_not_exist() -> None:
    text = ARCHITECTURE.read_text("utf-8")
    assert "`device_agent/store.py`" in text
    assert "device_agent/store.py" in unplaced(text.replace("`device_agent/store.py`", "the store"))
    text = text.rstrip("\n") + "\n| gone | `cloud_sync/coordinator/` (`registry.py`, `gone.py`) |\n"
    assert resolve(text)[2] == [f"ARCHITECTURE.md:{len(text.splitlines())}: `gone.py`"]
    assert unplaced("| all of it | `cloud_sync/` `device_agent/` |") == []
    assert "cloud_sync/broker.py" in unplaced("| a row naming one of the folder | `cloud_sync/` (`origin.py`) |")


def test_the_names_given_to_a_module_are_defined_there() -> None:
    """`registry.py` (`telemetry_windows`), `federated/runner.py` (`RunWatch`, `ControlClient`): each such name
    is defined in the module it is given to (a def, a class, an assignment, or a table's key)."""
    checked = 0
    for line in ARCHITECTURE.read_text("utf-8").splitlines():
        where = dict(resolve_line(line))
        for path, names in re.findall(r"`([\w/]+\.py)` \(([^)]*)\)", line):
            module = where[path]
            assert module is not None, path
            source = (ROOT / module).read_text("utf-8")
            for name in re.findall(r"`([A-Za-z_]\w*)`", names):
                defined = re.search(rf"^\s*(?:async def|def|class) {name}\b|^\s*{name}\s*(?::[^=\n]*)?=|^\s*\"{name}\": ",
                                    source, re.M)
                assert defined, f"ARCHITECTURE.md names `{name}` in {module}, which does not define it"
                checked += 1
    assert checked >= 10, checked


def test_the_error_tree_is_the_one_in_sdk_errors() -> None:
    import edgefleet.errors as errors

    tree = ARCHITECTURE.read_text("utf-8").split("## The error tree", 1)[1].split("```", 2)[1]
    shown = re.findall(r"([A-Z]\w*Error) \((\d+)(?:[–-](\d+))?\)", tree)
    assert len(shown) >= 14
    for name, code, _ in shown:
        cls = getattr(errors, name, None)
        assert isinstance(cls, type) and issubclass(cls, errors.EdgefleetError), name
        assert cls.exit_code == int(code), f"{name} ({code}): its exit code is {cls.exit_code}"
    # every exit code of the tree is drawn (a code the CLI can give that the map does not show is a gap)
    drawn = {int(n) for n in re.findall(r"\b(\d+)\b", tree)} | {
        c for _, lo, hi in shown if hi for c in range(int(lo), int(hi) + 1)}
    codes = {cls.exit_code for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.EdgefleetError)}
    assert codes <= drawn, sorted(codes - drawn)


def test_the_tree_draws_each_error_under_its_parent() -> None:
    """The tree's shape is the class hierarchy. An error's parent is the last error drawn before it that starts
    further left (`CompileError (10) ─ AccuracyBudgetError (11)` on one row; `└── RolloutError` under
    `├── SyncError`); it derives from it, and one drawn right under EdgefleetError derives from it directly."""
    import edgefleet.errors as errors

    tree = ARCHITECTURE.read_text("utf-8").split("## The error tree", 1)[1].split("```", 2)[1]
    drawn: list[tuple[int, str]] = []  # (column, name) in reading order
    for row in tree.splitlines():
        for m in re.finditer(r"([A-Z]\w*Error) \(", row):
            column, name = m.start(), m.group(1)
            cls = getattr(errors, name)
            parents = [n for c, n in drawn if c < column]
            if parents:
                parent = getattr(errors, parents[-1])
                assert parent in cls.__mro__[1:], f"{name} is drawn under {parents[-1]}: {row}"
                if parent is errors.EdgefleetError:
                    assert parent in cls.__bases__, f"{name} is drawn right under EdgefleetError: {row}"
            drawn.append((column, name))
    assert len(drawn) >= 14, drawn
