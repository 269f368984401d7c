"""edgefleet.cloud_sync.federated: federated retraining with Flower, closing the loop back to the fleet.

- :mod:`.trainer` - the pure-numpy dense-network trainer devices run (Keras ``Dense`` weight layout, FedProx term);
- :mod:`.head_trainer` - the pure-numpy trainer of a bundle's trainable head (SGD/Adam, class weights, FedProx term),
  on the backbone's features a device computes with LiteRT/ONNX Runtime;
- :mod:`.aggregate` - FedAvg/median/trimmed mean/Krum and central DP in plain numpy, with the privacy budget;
- :mod:`.client_app` / :mod:`.server_app` - the Flower ClientApp and ServerApp (imports flwr);
- :mod:`.runner` - the supervised SuperLink, the generated Flower app, ``flwr run`` submission;
- :mod:`.loop` - aggregate -> Keras -> compile -> gate against the deployed version -> signed next version (for a
  bundle with a trainable head: the aggregated head on the deployed backbone, nothing recompiled);
- :mod:`.trigger` - the drift-alert policy that starts a run for an opted-in group;
- :mod:`.autorun` - the coordinator side of it: drift alerts from telemetry launch ``federated run``;
- :mod:`.records` / :mod:`.routes` - runs and per-round metrics in the registry, through the coordinator API;
- :mod:`.cli` - ``edgefleet federated run`` (``--deploy`` rolls the promoted aggregate out through the API).

Attributes load lazily: importing this package loads neither flwr nor TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgefleet.lazy import lazy_attributes

_LAZY = {
    "FederatedConfig": ("edgefleet.cloud_sync.federated.config", "FederatedConfig"),
    "StrategyName": ("edgefleet.cloud_sync.federated.config", "StrategyName"),
    "MLPSpec": ("edgefleet.cloud_sync.federated.trainer", "MLPSpec"),
    "TrainConfig": ("edgefleet.cloud_sync.federated.trainer", "TrainConfig"),
    "HeadTrainConfig": ("edgefleet.cloud_sync.federated.head_trainer", "HeadTrainConfig"),
    "train_head": ("edgefleet.cloud_sync.federated.head_trainer", "train_head"),
    "close_head_loop": ("edgefleet.cloud_sync.federated.loop", "close_head_loop"),
    "SuperLink": ("edgefleet.cloud_sync.federated.runner", "SuperLink"),
    "SuperLinkConfig": ("edgefleet.cloud_sync.federated.runner", "SuperLinkConfig"),
    "FederatedError": ("edgefleet.cloud_sync.federated.runner", "FederatedError"),
    "run_federated": ("edgefleet.cloud_sync.federated.runner", "run_federated"),
    "write_app": ("edgefleet.cloud_sync.federated.runner", "write_app"),
    "non_iid_partitions": ("edgefleet.cloud_sync.federated.partition", "non_iid_partitions"),
    "close_loop": ("edgefleet.cloud_sync.federated.loop", "close_loop"),
    "promote_aggregate": ("edgefleet.cloud_sync.federated.loop", "promote_aggregate"),
    "LoopResult": ("edgefleet.cloud_sync.federated.loop", "LoopResult"),
    "read_rounds": ("edgefleet.cloud_sync.federated.runner", "read_rounds"),
    "DriftTrigger": ("edgefleet.cloud_sync.federated.trigger", "DriftTrigger"),
    "TriggerPolicy": ("edgefleet.cloud_sync.federated.trigger", "TriggerPolicy"),
    "AutoRetrain": ("edgefleet.cloud_sync.federated.autorun", "AutoRetrain"),
    "RetrainSettings": ("edgefleet.cloud_sync.federated.autorun", "RetrainSettings"),
    "RunRecord": ("edgefleet.cloud_sync.federated.records", "RunRecord"),
}

if TYPE_CHECKING:  # the names _LAZY loads, typed for mypy and IDEs (a test keeps both in step)
    from .autorun import AutoRetrain as AutoRetrain
    from .autorun import RetrainSettings as RetrainSettings
    from .config import FederatedConfig as FederatedConfig
    from .config import StrategyName as StrategyName
    from .head_trainer import HeadTrainConfig as HeadTrainConfig
    from .head_trainer import train_head as train_head
    from .loop import LoopResult as LoopResult
    from .loop import close_head_loop as close_head_loop
    from .loop import close_loop as close_loop
    from .loop import promote_aggregate as promote_aggregate
    from .partition import non_iid_partitions as non_iid_partitions
    from .records import RunRecord as RunRecord
    from .runner import FederatedError as FederatedError
    from .runner import SuperLink as SuperLink
    from .runner import SuperLinkConfig as SuperLinkConfig
    from .runner import read_rounds as read_rounds
    from .runner import run_federated as run_federated
    from .runner import write_app as write_app
    from .trainer import MLPSpec as MLPSpec
    from .trainer import TrainConfig as TrainConfig
    from .trigger import DriftTrigger as DriftTrigger
    from .trigger import TriggerPolicy as TriggerPolicy

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = list(_LAZY)
