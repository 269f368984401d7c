"""``python -m benchmarks``: run the benchmark suites and regenerate BENCHMARKS.md.

    python -m benchmarks [--quick] [--only a,b] [--skip a,b] [--results-dir DIR] [--report FILE]
    python -m benchmarks report [--quick] [--results-dir DIR] [--report FILE]   # same as --report-only
    python -m benchmarks list

Each suite runs as a subprocess with this interpreter and writes
``RESULTS/NAME.json`` (``NAME_quick.json`` with ``--quick``, so CI-sized runs
never overwrite the published figures). A failing suite is reported, the others
still run, and the exit code is 1. The report is regenerated after the runs:
``BENCHMARKS.md`` at the top of the repository for a full run into the default
results folder, ``RESULTS/BENCHMARKS_quick.md`` for ``--quick``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .suite import RESULTS, SUITES, Suite, run_suites, select, summary_lines


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(allow_abbrev=False, prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", nargs="?", default="run", choices=("run", "report", "list"),
                    help="run the suites then the report (default), only the report, or list the suites")
    ap.add_argument("--quick", action="store_true", help="CI-sized runs into *_quick.json")
    ap.add_argument("--only", type=_names, default=[], metavar="A,B", help="run exactly these suites")
    ap.add_argument("--skip", type=_names, default=[], metavar="A,B", help="leave these suites out")
    ap.add_argument("--report-only", action="store_true", help="same as the `report` action")
    ap.add_argument("--no-report", action="store_true", help="run the suites but do not regenerate the report")
    ap.add_argument("--results-dir", type=Path, default=RESULTS, help=f"where the JSON goes (default {RESULTS})")
    ap.add_argument("--report", type=Path, dest="report_path", metavar="FILE",
                    help="the Markdown file to write (default BENCHMARKS.md, or RESULTS/BENCHMARKS_quick.md with --quick)")
    ap.add_argument("--timeout", type=float, help="seconds allowed per suite (default: each suite's own limit)")
    return ap


def main(argv: list[str] | None = None, suites: Sequence[Suite] = SUITES) -> int:
    """Run the chosen ``suites`` (the registry by default), then regenerate the report; the exit code."""
    args = parser().parse_args(argv)
    if args.action == "list":
        for s in suites:
            print(f"{s.name:20s} {'default ' if s.default else 'opt-in  '} {s.title}" + (f" ({s.note})" if s.note else ""))
        return 0
    try:
        chosen = select(args.only, args.skip, suites)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    code = 0
    if args.action == "run" and not args.report_only:
        if not chosen:
            print("error: no suite left to run (check --only/--skip)", file=sys.stderr)
            return 2
        try:
            runs = run_suites(chosen, args.results_dir, args.quick, timeout_s=args.timeout)
        except KeyboardInterrupt:
            print("interrupted: the suites that finished are recorded; no report written", file=sys.stderr)
            return 130
        print("\n".join(summary_lines(runs)))
        failed = [r.name for r in runs if not r.ok]
        if failed:
            print(f"{len(failed)} of {len(runs)} suites failed: {', '.join(failed)}", file=sys.stderr)
            code = 1
    if args.no_report:
        return code
    from .report import generate

    path, sections = generate(args.results_dir, args.quick, args.report_path)
    checks = [c for s in sections for c in s.checks if c.met is not None]
    unreadable = [s.suite.name for s in sections if s.problem.startswith("Could not read")]
    print(f"wrote {path}: {sum(bool(c.met) for c in checks)} of {len(checks)} targets met"
          + (f"; could not read the results of {', '.join(unreadable)}" if unreadable else ""))
    return 1 if unreadable else code


if __name__ == "__main__":
    sys.exit(main())
