"""The web dashboard in a real headless Chromium (selenium, Debian's chromium and chromedriver), against a real
coordinator: a real Mosquitto on a free loopback port, real device agents, real SQLite, the API served by uvicorn
(issue 15). The operator signs in with a token, watches a staged rollout reach every device, pauses and resumes one,
and sees which device halted a rollout and why; every page is opened with data. Screenshots of the run go to
docs/screenshots/ (README.md shows them).

Skipped only when /usr/bin/chromium is missing (scripts/setup.sh installs it, and CI runs it)."""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from conftest import wait_for
from helpers import coordinator, device, serve_api

from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
TOKEN = "dashboard-admin-token"
WAIT = 30.0  # seconds an explicit wait may take at most (a rollout to real agents takes a few)

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (Debian package "
                                "chromium; scripts/setup.sh installs it with chromium-driver)")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the module."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    o = webdriver.ChromeOptions()
    o.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        o.add_argument(arg)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)
    d.set_window_size(1320, 900)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture()
def driver(chromium: Any) -> Any:
    """The module's Chromium on a blank page, its console log drained (the last test's page polled an API that has
    stopped since)."""
    chromium.get("about:blank")
    chromium.get_log("browser")
    return chromium


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[Callable[[Any], str]]:
    """Serve a coordinator's HTTP API (and so its dashboard) on a free loopback port; yields coord -> base URL."""
    with ExitStack() as stack:
        yield lambda coord: stack.enter_context(serve_api(coord, TOKEN))


def until(driver: Any, cond: Callable[[Any], Any], timeout: float = WAIT, what: str = "") -> Any:
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(cond, what)
    except TimeoutException:
        page = driver.execute_script("return document.body ? document.body.innerText : ''")
        raise AssertionError(f"not seen within {timeout:g}s: {what or cond}\nat {driver.current_url}\nbrowser "
                             f"console: {driver.get_log('browser')}\npage:\n{page[:3000]}") from None


def text(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def rows(driver: Any, table_id: str) -> dict[str, list[str]]:
    """A table's rows by their data-key: the cells' texts."""
    got = driver.execute_script(
        "return Array.from(document.querySelectorAll(`#${arguments[0]} tbody tr`))"
        ".map(tr => [tr.dataset.key, Array.from(tr.cells).map(td => td.innerText)])", table_id)
    return {k: cells for k, cells in got}


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def shot(driver: Any, name: str) -> None:
    """A screenshot of the whole page into docs/screenshots/NAME.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1320, max(700, min(int(height) + 20, 2600)))
    driver.save_screenshot(str(SHOTS / f"{name}.png"))
    driver.set_window_size(1320, 900)


def login(driver: Any, base: str, page: str = "/ui/", token: str = TOKEN) -> None:
    """Open ``page``; the dashboard sends the operator to its login page, where the token is given."""
    from selenium.webdriver.common.by import By

    driver.get(base + page)
    until(driver, lambda d: "/ui/login" in d.current_url, what="the login page")
    field = until(driver, lambda d: d.find_element(By.ID, "token"))
    field.clear()
    field.send_keys(token)
    driver.find_element(By.ID, "login-submit").click()


def click_action(driver: Any, action: str, confirm: bool = True) -> None:
    """Press a deployment action's button and answer its confirmation dialog."""
    from selenium.webdriver.common.by import By

    button = until(driver, lambda d: (b := d.find_element(By.CSS_SELECTOR, f'#actions [data-action="{action}"]'))
                   .is_enabled() and b, what=f"the {action} button enabled")
    button.click()
    until(driver, lambda d: d.execute_script("return document.getElementById('confirm').open"), what="the dialog")
    driver.find_element(By.ID, "confirm-yes" if confirm else "confirm-no").click()
    until(driver, lambda d: not d.execute_script("return document.getElementById('confirm').open"))


def state_on_page(driver: Any) -> str:
    return str(driver.execute_script("return document.body.dataset.state || ''"))


def test_login_with_a_token(driver: Any, broker: Any, tmp_path: Path, make_agent: Any, archives: dict[str, Path],
                            api: Any) -> None:
    """No token: the page sends the operator to sign in; a wrong token is refused there; the right one opens the
    fleet overview with the fleet's devices, and the token is kept in sessionStorage (not in a cookie)."""
    coord = coordinator(broker.url, tmp_path / "reg.db")
    syncs = [device(broker.url, make_agent(f"d{i}", install=archives["1"]), tmp_path) for i in range(3)]
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 3)
    base = api(coord)
    login(driver, base, token="not-the-token")
    until(driver, lambda d: "refused" in text(d, "#login-error"), what="the refusal")
    assert "/ui/login" in driver.current_url
    shot(driver, "login")
    login(driver, base)
    until(driver, lambda d: d.current_url.rstrip("/").endswith("/ui"), what="the fleet overview")
    until(driver, lambda d: set(rows(d, "device-table")) == {"d0", "d1", "d2"}, what="the devices listed")
    until(driver, lambda d: text(d, "#stat-online .value") == "3")
    assert driver.execute_script("return sessionStorage.getItem('edgefleet.token')") == TOKEN
    assert driver.get_cookies() == []
    assert rows(driver, "versions-table")["g"][1:] == ["3"]  # group g: 3 devices on version 1
    # signing out drops the token: the next page asks for it again
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "logout").click()
    until(driver, lambda d: "/ui/login" in d.current_url)
    assert driver.execute_script("return sessionStorage.getItem('edgefleet.token')") is None
    assert console_errors(driver) == [] or all("401" in e for e in console_errors(driver))
    for s in syncs:
        s.stop()
    coord.stop()


