"""Targets a suite records itself (issue 16): ``verdicts`` in the results schema (benchmarks/schema.py), met or not
with the reason, shown by the report as rows of the suite's table; a malformed list is named, not guessed at."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import report, schema  # noqa: E402
from benchmarks.suite import SUITES  # noqa: E402


def _doc(verdicts: object) -> dict[str, object]:
    return {**schema.envelope("fleet_dispatch", False, machine_doc={"packages": {}}),
            "parameters": {"devices": 10, "baseline_devices": 10},
            "sqlite": {"devices": 10, "tick_seconds": 0.2}, "postgresql": None, "verdicts": verdicts}


def test_recorded_verdicts_become_rows_of_the_suites_table(tmp_path: Path) -> None:
    verdicts = [schema.target("stage dispatched (SQLite), seconds", 0.2, "≤ 1 s", True, "12 statements"),
                schema.target("stage dispatched (PostgreSQL)", None, "≤ 1 s", None, "not measured: no PostgreSQL")]
    (tmp_path / "fleet_dispatch.json").write_text(json.dumps(_doc(verdicts)))
    suite = next(s for s in SUITES if s.name == "fleet_dispatch")
    [section] = report.read_sections(tmp_path, False, tmp_path, (suite,))
    assert section.problem == ""
    assert report.check_rows(section.checks) == [
        ["stage dispatched (SQLite), seconds", "0.200", "≤ 1 s", "met", "12 statements"],
        ["stage dispatched (PostgreSQL)", "not measured", "≤ 1 s", "—", "not measured: no PostgreSQL"]]


def test_a_malformed_verdict_list_is_named() -> None:
    assert schema.problems(_doc([]), "fleet_dispatch") == []
    for bad in ({"what": "x"}, [{"what": "x", "measured": 1, "limit": "", "met": "yes", "reason": ""}],
                [{"what": "x", "measured": 1, "limit": "", "met": True}]):
        assert any("'verdicts'" in p for p in schema.problems(_doc(bad), "fleet_dispatch"))
