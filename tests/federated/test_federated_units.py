"""Unit tests (Arrange/Act/Assert): the numpy trainer, aggregation, DP, config, app generation, supervision."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib

from edgefleet.cloud_sync.federated import aggregate as agg
from edgefleet.cloud_sync.federated.config import FederatedConfig, StrategyName
from edgefleet.cloud_sync.federated.trainer import MLPSpec, TrainConfig, evaluate, forward, split_holdout, train
from edgefleet.errors import ConfigError, StoreError


def _blobs(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers = np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
    return (centers[y] + rng.normal(0, 0.5, (n, 4))).astype(np.float32), y


# -- trainer -----------------------------------------------------------------------
def test_federated_spec_has_keras_dense_layout() -> None:
    spec = MLPSpec.parse("64, 32,10")

    w = spec.init(1)

    assert [a.shape for a in w] == [(64, 32), (32,), (32, 10), (10,)]
    assert all(a.dtype == np.float32 for a in w) and not w[1].any()
    with pytest.raises(ConfigError):
        spec.check(w[:3])
    with pytest.raises(ConfigError):
        MLPSpec.parse("64")


def test_federated_trainer_learns_and_probabilities_sum_to_one() -> None:
    x, y = _blobs()
    spec = MLPSpec((4, 8, 3))

    res = train(spec.init(0), x, y, TrainConfig(epochs=20, learning_rate=0.2))

    p, _ = forward(res.weights, x)
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert res.accuracy > 0.95 and res.num_examples == len(x)
    assert evaluate(res.weights, x, y)[0] < evaluate(spec.init(0), x, y)[0]


def test_federated_trainer_gradient_matches_finite_differences() -> None:
    x, y = _blobs(8)
    spec = MLPSpec((4, 5, 3))
    w = spec.init(3)
    # one full-batch SGD step with lr 1 moves the weights by minus the gradient
    step = train(w, x, y, TrainConfig(epochs=1, batch_size=8, learning_rate=1.0)).weights
    grad = w[0] - step[0]
    eps = 1e-3
    wp = [a.astype(np.float64) for a in w]
    wp[0][1, 2] += eps
    wm = [a.astype(np.float64) for a in w]
    wm[0][1, 2] -= eps

    numeric = (evaluate(wp, x, y)[0] - evaluate(wm, x, y)[0]) / (2 * eps)

    assert abs(numeric - grad[1, 2]) < 1e-3


def test_federated_proximal_term_keeps_weights_near_the_global_model() -> None:
    x, y = _blobs()
    spec = MLPSpec((4, 8, 3))
    w0 = spec.init(0)
    dist = {}

    for mu in (0.0, 1.0):
        res = train(w0, x, y, TrainConfig(epochs=10, learning_rate=0.1, proximal_mu=mu), global_weights=w0)
        dist[mu] = float(np.linalg.norm(agg.flatten(res.weights) - agg.flatten(w0)))

    assert dist[1.0] < 0.8 * dist[0.0]


def test_federated_trainer_refuses_bad_inputs_and_splits_holdout() -> None:
    x, y = _blobs(50)
    spec = MLPSpec((4, 3))

    xt, yt, xh, yh = split_holdout(x, y, 0.2)

    assert len(xh) == 10 and len(xt) == 40
    with pytest.raises(ConfigError):
        train(spec.init(0), x[:, :3], y)
    with pytest.raises(ConfigError):
        train(spec.init(0), x, y + 5)


# -- aggregation ----------------------------------------------------------------------
def test_federated_fedavg_weights_by_examples() -> None:
    a, b = [np.zeros(2), np.ones(1)], [np.full(2, 4.0), np.full(1, 3.0)]

    out = agg.fedavg([a, b], [3, 1])

    assert np.allclose(out[0], [1.0, 1.0]) and np.allclose(out[1], [1.5])
    with pytest.raises(ConfigError):
        agg.fedavg([a, [np.zeros(3)]], [1, 1])


def test_federated_median_and_trimmed_mean_ignore_an_outlier() -> None:
    ups = [[np.array([1.0, 2.0])], [np.array([1.2, 2.2])], [np.array([0.8, 1.8])], [np.array([100.0, -100.0])]]

    med = agg.median(ups)[0]
    trim = agg.trimmed_mean(ups, beta=0.25)[0]
    avg = agg.fedavg(ups)[0]

    assert np.all(np.abs(med - [1.1, 1.9]) < 0.2)
    assert np.all(np.abs(trim - [1.1, 1.9]) < 0.2)
    assert abs(avg[0]) > 20


def test_federated_krum_picks_an_honest_update() -> None:
    rng = np.random.default_rng(0)
    honest = [[rng.normal(1.0, 0.05, 5)] for _ in range(5)]
    evil = [[np.full(5, -50.0)], [np.full(5, 60.0)]]

    out = agg.krum(honest + evil, num_malicious=2)[0]

    assert np.all(np.abs(out - 1.0) < 0.3)


def test_federated_clip_bounds_update_norm_and_noise_has_expected_scale() -> None:
    ref = [np.zeros(1000)]
    new = [np.full(1000, 1.0)]

    clipped, norm = agg.clip_update(new, ref, clipping_norm=2.0)
    noisy = agg.gaussian_noise([np.zeros(10000)], noise_multiplier=1.5, clipping_norm=2.0, num_clients=3,
                               rng=np.random.default_rng(0))

    assert math.isclose(norm, math.sqrt(1000))
    assert math.isclose(float(np.linalg.norm(clipped[0])), 2.0, rel_tol=1e-9)
    assert abs(float(noisy[0].std()) - 1.5 * 2.0 / 3) < 0.02
    small, _ = agg.clip_update([np.full(4, 0.1)], [np.zeros(4)], 5.0)
    assert np.allclose(small[0], 0.1)


def test_federated_dp_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    e1 = agg.gaussian_epsilon(1.0, 1)
    e10 = agg.gaussian_epsilon(1.0, 10)
    quiet = agg.gaussian_epsilon(4.0, 10)

    assert 0 < e1 < e10 and quiet < e10
    assert agg.gaussian_epsilon(0.0, 3) == math.inf and agg.gaussian_epsilon(1.0, 0) == 0.0
    # closed form check at the optimum for one round: eps ~ 1/(2 z^2) + sqrt(2 log(1/delta)) / z
    z = 10.0
    assert abs(agg.gaussian_epsilon(z, 1, 1e-5) - (1 / (2 * z * z) + math.sqrt(2 * math.log(1e5)) / z)) < 0.01


# -- config, strategies, app ---------------------------------------------------------
def test_federated_config_round_trips_through_run_config_and_validates() -> None:
    cfg = FederatedConfig(rounds=4, strategy="fedprox", proximal_mu=0.1, layers="8,4,2")

    back = FederatedConfig.from_run_config(cfg.to_run_config())

    assert back == cfg and back.strategy is StrategyName.FEDPROX
    for bad in ({"strategy": "nope"}, {"rounds": 0}, {"dp_noise": 1.0, "strategy": "krum"}, {"trim_beta": 0.5},
                {"preprocessing": "{"}):
        with pytest.raises(ConfigError):
            FederatedConfig(**bad)  # type: ignore[arg-type]


def test_federated_cli_strategy_choices_are_the_strategy_names() -> None:
    from edgefleet.cloud_sync.federated.cli import STRATEGIES

    assert STRATEGIES == tuple(s.value for s in StrategyName)


def test_federated_build_strategy_picks_the_flower_class() -> None:
    from flwr.serverapp import strategy as fs

    from edgefleet.cloud_sync.federated.server_app import build_strategy

    names = {s: type(build_strategy(FederatedConfig(strategy=s))).__name__ for s in StrategyName}
    dp = build_strategy(FederatedConfig(dp_noise=1.0, dp_clip=0.5, min_nodes=3))

    assert names == {StrategyName.FEDAVG: "FedAvg", StrategyName.FEDPROX: "FedProx", StrategyName.FEDMEDIAN: "FedMedian",
                     StrategyName.FEDTRIMMEDAVG: "FedTrimmedAvg", StrategyName.KRUM: "Krum"}
    assert isinstance(dp, fs.DifferentialPrivacyServerSideFixedClipping)
    assert build_strategy(FederatedConfig(strategy="fedprox", proximal_mu=0.3)).proximal_mu == 0.3


def test_federated_write_app_generates_a_valid_flower_app(tmp_path: Path) -> None:
    from flwr.common.config import validate_config

    from edgefleet.cloud_sync.federated.runner import write_app, write_flwr_home

    cfg = FederatedConfig(rounds=2, preprocessing='{"steps": [{"op": "scale", "factor": 0.0625}]}')

    app = write_app(tmp_path / "app", cfg)
    home = write_flwr_home(tmp_path / "home", "127.0.0.1:9999")

    doc = tomllib.loads((app / "pyproject.toml").read_text())
    ok, errors, _ = validate_config(doc, check_module=False, project_dir=app)
    assert ok, errors
    assert FederatedConfig.from_run_config(doc["tool"]["flwr"]["app"]["config"]) == cfg
    assert 'address = "127.0.0.1:9999"' in (home / "config.toml").read_text()


def test_federated_insecure_is_loopback_only() -> None:
    from edgefleet.cloud_sync.federated.runner import SuperLinkConfig
    from edgefleet.device_agent.flower_node import FlowerNodeConfig

    with pytest.raises(ConfigError):
        SuperLinkConfig(host="0.0.0.0", port=9092, insecure=True)
    with pytest.raises(ConfigError):
        FlowerNodeConfig(superlink="10.0.0.5:9092", samples_db="/x", insecure=True)
    with pytest.raises(ConfigError):
        FlowerNodeConfig(superlink="10.0.0.5:9092", samples_db="/x")  # TLS without certificates
    tls = FlowerNodeConfig(superlink="fl.example.com:9092", samples_db="/d/samples.db", root_certificates="/ca.pem",
                           samples_key="/k", device_id="dev-1")
    assert "--insecure" not in tls.argv() and "--root-certificates" in tls.argv()
    assert tls.node_config() == 'samples-db="/d/samples.db" device-id="dev-1" samples-key="/k"'


# -- device side ---------------------------------------------------------------------------
def test_federated_client_reads_encrypted_agent_samples_and_declines_when_too_few(tmp_path: Path) -> None:
    from edgefleet.cloud_sync.federated.client_app import Declined, load_local_data
    from edgefleet.device_agent.samples import SampleStore, generate_device_key, load_device_key

    key_file = generate_device_key(tmp_path / "device.key")
    store = SampleStore(tmp_path / "samples.db", key=load_device_key(key_file))
    x, y = _blobs(40)
    for xi, yi in zip(x, y):
        store.add(xi * 16, int(yi))
    store.close()
    node = {"samples-db": str(tmp_path / "samples.db"), "samples-key": str(key_file), "device-id": "d"}
    run = {"min-samples": 20, "holdout-fraction": 0.25, "layers": "4,3",
           "preprocessing": '{"steps": [{"op": "scale", "factor": 0.0625}]}'}

    data = load_local_data(node, run)

    assert data.total == 40 and len(data.x_hold) == 10
    assert float(np.abs(np.concatenate([data.x_train, data.x_hold])).max()) < 10  # scaled back by 1/16
    with pytest.raises(Declined, match="declined"):
        load_local_data(node, {**run, "min-samples": 41})
    with pytest.raises(StoreError, match="no device key"):
        load_local_data({**node, "samples-key": ""}, run)  # encrypted samples need the key


def test_federated_child_process_is_restarted_when_it_dies_and_stopped_with_its_group(tmp_path: Path) -> None:
    from edgefleet.supervisor import ChildProcess

    child = ChildProcess([sys.executable, "-c", "import time; time.sleep(60)"], name="sleeper", backoff=0.05,
                         poll_seconds=0.05, log_path=tmp_path / "log")

    with child:
        first = child.pid
        child.kill()
        deadline = time.monotonic() + 10
        while (child.pid in (None, first) or not child.running) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = child.pid
        assert child.restarts == 1 and second not in (None, first) and child.running
    assert not child.running and child.pid is None
    assert second is not None
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(second, 0)


def test_federated_child_process_gives_up_only_after_consecutive_quick_failures() -> None:
    from edgefleet.supervisor import ChildProcess

    def wait_until(cond: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.02)

    # Arrange: a child failing at once; one that fails after running "healthily" for 0.3 s; an unlimited one
    quick = ChildProcess(["/bin/sh", "-c", "exit 3"], backoff=0.01, max_restarts=3, poll_seconds=0.01)
    healthy = ChildProcess(["/bin/sh", "-c", "sleep 0.3; exit 4"], backoff=0.01, max_restarts=2, healthy_seconds=0.2,
                           poll_seconds=0.01)
    forever = ChildProcess(["/bin/sh", "-c", "exit 5"], backoff=0.01, max_backoff=0.02, max_restarts=0,
                           poll_seconds=0.01)

    # Act
    with quick, healthy, forever:
        wait_until(lambda: len(quick.exit_codes) == 4 and quick.pid is None)
        wait_until(lambda: healthy.restarts >= 4)
        wait_until(lambda: forever.restarts >= 8)
        still = healthy.running or healthy.pid is not None, forever.pid is not None

    # Assert
    assert quick.exit_codes == [3, 3, 3, 3] and quick.restarts == 3 and not quick.running
    assert healthy.restarts >= 4 and set(healthy.exit_codes) == {4} and healthy.failures <= 1
    assert forever.restarts >= 8 and still == (True, True)


# -- CLI ---------------------------------------------------------------------------------------
def test_federated_cli_registers_run_and_shows_status(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from edgefleet.cloud_sync.federated import cli

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "rounds.json").write_text(json.dumps({
        "status": "finished", "config": {"strategy": "fedprox"}, "seconds": 12.0,
        "rounds": [{"round": 0}, {"round": 1, "train_replies": 3, "train_failures": 1, "seconds": 5.5,
                                  "central": {"accuracy": 0.81}, "dp_epsilon": 3.2}],
        "privacy": {"epsilon": 3.2, "delta": 1e-5}}))

    run = cli.parse_run_args(["--rounds", "4", "--strategy", "krum", "--min-nodes", "3"])
    result = CliRunner().invoke(cli.federated, ["status", str(tmp_path)])

    assert set(cli.federated.commands) == {"run", "superlink", "status", "ls", "log", "stop"}
    assert run.rounds == 4 and run.strategy == "krum" and run.min_nodes == 3
    text = result.output
    assert result.exit_code == 0 and "round 1: 3 device(s)" in text and "0.810" in text and "epsilon 3.20" in text


# -- drift trigger ---------------------------------------------------------------------------------
def test_federated_drift_trigger_needs_opt_in_enough_devices_and_respects_cooldown() -> None:
    from edgefleet.cloud_sync.federated.trigger import DriftAlert, DriftTrigger, TriggerPolicy

    trig = DriftTrigger({"cams": TriggerPolicy(enabled=True, min_devices=2, window_s=100, cooldown_s=1000),
                         "off": TriggerPolicy(enabled=False, min_devices=1)})

    first = trig.handle(DriftAlert("cams", "a", "3"), now=0)
    stale_pair = trig.handle(DriftAlert("cams", "b", "3"), now=500)  # a's alert left the window
    start = trig.handle(DriftAlert("cams", "a", "3"), now=550)
    busy = trig.handle(DriftAlert("cams", "c", "3"), now=560) or trig.handle(DriftAlert("cams", "d", "3"), now=561)
    trig.finished("cams")
    cooling = trig.handle(DriftAlert("cams", "c", "3"), now=600) or trig.handle(DriftAlert("cams", "d", "3"), now=601)
    alone = trig.handle(DriftAlert("cams", "e", "3"), now=1600)  # c and d left the window
    again = trig.handle(DriftAlert("cams", "f", "3"), now=1610)

    assert first is None and stale_pair is None and busy is None and cooling is None
    assert start is not None and start.group == "cams" and "a, b" in start.reason
    assert alone is None and again is not None and "e, f" in again.reason
    assert trig.handle(DriftAlert("off", "x", "1"), now=0) is None
    assert trig.handle(DriftAlert("unknown", "x", "1"), now=0) is None


def test_federated_node_config_for_an_agent_points_at_its_samples(tmp_path: Path) -> None:
    from edgefleet.device_agent.config import AgentConfig, SamplesConfig
    from edgefleet.device_agent.flower_node import FlowerNodeConfig

    agent = AgentConfig(state_dir=str(tmp_path / "state"), device_id="cam-7",
                        samples=SamplesConfig(enabled=True, key_file=str(tmp_path / "dev.key")))

    cfg = FlowerNodeConfig.for_agent(agent, "127.0.0.1:9092", insecure=True, port=9200)

    assert cfg.samples_db == str(tmp_path / "state" / "samples.db") and cfg.samples_key == str(tmp_path / "dev.key")
    assert 'device-id="cam-7"' in cfg.node_config() and "9200" in cfg.argv()
    with pytest.raises(ConfigError, match="samples"):
        FlowerNodeConfig.for_agent(AgentConfig(state_dir=str(tmp_path)), "127.0.0.1:9092", insecure=True)


@pytest.mark.slow
def test_federated_flower_node_main_runs_a_supernode_until_sigterm(tmp_path: Path) -> None:
    import os
    import signal
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "node.log"
    proc = subprocess.Popen([sys.executable, "-m", "edgefleet.device_agent.flower_node", "--superlink", "127.0.0.1:9",
                             "--samples", str(tmp_path / "samples.db"), "--insecure", "--port", str(port),
                             "--log", str(log)], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (log.exists() and "SuperNode" in log.read_text(errors="ignore")):
            time.sleep(0.2)

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    assert code == 0
    assert "Flower SuperNode" in log.read_text(errors="ignore")