def test_staged_rollout_progresses_to_completion(driver: Any, broker: Any, tmp_path: Path, make_agent: Any,
                                                 archives: dict[str, Path], api: Any) -> None:
    """A canary-then-waves rollout to four real agents, watched on the deployment page without reloading it: the
    page shows it running part-way (the last device is offline, so its wave waits), then completed on all four
    once that device is back."""
    coord = coordinator(broker.url, tmp_path / "reg.db")
    agents = {f"d{i}": make_agent(f"d{i}", install=archives["1"]) for i in range(4)}
    syncs = {d: device(broker.url, a, tmp_path) for d, a in agents.items()}
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 4)
    syncs["d3"].stop()  # the last wave's device is away when the rollout starts
    wait_for(lambda: not coord.registry.device("f1", "d3").online)
    base = api(coord)
    login(driver, base)
    until(driver, lambda d: rows(d, "device-table"))
    r = httpx.post(f"{base}/v1/deployments", params={"group": "g", "canary": "25%", "waves": "50%,100%"},
                   content=archives["2"].read_bytes(), headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 201, r.text
    dep_id = r.json()["id"]
    driver.get(f"{base}/ui/deployments/{dep_id}")
    driver.execute_script("window.__sameDocument = true")  # gone if the page reloads
    seen: list[tuple[str, str]] = []

    def reached(state: str, done: str) -> Callable[[Any], bool]:
        def check(d: Any) -> bool:
            now = (state_on_page(d), text(d, "#dep-done"))
            if not seen or seen[-1] != now:
                seen.append(now)
            return now[0] == state and now[1].startswith(done)
        return check

    until(driver, reached("running", "3 of 4"), what="three devices done, the fourth waiting")
    until(driver, lambda d: text(d, '.stage[data-stage="2"]') and "current" in text(d, '.stage[data-stage="2"]'))
    assert rows(driver, "job-table")["d3:install"][3] == "QUEUED"
    shot(driver, "deployment-running")
    syncs["d3"] = device(broker.url, agents["d3"], tmp_path)  # back: the retained desired state reaches it
    until(driver, reached("completed", "4 of 4"), what="the rollout completed")
    until(driver, lambda d: {k: c[3] for k, c in rows(d, "job-table").items()} ==
          {f"d{i}:install": "SUCCEEDED" for i in range(4)}, what="every device SUCCEEDED")
    assert driver.execute_script("return window.__sameDocument === true")  # live updates, no reload
    assert ("running", "3 of 4 device(s) done") in seen and seen[-1][0] == "completed"
    labels = [text(driver, f'.stage[data-stage="{i}"]').split("\n")[0] for i in range(3)]
    assert [x.split()[0] for x in labels] == ["canary", "wave", "wave"]
    assert all("done" in text(driver, f'.stage[data-stage="{i}"]') for i in range(3))
    # the progress chart drew the succeeded count stepping up to 4 over time, with the stage events marked
    succeeded = driver.execute_script(
        "return document.querySelectorAll('#chart [data-series=\"succeeded\"] circle').length")
    assert succeeded >= 3
    assert driver.execute_script("return document.querySelectorAll('#chart line.marker').length") >= 3
    assert all(s.agent.active_version == "2" for s in syncs.values())
    shot(driver, "deployment-completed")
    # the fleet overview shows every device on version 2, and the deployments list shows it completed
    driver.get(f"{base}/ui/")
    until(driver, lambda d: rows(d, "versions-table").get("g", [])[1:] == ["4"], what="versions by group")
    shot(driver, "fleet")
    driver.get(f"{base}/ui/deployments")
    until(driver, lambda d: "completed" in text(d, "#deployments"))
    assert console_errors(driver) == []
    for s in syncs.values():
        s.stop()
    coord.stop()


def test_pause_and_resume_a_rollout(driver: Any, broker: Any, tmp_path: Path, make_agent: Any,
                                    archives: dict[str, Path], api: Any) -> None:
    """Pause on the deployment page (after confirming; dismissing the dialog does nothing): while paused, the
    canary's device comes back and finishes but no wave starts; resume, and the rollout completes."""
    coord = coordinator(broker.url, tmp_path / "reg.db")
    agents = {f"d{i}": make_agent(f"d{i}", install=archives["1"]) for i in range(3)}
    syncs = {d: device(broker.url, a, tmp_path) for d, a in agents.items()}
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 3)
    syncs["d0"].stop()  # the canary's device is away: the rollout waits at the canary
    wait_for(lambda: not coord.registry.device("f1", "d0").online)
    # a canary of one device (d0, the first target) then the rest; with d0 away no job ends, so no wave starts
    dep = coord.create_deployment(archives["2"].read_bytes(), "g", RolloutPlan(0.25, (1.0,), 0.0))
    base = api(coord)
    login(driver, base, f"/ui/deployments/{dep.id}")
    until(driver, lambda d: state_on_page(d) == "running" and "d0:install" in rows(d, "job-table"))
    click_action(driver, "pause", confirm=False)  # dismissed: nothing happens
    until(driver, lambda d: "not confirmed" in text(d, "#action-result"))
    assert coord.registry.deployment(dep.id).state == "running"
    click_action(driver, "pause")
    until(driver, lambda d: state_on_page(d) == "paused", what="the page showing it paused")
    assert coord.registry.deployment(dep.id).state == "paused"
    assert "now paused" in text(driver, "#action-result")
    syncs["d0"] = device(broker.url, agents["d0"], tmp_path)  # the canary ends while paused...
    until(driver, lambda d: rows(d, "job-table").get("d0:install", [""] * 4)[3] == "SUCCEEDED")
    time.sleep(1.0)  # ten coordinator ticks: a paused rollout must not start the wave
    assert {j.device_id for j in coord.registry.jobs(dep.id)} == {"d0"}
    assert state_on_page(driver) == "paused" and set(rows(driver, "job-table")) == {"d0:install"}
    shot(driver, "deployment-paused")
    click_action(driver, "resume")
    until(driver, lambda d: state_on_page(d) == "completed", what="the resumed rollout completed")
    assert {k: c[3] for k, c in rows(driver, "job-table").items()} == {f"d{i}:install": "SUCCEEDED" for i in range(3)}
    kinds = [e.kind for e in coord.registry.events(dep.id)]
    assert kinds.index("paused") < kinds.index("running") < kinds.index("completed")
    assert console_errors(driver) == []
    for s in syncs.values():
        s.stop()
    coord.stop()


