"""The dashboard shows quality per device, in a real headless Chromium against a real coordinator, Mosquitto, agents
and SQLite: a class-permuted candidate, deployed with an enforcing quality policy, is rolled back by the canary on
live inputs without labels; the deployment page shows the policy and the canary's failed verdict with its agreement,
the device page its quality per version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agent_helpers import build_variant
from conftest import wait_for
from helpers import coordinator, device
from test_dashboard_browser import WAIT, api, chromium, console_errors, driver, login, rows, shot, text, until  # noqa: F401

from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan, parse_quality


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Any]) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("quality-ui")
    return {"v1": build_variant(d, "1", keys["priv"], seed=11, archive=True),
            "bad": build_variant(d, "2", keys["priv"], seed=11, permutation=(1, 2, 0), archive=True)}


def test_pages_show_the_quality_of_a_version_per_device(driver: Any, broker: Any, tmp_path: Path,  # noqa: F811
                                                        make_agent: Any, variants: dict[str, Path], api: Any,  # noqa: F811
                                                        live_inputs: Any) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db")
    agents = {f"d{i}": make_agent(f"d{i}", install=variants["v1"]) for i in range(3)}
    syncs = [device(broker.url, a, tmp_path) for a in agents.values()]
    for i, a in enumerate(agents.values()):
        live_inputs(a, i)
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 3)
    dep = coord.create_deployment(variants["bad"].read_bytes(), "g", RolloutPlan(0.25, (1.0,), 0.0),
                                  quality=parse_quality("enforce,min_samples=30,wait_seconds=60"))
    wait_for(lambda: coord.registry.deployment(dep.id).state == "halted", WAIT * 2)
    (job,) = coord.registry.jobs(dep.id)
    assert (job.status, job.reason) == ("ROLLED_BACK", "quality")
    agents[job.device_id].flush_telemetry()
    wait_for(lambda: coord.registry.quality("f1", device_id=job.device_id, version="2"), WAIT)
    base = api(coord)
    login(driver, base, f"/ui/deployments/{dep.id}")
    table = until(driver, lambda d: rows(d, "quality-table"), what="the quality of the version per device")
    assert list(table) == [f"{job.device_id}:2"]
    cells = table[f"{job.device_id}:2"]  # device, compared with, inputs, agreement, confidence, shift, PSI, ...
    assert cells[0] == job.device_id and cells[1] == "1" and int(cells[2]) >= 30 and cells[3] == "0%"
    assert "fail" in cells[-1]
    assert "agreement" in cells[-1]
    assert "mode=enforce" in text(driver, "#dep-quality") and "(quality)" in text(driver, "#dep-reason")
    shot(driver, "deployment-quality")
    driver.get(f"{base}/ui/devices/{job.device_id}")
    per_version = until(driver, lambda d: rows(d, "quality-table"), what="the device's quality per version")
    assert "fail" in per_version[f"{job.device_id}:2"][-1]
    assert console_errors(driver) == []
    for s in syncs:
        s.stop()
    coord.stop()
