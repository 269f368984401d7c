"""The ``edgefleet`` command: a click group that loads each top-level command when it is used.

``edgefleet --help`` lists the commands from the table below without importing them, so it stays light
(a test checks the import set); a command's module is imported when the command runs or shows its help,
and its handlers import what they need when they run. Every command is a click group or command. Errors of the one error tree (:mod:`edgefleet.errors`) become exit codes and a
one-line message here and only here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import click

from ._version import __version__
from .errors import EdgefleetError

#: top-level command -> (``module:attribute`` of its click command; its one-line help). Looked up by name: the SDK never imports the other packages.
COMMANDS: dict[str, tuple[str, str]] = {
    "keys": ("edgefleet.commands:keys", "manage Ed25519 signing keys and a TUF repository's roles"),
    "repo": ("edgefleet.commands:repo", "publish bundles in a TUF repository (edgefleet keys root-init creates one)"),
    "pack": ("edgefleet.commands:pack", "pack a .tflite/.onnx model into a signed bundle"),
    "verify": ("edgefleet.commands:verify", "verify a bundle's signature, hashes and sizes"),
    "inspect": ("edgefleet.commands:inspect", "show a bundle's manifest"),
    "predict": ("edgefleet.commands:predict", "run a bundle on inputs from a file"),
    "bench": ("edgefleet.commands:bench", "benchmark a bundle or model on this machine"),
    "compile": ("edgefleet.compiler.cli:compile_command", "compile a Keras/ONNX model: prune, distill, quantize, gate, pack"),
    "datasets": ("edgefleet.compiler.cli:datasets", "write example datasets (offline)"),
    "examples": ("edgefleet.compiler.cli:examples", "example models to try the compiler with"),
    "agent": ("edgefleet.device_agent.cli:agent", "the device agent: install, serve, roll back, report"),
    "cloud": ("edgefleet.cloud_sync.cli:cloud", "run the fleet coordinator"),
    "sync": ("edgefleet.cloud_sync.cli:sync", "connect a device agent to the fleet"),
    "fleet": ("edgefleet.cloud_sync.cli:fleet", "operate the fleet through the coordinator's API"),
    "federated": ("edgefleet.cloud_sync.federated.cli:federated", "federated retraining with Flower (coordinator side)"),
    "demo": ("edgefleet.cloud_sync.demo.cli:demo",
             "the whole loop on this machine: train, compile, roll out, drift, federated retraining"),
}

#: modules imported before a command is built: they extend it through its public hook
#: (cloud_sync adds ``agent run --broker`` with :func:`edgefleet.device_agent.cli.extend_run`)
EXTENSIONS: dict[str, tuple[str, ...]] = {"agent": ("edgefleet.cloud_sync.cli",)}


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def handler_command(name: str, func: Callable[[Any], int], example: str, help: str,
                    params: list[click.Parameter]) -> click.Command:
    """A command ``name`` that calls ``func`` with its parameters as attributes (``args.fleet``), its help
    ending in ``Example: <example>``: how the packages' commands hand parsed options to their handlers."""
    return click.Command(name, callback=lambda **kw: func(SimpleNamespace(**kw)), params=params, help=help,
                         epilog=f"Example: {example}")


class LazyGroup(click.Group):
    """A group whose commands are imported when they are used (the table: name -> target, help)."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = {name: v for name, v in lazy.items() if _available(v[0].partition(":")[0])}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.lazy, *sorted(super().list_commands(ctx))]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        target, help = self.lazy[cmd_name]
        module, _, attr = target.partition(":")
        for ext in EXTENSIONS.get(cmd_name, ()):
            if _available(ext):
                importlib.import_module(ext)
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command), target
        return command

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        name = click.utils.make_str(args[0])
        if self.get_command(ctx, name) is None and not ctx.resilient_parsing and not name.startswith("-"):
            raise click.exceptions.NoSuchCommand(name, possibilities=self.list_commands(ctx), ctx=ctx)
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help) for name, (_, help) in self.lazy.items()]  # from the table: nothing imported
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgefleetError as exc:
            if ctx.params.get("debug") or os.environ.get("EDGEFLEET_DEBUG"):
                traceback.print_exc()
            print(f"edgefleet: error: {exc}", file=sys.stderr)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            print("edgefleet: interrupted", file=sys.stderr)
            ctx.exit(130)
        except BrokenPipeError:
            ctx.exit(0)


@click.group(cls=LazyGroup, lazy=COMMANDS, no_args_is_help=True,
             context_settings={"show_default": True, "help_option_names": ["-h", "--help"], "max_content_width": 110},
             epilog="Example: edgefleet pack model.tflite -o bundle --name digits --version 1.0.0 --key keys/edgefleet.key"
                    "\n\nShell completion (bash): eval \"$(_EDGEFLEET_COMPLETE=bash_source edgefleet)\"")
@click.version_option(__version__, "--version", prog_name="edgefleet", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="print full tracebacks on errors (or EDGEFLEET_DEBUG=1)")
@click.option("--log-level", envvar="EDGEFLEET_LOG_LEVEL", show_envvar=True, metavar="LEVEL",
              type=click.Choice(["debug", "info", "warning", "error", "critical"], case_sensitive=False),
              help="what edgefleet logs: debug, info, warning, error or critical  [default: info for the daemons "
              "(cloud serve, agent run, sync run), error for other commands, which say what happened themselves]")
@click.option("--log-format", envvar="EDGEFLEET_LOG_FORMAT", show_envvar=True, default="text",
              type=click.Choice(["text", "json"], case_sensitive=False),
              help="log lines on stderr: text, or json (one object a line: ts, level, logger, msg and the event's "
              "fields)")
def cli(debug: bool, log_level: str | None, log_format: str) -> None:
    """Compile models for small devices, run them offline, keep a fleet improving."""
    from . import logs

    # a one-shot command reports its outcome itself (one line on an error): the library's warnings would say it twice
    logs.configure(log_level or "error", log_format, given=log_level is not None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``edgefleet`` command on ``argv`` (default ``sys.argv[1:]``); the exit code.

    Usage errors print click's message (with "Did you mean ...?" for a misspelt command or option) and
    give 2; an :class:`EdgefleetError` prints one line and gives its ``exit_code``."""
    try:
        code = cli.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="edgefleet",
                        standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return 2
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        print("edgefleet: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


def entry() -> None:  # pragma: no cover - console script wrapper
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
