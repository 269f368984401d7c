"""Prefix abbreviations (issue 13, finding 2): no command of the project accepts ``--ou`` for ``--out``, and the
retrain launcher checks its reserved options on the parsed result."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient

from edgefleet.cloud_sync.coordinator.api import create_app
from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.coordinator.service import Coordinator
from edgefleet.cloud_sync.federated.autorun import RetrainSettings
from edgefleet.cloud_sync.transport import MemoryBroker, MemoryTransport
from edgefleet.errors import ConfigError

TOKEN = "t0ken"
SMUGGLED = ["--ou=/tmp/attacker", "--ap=http://attacker", "--tok=t", "--grou=g"]


def _click_commands(group: Any, prefix: str = "edgefleet") -> Iterator[tuple[str, Any]]:
    import click

    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            yield from _click_commands(cmd, f"{prefix} {name}")
        elif cmd is not None:
            yield f"{prefix} {name}", cmd


def test_every_command_of_the_edgefleet_command_refuses_abbreviations() -> None:
    """Every command is a click command (click never abbreviates an option): each long option's prefix is
    refused, ``federated run`` and ``cloud serve`` included."""
    import click

    from edgefleet.cli import cli

    clicked = dict(_click_commands(cli))
    assert len(clicked) > 20 and "edgefleet federated run" in clicked and "edgefleet cloud serve" in clicked
    assert "edgefleet fleet deploy" in clicked and "edgefleet keys generate" in clicked
    for prog, cmd in clicked.items():
        for opt in (o for p in cmd.params if isinstance(p, click.Option) for o in p.opts if o.startswith("--")):
            if len(opt) > 4 and not any(o != opt and o.startswith(opt[:-1]) for p in cmd.params for o in p.opts):
                with pytest.raises(click.NoSuchOption):
                    cmd.make_context(prog, [f"{opt[:-1]}=x"])


def test_standalone_parsers_refuse_abbreviations() -> None:
    from edgefleet.cloud_sync.federated.cli import parse_run_args

    with pytest.raises(ConfigError, match="unrecognized arguments: --ou=x"):
        parse_run_args(["--ou=x"])


@pytest.mark.parametrize("arg", SMUGGLED + ["--out=/tmp/x", "--api", "http://attacker", "--record-id=r"])
def test_retrain_settings_refuse_reserved_options_however_spelled(arg: str) -> None:
    with pytest.raises(ConfigError):
        RetrainSettings("g", on_drift=True, args=(arg,) if arg != "--api" else (arg, "http://attacker"))


def test_reserved_option_given_with_its_default_value_is_still_refused() -> None:
    with pytest.raises(ConfigError, match="--rounds is set by the trigger itself"):
        RetrainSettings("g", args=("--rounds=3",))
    assert RetrainSettings("g", args=("--min-nodes", "3", "--superlink=127.0.0.1:9")).args  # others pass


@pytest.fixture()
def client(tmp_path: Any) -> Iterator[TestClient]:
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    coord = Coordinator(reg, MemoryTransport(MemoryBroker(), "coord"), "f")
    with TestClient(create_app(coord, TOKEN)) as c:
        yield c
    reg.close()


def test_api_refuses_abbreviated_reserved_retrain_options(client: TestClient) -> None:
    h = {"Authorization": f"Bearer {TOKEN}"}
    r = client.put("/v1/retrain/g", headers=h, json={"on_drift": True, "args": SMUGGLED})
    assert r.status_code == 422, r.text
    assert "unrecognized arguments" in r.json()["detail"]
    r = client.put("/v1/retrain/g", headers=h, json={"on_drift": True, "args": ["--out", "/tmp/x"]})
    assert r.status_code == 422 and "--out is set by the trigger itself" in r.json()["detail"]
    assert client.get("/v1/retrain", headers=h).json() == []  # nothing stored


def test_standalone_parsers_refuse_abbreviations_too() -> None:
    """Parsers outside the ``edgefleet`` command tree (module entry points, benchmarks) are built with
    ``allow_abbrev=False`` as well."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    offenders = []
    for folder in ("sdk", "compiler", "device_agent", "cloud_sync", "benchmarks"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text("utf-8")
            for m in re.finditer(r"ArgumentParser\(", text):
                call = text[m.end(): text.find("\n\n", m.end())]
                depth, end = 1, 0
                for i, ch in enumerate(call):  # the call's arguments, up to its closing parenthesis
                    depth += {"(": 1, ")": -1}.get(ch, 0)
                    if depth == 0:
                        end = i
                        break
                if "allow_abbrev" not in call[:end] and "class " not in text[max(0, m.start() - 200): m.start()]:
                    offenders.append(f"{path.relative_to(root)}:{text[:m.start()].count(chr(10)) + 1}")
    assert not offenders, offenders
