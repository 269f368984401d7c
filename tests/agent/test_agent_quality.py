"""Quality probation without labels: a new version is compared with the one it replaces on the same live inputs
(real agents, real ONNX bundles); the sequential test promotes a fine-tuned candidate and rolls a broken one back
with reason ``quality``; per-version quality reaches telemetry."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from agent_helpers import build_variant

from edgefleet.device_agent.agent import Agent
from edgefleet.device_agent.config import AgentConfig, QualityConfig, SamplesConfig, UpdateConfig
from edgefleet.device_agent.telemetry import MemorySink
from edgefleet.device_agent.updates import JobStatus, Step

ENFORCE = {"mode": "enforce", "min_samples": 30, "wait_seconds": 30.0}


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Any]) -> dict[str, Path]:
    """v1; v2 fine-tuned from it (small weight noise: a good candidate); v2 with its classes rotated (a broken one:
    it runs, passes its own smoke tests, and predicts the wrong class)."""
    d = tmp_path_factory.mktemp("variants")
    return {
        "v1": build_variant(d, "1", keys["priv"], seed=11),
        "good": build_variant(d, "2", keys["priv"], seed=11, noise=0.05, noise_seed=1),
        "bad": build_variant(d, "2", keys["priv"], seed=11, permutation=(1, 2, 0)),
    }


@pytest.fixture()
def make_cfg(tmp_path: Path, keys: dict[str, Any]) -> Callable[..., AgentConfig]:
    def make(name: str = "state", quality: dict[str, Any] | None = None, samples: bool = False,
             probation_seconds: float = 1.0) -> AgentConfig:
        return AgentConfig(state_dir=str(tmp_path / name), device_id="dev-q", hardware_tags=("test-board",),
                           trusted_keys=(str(keys["pub"]),),
                           update=UpdateConfig(probation_seconds=probation_seconds),
                           quality=QualityConfig(**(quality or {})),
                           samples=SamplesConfig(enabled=samples))

    return make


class Traffic:
    """Live inputs, no labels: a thread calling ``agent.predict`` on fresh random inputs until stopped."""

    def __init__(self, agent: Agent, seed: int = 0) -> None:
        self.agent, self.rng = agent, np.random.default_rng(seed)
        self.stop = threading.Event()
        self.calls = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.agent.predict(self.rng.normal(size=(1, 4)).astype(np.float32))
            self.calls += 1
            self.stop.wait(0.002)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture()
def traffic() -> Iterator[Callable[[Agent], Traffic]]:
    made: list[Traffic] = []

    def start(agent: Agent) -> Traffic:
        made.append(Traffic(agent, len(made)))
        return made[-1]

    yield start
    for t in made:
        t.close()


def _quality_records(agent: Agent) -> list[dict[str, Any]]:
    sink = MemorySink()
    agent.drain(sink)
    return [r.data for r in sink.records if r.kind == "quality"]


def test_good_candidate_promoted_bad_one_rolled_back_on_quality(make_cfg: Any, variants: dict[str, Path],
                                                                traffic: Any) -> None:
    with Agent(make_cfg(quality=ENFORCE), tick_seconds=0.05) as agent:
        agent.install(variants["v1"], wait=True, timeout=10)
        live = traffic(agent)
        bad = agent.install(variants["bad"])
        assert bad.step is Step.PROBATION
        bad = agent.wait(bad.job_id, timeout=30)
        assert bad.status is JobStatus.ROLLED_BACK and bad.reason == "quality", bad
        assert bad.message.startswith("agreement: agreement 0.0%"), bad.message
        q = bad.details["probation"]["quality"]
        assert q["verdict"] == "fail" and q["signal"] == "agreement" and q["reference"] == "1"
        assert q["compared"] >= 30 and q["agreement"] == 0.0
        assert agent.active_version == "1"
        assert live.calls > 0 and agent.serving.comparator is None  # comparing ended with the probation

        good = agent.install(variants["good"], wait=True, timeout=30)
        assert good.status is JobStatus.SUCCEEDED and good.reason == "healthy", good
        q = good.details["probation"]["quality"]
        assert q["verdict"] == "pass" and q["agreement"] > 0.8 and q["compared"] >= 30, q
        assert agent.active_version == "2"
        live.close()
        records = {r["version"]: r for r in _quality_records(agent)}
        assert records["2"]["verdict"] == "pass" and records["2"]["reference"] == "1"
        assert records["2"]["scored"] > 0 and 0.0 < records["2"]["confidence"] <= 1.0


def test_report_mode_measures_but_never_rolls_back(make_cfg: Any, variants: dict[str, Path], traffic: Any) -> None:
    with Agent(make_cfg(quality={**ENFORCE, "mode": "report"}), tick_seconds=0.05) as agent:
        agent.install(variants["v1"], wait=True, timeout=10)
        traffic(agent)
        job = agent.install(variants["bad"], wait=True, timeout=30)
        assert job.status is JobStatus.SUCCEEDED
        assert job.details["probation"]["quality"]["verdict"] in ("fail", "undecided")
        assert agent.active_version == "2"


def test_deployment_policy_overrides_the_agent_config(make_cfg: Any, variants: dict[str, Path], traffic: Any) -> None:
    with Agent(make_cfg(quality={"mode": "report"}), tick_seconds=0.05) as agent:
        agent.install(variants["v1"], wait=True, timeout=10)
        refused = agent.install(variants["bad"], quality={"agreement_bad": 0.9})  # above agreement_good: no test
        assert refused.status is JobStatus.REJECTED and refused.reason == "quality_policy", refused
        assert "agreement_bad" in refused.message
        assert agent.install(variants["bad"], quality={"mode": "sometimes"}).reason == "quality_policy"
        traffic(agent)
        job = agent.install(variants["bad"], quality=ENFORCE, wait=True, timeout=30)
        assert job.status is JobStatus.ROLLED_BACK and job.reason == "quality"
        assert job.details["quality_policy"] == ENFORCE


def test_feedback_labels_give_per_version_accuracy_and_decide_probation(make_cfg: Any, variants: dict[str, Path]
                                                                         ) -> None:
    """No live traffic beyond the labelled inputs, and a label-free minimum that is never reached: the labels alone
    show the new version worse (the labelled sign test), and each version's labelled accuracy is reported."""
    policy = {"mode": "enforce", "min_samples": 10_000, "max_samples": 10_000, "wait_seconds": 30.0}
    with Agent(make_cfg(quality=policy, samples=True), tick_seconds=0.05) as agent:
        agent.install(variants["v1"], wait=True, timeout=10)
        rng = np.random.default_rng(5)
        xs = rng.normal(size=(60, 1, 4)).astype(np.float32)
        truth = [int(np.argmax(agent.predict(x))) for x in xs]  # v1 is right on these by construction
        for x, y in zip(xs[:20], truth[:20]):
            agent.feedback(x, y)
        v1 = agent.telemetry.quality()["1"]
        assert v1["labelled"] == 20 and v1["accuracy"] == 1.0
        job = agent.install(variants["bad"])
        assert job.step is Step.PROBATION
        for x, y in zip(xs[20:], truth[20:]):
            agent.feedback(x, y)
        job = agent.wait(job.job_id, timeout=30)
        assert job.status is JobStatus.ROLLED_BACK and job.reason == "quality", job
        assert job.message.startswith("labelled_accuracy:"), job.message
        q = job.details["probation"]["quality"]
        assert q["accuracy_old"] == 1.0 and q["accuracy_new"] == 0.0 and q["labelled"] >= 1
        records = {r["version"]: r for r in _quality_records(agent)}
        assert records["2"]["accuracy"] == 0.0 and records["2"]["labelled"] >= 1
        assert records["2"]["verdict"] == "fail" and records["2"]["signal"] == "labelled_accuracy"
        assert records["1"]["accuracy"] == 1.0


