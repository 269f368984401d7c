"""Every command the README shows works as written.

The README's code blocks are read line by line (``\\`` continuations joined, shell comments dropped, the
``[optional]`` brackets taken away so that the optional parts are checked too, each ``a|b|c`` alternative
checked, ``...`` and ``<placeholders>`` standing for what the reader fills in). Each ``edgefleet ...`` line
is parsed by the real click command tree in process (the subcommand chain resolved, ``make_context`` with
``resilient_parsing=False``), so an unknown option, a value its type refuses, a missing required option or
a command that does not exist fails the test naming the README line. ``python -m benchmarks`` lines are
parsed by the benchmarks' own parser, ``bash scripts/...`` lines must name scripts that exist, and the
options, commands, API routes, files and extras the prose names must exist. Then the cheap commands run
for real in a temporary directory: keys, pack, verify, inspect, predict, the agent, the production broker
configuration started with a real Mosquitto, the dashboard and the ``/metrics`` scrape of a real
coordinator, shell completion, and the quickstart's argument handling.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pytest

from edgefleet.cli import COMMANDS, cli, main
from edgefleet.errors import EdgefleetError

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = (README, ROOT / "ARCHITECTURE.md", ROOT / "SECURITY.md")

#: an upper-case word the reader replaces (N, DIR, DEPLOYMENT, HOST:9092, NAME=AXIS)
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(?:[:=][A-Z0-9_]+)*$")
#: where a shell command ends and the next program starts
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "2>", "<", "&"}


# -- reading the README ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shown:
    """A command line the README shows: the line it starts on, its text (continuations joined, comment
    dropped), and whether it is an inline code span of the prose rather than a line of a code block."""

    line: int
    text: str
    inline: bool = False

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def _strip_comment(line: str) -> str:
    """The line without its shell comment (a ``#`` at the start of a word, outside quotes)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def code_block_lines(text: str) -> Iterator[Shown]:
    """Each logical line of each fenced code block (continuations joined, comments dropped), with the number
    of the line it starts on; an output block's ``$ `` prompt is dropped."""
    fence = False
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.lstrip().startswith("```"):
            fence, pending = not fence, None
            continue
        if not fence:
            continue
        line = _strip_comment(raw)
        if pending is not None:
            start, line = pending[0], pending[1] + " " + line.strip()
        else:
            start, line = number, line.removeprefix("$ ")
        if line.endswith("\\"):
            pending = (start, line[:-1].rstrip())
            continue
        pending = None
        if line.strip():
            yield Shown(start, line.strip())


def prose_spans(text: str) -> Iterator[Shown]:
    """Each inline code span outside the fenced blocks (a span may wrap across lines), whitespace collapsed."""
    fence = False
    kept: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.lstrip().startswith("```"):
            fence = not fence
        elif not fence:
            kept.append((number, raw))
    prose = "\n".join(line for _, line in kept)
    for m in re.finditer(r"`([^`]+)`", prose):
        yield Shown(kept[prose.count("\n", 0, m.start())][0], " ".join(m.group(1).split()), inline=True)


@dataclass(frozen=True)
class Command:
    """A shown command made ready to parse: the environment its line sets, its words after the program name,
    and whether the README elided part of it (``...``, ``<...>``)."""

    env: dict[str, str]
    argv: list[str]
    elided: bool


def commands_of(shown: Shown, program: str) -> list[Command]:
    """The invocations of ``program`` on the line (one per ``a|b`` alternative); [] when the line runs
    something else."""
    text = shown.text
    env: dict[str, str] = {}
    while m := re.match(r"(?:export\s+)?([A-Z_][A-Z0-9_]*)=(\$\([^)]*\)|\"[^\"]*\"|'[^']*'|\S+)\s+", text):
        env[m.group(1)] = m.group(2).strip("'\"")
        text = text[m.end():]
    if not re.match(rf"(?:\.venv/bin/)?{re.escape(program)}(?:\s|$)", text):
        return []
    elided = bool(re.search(r"<[^<>]+>", text))
    try:
        words = shlex.split(re.sub(r"<[^<>]+>", " ", text))
    except ValueError as exc:
        raise AssertionError(f"{shown}: {exc}") from None
    argv: list[str] = []
    for word in words[len(program.split()):]:
        if word in SHELL_OPERATORS:
            break
        word = word.removeprefix("[")
        word = word.removesuffix("]") if "[" not in word else word
        if word == "...":
            elided = True
        elif word:
            argv.append(word)
    choices = [w.split("|") if "|" in w else [w] for w in argv]
    count = max((len(c) for c in choices), default=1)
    return [Command(env, [c[min(i, len(c) - 1)] for c in choices], elided) for i in range(count)]


def shown_commands(text: str, program: str) -> list[tuple[Shown, Command]]:
    """Every invocation of ``program`` in ``text``'s code blocks and in its prose's code spans."""
    found = [*code_block_lines(text), *prose_spans(text)]
    return [(shown, cmd) for shown in found for cmd in commands_of(shown, program)]


# -- parsing with the real command tree --------------------------------------------------------------------------
def _sample(param: click.Parameter) -> str | None:
    """A value of ``param``'s type to stand for a placeholder the README shows (``--rounds R``)."""
    if isinstance(param.type, click.Choice):
        return str(param.type.choices[0])
    return {"integer": "1", "float": "0.5", "duration": "1m", "percent": "5%", "integer range": "1",
            "float range": "0.5"}.get(param.type.name)


def _fill_placeholders(command: click.Command, args: list[str]) -> list[str]:
    """``args`` with the placeholder value of each typed option replaced by a value of its type."""
    by_opt = {opt: p for p in command.params if isinstance(p, click.Option) for opt in p.opts}
    out = list(args)
    for i, word in enumerate(out[:-1]):
        param = by_opt.get(word)
        if param is not None and not param.is_flag and PLACEHOLDER.match(out[i + 1]):
            out[i + 1] = _sample(param) or out[i + 1]
    return out


def parse(argv: list[str]) -> list[click.Context]:
    """Parse ``argv`` as ``edgefleet`` does, without running anything: the contexts from the root to the
    command it names. Raises what click (or a parameter type) raises."""
    ctx = cli.make_context("edgefleet", list(argv), resilient_parsing=False)
    chain = [ctx]
    while isinstance(ctx.command, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not rest:
            raise click.UsageError(f"'{ctx.command_path}' needs a command", ctx=ctx)
        name, command, rest = ctx.command.resolve_command(ctx, rest)
        assert name is not None and command is not None
        ctx = command.make_context(name, _fill_placeholders(command, rest), parent=ctx, resilient_parsing=False)
        chain.append(ctx)
    return chain


def parse_error(shown: Shown, cmd: Command) -> str | None:
    """Why ``cmd`` does not parse, or None. A fragment of the prose (``edgefleet compile``) or a line the
    README elided may leave required options out; nothing else may."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({k: v for k, v in saved.items() if not k.startswith("EDGEFLEET_")}, **cmd.env)
    try:
        parse(cmd.argv)
    except click.exceptions.Exit as exc:  # --help, --version
        return None if exc.exit_code == 0 else f"exit {exc.exit_code}"
    except click.MissingParameter as exc:
        return None if cmd.elided or shown.inline else f"MissingParameter: {exc.format_message()}"
    except click.exceptions.NoArgsIsHelpError:
        return None if shown.inline else "a group without a command"
    except (click.ClickException, EdgefleetError) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        return f"{type(exc).__name__}: {message.splitlines()[0] if message else ''}"
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return None


def unparsed(text: str) -> list[str]:
    """Each ``edgefleet`` command in ``text`` that does not parse, with its line and why."""
    out = []
    for shown, cmd in shown_commands(text, "edgefleet"):
        error = parse_error(shown, cmd)
        if shown.text in SHOWN_MISTAKES:
            if error is None or SHOWN_MISTAKES[shown.text] not in error:
                out.append(f"{shown}\n    shown as a mistake, but: {error}")
        elif error is not None:
            out.append(f"{shown}\n    edgefleet {shlex.join(cmd.argv)}\n    {error}")
    return out


#: prose spans that show a mistake on purpose, with the message the README says it gets
SHOWN_MISTAKES = {"edgefleet inspect --jsn": "No such option '--jsn'. Did you mean '--json'?"}


def test_the_readme_shows_the_commands_of_every_top_level_command() -> None:
    shown = shown_commands(README.read_text("utf-8"), "edgefleet")
    named = {cmd.argv[i] for _, cmd in shown for i in range(len(cmd.argv)) if cmd.argv[i] in COMMANDS
             and all(w.startswith("-") or w == "json" for w in cmd.argv[:i])}
    assert len(shown) > 80, len(shown)
    assert named == set(COMMANDS) - {"sync"}, set(COMMANDS) - named  # sync run: the device side, in prose only
    assert sum(1 for s, _ in shown if not s.inline) > 70


def test_every_edgefleet_command_in_the_readme_parses(capsys: pytest.CaptureFixture[str]) -> None:
    failures = unparsed(README.read_text("utf-8"))
    capsys.readouterr()  # --help lines print their help
    assert not failures, "\n".join(failures)
    readme = " ".join(README.read_text("utf-8").split())
    for mistake, message in SHOWN_MISTAKES.items():
        assert f"`{mistake}` → `{message}`" in readme, mistake


@pytest.mark.parametrize(("line", "why"), [
    ("edgefleet inspect bundle --jsonn", "NoSuchOption"),  # an unknown option
    ("edgefleet fleet deploy b.efb --group g --canary 1", "ConfigError"),  # a value its type refuses
    ("edgefleet bench bundle --runs many", "BadParameter"),
    ("edgefleet fleet deploy b.efb --group g --rate fast", "ConfigError"),
    ("edgefleet pack model.onnx --name m --version 1", "MissingParameter"),  # -o is required
    ("edgefleet fleet lst", "NoSuchCommand"),  # a command that does not exist
    ("edgefleet fleet tokens", "a group without a command"),
    ("edgefleet agent status --state-dir s [--jsn]", "NoSuchOption"),  # the optional part is checked too
    ("edgefleet predict b --input x.npy|x.npz|x.csv [--output y.npy] [--jsn]", "NoSuchOption"),
    ("EDGEFLEET_API=http://h edgefleet fleet retrain --group g --cooldown soon", "ConfigError"),
])
def test_the_check_names_the_line_of_a_command_that_does_not_parse(line: str, why: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    text = f"intro\n\n```bash\nedgefleet inspect bundle\n{line}   # a comment\n```\n"
    assert unparsed(text.replace(line, "edgefleet keys generate --out k")) == []
    failures = unparsed(text)  # one per alternative (a|b|c)
    assert len(failures) == line.count("|") + 1, failures
    assert all(f.startswith(f"README.md:5: {line}") and why in f for f in failures), failures


def test_the_reading_of_shown_commands() -> None:
    text = ("```bash\nA=1 B=$(cat t) edgefleet x --y 1 \\\n    [--z Z] --w a|b|c > out  # c\n"
            "edgefleet cloud serve ... --fleet f -- <more options> | tail -1\n```\n"
            "Prose: `edgefleet agent status` and `cloud serve`.\n")
    got = [(s.line, s.inline, c.env, c.argv, c.elided) for s, c in shown_commands(text, "edgefleet")]
    assert got == [
        (2, False, {"A": "1", "B": "$(cat t)"}, ["x", "--y", "1", "--z", "Z", "--w", "a"], False),
        (2, False, {"A": "1", "B": "$(cat t)"}, ["x", "--y", "1", "--z", "Z", "--w", "b"], False),
        (2, False, {"A": "1", "B": "$(cat t)"}, ["x", "--y", "1", "--z", "Z", "--w", "c"], False),
        (4, False, {}, ["cloud", "serve", "--fleet", "f", "--"], True),
        (6, True, {}, ["agent", "status"], False),
    ]


def _every_command(command: click.Command, path: list[str], ctx: click.Context
                   ) -> Iterator[tuple[list[str], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            yield from _every_command(sub, [*path, name], click.Context(sub, parent=ctx, info_name=name))


def test_every_help_shows_an_example_that_parses(capsys: pytest.CaptureFixture[str]) -> None:
    """README: "Every command's --help shows its defaults and an example"; the example must parse too."""
    failures = []
    commands = list(_every_command(cli, [], click.Context(cli, info_name="edgefleet")))
    assert len(commands) > 50
    for path, command in commands:
        assert main([*path, "--help"]) == 0, path
        assert "Example: edgefleet " in capsys.readouterr().out, path
        for example in re.findall(r"(edgefleet [^\n]+)", command.epilog or ""):
            shown = Shown(0, _strip_comment(example))
            for cmd in commands_of(shown, "edgefleet"):
                if error := parse_error(shown, cmd):
                    failures.append(f"edgefleet {' '.join(path)} --help: {shown.text}: {error}")
    capsys.readouterr()
    assert not failures, "\n".join(failures)


# -- what the prose names: options, commands, routes, files, error names, extras ---------------------------------
def _tree_options() -> tuple[set[str], dict[tuple[str, ...], click.Command]]:
    commands = dict((tuple(p), c) for p, c in _every_command(cli, [], click.Context(cli, info_name="edgefleet")))
    options = {"--help"}
    for command in commands.values():
        options.update(o for p in command.params if isinstance(p, click.Option)
                       for o in [*p.opts, *p.secondary_opts] if o.startswith("--"))
    return options, commands


def _benchmark_options() -> set[str]:
    from benchmarks.__main__ import parser

    return {o for action in parser()._actions for o in action.option_strings if o.startswith("--")}


def test_every_option_the_docs_name_exists() -> None:
    """Every ``--option`` README, ARCHITECTURE and SECURITY name is one of edgefleet's or the benchmarks'."""
    options, _ = _tree_options()
    # the misspelling the README shows on purpose; mypy's --strict
    known = options | _benchmark_options() | {"--jsn", "--strict"}
    for doc in DOCS:
        text = doc.read_text("utf-8")
        if doc.name == "SECURITY.md":  # the abbreviations an attacker tried (refused), not options
            text = re.sub(r"`--\w+=`", "", text)
        named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
        assert not named - known, f"{doc.name}: {sorted(named - known)}"


def test_every_command_the_prose_names_exists_with_the_options_it_shows() -> None:
    """A span such as `cloud serve --alert-webhook URL` or `federated ls/log/stop` names commands that exist,
    and options of the command it names."""
    _, commands = _tree_options()
    checked = 0
    for doc in DOCS:
        for span in prose_spans(doc.read_text("utf-8")):
            words = span.text.removeprefix("edgefleet ").split()
            if not words or words[0] not in COMMANDS or span.text.startswith("edgefleet "):
                continue  # whole `edgefleet ...` spans are parsed by the test above
            paths: list[tuple[str, ...]] = [(words[0],)]
            for word in words[1:]:
                if word.startswith("-") or not re.fullmatch(r"[a-z][a-z0-9/-]*", word) or word == "...":
                    break
                if not isinstance(commands[paths[0]], click.Group):
                    break
                paths = [(*p, name) for p in paths for name in word.split("/")]
                assert all(p in commands for p in paths), f"{doc.name}:{span.line}: `{span.text}`: {paths}"
            for path in paths:
                own = {o for p in commands[path].params if isinstance(p, click.Option) for o in p.opts}
                shown = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", span.text))
                assert shown <= own | {"--help"}, f"{doc.name}:{span.line}: `{span.text}`: {sorted(shown - own)}"
                checked += 1
            if len(paths) == 1 and "/--" not in span.text:  # the values it shows parse (`--cooldown 6h`)
                whole = Shown(span.line, f"edgefleet {span.text}", inline=True)
                for cmd in commands_of(whole, "edgefleet"):
                    error = parse_error(whole, cmd)
                    named_only = error is not None and re.fullmatch(r"BadOptionUsage: Option '--[\w-]+' requires "
                                                                    r"an argument\.", error)  # `agent run --broker`
                    assert error is None or named_only, f"{doc.name}:{span.line}: `{span.text}`: {error}"
    assert checked > 60, checked


def test_json_is_always_a_flag_and_every_fleet_command_takes_it() -> None:
    """README: "`--json` is always a flag (JSON on stdout)"; of the fleet commands: "Every command takes `--json`"."""
    _, commands = _tree_options()
    for path, command in commands.items():
        json_options = [p for p in command.params if isinstance(p, click.Option) and "--json" in p.opts]
        assert all(p.is_flag for p in json_options), path
        if path[:1] == ("fleet",) and not isinstance(command, click.Group):
            assert json_options, f"edgefleet {' '.join(path)} has no --json"


def test_the_log_level_of_one_shot_commands_is_the_one_the_readme_gives(capsys: pytest.CaptureFixture[str]) -> None:
    """README: "other commands log errors only unless told" (the daemons log from info up)."""
    import logging

    said = re.search(r"other commands log (\w+) only unless told", " ".join(README.read_text("utf-8").split()))
    assert said, "README no longer says what one-shot commands log"
    assert main(["inspect", "--help"]) == 0
    capsys.readouterr()
    level = logging.getLogger("edgefleet").level
    assert logging.getLevelName(level).lower() == said.group(1).removesuffix("s"), logging.getLevelName(level)


def _api_routes() -> list[tuple[str, str]]:
    """(method, path) of every route the coordinator's app serves, built as ``cloud serve`` builds it."""
    from edgefleet.cloud_sync.coordinator.api import create_app
    from edgefleet.cloud_sync.coordinator.registry import Registry
    from edgefleet.cloud_sync.coordinator.service import Coordinator
    from edgefleet.cloud_sync.transport import MqttConfig, MqttTransport

    coord = Coordinator(Registry("sqlite://"), MqttTransport(MqttConfig(url="mqtt://127.0.0.1:1", client_id="c")),
                        "f")  # never started: only its routes are read
    app = create_app(coord, "t" * 32)
    return [(m, r.path) for r in app.routes for m in getattr(r, "methods", None) or ["GET"]]


def _route_matches(shown: str, template: str) -> bool:
    a, b = shown.strip("/").split("/"), template.strip("/").split("/")
    return len(a) == len(b) and all(x == y or y.startswith("{") for x, y in zip(a, b))


def test_every_api_route_the_docs_name_is_served() -> None:
    routes = _api_routes()
    checked = 0
    for doc in DOCS:
        text = " ".join(doc.read_text("utf-8").split())
        for method, path in re.findall(r"\b(GET|POST|PUT|PATCH|DELETE) (/[\w/{}.\-\[\]]*)", text):
            for variant in {path.replace("[", "").replace("]", ""), re.sub(r"\[[^\]]*\]", "", path)}:
                served = any(m == method and _route_matches(variant, p) for m, p in routes)
                assert served, f"{doc.name}: {method} {variant} is not a route of the coordinator's API"
                checked += 1
    for path in ("/ui/", "/ui/login", "/metrics", "/healthz", "/openapi.json"):  # the paths the README opens
        assert any(_route_matches(path, p) for m, p in routes if m == "GET"), path
    assert checked > 20, checked


def test_every_file_and_link_the_docs_name_exists() -> None:
    for doc in DOCS:
        text = doc.read_text("utf-8")
        links = re.findall(r"\]\(([^)#\s]+)[^)]*\)", text)
        links = [link for link in links if not re.match(r"[a-z]+://", link)]
        assert links or doc.name == "SECURITY.md"
        for link in links:
            assert (doc.parent / link).exists(), f"{doc.name}: {link}"
        for script in re.findall(r"(?<![\w/])(scripts/[\w./-]+\.(?:sh|py))", text):
            assert (ROOT / script).is_file(), f"{doc.name}: {script}"
        for test in re.findall(r"(?<![\w/])(tests/[\w/]+\.py)", text):
            assert (ROOT / test).is_file(), f"{doc.name}: {test}"


def test_every_error_the_docs_name_is_in_the_error_tree_with_its_code() -> None:
    import edgefleet.errors as errors

    for doc in DOCS:
        text = re.sub(r"```text\n.*?```", "", doc.read_text("utf-8"), flags=re.S)  # what ONNX Runtime printed
        for name in set(re.findall(r"\b([A-Z]\w*Error)\b", text)):
            assert isinstance(getattr(errors, name, None), type), f"{doc.name}: {name}"
        for name, code in re.findall(r"\b([A-Z]\w*Error)`?,? \(?(?:exit )?(\d+)\)", text):
            assert getattr(errors, name).exit_code == int(code), f"{doc.name}: {name} ({code})"


def _setup_extras() -> dict[str, set[str]]:
    """setup.py's extras_require: extra -> the distribution names it installs (read, not run)."""
    import ast

    tree = ast.parse((ROOT / "setup.py").read_text("utf-8"))
    lists = {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name) and isinstance(node.value, ast.List)}
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.keyword) and n.arg == "extras_require")
    assert isinstance(call.value, ast.Dict)
    extras = {}
    for key, value in zip(call.value.keys, call.value.values):
        assert isinstance(key, ast.Constant)
        names = [n.id for n in ast.walk(value) if isinstance(n, ast.Name) and n.id in lists]
        extras[key.value] = {re.match(r"[\w.-]+", req).group(0).lower().replace("_", "-")  # type: ignore[union-attr]
                             for name in names for req in lists[name]}
    return extras


