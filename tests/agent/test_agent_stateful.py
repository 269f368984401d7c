"""Stateful (streaming) models through the agent: install with smoke tests that carry state,
a live session across hot swaps and rollbacks, and a swap to another signature."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.device_agent.agent import Agent
from edgefleet.device_agent.orders import make_rollback_order
from edgefleet.device_agent.updates import JobStatus
from edgefleet.errors import SessionError


def make_recurrent(path: Path, seed: int, units: int = 8, n_in: int = 4) -> Path:
    """h' = tanh(x @ W + h @ U), y = h' @ V: inputs x (N, n_in) and h0 (N, units), outputs y, hn."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(seed)
    mats = {
        "W": rng.normal(0, 0.5, (n_in, units)),
        "U": rng.normal(0, 0.5, (units, units)),
        "V": rng.normal(0, 0.5, (units, 2)),
    }
    graph = h.make_graph(
        [
            h.make_node("MatMul", ["x", "W"], ["xw"]),
            h.make_node("MatMul", ["h0", "U"], ["hu"]),
            h.make_node("Add", ["xw", "hu"], ["pre"]),
            h.make_node("Tanh", ["pre"], ["hn"]),
            h.make_node("MatMul", ["hn", "V"], ["y"]),
        ],
        "recurrent",
        [h.make_tensor_value_info("x", T.FLOAT, ["N", n_in]), h.make_tensor_value_info("h0", T.FLOAT, ["N", units])],
        [h.make_tensor_value_info("y", T.FLOAT, ["N", 2]), h.make_tensor_value_info("hn", T.FLOAT, ["N", units])],
        [nh.from_array(v.astype(np.float32), k) for k, v in mats.items()],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def reference_loop(path: Path, xs: np.ndarray, h: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ys = []
    for x in xs:
        y, h = sess.run(None, {"x": x[None], "h0": h})
        ys.append(y[0])
    return ys, h


@pytest.fixture(scope="module")
def stateful(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Any]) -> dict[str, Any]:
    from edgefleet.pack import pack

    d = tmp_path_factory.mktemp("stateful")
    made: dict[str, Any] = {}
    for version, seed, units in (("1", 1, 8), ("2", 2, 8), ("3", 3, 16)):
        src = make_recurrent(d / f"rnn-{version}.onnx", seed, units)
        bundle, _ = pack(src, d / f"rnn-v{version}", name="rnn", version=version, private_key=keys["priv"],
                         hardware_tags=("test-board",))
        made[version] = (bundle.path, src)
    return made


def test_stateful_bundle_installs_with_state_in_its_smoke_test(agent_config: Any, stateful: dict[str, Any]) -> None:
    bundle, _ = stateful["1"]
    from edgefleet.model import load

    with load(bundle) as m:
        assert [(st.output, st.input) for st in m.manifest.state] == [("hn", "h0")]
        assert "h0" in m.manifest.smoke_tests["inputs"]
    with Agent(agent_config()) as agent:
        job = agent.install(bundle)
        assert job.status is JobStatus.SUCCEEDED, job.message


def test_session_moves_across_same_signature_swaps_and_fails_named_on_another(
    agent_config: Any, stateful: dict[str, Any], keys: dict[str, Any]
) -> None:
    xs = np.random.default_rng(5).normal(size=(6, 4)).astype(np.float32)
    (b1, src1), (b2, src2), (b3, src3) = stateful["1"], stateful["2"], stateful["3"]
    with Agent(agent_config()) as agent:
        assert agent.install(b1).status is JobStatus.SUCCEEDED
        sess = agent.session()
        got = [sess.predict(x) for x in xs[:3]]
        want, h = reference_loop(src1, xs[:3], np.zeros((1, 8), np.float32))
        np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-5, atol=1e-6)
        # v2 has the same signature: the state moves over and the stream goes on there
        assert agent.install(b2).status is JobStatus.SUCCEEDED
        got = [sess.predict(x) for x in xs[3:]]
        want, h2 = reference_loop(src2, xs[3:], h)
        np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-5, atol=1e-6)
        assert sess.version == "2"
        np.testing.assert_allclose(sess.state["h0"], h2[0], rtol=1e-5, atol=1e-6)
        # a rollback to v1 moves it back too
        agent.rollback()
        y = sess.predict(xs[0])
        want, _ = reference_loop(src1, xs[:1], h2)
        np.testing.assert_allclose(y, want[0], rtol=1e-5, atol=1e-6)
        # v3's state has another size: the live session's next call is a named error
        order = make_rollback_order(keys["priv"], b3)
        assert agent.install(b3, rollback_order=order).status is JobStatus.SUCCEEDED
        with pytest.raises(SessionError, match="another signature"):
            sess.predict(xs[1])
        with pytest.raises(SessionError):
            sess.predict(xs[1])  # stays broken until reset
        sess.reset()
        y = sess.predict(xs[1])
        want, _ = reference_loop(src3, xs[1:2], np.zeros((1, 16), np.float32))
        np.testing.assert_allclose(y, want[0], rtol=1e-5, atol=1e-6)
        # plain predict stays stateless on a stateful model: the state starts at its initial value
        np.testing.assert_allclose(agent.predict({"x": xs[1]})["y"], want[0], rtol=1e-5, atol=1e-6)
