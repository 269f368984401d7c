"""``FederatedConfig``: every option of a federated run as a typed, self-validating field.

The same object becomes the Flower app's run config (``[tool.flwr.app.config]``,
keys in kebab-case) which the ServerApp and the ClientApps read back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any, Mapping

from edgefleet.errors import ConfigError

from .trainer import MLPSpec


class StrategyName(str, Enum):
    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDMEDIAN = "fedmedian"
    FEDTRIMMEDAVG = "fedtrimmedavg"
    KRUM = "krum"


@dataclass(frozen=True)
class FederatedConfig:
    rounds: int = 3
    strategy: StrategyName = StrategyName.FEDAVG
    layers: str = "64,32,10"
    min_nodes: int = 2  # minimum devices per round (sampled and waited for)
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    round_timeout: float = 120.0  # seconds to wait for replies in one round
    local_epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 0.1
    holdout_fraction: float = 0.2
    min_samples: int = 20  # devices with fewer samples decline
    proximal_mu: float = 0.01  # FedProx only
    trim_beta: float = 0.2  # FedTrimmedAvg only
    krum_malicious: int = 1  # Krum only
    dp_noise: float = 0.0  # central DP noise multiplier; 0 = off
    dp_clip: float = 1.0  # central DP clipping norm of an update
    dp_delta: float = 1e-5
    seed: int = 0
    preprocessing: str = ""  # JSON pipeline spec applied to raw samples on the device
    initial_weights: str = ""  # .npz of the starting weights (arr_0..); empty = fresh init
    holdout: str = ""  # .npz (x, y) the coordinator evaluates every round on; optional
    out_dir: str = ""  # where the ServerApp writes rounds.json and aggregate.npz
    # a deployed bundle with a trainable head: devices train only its head (head_trainer), on their backbone's
    # features; the ServerApp aggregates the head's trainable arrays only
    head_bundle: str = ""  # the deployed bundle on the coordinator (the starting head, the holdout's features)
    head_backbone: str = ""  # its backbone_digest: a device whose installed backbone differs declines
    optimizer: str = "sgd"  # devices' head optimizer: sgd or adam (the dense trainer is plain SGD)
    class_weight: str = "none"  # devices' per-class loss weights: none or balanced (of their own samples)
    # FedPer-style personalisation (head runs): after the last round each device fine-tunes the final global head
    # on its own training samples and keeps that local head when it beats the global one on its held-back samples
    personalize: bool = False
    personal_epochs: int = 5  # epochs of that local fine-tuning
    personal_margin: float = 0.0  # held-back accuracy the local head must gain to be kept (0: any gain)

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, StrategyName):
            try:
                object.__setattr__(self, "strategy", StrategyName(str(self.strategy).lower()))
            except ValueError:
                raise ConfigError(f"strategy must be one of {[s.value for s in StrategyName]}, got {self.strategy!r}") from None
        MLPSpec.parse(self.layers)
        if self.rounds < 1 or self.min_nodes < 1 or self.local_epochs < 0 or self.batch_size < 1 or self.min_samples < 1:
            raise ConfigError("rounds, min_nodes, batch_size and min_samples must be >= 1, local_epochs >= 0")
        for name in ("fraction_train", "fraction_evaluate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1]")
        if self.round_timeout <= 0 or self.learning_rate <= 0 or self.proximal_mu < 0:
            raise ConfigError("round_timeout and learning_rate must be > 0, proximal_mu >= 0")
        if not 0.0 <= self.trim_beta < 0.5:
            raise ConfigError("trim_beta must be in [0, 0.5)")
        if self.krum_malicious < 0:
            raise ConfigError("krum_malicious must be >= 0")
        if self.dp_noise < 0 or self.dp_clip <= 0 or not 0 < self.dp_delta < 1:
            raise ConfigError("dp_noise must be >= 0, dp_clip > 0, dp_delta in (0, 1)")
        if self.dp_noise > 0 and self.strategy not in (StrategyName.FEDAVG, StrategyName.FEDPROX):
            raise ConfigError("central DP bounds one device's influence on a weighted mean: use it with fedavg or fedprox")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError("holdout_fraction must be in [0, 1)")
        if bool(self.head_bundle) != bool(self.head_backbone):
            raise ConfigError("head_bundle and head_backbone go together (a run that trains a bundle's head)")
        from .head_trainer import CLASS_WEIGHTS, OPTIMIZERS

        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.class_weight not in CLASS_WEIGHTS:
            raise ConfigError(f"class_weight must be one of {', '.join(CLASS_WEIGHTS)}, got {self.class_weight!r}")
        if self.personal_epochs < 1 or not 0.0 <= self.personal_margin < 1.0:
            raise ConfigError("personal_epochs must be >= 1 and personal_margin in [0, 1)")
        if self.personalize:
            if not self.head_mode:
                raise ConfigError("personalisation keeps a local copy of a bundle's trainable head: it needs a deployed "
                                  "bundle compiled with --trainable-head (--deployed)")
            if self.holdout_fraction <= 0 or self.fraction_evaluate <= 0:
                raise ConfigError("personalisation compares the local and the global head on each device's held-back "
                                  "samples: it needs holdout_fraction > 0 and fraction_evaluate > 0")
        if self.preprocessing:
            try:
                json.loads(self.preprocessing)
            except ValueError as exc:
                raise ConfigError(f"preprocessing must be a JSON pipeline spec: {exc}") from None

    @property
    def head_mode(self) -> bool:
        """Whether devices train a bundle's head (not a dense network of ``layers``)."""
        return bool(self.head_backbone)

    @property
    def spec(self) -> MLPSpec:
        return MLPSpec.parse(self.layers)

    def to_run_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():
            out[k.replace("_", "-")] = v.value if isinstance(v, Enum) else v
        return out

    @classmethod
    def from_run_config(cls, run: Mapping[str, Any]) -> FederatedConfig:
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key in run:
                default = getattr(cls, f.name, None)
                value = run[key]
                if isinstance(default, bool):
                    value = bool(value)
                elif isinstance(default, int):
                    value = int(value)
                elif isinstance(default, float):
                    value = float(value)
                elif isinstance(default, str) and not isinstance(default, Enum):
                    value = str(value)
                kwargs[f.name] = value
        return cls(**kwargs)


__all__ = ["FederatedConfig", "StrategyName"]