def test_the_extras_the_readme_installs_exist_and_hold_what_it_says() -> None:
    extras = _setup_extras()
    text = README.read_text("utf-8")
    shown = re.findall(r"pip install [\"'](?:\.|edgefleet)\[(\w+)\][\"'](?:[ \t]+# ([^\n]*))?", text)
    assert {"device", "compiler", "all", "s3"} <= {extra for extra, _ in shown}
    for extra, comment in shown:
        assert extra in extras, extra
        if extra == "device" and comment:  # the comment lists what a device gets: all of it
            listed = {w.lower() for w in re.findall(r"[\w-]+", comment)}
            assert listed == extras["device"], (sorted(listed), sorted(extras["device"]))
    assert extras["all"] == set().union(*(v for k, v in extras.items() if k not in ("all", "s3")))


# -- benchmarks and scripts ---------------------------------------------------------------------------------------
def test_every_benchmarks_command_in_the_readme_parses_and_names_suites_that_exist() -> None:
    from benchmarks.__main__ import parser
    from benchmarks.suite import SUITES, select

    text = README.read_text("utf-8")
    lines = shown_commands(text, ".venv/bin/python -m benchmarks") + shown_commands(text, "python -m benchmarks")
    assert len(lines) >= 6
    for shown, cmd in lines:
        try:
            args = parser().parse_args(cmd.argv)
        except SystemExit:
            raise AssertionError(f"{shown}: python -m benchmarks refuses it") from None
        select(args.only, args.skip, SUITES)  # ValueError naming an unknown suite
    for module in re.findall(r"python -m (benchmarks\.\w+)", text):
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
    suites_paragraph = re.search(r"^The suites\b.*?\n\n", text, re.S | re.M).group(0)  # type: ignore[union-attr]
    named = set(re.findall(r"`(\w+)`", suites_paragraph))
    assert named == {s.name for s in SUITES}, (sorted(named - {s.name for s in SUITES}),
                                               sorted({s.name for s in SUITES} - named))