def test_halted_rollout_shows_the_failing_device_and_reason(driver: Any, broker: Any, tmp_path: Path,
                                                            make_agent: Any, archives: dict[str, Path],
                                                            api: Any) -> None:
    """A version whose smoke test fails halts at the canary: the deployment page names the canary's device, its
    REJECTED job and the agent's reason, with the halt reason; pause and resume are not offered."""
    coord = coordinator(broker.url, tmp_path / "reg.db")
    syncs = [device(broker.url, make_agent(f"d{i}", install=archives["1"]), tmp_path) for i in range(3)]
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 3)
    dep = coord.create_deployment(archives["3bad"].read_bytes(), "g", RolloutPlan(0.25, (0.5, 1.0), 0.0))
    wait_for(lambda: coord.registry.deployment(dep.id).state == "halted", WAIT)
    (job,) = coord.registry.jobs(dep.id)
    assert job.status == "REJECTED" and job.reason
    base = api(coord)
    login(driver, base, f"/ui/deployments/{dep.id}")
    until(driver, lambda d: state_on_page(d) == "halted", what="the halted state")
    failing = until(driver, lambda d: rows(d, "failing-table"), what="the failing devices")
    assert list(failing) == [job.device_id]
    cells = failing[job.device_id]
    assert cells[0] == job.device_id and cells[2] == "REJECTED" and cells[4].split("\n")[0] == job.reason
    assert job.message in cells[4]  # what the agent said, under its reason
    assert "1 of 1 dispatched jobs failed" in text(driver, "#dep-reason")
    assert not driver.find_element("css selector", '#actions [data-action="pause"]').is_enabled()
    assert not driver.find_element("css selector", '#actions [data-action="resume"]').is_enabled()
    shot(driver, "deployment-halted")
    # the fleet overview lists it among the rollouts to look at
    driver.get(f"{base}/ui/")
    until(driver, lambda d: dep.id in text(d, "#rollouts"), what="the halted rollout listed")
    assert "halted" in text(driver, "#rollouts") and text(driver, "#stat-halted .value") == "1"
    # the device page shows the job in its history, with the reason
    driver.get(f"{base}/ui/devices/{job.device_id}")
    until(driver, lambda d: job.job_id in rows(d, "job-table"), what="the device's job history")
    assert job.reason in rows(driver, "job-table")[job.job_id][6]
    assert console_errors(driver) == []
    for s in syncs:
        s.stop()
    coord.stop()


