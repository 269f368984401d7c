"""Quality probation across the fleet, through a real mosquitto with real agents and a SQLite registry: the
deployment's quality policy reaches the devices with their install jobs; a broken candidate (its classes permuted:
it runs, passes its smoke tests, predicts the wrong class) is rolled back by the canary on live inputs without
labels, which halts the rollout there; a fine-tuned candidate rolls out; each device's quality per version reaches
the registry and the API (GET /v1/telemetry, the device, the deployment) and ``fleet status``."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import build_variant
from conftest import wait_for
from helpers import coordinator, device, serve_api

from edgefleet.cli import main as cli_main
from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan, parse_quality
from edgefleet.cloud_sync.wire import protocol as P

POLICY = "mode=enforce,min_samples=30,wait_seconds=60"


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Any]) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("quality")
    return {
        "v1": build_variant(d, "1", keys["priv"], seed=11, archive=True),
        "good": build_variant(d, "2", keys["priv"], seed=11, noise=0.05, noise_seed=1, archive=True),
        "bad": build_variant(d, "2", keys["priv"], seed=11, permutation=(1, 2, 0), archive=True),
    }


def test_bad_candidate_halts_the_rollout_at_the_canary_on_quality(broker: Any, tmp_path: Path, make_agent: Any,
                                                                 variants: dict[str, Path], live_inputs: Any,
                                                                 capsys: Any, monkeypatch: Any) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db")
    agents = [make_agent(f"d{i}", install=variants["v1"]) for i in range(4)]
    syncs = [device(broker.url, a, tmp_path) for a in agents]
    for i, a in enumerate(agents):
        live_inputs(a, i)
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 4)
    with ExitStack() as stack:
        base = stack.enter_context(serve_api(coord, "s3cret"))
        monkeypatch.setenv("EDGEFLEET_TOKEN", "s3cret")
        dep = coord.create_deployment(variants["bad"].read_bytes(), "g", RolloutPlan(0.25, (0.5, 1.0), 0.0),
                                      quality=parse_quality(POLICY))
        assert dep.quality == {"mode": "enforce", "min_samples": 30, "wait_seconds": 60.0}
        wait_for(lambda: coord.registry.deployment(dep.id).state == "halted", 60)
        time.sleep(1.0)  # a wrong dispatch would show now
        jobs = coord.registry.jobs(dep.id)
        assert len(jobs) == 1, jobs  # only the canary ever got the job
        canary = jobs[0]
        assert canary.status == "ROLLED_BACK" and canary.reason == "quality", canary
        assert canary.message.startswith("agreement: agreement 0.0%"), canary.message
        reason = coord.registry.deployment(dep.id).reason
        assert f"{canary.device_id} (quality)" in reason, reason
        # the job the canary ran carried the policy; every device still serves v1
        desired = P.Desired.parse(canary.desired.encode())
        assert desired.quality is not None and desired.quality.options() == dep.quality
        assert all(a.active_version == "1" for a in agents)
        # the canary's quality of v2 reaches the registry and the API
        by_id = {a.config.device_id: a for a in agents}
        by_id[canary.device_id].flush_telemetry()
        wait_for(lambda: coord.registry.quality("f1", device_id=canary.device_id, version="2"), 20)
        q = coord.registry.quality("f1", device_id=canary.device_id, version="2")[0]
        assert (q.verdict, q.signal, q.reference, q.agreement) == ("fail", "agreement", "1", 0.0)
        assert q.compared >= 30 and q.group == "g"

        def cli(*argv: str) -> Any:
            capsys.readouterr()
            assert cli_main([*argv, "--api", base]) == 0
            return capsys.readouterr().out

        st = json.loads(cli("fleet", "status", dep.id, "--json"))
        assert st["quality"] == dep.quality
        assert [(r["device_id"], r["verdict"]) for r in st["device_quality"]] == [(canary.device_id, "fail")]
        monkeypatch.setenv("COLUMNS", "200")  # (rich wraps at the terminal's width)
        text = cli("fleet", "status", dep.id)
        assert "quality of 2 per device" in text and "fail (agreement)" in text and "0.0%" in text, text
        dev = json.loads(cli("fleet", "device", canary.device_id, "--json"))
        assert any(r["version"] == "2" and r["verdict"] == "fail" for r in dev["quality"])
        assert "quality per version" in cli("fleet", "device", canary.device_id)
    for s in syncs:
        s.stop()
    coord.stop()


def test_good_candidate_rolls_out_and_every_device_reports_its_quality(broker: Any, tmp_path: Path, make_agent: Any,
                                                                      variants: dict[str, Path], live_inputs: Any,
                                                                      capsys: Any, monkeypatch: Any) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db")
    agents = [make_agent(f"d{i}", install=variants["v1"]) for i in range(3)]
    syncs = [device(broker.url, a, tmp_path) for a in agents]
    for i, a in enumerate(agents):
        live_inputs(a, 10 + i)
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 3)
    with ExitStack() as stack:
        base = stack.enter_context(serve_api(coord, "s3cret"))
        monkeypatch.setenv("EDGEFLEET_TOKEN", "s3cret")
        capsys.readouterr()
        assert cli_main(["fleet", "deploy", str(variants["good"]), "--group", "g", "--canary", "34%", "--waves",
                         "100%", "--max-failure", "0%", "--quality", POLICY, "--api", base, "--json"]) == 0
        dep = json.loads(capsys.readouterr().out)
        assert dep["quality"]["mode"] == "enforce"
        wait_for(lambda: coord.registry.deployment(dep["id"]).state == "completed", 90)
        assert all(a.active_version == "2" for a in agents)
        for a in agents:
            a.flush_telemetry()
        wait_for(lambda: len(coord.registry.quality("f1", version="2")) == 3, 20)
        import httpx

        tel = httpx.get(base + "/v1/telemetry", params={"version": "2"},
                        headers={"Authorization": "Bearer s3cret"}).json()
        rows = {r["device_id"]: r for r in tel["quality"]}
        assert set(rows) == {"d0", "d1", "d2"}
        for r in rows.values():
            assert r["verdict"] == "pass" and r["reference"] == "1" and r["agreement"] > 0.8, r
            assert r["compared"] >= 30 and 0.0 < r["confidence"] <= 1.0
        one = httpx.get(base + "/v1/devices/d1", headers={"Authorization": "Bearer s3cret"}).json()
        assert [r["version"] for r in one["quality"]] == ["1", "2"] or [r["version"] for r in one["quality"]] == ["2"]
    for s in syncs:
        s.stop()
    coord.stop()


def test_a_policy_out_of_bounds_is_refused_before_anything_is_deployed(broker: Any, tmp_path: Path,
                                                                      variants: dict[str, Path], capsys: Any,
                                                                      monkeypatch: Any) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db")
    with ExitStack() as stack:
        base = stack.enter_context(serve_api(coord, "s3cret"))
        monkeypatch.setenv("EDGEFLEET_TOKEN", "s3cret")
        for bad in ("mode=always", "agreement_bad=0.9,agreement_good=0.5", "alpha=0", "min_samples=x", "colour=1"):
            capsys.readouterr()
            assert cli_main(["fleet", "deploy", str(variants["bad"]), "--group", "g", "--quality", bad,
                             "--api", base]) == 2, bad
            err = capsys.readouterr().err
            assert "quality" in err and "Traceback" not in err, err
        import httpx

        r = httpx.post(base + "/v1/deployments", params={"group": "g", "quality": "mode=always"},
                       content=variants["bad"].read_bytes(), headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 400 and "quality" in r.json()["detail"]
        assert coord.registry.deployments("f1") == []
    coord.stop()