def test_every_script_the_readme_runs_exists_and_is_strict_bash() -> None:
    text = README.read_text("utf-8")
    scripts = {cmd.argv[0] for _, cmd in shown_commands(text, "bash") if cmd.argv}
    assert {"scripts/quickstart.sh", "scripts/test.sh", "scripts/compiler-tour.sh", "scripts/recipes.sh"} <= scripts
    for script in sorted(scripts | {"scripts/setup.sh"}):
        path = ROOT / script
        assert path.is_file(), script
        body = path.read_text("utf-8")
        assert "\nset -euo pipefail\n" in body, f"{script}: not set -euo pipefail"
        check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, f"{script}: {check.stderr}"


def test_the_quickstart_sets_everything_up_and_one_command_runs_the_tests() -> None:
    quickstart = README.read_text("utf-8").split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    first_block = [s.text for s in code_block_lines(quickstart)][:2]
    assert first_block == ["bash scripts/quickstart.sh", "bash scripts/test.sh"], first_block
    for script in ("quickstart.sh", "test.sh"):  # both set up first (test.sh: then ruff, mypy and pytest)
        assert re.search(r"^(\[ [^\n]*\] \|\| )?bash scripts/setup\.sh", (ROOT / "scripts" / script).read_text("utf-8"),
                         re.M), script
    assert re.search(r"^bash scripts/test\.sh", (ROOT / ".ci" / "run").read_text("utf-8"), re.M), "CI runs it"
    # every system package setup.sh installs is named where the README says what the quickstart installs
    setup = (ROOT / "scripts" / "setup.sh").read_text("utf-8")
    packages = {p for group in re.findall(r"need\+=\(([^)]*)\)", setup) for p in group.split()}
    assert {"mosquitto", "nginx", "chromium", "chromium-driver", "python3-venv"} <= packages, packages
    named = set(re.findall(r"`([\w.-]+)`", quickstart))
    assert packages <= named, f"README's quickstart does not say that setup.sh installs {sorted(packages - named)}"


