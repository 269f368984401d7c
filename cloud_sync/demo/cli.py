"""``edgefleet demo``: the whole loop in one command (light at import; the run imports what it needs)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    d = sub.add_parser(
        "demo", help="the whole loop on this machine: train, compile, roll out, drift, federated retraining",
        description="Trains a deliberately weak digits model, compiles it (pruned + int8, signed), starts Mosquitto, "
        "a coordinator and N simulated devices (separate processes), rolls the bundle out in stages, lets the devices "
        "predict on their local data, injects drift on some of them, runs a federated round with Flower on the "
        "devices' own samples, compiles, gates and rolls out the improved version, and prints a summary "
        "(also written to WORKDIR/summary.json). Every process it starts is stopped at the end, also on Ctrl-C.")
    d.add_argument("--devices", type=int, default=3, help="number of simulated devices (default %(default)s)")
    d.add_argument("--workdir", help="keep everything here (must be new or empty; default: a temporary directory "
                                     "removed at the end)")
    d.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    d.add_argument("--broker", help="use this MQTT broker (mqtt://HOST:PORT) instead of starting a Mosquitto")
    d.add_argument("--rounds", type=int, default=2, help="federated rounds (default %(default)s)")
    d.add_argument("--local-epochs", type=int, default=5, help="local epochs per round on each device")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    from .runner import DemoConfig, run_demo

    summary = run_demo(DemoConfig(devices=args.devices, workdir=args.workdir, keep=args.keep, broker=args.broker,
                                  rounds=args.rounds, local_epochs=args.local_epochs, seed=args.seed))
    return 0 if summary.get("all_on_final") else 1
