"""The ``edgefleet`` command on click (issue 14): lazy loading (``edgefleet --help`` imports no heavy
package), defaults and an example in every help, "Did you mean" for misspelt commands and options, no
option abbreviations, one duration and one percentage type, errors as one line with their exit codes."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from typing import Any, Iterator

import click
import pytest
from click.testing import CliRunner

from edgefleet.cli import COMMANDS, cli, main
from edgefleet.clitypes import Duration, Percent
from edgefleet.errors import ConfigError

HEAVY = ("tensorflow", "flwr", "fastapi", "sqlalchemy", "onnxruntime", "onnx", "numpy", "httpx", "paho", "rich",
         "uvicorn", "cryptography", "tuf", "pydantic", "starlette", "typer", "ai_edge_litert", "sklearn", "keras")


def _imported(*argv: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "edgefleet.cli", *argv], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}


def test_top_level_help_imports_no_heavy_package_and_no_command_module() -> None:
    mods = _imported("--help")
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))
    full = subprocess.run([sys.executable, "-X", "importtime", "-m", "edgefleet.cli", "--help"], capture_output=True,
                          text=True, timeout=60).stderr
    for module in ("edgefleet.commands", "edgefleet.compiler.cli", "edgefleet.device_agent.cli",
                   "edgefleet.cloud_sync.cli", "edgefleet.cloud_sync.federated.cli"):
        assert f" {module}\n" not in full, module  # loaded only when its command is used


def test_a_command_help_loads_its_module_only() -> None:
    mods = _imported("inspect", "--help")
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))


def test_every_command_is_listed_and_loads() -> None:
    r = CliRunner().invoke(cli, ["--help"])
    assert r.exit_code == 0
    for name in COMMANDS:
        assert name in r.output
    ctx = click.Context(cli)
    for name in COMMANDS:
        assert cli.get_command(ctx, name) is not None, name


def _click_commands(group: click.Group, prefix: str = "edgefleet") -> Iterator[tuple[str, click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or (prefix == "edgefleet" and ":" not in COMMANDS[name][0]):
            continue  # the commands still on argparse: tests/cloud/test_cloud_argparse.py
        yield f"{prefix} {name}", cmd
        if isinstance(cmd, click.Group):
            yield from _click_commands(cmd, f"{prefix} {name}")


def test_every_click_command_has_an_example_and_shows_its_defaults() -> None:
    found = dict(_click_commands(cli))
    assert len(found) >= 14 and "edgefleet keys root-init" in found and "edgefleet bench" in found
    for prog, cmd in found.items():
        assert cmd.epilog and "Example: edgefleet " in cmd.epilog, prog
        r = CliRunner().invoke(cli, [*prog.split()[1:], "--help"])
        assert r.exit_code == 0, (prog, r.output)
        if any(isinstance(p, click.Option) and type(p.default) in (str, int, float) for p in cmd.params):
            assert "default: " in " ".join(r.output.split()), prog
    assert "[default: 1000]" in CliRunner().invoke(cli, ["bench", "--help"]).output


def test_misspelt_option_gets_a_suggestion_and_exit_code_2() -> None:
    r = CliRunner().invoke(cli, ["inspect", "--jsn", "b"])
    assert r.exit_code == 2
    assert "No such option" in r.output and "--jsn" in r.output and "Did you mean" in r.output and "--json" in r.output


def test_misspelt_command_gets_a_suggestion() -> None:
    r = CliRunner().invoke(cli, ["inspct", "b"])
    assert r.exit_code == 2 and "No such command" in r.output and "Did you mean 'inspect'" in r.output


@pytest.mark.parametrize("argv", [["inspect", "--js", "b"], ["keys", "generate", "--ou", "x"],
                                  ["keys", "generate", "--ou=x"], ["bench", "m.onnx", "--json-o", "x"]])
def test_click_options_are_never_abbreviated(argv: list[str]) -> None:
    r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 2 and "No such option" in r.output


def test_main_maps_usage_errors_and_the_error_tree(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--jsn", "b"]) == 2
    assert "Did you mean" in capsys.readouterr().err
    assert main([]) == 2  # no command: the help, exit code 2 (as before)
    assert "Commands:" in capsys.readouterr().out
    assert main(["--version"]) == 0
    rc = main(["inspect", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("edgefleet: error: ") and err.count("\n") == 1


def test_json_is_a_flag_everywhere_and_bench_writes_files_with_json_out() -> None:
    for prog, cmd in _click_commands(cli):
        for p in cmd.params:
            if isinstance(p, click.Option) and "--json" in p.opts:
                assert p.is_flag, prog
    opts = {o for p in cli.get_command(click.Context(cli), "bench").params for o in getattr(p, "opts", [])}  # type: ignore[union-attr]
    assert {"--json", "--json-out"} <= opts


def test_duration_type() -> None:
    seconds = Duration()
    assert seconds.convert("6h", None, None) == 6 * 3600
    assert seconds.convert("90", None, None) == 90 and seconds.convert("1.5m", None, None) == 90
    assert seconds.convert("2w", None, None) == 14 * 86400
    days = Duration(bare="d", timedelta=True)
    assert days.convert("7", None, None) == dt.timedelta(days=7) and days.convert("12h", None, None) == dt.timedelta(hours=12)
    for bad in ("soon", "-1h", "5x", "", "nan"):
        with pytest.raises(ConfigError, match="not a duration"):
            seconds.convert(bad, None, None)
    with pytest.raises(ConfigError, match="between"):
        Duration(hi=60).convert("2m", None, None)


def test_percent_type_refuses_bare_numbers_of_one_or_more() -> None:
    p = Percent("canary")
    assert p.convert("5%", None, None) == "5%" and p.convert("0.05", None, None) == "0.05"
    for bad in ("1", "5", "150%", "x"):
        with pytest.raises(ConfigError):
            p.convert(bad, None, None)
    assert Percent("wave", many=True).convert("25%,50%,100%", None, None) == "25%,50%,100%"


def test_federated_run_takes_durations_through_the_same_type() -> None:
    from edgefleet.cloud_sync.federated.cli import parse_run_args

    args = parse_run_args(["--timeout", "2h", "--round-timeout", "90"])
    assert args.timeout == 7200 and args.round_timeout == 90 and parse_run_args([]).round_timeout == 120
    with pytest.raises(ConfigError, match="not a duration"):
        parse_run_args(["--timeout", "soon"])


def test_fleet_retrain_cooldown_takes_a_duration() -> None:
    from edgefleet.cloud_sync.cli import fleet

    retrain = fleet.commands["retrain"]
    params = retrain.make_context("retrain", ["--group", "g", "--on-drift", "on", "--cooldown", "6h", "--window", "10m",
                                              "--", "--rounds", "9"]).params
    assert params["cooldown"] == 6 * 3600 and params["window"] == 600 and params["run_args"] == ("--rounds", "9")
    defaults = retrain.make_context("retrain", []).params
    assert defaults["cooldown"] == 6 * 3600 and defaults["window"] == 3600
    with pytest.raises(ConfigError, match="--cooldown 'soon' is not a duration"):
        retrain.make_context("retrain", ["--cooldown", "soon"])


def test_bad_duration_is_one_line_with_the_config_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "b.efb", "--repo", "r", "--clock-skew", "soon"]) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert err == "edgefleet: error: --clock-skew 'soon' is not a duration (like 90s, 10m, 6h, 30d or 2w)\n"


def test_shell_completion_script() -> None:
    import os

    env = {**os.environ, "_EDGEFLEET_COMPLETE": "bash_source"}
    proc = subprocess.run([sys.executable, "-c", "import sys; from edgefleet.cli import cli; "
                           "sys.exit(cli.main(prog_name='edgefleet'))"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "_edgefleet_completion" in proc.stdout and "complete " in proc.stdout
    env = {**os.environ, "_EDGEFLEET_COMPLETE": "bash_complete", "COMP_WORDS": "edgefleet ins", "COMP_CWORD": "1"}
    proc = subprocess.run([sys.executable, "-c", "import sys; from edgefleet.cli import cli; "
                           "sys.exit(cli.main(prog_name='edgefleet'))"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert "inspect" in proc.stdout