def test_quickstart_arguments_go_to_the_demo(tmp_path: Path) -> None:
    """`bash scripts/quickstart.sh --devices 5`: an option first is the demo's (it was taken as the work
    directory, and the demo then refused the 5); a first argument that is not an option is the work directory.
    Run on a copy of the script (so nothing of this checkout's quickstart-work/ is moved), set up already."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "quickstart.sh", tmp_path / "scripts" / "quickstart.sh")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {**os.environ, "EDGEFLEET_SKIP_SETUP": "1"}

    def quickstart(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(tmp_path / "scripts" / "quickstart.sh"), *args], env=env,
                              capture_output=True, text=True, timeout=60)

    # 99 devices is refused by the demo itself before it starts anything: the option reached it
    proc = quickstart("--devices", "99")
    assert proc.returncode == 2 and "--devices must be within 1..20" in proc.stderr, proc.stderr
    proc = quickstart("mywork", "--devices", "99")
    assert proc.returncode == 2 and "--devices must be within 1..20" in proc.stderr, proc.stderr
    assert not (tmp_path / "--devices").exists()


# -- the cheap ones, for real -------------------------------------------------------------------------------------
def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, f"edgefleet {shlex.join(argv)}: exit {code}\n{err}"
    return out


def _readme_argv(first_words: str) -> list[str]:
    """The argv of the README's code-block command line that starts with ``edgefleet FIRST_WORDS``."""
    for shown, cmd in shown_commands(README.read_text("utf-8"), "edgefleet"):
        if not shown.inline and shown.text.startswith(f"edgefleet {first_words}"):
            return cmd.argv
    raise AssertionError(f"README shows no `edgefleet {first_words}`")


