"""The web dashboard over HTTP (FastAPI's TestClient on the coordinator's app, a real Mosquitto, real SQLite;
issue 15): every page renders, the pages carry no data (with or without a token), the API's guard still protects
every /v1 route, the static files are the project's own (no third-party code, nothing fetched from elsewhere, no
Node build), and the deployment progress route answers what the deployment page draws."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from helpers import coordinator

from edgefleet.cloud_sync.coordinator.api import create_app
from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan
from edgefleet.cloud_sync.dashboard.pages import PAGES, is_public

TOKEN = "http-dashboard-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "cloud_sync" / "dashboard"
DEVICE, GROUP = "dev-zq81", "grp-kx4"  # names that appear nowhere in the dashboard's own files


@pytest.fixture()
def fleet(broker: Any, tmp_path: Path, archives: dict[str, Path]) -> Iterator[dict[str, Any]]:
    """A coordinator (real broker, SQLite) with a provisioned device, a deployment to it and a federated run."""
    coord = coordinator(broker.url, tmp_path / "reg.db")
    coord.provision({DEVICE: GROUP})
    dep = coord.create_deployment(archives["1"].read_bytes(), GROUP, RolloutPlan(0.5, (1.0,), 0.0))
    run_id = coord.registry.create_fed_run("f1", GROUP, "fedavg", 3, reason="drift on dev-zq81")
    client = TestClient(create_app(coord, TOKEN, max_failures=10_000), raise_server_exceptions=False)  # 401s galore
    yield {"coord": coord, "client": client, "dep": dep.id, "run": run_id,
           "ids": {"device_id": DEVICE, "dep_id": dep.id, "run_id": run_id}}
    coord.stop()


def _secrets(fleet: dict[str, Any]) -> list[str]:
    return [DEVICE, GROUP, fleet["dep"], fleet["run"], TOKEN, "dense"]


def test_every_page_renders(fleet: dict[str, Any]) -> None:
    """Each page is an HTML shell with its renderer named, sent with a strict Content-Security-Policy; /ui sends the
    operator to /ui/. (Before the dashboard, /ui/ was a 401 like any unknown path.)"""
    client = fleet["client"]
    assert {p.name for p in PAGES} == {"login", "fleet", "device", "deployments", "deployment", "runs", "run", "models"}
    for page in PAGES:
        r = client.get(page.path.format(**fleet["ids"]))
        assert r.status_code == 200, (page.path, r.status_code, r.text[:200])
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert f'<body data-page="{page.name}">' in r.text and f"<title>{page.title} · edgefleet</title>" in r.text
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in r.text and " style=" not in r.text  # nothing inline: the CSP allows none
    r = client.get("/ui", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    assert client.get("/ui/no-such-page").status_code == 404
    assert client.get("/ui/static/no-such-file.js").status_code == 404


def test_pages_carry_no_data(fleet: dict[str, Any]) -> None:
    """A shell is the same bytes whoever asks, with or without a token, whatever id its path names: no device,
    group, deployment, run or token is in it. The data is there, behind the token (the API answers it)."""
    client = fleet["client"]
    other = {"device_id": "other-device", "dep_id": "000000000000", "run_id": "000000000000"}
    for page in PAGES:
        bare = client.get(page.path.format(**fleet["ids"]))
        assert bare.status_code == 200
        assert client.get(page.path.format(**fleet["ids"]), headers=AUTH).content == bare.content
        assert client.get(page.path.format(**other)).content == bare.content
        for secret in _secrets(fleet):
            assert secret not in bare.text, (page.path, secret)
    for name in sorted(p.name for p in (DASHBOARD / "static").iterdir()):
        body = client.get(f"/ui/static/{name}").text
        assert not [s for s in _secrets(fleet) if s in body], name
    # the data the pages show exists and is answered to the token only
    assert DEVICE in client.get("/v1/devices", headers=AUTH).text
    assert client.get("/v1/devices").status_code == 401
    assert fleet["dep"] in client.get("/v1/deployments", headers=AUTH).text


def test_every_v1_route_stays_behind_the_guard(fleet: dict[str, Any]) -> None:
    """The dashboard's pages are public; no /v1 route is: without a token every one is a 401 (the ASGI guard, before
    any route runs), also when the path is dressed up as a dashboard path."""
    client, app = fleet["client"], fleet["client"].app
    checked = 0
    for route in app.routes:
        if not isinstance(route, APIRoute) or not route.path.startswith("/v1"):
            continue
        path = re.sub(r"\{[^}]+\}", "x1", route.path)
        for method in sorted(route.methods or ()):
            r = client.request(method, path)
            assert r.status_code == 401, (method, route.path, r.status_code)
            checked += 1
    assert checked >= 20 and any(r.path == "/v1/deployments/{dep_id}/progress" for r in app.routes
                                 if isinstance(r, APIRoute))
    for path in ("/ui/../v1/devices", "/ui/%2e%2e/v1/devices", "/ui/./../v1/deployments", "/uiv1/devices"):
        r = client.get(path)
        assert r.status_code in (401, 404) and DEVICE not in r.text, path
    assert client.get("/metrics-not-a-page").status_code == 401  # paths outside /ui are not public either
    assert is_public("/ui/") and is_public("/ui") and is_public("/ui/static/core.js")
    assert not is_public("/uix") and not is_public("/v1/ui/") and not is_public("/ui/../v1/devices")


def test_static_files_are_the_projects_own(fleet: dict[str, Any]) -> None:
    """No third-party code: the static files are the few the project wrote (each says so), not minified, with no
    licence banner of a bundled library, no source map, no module loading and no address outside the coordinator;
    every asset a page references is one of them, served from /ui/static with its type. No Node build: no
    package.json or node_modules anywhere in the repository's dashboard."""
    client = fleet["client"]
    static = DASHBOARD / "static"
    names = sorted(p.name for p in static.iterdir())
    assert names == ["charts.js", "core.js", "icon.svg", "pages.js", "style.css"]
    foreign = re.compile(r"@license|copyright|\(c\) 20|jquery|d3\.v|chart\.js|react|vue\.js|lodash|bootstrap|"
                         r"sourceMappingURL|require\(|\bimport\s|@import|cdn\.|unpkg|jsdelivr|googleapis", re.I)
    total = 0
    for name in names:
        text = (static / name).read_text("utf-8")
        total += len(text)
        assert not foreign.findall(text), (name, foreign.findall(text))
        urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}[^\s\"'`)]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)
        assert max(len(line) for line in text.splitlines()) <= 200, f"{name} has a minified-looking line"
        if name.endswith((".js", ".css")):
            assert "Written for this project; no third-party code." in text.split("\n", 3)[0] + text.split("\n", 3)[1]
        r = client.get(f"/ui/static/{name}")
        assert r.status_code == 200 and r.content == (static / name).read_bytes()
        assert r.headers["x-content-type-options"] == "nosniff"
    assert total < 120_000
    for page in PAGES:
        html = client.get(page.path.format(**fleet["ids"])).text
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert refs and all(ref.startswith("/ui/") for ref in refs), (page.path, refs)
        for ref in refs:
            if ref.startswith("/ui/static/"):
                r = client.get(ref)
                kind = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}[ref.split("?")[0].rsplit(".", 1)[1]]
                assert r.status_code == 200 and r.headers["content-type"].startswith(kind), ref
    assert not list(DASHBOARD.rglob("package*.json")) and not list(DASHBOARD.rglob("node_modules"))
    assert not (ROOT / "package.json").exists()


def test_progress_route(fleet: dict[str, Any]) -> None:
    """GET /v1/deployments/{id}/progress: the plan's stages over the planned targets and the jobs over time, for a
    read token; 404 for an unknown deployment, 401 without a token."""
    client = fleet["client"]
    r = client.get(f"/v1/deployments/{fleet['dep']}/progress", headers=AUTH)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["deployment_id"] == fleet["dep"] and doc["planned"] == doc["targets"] == 1
    assert [(s["label"], s["size"], s["end"]) for s in doc["stages"]] == [("canary", 1, 1)]
    assert doc["timeline"][0] == {"ts": doc["created"], "dispatched": 0, "succeeded": 0, "failed": 0}
    assert client.get("/v1/deployments/000000000000/progress", headers=AUTH).status_code == 404
    assert client.get(f"/v1/deployments/{fleet['dep']}/progress").status_code == 401
    schema = client.get("/openapi.json").json()["paths"]["/v1/deployments/{dep_id}/progress"]["get"]
    assert {"200", "401", "403", "404", "422", "429"} <= set(schema["responses"])
