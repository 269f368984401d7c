"""Real ``flower-superlink`` + supervised ``flower-supernode`` processes on loopback, non-IID digits.

Each device holds mostly two classes. Runs are submitted with ``flwr run``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.cloud_sync.federated.aggregate import fedavg  # noqa: F401  (import check)
from edgefleet.cloud_sync.federated.config import FederatedConfig
from edgefleet.cloud_sync.federated.partition import non_iid_partitions
from edgefleet.cloud_sync.federated.runner import read_rounds, run_federated
from edgefleet.cloud_sync.federated.trainer import MLPSpec, TrainConfig, evaluate, split_holdout, train

from .conftest import CloudFleet, Digits, Fleet

pytestmark = pytest.mark.slow

TRAINING = dict(layers="64,32,10", local_epochs=10, learning_rate=0.2, batch_size=32, min_samples=20)


def _config(d: Digits, tmp: Path, **kw: Any) -> FederatedConfig:
    np.savez(tmp / "holdout.npz", x=d.x_test * 16.0, y=d.y_test)  # raw, like device samples
    return FederatedConfig(preprocessing=d.preprocessing, holdout=str(tmp / "holdout.npz"), out_dir=str(tmp / "out"),
                           **{**TRAINING, **kw})


def _accuracy(doc: dict[str, Any], d: Digits) -> float:
    with np.load(doc["aggregate"]) as z:
        w = [z[f"arr_{i}"] for i in range(len(z.files))]
    return evaluate(w, d.x_test, d.y_test)[1]


def _agent(root: Path, pub: Path, key_file: Path | None = None, superlink: str = "") -> Any:
    """An agent capturing samples; with ``superlink`` it is enrolled and runs its own SuperNode."""
    from edgefleet.device_agent import Agent
    from edgefleet.device_agent.config import AgentConfig, FederatedNodeConfig, SamplesConfig, UpdateConfig

    from .conftest import free_port

    cfg = AgentConfig(state_dir=str(root), device_id=root.name, trusted_keys=(str(pub),),
                      update=UpdateConfig(probation_seconds=0.0),
                      samples=SamplesConfig(enabled=True, key_file=str(key_file) if key_file else None),
                      federated=FederatedNodeConfig(enabled=bool(superlink), superlink=superlink, insecure=True,
                                                    port=free_port()))
    return Agent(cfg, tick_seconds=0.05)


def test_federated_loop_end_to_end_deploys_the_next_version_through_a_staged_rollout(
        fleet: Fleet, cloud_fleet: CloudFleet, digits: Digits, tmp_path: Path, keypair: tuple[Path, Path],
        capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest) -> None:
    from edgefleet.cli import main as cli_main
    from edgefleet.cloud_sync.federated import cli
    from edgefleet.cloud_sync.federated.loop import save_keras
    from edgefleet.compiler import CompileConfig, compile_model
    from edgefleet.device_agent.samples import generate_device_key

    # Arrange: v1 (device 0's local-only model) compiled, signed and installed on 3 agents connected to the
    # coordinator through a real broker; each runs its own SuperNode ([federated] config) and captures its
    # non-IID samples through agent.feedback (device 1 encrypts them); plus a device with 5 samples
    priv, pub = keypair
    spec = MLPSpec.parse(TRAINING["layers"])
    parts = non_iid_partitions(digits.y_train, 3, seed=0)
    local = []
    for p in parts:
        xt, yt, _, _ = split_holdout(digits.x_train[p] / 16.0, digits.y_train[p], 0.2, seed=0)
        local.append(train(spec.init(0), xt, yt, TrainConfig(epochs=100, learning_rate=0.2)))
    local_acc = [evaluate(r.weights, digits.x_test, digits.y_test)[1] for r in local]
    src = save_keras(local[0].weights, spec, tmp_path / "v1.keras")
    recipe = CompileConfig.from_dict({"preprocessing": json.loads(digits.preprocessing),
                                      "output": {"version": "1", "key": str(priv), "name": "digits", "report": False}})
    v1 = compile_model(src, tmp_path / "v1", recipe).bundle_path
    holdout = tmp_path / "holdout.npz"
    np.savez(holdout, x=digits.x_test * 16.0, y=digits.y_test)
    device_key = generate_device_key(tmp_path / "dev1.key")
    agents: list[Any] = []
    request.addfinalizer(lambda: [a.close() for a in agents])  # stops their SuperNodes whatever happens
    for i, p in enumerate(parts):
        key = device_key if i == 1 else None
        agent = _agent(tmp_path / f"agent{i}", pub, key, superlink=fleet.link.address)
        agents.append(agent)
        agent.install(v1)
        for xi, yi in zip(digits.x_train[p], digits.y_train[p]):
            agent.feedback(xi, int(yi))
        cloud_fleet.connect(agent, tmp_path)
    fleet.add_node("tiny", digits.x_train[:5], digits.y_train[:5])
    reg = cloud_fleet.coord.registry
    cloud_fleet.wait_for(lambda: sum(d.online for d in reg.devices("f1")) == 3)
    base = ["--superlink", fleet.link.address, "--rounds", "3", "--min-nodes", "4",
            "--local-epochs", "10", "--learning-rate", "0.2", "--round-timeout", "90", "--timeout", "300",
            "--model", str(src), "--holdout", str(holdout), "--key", str(priv), "--margin", "0.05",
            "--group", "g", "--api", cloud_fleet.api, "--token", cloud_fleet.TOKEN]
    args = cli.parse_run_args([*base, "--deployed", str(v1), "--out", str(tmp_path / "run"), "--deploy",
                               "--canary", "34%", "--waves", "100%", "--max-failure", "0%"])

    # Act
    code = cli.cmd_run(args)
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    dep_id = summary["deployment"]["id"]
    cloud_fleet.wait_for(lambda: reg.deployment(dep_id).state == "completed", 60)

    # Assert: the aggregate beats every device's local-only model; the tiny device declined each round
    assert code == 0
    run = summary["run"]
    rounds = [r for r in run["rounds"] if r["round"] > 0]
    with np.load(run["aggregate"]) as z:
        federated = evaluate([z[f"arr_{i}"] for i in range(len(z.files))], digits.x_test, digits.y_test)[1]
    assert run["status"] == "finished" and len(rounds) == 3
    assert federated > max(local_acc) + 0.05, (federated, local_acc)
    assert abs(rounds[-1]["central"]["accuracy"] - federated) < 1e-6
    assert all(r["train_replies"] == 3 and r["declined"] == 1 for r in rounds)
    assert all("eval-accuracy" in r["evaluate"] for r in rounds)
    # the gate signed v2 with its lineage; a staged rollout (canary, then a wave) took it to every agent
    gate = summary["gate"]
    assert gate["promoted"] and gate["version"] == "2" and gate["candidate_accuracy"] > gate["deployed_accuracy"] + 0.05
    assert f"deployment {dep_id}: digits 2 to 3 device(s) of group g" in printed
    from edgefleet.bundle import open_bundle

    lineage = open_bundle(Path(gate["bundle"]))[0].manifest.lineage
    assert lineage["parent_version"] == "1"
    assert lineage["federated"]["run_id"] == summary["record_id"]
    assert lineage["federated"]["rounds"] == 3 and lineage["federated"]["strategy"] == "fedavg"
    assert lineage["federated"]["flower_run_id"] == run["run_id"] and lineage["recipe"]["output"]["key"] is None
    jobs = reg.jobs(dep_id)
    stages = sorted(j.stage for j in jobs)
    assert len(jobs) == 3 and stages[0] == 0 and stages[-1] == 1 and {j.status for j in jobs} == {"SUCCEEDED"}
    for agent in agents:
        assert agent.active_version == "2"
        probs = np.asarray(agent.predict(digits.x_test[:100] * 16.0))
        assert float(np.mean(probs.argmax(1) == digits.y_test[:100])) > max(local_acc)
    # the per-round metrics are in the registry, served by the API and shown by fleet status
    rec = reg.fed_run(summary["record_id"])
    assert rec.status == "deployed" and rec.group == "g" and rec.result["deployment"]["id"] == dep_id
    assert [r.round for r in rec.round_metrics] == [1, 2, 3]
    assert all(r.participants == 3 and r.declined == 1 and r.strategy == "fedavg"
               for r in rec.round_metrics)
    last = rec.round_metrics[-1]
    assert last.central_accuracy == pytest.approx(federated) and last.eval_accuracy is not None
    assert last.train_loss is not None and last.seconds > 0 and last.dp_epsilon is None
    assert cli_main(["fleet", "status", "--api", cloud_fleet.api, "--token", cloud_fleet.TOKEN, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["federated_runs"][0]["id"] == rec.id and len(status["federated_runs"][0]["round_metrics"]) == 3
    assert cli_main(["fleet", "status", "--api", cloud_fleet.api, "--token", cloud_fleet.TOKEN]) == 0
    table = capsys.readouterr().out
    assert f"federated run {rec.id} (group g, fedavg, trigger manual): deployed, 3/3 round(s); gate: promoted v2; " \
           f"deployment {dep_id}" in table, table
    assert f"{last.central_accuracy:.3f}" in table, table

    # Act/Assert: gated against v2 itself, the same aggregate is not promoted: no deployment, a clear message
    args = cli.parse_run_args([*base, "--deployed", gate["bundle"], "--out", str(tmp_path / "run2"), "--deploy"])
    result = cli._close(args, FederatedConfig(layers=TRAINING["layers"], rounds=3), run, digits.preprocessing,
                        tmp_path / "run2", None, cloud_fleet.api)
    assert not result["gate"]["promoted"] and result["deployment"] is None
    assert "deploy: nothing to roll out - the aggregate was not promoted" in capsys.readouterr().out
    assert len(reg.deployments("f1")) == 1


def test_federated_fedprox_round_survives_a_supernode_killed_mid_run(fleet: Fleet, digits: Digits, tmp_path: Path) -> None:
    # Arrange
    parts = non_iid_partitions(digits.y_train, 3, seed=1)
    nodes = [fleet.add_node(f"k{i}", digits.x_train[p], digits.y_train[p]) for i, p in enumerate(parts)]
    cfg = _config(digits, tmp_path, rounds=3, min_nodes=2, fraction_evaluate=0.0, round_timeout=25, strategy="fedprox",
                  proximal_mu=0.01)
    result: dict[str, Any] = {}

    def go() -> None:
        try:
            result["doc"] = run_federated(cfg, fleet.link.address, work_dir=tmp_path / "run", timeout=200)
        except Exception as exc:  # pragma: no cover - reported below
            result["error"] = exc

    worker = threading.Thread(target=go)
    worker.start()

    # Act: when round 1 is done (round 2 starting), kill one device's SuperNode group (SIGKILL)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        doc = read_rounds(tmp_path / "out")
        if doc and any(r.get("round") == 1 and "seconds" in r for r in doc["rounds"]):
            break
        time.sleep(0.2)
    victim_pid = nodes[0].pid
    nodes[0].kill()
    worker.join(timeout=240)
    fleet.stop_nodes()

    # Assert: the run finished every round with the surviving devices; the supervisor restarted the node
    assert "error" not in result, result.get("error")
    doc = result["doc"]
    rounds = [r for r in doc["rounds"] if r["round"] > 0]
    assert doc["status"] == "finished" and len(rounds) == 3
    assert all(r["aggregated"] and r["train_replies"] >= 2 for r in rounds)
    assert all(r["train"]["proximal-mu"] == pytest.approx(0.01) for r in rounds)  # FedProx's term reached the devices
    assert nodes[0].restarts >= 1 and nodes[0].pid != victim_pid
    assert _accuracy(doc, digits) > 0.5


def test_federated_poisoned_device_hurts_fedavg_but_is_contained_by_fedmedian(fleet: Fleet, digits: Digits,
                                                                              tmp_path: Path) -> None:
    # Arrange: device 0 sends w_global - 10 * (w_local - w_global)
    parts = non_iid_partitions(digits.y_train, 3, seed=0)
    fleet.add_node("p0", digits.x_train[parts[0]], digits.y_train[parts[0]], **{"fault-update-scale": -10.0})
    for i in (1, 2):
        fleet.add_node(f"p{i}", digits.x_train[parts[i]], digits.y_train[parts[i]])
    acc = {}

    # Act
    try:
        for strategy in ("fedavg", "fedmedian"):
            d = tmp_path / strategy
            d.mkdir()
            cfg = _config(digits, d, rounds=2, min_nodes=3, fraction_evaluate=0.0, round_timeout=60, strategy=strategy)
            acc[strategy] = _accuracy(run_federated(cfg, fleet.link.address, work_dir=d / "run", timeout=200), digits)
    finally:
        fleet.stop_nodes()

    # Assert
    assert acc["fedavg"] < 0.25, acc
    assert acc["fedmedian"] > acc["fedavg"] + 0.12, acc
