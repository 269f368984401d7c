"""Federated training of a bundle's trainable head: devices train it in numpy on their backbone's features
(no TensorFlow on a device), Flower aggregates the head's arrays only, and the promoted version is the same
pruned int8 backbone with the new head, made by edgefleet.headupdate, gated with the SDK and signed with its
lineage; the bad inputs of a head run are named errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.errors import ConfigError

from .conftest import Fleet, free_port

HERE = Path(__file__).resolve().parent
HEAVY = ("tensorflow", "keras", "tf_keras", "torch", "tf2onnx", "onnx", "sklearn", "jax")


def shift(x: np.ndarray) -> np.ndarray:
    """The injected drift: every image one pixel to the right (a camera knocked sideways)."""
    return np.roll(np.asarray(x, np.float32), 1, axis=-1)


@pytest.fixture(scope="module")
def head_cnn(tmp_path_factory: pytest.TempPathFactory, keypair: tuple[Path, Path]) -> Path:
    """v1: the example CNN, pruned (0.8) and int8, with its last Dense as a trainable head (built by a
    subprocess, so this process never imports TensorFlow)."""
    out = tmp_path_factory.mktemp("head-cnn")
    subprocess.run([sys.executable, str(HERE / "make_head_cnn.py"), str(out), str(keypair[0])], check=True,
                   capture_output=True, timeout=600)
    return out


def _agent(root: Path, pub: Path, superlink: str = "") -> Any:
    from edgefleet.device_agent import Agent
    from edgefleet.device_agent.config import AgentConfig, FederatedNodeConfig, SamplesConfig, UpdateConfig

    cfg = AgentConfig(state_dir=str(root), device_id=root.name, trusted_keys=(str(pub),),
                      update=UpdateConfig(probation_seconds=0.0), samples=SamplesConfig(enabled=True),
                      federated=FederatedNodeConfig(enabled=bool(superlink), superlink=superlink, insecure=True,
                                                    port=free_port()))
    return Agent(cfg, tick_seconds=0.05)


def _accuracy(bundle: Path, x: np.ndarray, y: np.ndarray, pub: Path) -> float:
    import edgefleet

    with edgefleet.load(bundle, trusted_keys=pub) as m:
        return float(np.mean(np.asarray(m.predict(x)).argmax(1) == y))


@pytest.mark.slow
def test_devices_train_only_the_head_and_v2_keeps_the_pruned_int8_backbone(
        fleet: Fleet, head_cnn: Path, tmp_path: Path, keypair: tuple[Path, Path], request: pytest.FixtureRequest,
        capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.bundle import verify_bundle_dir
    from edgefleet.cloud_sync.federated import cli
    from edgefleet.cloud_sync.federated.partition import non_iid_partitions
    from edgefleet.compiler.examples import digits_split

    # Arrange: v1 (pruned int8 backbone, float head) on two agents whose cameras drifted; each captured its
    # non-IID drifted samples through agent.feedback. Agent 0 runs its own SuperNode ([federated] config);
    # agent 1's SuperNode is started for its state directory here, with the imports diagnostics on
    priv, pub = keypair
    v1 = head_cnn / "v1"
    xtr, ytr, xte, yte = digits_split()
    np.savez(tmp_path / "holdout.npz", x=shift(xte), y=yte)
    agents: list[Any] = []
    request.addfinalizer(lambda: [a.close() for a in agents])
    for i, part in enumerate(non_iid_partitions(ytr, 2, classes_per_device=5, seed=0)):
        agent = _agent(tmp_path / f"dev{i}", pub, superlink=fleet.link.address if i == 0 else "")
        agents.append(agent)
        agent.install(Path(str(v1) + ".efb"), wait=True, timeout=60)
        for xi, yi in zip(shift(xtr[part]), ytr[part]):
            agent.feedback(xi, int(yi))
    imports = tmp_path / "imports.json"
    fleet.add_node_for("dev1", tmp_path / "dev1" / "samples.db", **{
        "model-store": str(tmp_path / "dev1"), "trusted-keys": str(pub), "imports-log": str(imports)})
    before = _accuracy(v1, shift(xte), yte, pub)
    args = cli.parse_run_args([
        "--superlink", fleet.link.address, "--rounds", "2", "--min-nodes", "2", "--local-epochs", "5",
        "--optimizer", "adam", "--learning-rate", "0.003", "--round-timeout", "90", "--timeout", "300",
        "--deployed", str(v1) + ".efb", "--holdout", str(tmp_path / "holdout.npz"), "--key", str(priv),
        "--margin", "0.05", "--personalize", "--out", str(tmp_path / "run")])

    # Act: no --model: the head bundle is the starting point
    code = cli.cmd_run(args)
    printed = capsys.readouterr().out

    # Assert: both devices trained every round; the messages carried the head's two arrays only
    assert code == 0, printed
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    run = summary["run"]
    rounds = [r for r in run["rounds"] if r["round"] > 0]
    assert run["status"] == "finished" and len(rounds) == 2
    assert all(r["train_replies"] == 2 and r["train_failures"] == 0 for r in rounds), rounds
    assert "devices train the head of digits v1 (adam)" in printed
    with np.load(run["aggregate"]) as z:
        assert sorted((k, z[k].shape) for k in z.files) == [("arr_0", (256, 10)), ("arr_1", (10,))]
    assert rounds[-1]["central"]["accuracy"] > before + 0.05
    # v2: v1's pruned int8 backbone byte for byte, the new head, signed, with its lineage; scored with the SDK
    gate = summary["gate"]
    assert gate["promoted"] and gate["version"] == "2", gate
    v2 = verify_bundle_dir(gate["bundle"], pub)
    m1, m2 = verify_bundle_dir(v1, pub).manifest, v2.manifest
    assert (Path(gate["bundle"]) / m2.model_file).read_bytes() == (v1 / m1.model_file).read_bytes()
    assert m2.metrics["sparsity"] == m1.metrics["sparsity"] == 0.8
    assert m2.metrics["quantization"] == m1.metrics["quantization"] == "int8"
    assert m2.head is not None and m1.head is not None and m2.head.sha256 != m1.head.sha256
    lineage = m2.lineage
    assert lineage["parent_version"] == "1" and lineage["head_update"]["base"]["version"] == "1"
    fed = lineage["federated"]
    assert fed["rounds"] == 2 and fed["strategy"] == "fedavg" and fed["trained"] == "head"
    assert fed["flower_run_id"] == run["run_id"]
    after = _accuracy(Path(gate["bundle"]), shift(xte), yte, pub)
    assert gate["candidate_accuracy"] == pytest.approx(after) and after > before + 0.05
    assert gate["deployed_accuracy"] == pytest.approx(before)
    # the device's ClientApp process never imported TensorFlow (or another training framework)
    loaded = set(json.loads(imports.read_text()))
    assert "flwr" in loaded and "ai_edge_litert" in loaded
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    # --personalize: after the last round each device fine-tuned the final global head (v2's, by its sha256) on its
    # own samples; both heads' held-back accuracy are reported per device, and a local head that won is kept in the
    # device's state directory. Each device holds 5 of the 10 classes, so a local head has something to gain
    pers = run["personalization"]
    assert sorted(d["device_id"] for d in pers["devices"]) == ["dev0", "dev1"], pers
    assert all(d["base"] == m2.head.sha256 for d in pers["devices"])
    for d in pers["devices"]:
        assert d["stored"] == d["kept"] == (d["personal_accuracy"] > d["global_accuracy"]
                                            or (d["personal_accuracy"] == d["global_accuracy"]
                                                and d["personal_loss"] < d["global_loss"])), d
        assert (tmp_path / d["device_id"] / "personal" / f"{m2.head.sha256}.npz").exists() == d["stored"]
    assert pers["kept"] >= 1 and pers["mean_served_accuracy"] > pers["mean_global_accuracy"], pers
    assert f"personalisation: {pers['kept']} of 2 device(s) keep a local head" in printed
    # a device that kept one serves it once v2 is installed; the other serves v2's signed global head
    for agent, d in zip(agents, pers["devices"]):
        agent.install(Path(gate["bundle"]), wait=True, timeout=60)
        serving = agent.status()["serving"]
        assert serving["version"] == "2" and serving["head"] == ("personal" if d["stored"] else "global"), serving


# -- refusals and device-side checks without Flower processes ---------------------------------------------------
def _tiny_head_bundle(root: Path, version: str = "1", seed: int = 0, key: Any = None) -> Path:
    """An ONNX backbone (64 -> 12, numpy-built) with a dense softmax head (12 -> 10)."""
    from edgefleet.head import Head, HeadLayer
    from edgefleet.pack import pack

    sys.path.insert(0, str(HERE.parent / "agent"))
    from agent_helpers import make_onnx

    rng = np.random.default_rng(seed)
    backbone = make_onnx(root / f"backbone{seed}.onnx", seed, n_in=64, n_out=12)
    head = Head([HeadLayer("dense", "probs", (12,), (10,), "softmax", (("kernel", (12, 10)), ("bias", (10,))))],
                {"probs.kernel": rng.normal(size=(12, 10)), "probs.bias": np.zeros(10)})
    bundle, _ = pack(backbone, root / f"b{seed}-v{version}", name="tiny", version=version, head=head, private_key=key,
                     archive=True)
    return bundle.path


def test_a_head_run_refuses_options_that_describe_another_model(tmp_path: Path) -> None:
    from edgefleet.cloud_sync.federated import cli

    bundle = _tiny_head_bundle(tmp_path)
    for extra in (["--model", "m.keras"], ["--layers", "64,10"], ["--preprocessing", "{}"]):
        args = cli.parse_run_args(["--deployed", str(bundle), "--holdout", "h.npz", "--key", "k", "--out",
                                   str(tmp_path / "run"), *extra])
        with pytest.raises(ConfigError, match=f"has a trainable head.*{extra[0]} has no use here"):
            cli.cmd_run(args)


def test_a_device_declines_a_head_run_for_another_backbone_and_trains_its_own(tmp_path: Path) -> None:
    from edgefleet.bundle import verify_bundle_dir
    from edgefleet.cloud_sync.federated.client_app import Declined, load_head_data
    from edgefleet.cloud_sync.federated.head_trainer import backbone_digest

    from .conftest import write_samples

    mine, other = _tiny_head_bundle(tmp_path, seed=0), _tiny_head_bundle(tmp_path, seed=1)
    rng = np.random.default_rng(0)
    db = write_samples(tmp_path / "samples.db", rng.uniform(0, 16, (30, 64)).astype(np.float32), rng.integers(0, 10, 30))
    node = {"samples-db": str(db), "device-id": "d1", "model-bundle": str(mine)}
    run = {"min-samples": 20, "holdout-fraction": 0.2}

    with pytest.raises(Declined, match="d1 runs tiny v1, whose backbone is not the run's"):
        load_head_data(node, {**run, "head-backbone": backbone_digest(verify_bundle_dir(other).manifest)})
    with pytest.raises(Declined, match="names no model"):
        load_head_data({"samples-db": str(db)}, {**run, "head-backbone": "x"})
    data = load_head_data(node, {**run, "head-backbone": backbone_digest(verify_bundle_dir(mine).manifest)})
    assert data.f_train.shape == (24, 12) and data.f_hold.shape == (6, 12) and len(data.y_train) == 24