def test_device_federated_and_model_pages(driver: Any, broker: Any, tmp_path: Path, make_agent: Any,
                                          archives: dict[str, Path], api: Any) -> None:
    """The device page (a real drift alert from the agent, its job history), a federated run's page (its rounds'
    losses and accuracy as SVG charts, gate and lineage, as written through the API by a run) and the models page."""
    coord = coordinator(broker.url, tmp_path / "reg.db")
    syncs = [device(broker.url, make_agent(f"d{i}", install=archives["1"]), tmp_path) for i in range(2)]
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 2)
    dep = coord.create_deployment(archives["2"].read_bytes(), "g", RolloutPlan(0.5, (1.0,), 0.0))
    wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", WAIT)
    import numpy as np

    shifted = (np.random.default_rng(0).normal(size=(600, 4)) + 3.0).astype(np.float32)  # far from the reference
    syncs[0].agent.predict(shifted)
    syncs[0].agent.flush_telemetry()
    wait_for(lambda: coord.registry.alerts("f1"), WAIT)
    base = api(coord)
    h = {"Authorization": f"Bearer {TOKEN}"}
    run = httpx.post(f"{base}/v1/federated/runs", headers=h,
                     json={"group": "g", "strategy": "fedavg", "rounds": 3, "trigger": "drift",
                           "reason": "drift alert from d0"}).json()
    for n, (loss, acc) in enumerate([(1.1, 0.52), (0.74, 0.71), (0.52, 0.83)], 1):
        assert httpx.put(f"{base}/v1/federated/runs/{run['id']}/rounds/{n}", headers=h,
                         json={"participants": 2, "examples": 400, "train_loss": loss + 0.05, "eval_loss": loss,
                               "eval_accuracy": acc, "seconds": 1.5, "strategy": "fedavg"}).status_code == 200
    gate = {"promoted": True, "reason": "candidate beats deployed by more than the margin", "candidate_accuracy": 0.83,
            "deployed_accuracy": 0.78, "margin": 0.01, "version": "2", "bundle": None}
    assert httpx.patch(f"{base}/v1/federated/runs/{run['id']}", headers=h, json={
        "status": "deployed", "result": {"gate": gate, "deployment": {"id": dep.id, "version": "2", "group": "g"}}
    }).status_code == 200
    login(driver, base, "/ui/devices/d0")
    until(driver, lambda d: rows(d, "job-table"), what="the device's jobs")
    until(driver, lambda d: d.execute_script("return document.querySelectorAll('#drift svg circle').length") > 0,
          what="the drift chart")
    assert text(driver, "#device-version") == "2"
    shot(driver, "device")
    driver.get(f"{base}/ui/federated/{run['id']}")
    until(driver, lambda d: len(rows(d, "round-table")) == 3, what="the rounds")
    series = driver.execute_script("return Array.from(document.querySelectorAll('#loss [data-series], "
                                   "#accuracy [data-series]')).map(g => [g.dataset.series, "
                                   "g.querySelectorAll('circle').length])")
    assert dict(series) == {"train loss": 3, "evaluation loss": 3, "evaluation accuracy": 3}
    assert "promoted" in text(driver, "#gate-verdict") and dep.id in text(driver, "#lineage")
    shot(driver, "federated-run")
    driver.get(f"{base}/ui/federated")
    until(driver, lambda d: run["id"] in text(d, "#runs"))
    driver.get(f"{base}/ui/models")
    until(driver, lambda d: len(rows(d, "model-table")) == 1, what="the model versions")
    (cells,) = rows(driver, "model-table").values()
    assert cells[:2] == ["dense", "2"] and run["id"] in cells[6]
    driver.find_element("css selector", "#model-table button").click()
    until(driver, lambda d: d.find_element("id", "detail-card").is_displayed(), what="the version's details")
    assert run["id"] in text(driver, "#detail") and dep.id in text(driver, "#detail")  # lineage, deployments
    assert console_errors(driver) == []
    shot(driver, "models")
    # the pure logic of the pages, run in the browser
    got = driver.execute_script("""
        const v = EF.logic.versionsByGroup([{group: 'a', active_version: '1'}, {group: 'a', active_version: '2'},
                                            {group: 'b', active_version: '2'}, {group: 'a', active_version: '2'}]);
        return [v.groups, v.versions, v.count('a', '2'), v.count('b', '1'),
                EF.logic.allowed('halted', true), EF.safeNext('//evil.example/'), EF.safeNext('/ui/models'),
                Charts.ticks(0, 1, 4)];""")
    assert got == [["a", "b"], ["1", "2"], 2, 0, {"pause": False, "resume": False, "cancel": False, "rollback": True},
                   "/ui/", "/ui/models", [0, 0.25, 0.5, 0.75, 1]]
    assert json.dumps(got)  # plain JSON from the page
    for s in syncs:
        s.stop()
    coord.stop()
