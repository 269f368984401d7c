"""SECURITY.md names a test for every attack; each named test must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_security_md_names_exists() -> None:
    named = 0
    for row in (ROOT / "SECURITY.md").read_text("utf-8").splitlines():
        if not row.startswith("|"):
            continue
        current = None
        for path, test in re.findall(r"`(?:(tests/[^`:]+\.py))?(?:::(\w+))?`", row):
            if path:
                current = path
                assert (ROOT / path).is_file(), path
            if test:
                assert current is not None, row
                assert re.search(rf"^def {test}\(", (ROOT / current).read_text("utf-8"), re.M), f"{current}::{test}"
                named += 1
    assert named >= 40