def _onnx_classifier(path: Path) -> None:
    """A 64 -> 10 softmax classifier as ONNX (what a reader's model.tflite stands for here)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        "classifier", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(rng.normal(0, 0.1, (64, 10)).astype(np.float32), "W"),
         numpy_helper.from_array(np.zeros(10, np.float32), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_the_sdk_cli_lines_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """keys generate, pack, verify, inspect, predict and the agent's install/status/predict, in a temporary
    directory, as the README writes them. The README's `model.tflite` is the reader's model: an ONNX model
    stands in for it (building a .tflite needs TensorFlow), named model.onnx."""
    monkeypatch.chdir(tmp_path)
    _onnx_classifier(tmp_path / "model.onnx")
    x = np.random.default_rng(1).uniform(0, 16, (300, 64)).astype(np.float32)
    Path("labels.txt").write_text("\n".join(str(i) for i in range(10)) + "\n")
    Path("pre.json").write_text(json.dumps([{"op": "scale", "factor": 1 / 16}]))
    np.savez("train.npz", x=x)
    np.save("x.npy", x[:4])

    _run(_readme_argv("keys generate"), capsys)
    assert stat.S_IMODE(os.stat("keys/edgefleet.key").st_mode) == 0o600 and Path("keys/edgefleet.pub").is_file()
    _run([w.replace("model.tflite", "model.onnx") for w in _readme_argv("pack model.tflite")], capsys)
    assert Path("bundle/manifest.json").is_file() and Path("bundle.efb").is_file()
    assert "OK: digits v1.0.0" in _run(_readme_argv("verify bundle.efb"), capsys)
    manifest = json.loads(_run(_readme_argv("inspect bundle"), capsys))
    assert (manifest["name"], manifest["version"], len(manifest["labels"])) == ("digits", "1.0.0", 10)
    assert manifest["preprocessing"] and manifest["reference_stats"]  # --preprocess pre.json, --reference train.npz
    out = json.loads(_run(_readme_argv("predict bundle"), capsys))  # the first alternative: --input x.npy
    assert np.load("y.npy").shape == (4, 10) and len(out["labels"]) == 4

    state = str(tmp_path / "state")
    agent = {name: [state if w == "/var/lib/edgefleet" else w for w in _readme_argv(f"agent {name}")]
             for name in ("install", "status", "predict")}
    Path("digits-bundle.efb").symlink_to("bundle.efb")  # the README installs the compiler's digits bundle
    assert "SUCCEEDED" in _run(agent["install"], capsys)
    assert json.loads(_run(agent["status"], capsys))["active"]["version"] == "1.0.0"
    assert _run(agent["predict"], capsys).count("[") >= 4
    assert main(["inspect", "--jsn"]) == 2
    assert "Did you mean '--json'?" in capsys.readouterr().err


def _tls_files(where: Path, account_gid: int | None) -> None:
    """A CA and the broker's certificate and key (what the README's broker-config line names)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def cert(cn: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey, ca: bool) -> bytes:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        built = (x509.CertificateBuilder().subject_name(name).public_key(key.public_key()).serial_number(
            x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(
            now + dt.timedelta(days=1)).issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            built = built.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        return built.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    (where / "ca.pem").write_bytes(cert("ca", ca_key, ca_key, True))
    (where / "server.pem").write_bytes(cert("localhost", key, ca_key, False))
    (where / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    os.chmod(where / "server.key", 0o640)
    if account_gid is not None:  # what the README says to do when root starts mosquitto
        os.chown(where / "server.key", -1, account_gid)


@pytest.fixture()
def open_dir() -> Iterator[Path]:
    """A temporary directory other accounts may enter (pytest's are root's alone), as /etc/mosquitto is."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="edgefleet-readme-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_production_broker_config_starts_a_real_mosquitto(open_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`edgefleet cloud broker-config ...` then `mosquitto -c .../mosquitto.conf`, as the README shows them
    (the output directory and, so that it can run beside other tests, the port moved). Started as root,
    mosquitto drops to its own account and refused to start: it could not write the pid file into the data
    directory broker-config had made root's."""
    from edgefleet.cloud_sync.broker import find_mosquitto, free_port, mosquitto_account, port_open
    from edgefleet.supervisor import ChildProcess

    tmp_path = open_dir
    monkeypatch.chdir(tmp_path)
    account = mosquitto_account(None) if os.geteuid() == 0 else None
    _tls_files(tmp_path, None if account is None else account[1])
    for shown, cmd in shown_commands(README.read_text("utf-8"), "edgefleet"):
        if shown.inline or cmd.argv[:2] != ["cloud", "broker-config"] or "server.pem" not in cmd.argv:
            continue
        argv = [str(tmp_path / "broker") if w == "/etc/mosquitto/edgefleet" else w for w in cmd.argv]
        port = free_port()
        out = _run([*argv, "--port", str(port)], capsys)
        conf = tmp_path / "broker" / "mosquitto.conf"
        assert conf.read_text() in out + "\n" or conf.is_file()
        assert "mosquitto -c /etc/mosquitto/edgefleet/mosquitto.conf" in [
            s.text for s in code_block_lines(README.read_text("utf-8")) if s.line > shown.line][:1]
        acl = (tmp_path / "broker" / "acl").read_text()
        assert "edgefleet/v1/plant1/" in acl and "user coord" in acl
        broker = ChildProcess([find_mosquitto(), "-c", str(conf)], name="mosquitto", restart=False,
                              log_path=tmp_path / "mosquitto.out")
        with broker:
            deadline = time.monotonic() + 10
            while not port_open("127.0.0.1", port) and broker.alive and time.monotonic() < deadline:
                time.sleep(0.05)
            assert port_open("127.0.0.1", port), broker.log_tail()
            pid_file = tmp_path / "broker" / "data" / "mosquitto.pid"
            while not pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert pid_file.read_text().strip() == str(broker.pid)  # what cloud serve --broker-config signals
        if os.geteuid() == 0:  # an account mosquitto could not drop to is refused before anything is written
            assert main([*argv, "--out", "other", "--run-as", "no-such-account"]) == 2
            assert "--run-as no-such-account: no such account" in capsys.readouterr().err
            assert not Path("other").exists()
        return
    raise AssertionError("README shows no `edgefleet cloud broker-config ... --tls-cert server.pem` line")


def test_cloud_acl_and_completion_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    _run(["cloud", "acl", "--fleet", "plant1", "--out", "fleet.acl"], capsys)
    assert "topic readwrite edgefleet/v1/plant1/devices/%u/" in Path("fleet.acl").read_text() or \
        "%u" in Path("fleet.acl").read_text()
    # eval "$(_EDGEFLEET_COMPLETE=bash_source edgefleet)": the script bash evaluates
    line = next(s for s in code_block_lines(README.read_text("utf-8")) if "_EDGEFLEET_COMPLETE" in s.text)
    var, value = re.search(r"(_EDGEFLEET_COMPLETE)=(\w+)", line.text).groups()  # type: ignore[union-attr]
    monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit) as done:
        main([])
    assert done.value.code == 0
    script = capsys.readouterr().out
    assert "complete -o nosort -F _edgefleet_completion edgefleet" in script and "_EDGEFLEET_COMPLETE=bash_complete" in script


def test_the_dashboard_and_the_prometheus_scrape_as_the_readme_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A real coordinator (real Mosquitto, SQLite) serving its API: the README's `fleet tokens create --scope
    read --name prometheus` makes the token, the README's prometheus.yml scrape (its metrics_path, scheme and
    Bearer authorization) reads /metrics with it, and the dashboard's pages answer where the README opens them."""
    import httpx
    import uvicorn
    import yaml  # type: ignore[import-untyped]

    from edgefleet.cloud_sync.broker import LocalBroker, find_mosquitto, free_port
    from edgefleet.cloud_sync.coordinator.api import create_app
    from edgefleet.cloud_sync.coordinator.registry import Registry
    from edgefleet.cloud_sync.coordinator.service import Coordinator
    from edgefleet.cloud_sync.transport import MqttConfig, MqttTransport

    try:
        binary = find_mosquitto()
    except EdgefleetError as exc:
        pytest.skip(str(exc))
    text = README.read_text("utf-8")
    scrape = yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))  # type: ignore[union-attr]
    job = scrape["scrape_configs"][0]
    token = "admin-" + "x" * 32
    broker = LocalBroker(tmp_path / "broker", binary=binary).start()
    coord = Coordinator(Registry(f"sqlite:///{tmp_path / 'fleet.db'}"),
                        MqttTransport(MqttConfig(url=broker.url, client_id="coord")), "plant1")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(coord, token), host="127.0.0.1", port=port,
                                           log_level="error", log_config=None))
    try:
        coord.start()
        threading.Thread(target=server.run, daemon=True).start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.05)
        api = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("EDGEFLEET_API", api)
        monkeypatch.setenv("EDGEFLEET_TOKEN", token)
        argv = next(cmd.argv for shown, cmd in shown_commands(text, "edgefleet")
                    if "--name prometheus" in shown.text)
        made = _run(argv, capsys)  # `> /etc/prometheus/edgefleet.token`: the file holds stdout, the token alone
        assert re.fullmatch(r"\S+\n", made), made
        made = made.strip()
        assert job["metrics_path"] == "/metrics" and job["authorization"]["type"] == "Bearer"
        url = f"{job['scheme']}://127.0.0.1:{port}{job['metrics_path']}"
        with httpx.Client(timeout=10) as http:
            metrics = http.get(url, headers={"Authorization": f"{job['authorization']['type']} {made}"})
            assert metrics.status_code == 200, metrics.text
            assert "edgefleet_coordinator_broker_connected" in metrics.text
            assert http.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
            for page in re.findall(r"http://127\.0\.0\.1:8080(/ui/[\w/]*)", text) + ["/ui/login"]:
                answer = http.get(api + page)
                assert answer.status_code == 200 and "<html" in answer.text.lower(), page
    finally:
        server.should_exit = True
        coord.stop()
        broker.stop()
