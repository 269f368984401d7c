"""The demo's data story, from scikit-learn's bundled digits (nothing is downloaded).

- the **cloud** trains the first model on a small labelled set that covers only the
  classes ``0 .. known_classes-1`` (a factory calibration set): a deliberately weak v1;
- the **coordinator holdout** (all classes) gates the federated aggregate;
- the **test set** (all classes, never seen by anyone) measures accuracy before and after;
- each **device** holds a non-IID partition of the rest: mostly a few classes, including
  those the cloud never saw. Part of it is labelled (the samples its agent captured for
  training), the rest is its sensor stream, which it predicts on.

Raw pixels (0..16, 64 features) everywhere: the bundle's preprocessing scales them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.errors import ConfigError

PREPROCESSING = {"steps": [{"op": "scale", "factor": 1 / 16}]}
#: the demo's model, the compiler's example CNN, takes the same raw 64 pixels as an 8x8 image
CNN_PREPROCESSING = {"input_shape": [64], "steps": [{"op": "scale", "factor": 1 / 16},
                                                    {"op": "reshape", "shape": [8, 8, 1]}]}
LABELS = [str(i) for i in range(10)]
LAYERS = "64,32,10"


@dataclass(frozen=True)
class DeviceData:
    device_id: str
    classes: tuple[int, ...]  # the classes it mostly sees
    sample_x: np.ndarray  # labelled samples (captured by its agent for training)
    sample_y: np.ndarray
    sensor_x: np.ndarray  # its sensor stream (predicted on; labels known only to the simulation)
    sensor_y: np.ndarray

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        np.savez(p, sample_x=self.sample_x, sample_y=self.sample_y, sensor_x=self.sensor_x, sensor_y=self.sensor_y)
        return p


@dataclass(frozen=True)
class Scenario:
    cloud_x: np.ndarray
    cloud_y: np.ndarray
    gate_x: np.ndarray
    gate_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    devices: tuple[DeviceData, ...]
    known_classes: int

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """``cloud.npz``, ``holdout.npz`` and ``test.npz`` (x, y) in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"cloud": out / "cloud.npz", "holdout": out / "holdout.npz", "test": out / "test.npz"}
        np.savez(paths["cloud"], x=self.cloud_x, y=self.cloud_y)
        np.savez(paths["holdout"], x=self.gate_x, y=self.gate_y)
        np.savez(paths["test"], x=self.test_x, y=self.test_y)
        return paths


def device_ids(n: int) -> list[str]:
    width = max(2, len(str(n)))
    return [f"dev-{i + 1:0{width}d}" for i in range(n)]


def make_scenario(n_devices: int, *, seed: int = 0, known_classes: int = 6, cloud_samples: int = 120,
                  test_fraction: float = 0.25, holdout_samples: int = 150, labelled_fraction: float = 0.6) -> Scenario:
    """Split the digits as described in the module docstring (deterministic for a seed)."""
    if n_devices < 1:
        raise ConfigError(f"the demo needs at least one device, got {n_devices}")
    if not 1 <= known_classes <= 10:
        raise ConfigError(f"known_classes must be within 1..10, got {known_classes}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from edgefleet.cloud_sync.federated.partition import non_iid_partitions

    x, y = load_digits(return_X_y=True)
    x, y = x.astype(np.float32), y.astype(np.int64)
    rest_x, test_x, rest_y, test_y = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    rest_x, gate_x, rest_y, gate_y = train_test_split(rest_x, rest_y, test_size=holdout_samples, random_state=seed,
                                                      stratify=rest_y)
    rng = np.random.default_rng(seed)
    cloud = rng.permutation(np.flatnonzero(rest_y < known_classes))[:cloud_samples]
    pool = np.setdiff1d(np.arange(len(rest_y)), cloud)
    px, py = rest_x[pool], rest_y[pool]
    per = max(2, math.ceil(10 / n_devices)) if n_devices <= 5 else 2
    parts = non_iid_partitions(py, n_devices, classes_per_device=per, seed=seed)
    min_part = min(len(p) for p in parts)
    if min_part < 40:
        raise ConfigError(f"{n_devices} devices leave only {min_part} digits on the smallest one; use fewer devices")
    devices = []
    for i, (dev, idx) in enumerate(zip(device_ids(n_devices), parts)):
        n_lab = int(round(len(idx) * labelled_fraction))
        lab, sen = idx[:n_lab], idx[n_lab:]
        classes = tuple(sorted({(i * per + k) % 10 for k in range(per)}))
        devices.append(DeviceData(dev, classes, px[lab], py[lab], px[sen], py[sen]))
    return Scenario(rest_x[cloud], rest_y[cloud], gate_x, gate_y, test_x, test_y, tuple(devices), known_classes)


def drifted_devices(ids: list[str]) -> list[str]:
    """The devices whose sensors drift in the demo: the last third (at least one)."""
    k = max(1, len(ids) // 3)
    return ids[-k:]


__all__ = ["Scenario", "DeviceData", "make_scenario", "device_ids", "drifted_devices", "PREPROCESSING", "LABELS",
           "LAYERS", "CNN_PREPROCESSING"]