def test_quality_totals_survive_a_restart(make_cfg: Any, variants: dict[str, Path]) -> None:
    cfg = make_cfg(samples=True)
    with Agent(cfg, tick_seconds=0.05) as agent:
        agent.install(variants["v1"], wait=True, timeout=10)
        x = np.ones((1, 4), np.float32)
        agent.feedback(x, int(np.argmax(agent.predict(x))))
        agent.flush_telemetry()
    with Agent(cfg, tick_seconds=0.05) as agent:
        x = np.full((1, 4), -1.0, np.float32)
        agent.feedback(x, (int(np.argmax(agent.predict(x))) + 1) % 3)  # wrong
        assert agent.telemetry.quality()["1"]["labelled"] == 2
        assert agent.telemetry.quality()["1"]["accuracy"] == 0.5
        assert agent.status()["quality"]["1"]["correct"] == 1


HEAVY = ("tensorflow", "keras", "tf_keras", "flwr", "paho", "torch", "sklearn", "tf2onnx", "onnx")


def test_quality_probation_imports_no_framework(variants: dict[str, Path], tmp_path: Path, keys: dict[str, Any]
                                                ) -> None:
    """A whole probation with the comparator, the sequential test and the quality telemetry, in a process of its
    own: no TensorFlow, Keras, Flower, paho, torch, scikit-learn or the onnx package is ever imported."""
    import json
    import subprocess
    import sys

    script = f"""
import json, sys, threading
import numpy as np
from edgefleet.device_agent.agent import Agent
from edgefleet.device_agent.config import AgentConfig, QualityConfig, UpdateConfig
cfg = AgentConfig(state_dir={str(tmp_path / 'state')!r}, device_id="dev-imports", hardware_tags=("test-board",),
                  trusted_keys=({str(keys['pub'])!r},), update=UpdateConfig(probation_seconds=0.5),
                  quality=QualityConfig(mode="enforce", min_samples=30, wait_seconds=30.0))
with Agent(cfg, tick_seconds=0.05) as agent:
    agent.install({str(variants['v1'])!r}, wait=True, timeout=10)
    stop = threading.Event()
    rng = np.random.default_rng(0)
    def feed():
        while not stop.is_set():
            agent.predict(rng.normal(size=(1, 4)).astype(np.float32))
            stop.wait(0.002)
    t = threading.Thread(target=feed, daemon=True)
    t.start()
    job = agent.install({str(variants['bad'])!r}, wait=True, timeout=30)
    stop.set()
    t.join(5)
    agent.flush_telemetry()
print(json.dumps({{"status": job.status.value, "reason": job.reason, "modules": sorted(sys.modules)}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["status"], out["reason"]) == ("ROLLED_BACK", "quality")
    loaded = {m.split(".")[0] for m in out["modules"]}
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert "edgefleet.device_agent.quality" in out["modules"]


def test_a_shadow_run_measures_quality_too(make_cfg: Any, variants: dict[str, Path], traffic: Any) -> None:
    """In shadow the candidate runs beside the active version before any swap: the same comparison is made (the
    candidate as the new version) and the shadow report carries it; probation then compares again."""
    with Agent(make_cfg(quality=ENFORCE), tick_seconds=0.05) as agent:
        agent.install(variants["v1"], wait=True, timeout=10)
        traffic(agent)
        job = agent.install(variants["good"], shadow=True)
        assert job.step is Step.SHADOWING
        job = agent.wait(job.job_id, timeout=60)
        assert job.status is JobStatus.SUCCEEDED, job
        q = job.details["shadow"]["quality"]
        assert q["compared"] > 0 and q["reference"] == "1" and q["version"] == "2" and q["agreement"] > 0.8
        assert job.details["probation"]["quality"]["verdict"] == "pass"
