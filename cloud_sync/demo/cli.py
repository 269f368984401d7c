"""``edgefleet demo``: the whole loop in one command (light at import; the run imports what it needs)."""

from __future__ import annotations

from typing import Any

import click


@click.command(
    epilog="Example: edgefleet demo --devices 3 --workdir demo-run --keep",
    help="The whole loop on this machine: trains a deliberately weak digits model (the compiler's example CNN), "
    "compiles it (the backbone pruned + int8, the last layer a float trainable head; signed), starts Mosquitto, a "
    "coordinator and N simulated devices (separate processes), rolls the bundle out in stages, lets the devices "
    "predict on their local data, injects drift on some of them, runs federated rounds with Flower in which the "
    "devices train only the head on their own samples, gates and rolls out the improved version as a head-only "
    "update, then deploys a deliberately bad version that quality probation rolls back on the canary, and prints a "
    "summary (also written to WORKDIR/summary.json). Every process it starts is stopped at the end, also on Ctrl-C.")
@click.option("--devices", type=int, default=3, help="number of simulated devices")
@click.option("--workdir", help="keep everything here (must be new or empty; default: a temporary directory "
              "removed at the end)")
@click.option("--keep", is_flag=True, help="keep the temporary work directory")
@click.option("--broker", help="use this MQTT broker (mqtt://HOST:PORT) instead of starting a Mosquitto")
@click.option("--rounds", type=int, default=2, help="federated rounds")
@click.option("--local-epochs", type=int, default=5, help="local epochs per round on each device")
@click.option("--seed", type=int, default=0, help="random seed of the scenario")
@click.option("--bad-candidate/--no-bad-candidate", default=True,
              help="after the improved version, deploy a bad one that quality probation rolls back")
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
                                  rounds=args.rounds, local_epochs=args.local_epochs, seed=args.seed,
                                  bad_candidate=args.bad_candidate))
    return 0 if summary.get("all_on_final") else 1
