"""The ``edgefleet`` command: a thin dispatcher.

Each package contributes its subcommands through a ``register(subparsers)``
function in a light module (no heavy imports at module level); handlers import
what they need when they run. Errors become exit codes here and only here.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import traceback
from typing import Any, Sequence

from ._version import __version__
from .errors import EdgefleetError

# Command modules, looked up by name so that the SDK never imports the other packages.
COMMAND_MODULES = (
    "edgefleet.commands",
    "edgefleet.compiler.cli",
    "edgefleet.device_agent.cli",
    "edgefleet.cloud_sync.cli",
    "edgefleet.cloud_sync.federated.cli",
    "edgefleet.cloud_sync.demo.cli",
)


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that takes no prefix abbreviations (``--ou`` is not ``--out``).

    ``add_subparsers`` makes its parsers of the parent's class, so every parser of the
    ``edgefleet`` command tree refuses abbreviations, whichever package registered it.
    """

    def __init__(self, *args: Any, allow_abbrev: bool = False, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = allow_abbrev
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="edgefleet",
        description="Compile models for small devices, run them offline, keep a fleet improving.",
    )
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    parser.add_argument("--debug", action="store_true", help="print full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # every module first (one may extend another's command through its public hook, e.g. cloud_sync adds
    # ``agent run --broker``), then each registers its commands
    modules = [importlib.import_module(m) for m in COMMAND_MODULES if _available(m)]
    for module in modules:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or bool(os.environ.get("EDGEFLEET_DEBUG"))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
        return int(code or 0)
    except EdgefleetError as exc:
        if debug:
            traceback.print_exc()
        print(f"edgefleet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgefleet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def entry() -> None:  # pragma: no cover - console script wrapper
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
