"""The one schema every benchmark's JSON follows, and the one machine description in it.

Every ``benchmarks/results/*.json`` is an object that starts with the envelope :func:`envelope` writes:

- ``benchmark``: the suite's name (as ``python -m benchmarks --only NAME`` knows it);
- ``quick``: whether it was the reduced run (``--quick``);
- ``machine``: :func:`machine` - CPU, cores, load average, platform, Python, versions of the packages that
  matter to the suite (``packages``), and when it was written (``utc``);

then the suite's own figures. ``report.py`` checks the envelope (:func:`problems`) before it reads a suite's
figures, and reads the machine row from ``machine`` alone.

A suite may also record its targets itself, met or not and why: ``verdicts``, a list of :func:`target`
objects (what, measured, limit, met, reason), which the report shows as rows of the suite's table like the checks
it derives from the figures.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

ENVELOPE = ("benchmark", "quick", "machine")
TARGET_KEYS = ("what", "measured", "limit", "met", "reason")
#: packages whose versions every result records (a suite adds its own)
COMMON_PACKAGES = ("numpy", "onnxruntime", "ai-edge-litert")


def machine(packages: Sequence[str] = ()) -> dict[str, Any]:
    """This machine now (``edgefleet.bench.machine_info``) and the versions of ``packages`` (and the common
    ones): ``None`` for a package that is not installed."""
    from edgefleet.bench import machine_info

    out = machine_info()
    versions: dict[str, str | None] = {}
    for name in dict.fromkeys([*COMMON_PACKAGES, *packages]):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    out["packages"] = versions
    return out


def envelope(benchmark: str, quick: bool, packages: Sequence[str] = (),
             machine_doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """The first keys of a result: name, quick or full, the machine (measured now unless given)."""
    return {"benchmark": benchmark, "quick": bool(quick),
            "machine": machine_doc if machine_doc is not None else machine(packages)}


def record(benchmark: str, quick: bool, packages: Sequence[str], measure: Callable[[], dict[str, Any]],
           verdicts: Callable[[dict[str, Any]], list[dict[str, Any]]], out: Path,
           hide: Sequence[str] = ("machine",)) -> int:
    """Run ``measure`` under the envelope, add its ``verdicts``, write the result atomically to ``out`` and print it
    (without ``hide``); an EdgefleetError is one line on stderr and its exit code, and writes nothing."""
    import json
    import sys

    from edgefleet.atomic import write_atomic
    from edgefleet.errors import EdgefleetError

    try:
        doc = {**envelope(benchmark, quick, packages), **measure()}
        doc["verdicts"] = verdicts(doc)
    except EdgefleetError as exc:
        print(f"{benchmark}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    write_atomic(out, json.dumps(doc, indent=2) + "\n", parents=True)
    print(json.dumps({k: v for k, v in doc.items() if k not in hide}, indent=2))
    return 0


def target(what: str, measured: Any, limit: str, met: bool | None, reason: str = "") -> dict[str, Any]:
    """One target as a suite records it in ``verdicts``: ``what`` was measured, the value (a number, a string, or
    None when it was not measured), the ``limit`` as the issue states it, whether it was ``met`` (None: not
    measured, e.g. a database that is not running) and the ``reason``: why it was met or missed, or not measured."""
    return {"what": what, "measured": measured, "limit": limit, "met": met, "reason": reason}


def problems(doc: Any, benchmark: str) -> list[str]:
    """What is wrong with ``doc``'s envelope for ``benchmark`` ([] when nothing is)."""
    if not isinstance(doc, dict):
        return [f"the JSON is a {type(doc).__name__}, not an object"]
    out = [f"no {key!r}" for key in ENVELOPE if key not in doc]
    if "benchmark" in doc and doc["benchmark"] != benchmark:
        out.append(f"'benchmark' is {doc['benchmark']!r}, not {benchmark!r}")
    if "quick" in doc and not isinstance(doc["quick"], bool):
        out.append("'quick' is not true or false")
    m = doc.get("machine")
    if "machine" in doc and not (isinstance(m, dict) and isinstance(m.get("packages", {}), dict)):
        out.append("'machine' is not an object with a 'packages' object")
    verdicts = doc.get("verdicts", [])
    if not isinstance(verdicts, list) or not all(isinstance(t, dict) and set(t) == set(TARGET_KEYS)
                                                 and isinstance(t["met"], (bool, type(None))) for t in verdicts):
        out.append(f"'verdicts' is not a list of objects with exactly {', '.join(TARGET_KEYS)} (met: true, false "
                   "or null)")
    return out


__all__ = ["COMMON_PACKAGES", "ENVELOPE", "TARGET_KEYS", "envelope", "machine", "problems", "target"]
