"""``edgefleet demo``: the whole loop in one command (light at import; the run imports what it needs)."""

from __future__ import annotations

from typing import Any

import click


@click.command(
    epilog="Example: edgefleet demo --devices 3 --workdir demo-run --keep",
    help="The whole loop on this machine: trains a deliberately weak digits model, compiles it (pruned + int8, "
    "signed), starts Mosquitto, a coordinator and N simulated devices (separate processes), rolls the bundle out in "
    "stages, lets the devices predict on their local data, injects drift on some of them, runs a federated round "
    "with Flower on the devices' own samples, compiles, gates and rolls out the improved version, and prints a "
    "summary (also written to WORKDIR/summary.json). Every process it starts is stopped at the end, also on Ctrl-C.")
@click.option("--devices", type=int, default=3, help="number of simulated devices")
@click.option("--workdir", help="keep everything here (must be new or empty; default: a temporary directory "
              "removed at the end)")
@click.option("--keep", is_flag=True, help="keep the temporary work directory")
@click.option("--broker", help="use this MQTT broker (mqtt://HOST:PORT) instead of starting a Mosquitto")
@click.option("--rounds", type=int, default=2, help="federated rounds")
@click.option("--local-epochs", type=int, default=5, help="local epochs per round on each device")
@click.option("--seed", type=int, default=0, help="random seed of the scenario")
def demo(**params: Any) -> int:
    from types import SimpleNamespace

    return cmd_demo(SimpleNamespace(**params))


def cmd_demo(args: Any) -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    from .runner import DemoConfig, run_demo

    summary = run_demo(DemoConfig(devices=args.devices, workdir=args.workdir, keep=args.keep, broker=args.broker,
                                  rounds=args.rounds, local_epochs=args.local_epochs, seed=args.seed))
    return 0 if summary.get("all_on_final") else 1
