"""Local labelled samples (bounded, encrypted at rest) and the TOML config."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.device_agent.agent import Agent
from edgefleet.device_agent.config import AgentConfig, load_config
from edgefleet.device_agent.samples import SampleStore, generate_device_key, load_device_key
from edgefleet.errors import ConfigError, StoreError


def test_samples_bounded_and_encrypted(tmp_path: Path) -> None:
    key = load_device_key(generate_device_key(tmp_path / "device.key"))
    s = SampleStore(tmp_path / "s.db", max_samples=50, key=key)
    secret = np.full((4,), 1234.5678, np.float32)
    for i in range(80):
        s.add(secret + i, i)
    assert len(s) == 50
    x, y = s.arrays()
    assert x.shape == (50, 4) and list(y) == list(range(30, 80))
    s.close()
    raw = b"".join(row[0] + row[1] for row in sqlite3.connect(tmp_path / "s.db").execute("SELECT x, y FROM samples"))
    assert (secret + 79).tobytes() not in raw and b"NUMPY" not in raw  # nothing readable at rest
    with pytest.raises(StoreError):
        list(SampleStore(tmp_path / "s.db", key=bytes(32)).iter())  # wrong key: authentication fails
    with pytest.raises(StoreError):
        list(SampleStore(tmp_path / "s.db").iter())  # no key
    plain = SampleStore(tmp_path / "p.db")
    plain.add({"a": np.zeros(2), "b": np.ones(3)}, "cat")
    (xd, yd), = list(plain.iter())
    assert set(xd) == {"a", "b"} and str(yd) == "cat"
    with pytest.raises(ConfigError):
        plain.add(np.array([object()]), 1)


def test_agent_feedback(agent_config: Any, bundles: dict, tmp_path: Path) -> None:
    cfg = agent_config()
    with Agent(cfg, monitor=False) as a:
        with pytest.raises(ConfigError, match="samples"):
            a.feedback(np.zeros(4), 1)
    generate_device_key(tmp_path / "k")
    cfg = cfg.with_overrides(samples=type(cfg.samples)(enabled=True, max_samples=3, key_file=str(tmp_path / "k")))
    with Agent(cfg, monitor=False) as a:
        a.install(bundles["1"])
        for i in range(5):
            a.feedback(np.full(4, i, np.float32), i)
        assert a.status()["samples"] == {"count": 3, "encrypted": True}


def test_config_from_toml(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text(
        """
        [agent]
        state_dir = "state"
        device_id = "press-7"
        hardware_tags = ["arm64", "npu"]
        trusted_keys = ["keys/fleet.pub"]

        [store]
        quota_mb = 64

        [update]
        probation_seconds = 30
        shadow = true

        [telemetry]
        max_events = 5000

        [samples]
        enabled = true
        key_file = "device.key"
        """
    )
    cfg = load_config(tmp_path / "agent.toml")
    assert cfg.state_dir == str(tmp_path / "state") and cfg.device_id == "press-7"
    assert cfg.hardware_tags == ("arm64", "npu") and cfg.trusted_keys == (str(tmp_path / "keys/fleet.pub"),)
    assert cfg.store.quota_mb == 64.0 and cfg.update.probation_seconds == 30.0 and cfg.update.shadow
    assert cfg.telemetry.max_events == 5000 and cfg.samples.key_file == str(tmp_path / "device.key")
    assert AgentConfig.from_dict({}).state_dir == "edgefleet-state"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[agent]\nstate_dir = 3\n", "agent.state_dir must be a string"),
        ("[agent]\nstat_dir = 'x'\n", "unknown option(s) ['stat_dir']"),
        ("[updates]\n", "unknown config section(s) ['updates']"),
        ("[update]\nmax_error_rate = 2\n", "update.max_error_rate must be within [0, 1]"),
        ("[update]\nshadow = 'yes'\n", "update.shadow must be true or false"),
        ("[telemetry]\nmax_events = 0\n", "telemetry.max_events must be > 0"),
        ("[agent]\nhardware_tags = 'arm'\n", "agent.hardware_tags must be a list of strings"),
        ("[agent\n", "not valid TOML"),
    ],
)
def test_config_errors_are_clear(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert message in str(err.value) and str(p) in str(err.value)
