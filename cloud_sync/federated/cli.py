"""``edgefleet federated ...``: federated retraining from the coordinator.

- ``federated superlink`` runs a supervised ``flower-superlink`` in the foreground;
- ``federated run`` submits a run (``flwr run``) to a SuperLink, prints progress per
  round, keeps ``rounds.json`` in ``--out`` and, given ``--deployed``, ``--holdout``
  and ``--key``, compiles the aggregate with the deployed version's recipe and signs
  it as the next version only if it beats the deployed one by ``--margin``; with a
  coordinator API (``--api``/``EDGEFLEET_API``) it records the run and each round in
  the registry, and with ``--deploy`` it starts a staged rollout of the promoted
  version to ``--group`` (``--canary``/``--waves``/``--max-failure`` as for
  ``fleet deploy``);
- ``federated status`` shows the per-round metrics of a run directory;
- ``federated ls``, ``federated log RUN`` and ``federated stop RUN`` list the runs the
  coordinator's registry holds, show one run's rounds and events (status changes, stop
  requests, the failure reason) and stop a run - one the coordinator supervises (started
  by drift) at once, one started by hand through the stop flag its ``federated run``
  polls. While ``federated run`` waits it says how many nodes are connected and which
  round runs (``waiting: 0 of 2 nodes connected`` every few seconds).

This module is light: handlers import flwr/TensorFlow only when they run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping

import click
from click.core import ParameterSource

from edgefleet.cli import handler_command
from edgefleet.clitypes import Duration, Percent

# StrategyName's values, spelled out so that registering the CLI imports no numpy (fleet retrain uses it too)
STRATEGIES = ("fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "krum")

RUN_EXAMPLE = ("edgefleet federated run --superlink 127.0.0.1:9092 --group line-1 --rounds 3 --model digits.keras "
               "--deployed v1.efb --holdout holdout.npz --key keys/edgefleet.key --deploy")


def run_options() -> list[click.Parameter]:
    """The options of ``federated run``: the command's, and what :func:`parse_run_args` checks stored
    run options (``fleet retrain -- ...``) against."""
    coord = "coordinator: "
    return [
        click.Option(["--superlink"], default="127.0.0.1:9092", help="HOST:PORT of the SuperLink"),
        click.Option(["--root-certificates"], help="CA certificate for a TLS SuperLink (omit for insecure loopback)"),
        click.Option(["--group"], default="default", help="device group the run is for (and --deploy rolls out to)"),
        click.Option(["--rounds"], type=int, default=3, help="federated rounds"),
        click.Option(["--strategy"], default="fedavg", type=click.Choice(STRATEGIES), help="the aggregation strategy"),
        click.Option(["--min-nodes"], type=int, default=2, help="minimum devices per round"),
        click.Option(["--round-timeout"], type=Duration(lo=0.001), default="120s",
                     help="how long to wait for devices in a round (90s, 10m; a bare number is seconds)"),
        click.Option(["--local-epochs"], type=int, default=2, help="epochs each device trains per round"),
        click.Option(["--learning-rate"], type=float, default=0.1, help="devices' learning rate"),
        click.Option(["--optimizer"], default="sgd", type=click.Choice(("sgd", "adam")),
                     help="devices' optimizer when they train a bundle's trainable head (a dense network: SGD)"),
        click.Option(["--class-weight"], default="none", type=click.Choice(("none", "balanced")),
                     help="per-class loss weights of a head run: balanced weighs each device's rare classes up"),
        click.Option(["--personalize"], is_flag=True,
                     help="head runs: after the last round each device fine-tunes the global head on its own samples "
                     "and keeps that local head (served once the new version is installed) when it beats the global "
                     "head on its held-back samples; both accuracies are reported per device"),
        click.Option(["--personal-epochs"], type=click.IntRange(min=1), default=5,
                     help="with --personalize: epochs of the local fine-tuning"),
        click.Option(["--personal-margin"], type=click.FloatRange(0, 1, max_open=True), default=0.0,
                     help="with --personalize: held-back accuracy the local head must gain to be kept (0: any gain)"),
        click.Option(["--batch-size"], type=int, default=32, help="devices' batch size"),
        click.Option(["--min-samples"], type=int, default=20, help="devices with fewer samples decline"),
        click.Option(["--holdout-fraction"], type=click.FloatRange(0, 1, max_open=True), default=0.2,
                     help="share of each device's samples it holds back from training (its local holdout accuracy; "
                     "--personalize compares the heads on it)"),
        click.Option(["--proximal-mu"], type=float, default=0.01, help="FedProx proximal term"),
        click.Option(["--trim-beta"], type=float, default=0.2, help="FedTrimmedAvg: fraction cut from each tail"),
        click.Option(["--krum-malicious"], type=int, default=1, help="Krum: number of malicious devices tolerated"),
        click.Option(["--dp-noise"], type=float, default=0.0, help="central DP noise multiplier (0 = off)"),
        click.Option(["--dp-clip"], type=float, default=1.0, help="central DP clipping norm"),
        click.Option(["--dp-delta"], type=float, default=1e-5, help="central DP delta"),
        click.Option(["--layers"], help="dense layer widths, e.g. 64,32,10 (default: from --model, else 64,32,10)"),
        click.Option(["--model"], help="Keras source of the deployed version (Dense layers): the starting weights "
                     "(not for a --deployed bundle with a trainable head: its head is trained, on its own backbone)"),
        click.Option(["--preprocessing"], help="pipeline spec (JSON text or file) applied to raw samples "
                     "(default: the deployed bundle's)"),
        click.Option(["--holdout"], help=".npz with raw x and y: the coordinator's holdout"),
        click.Option(["--deployed"], help="the deployed bundle to gate against (its recipe compiles the aggregate; "
                     "with a trainable head, devices train only its head and the next version is this bundle with "
                     "the aggregated head, not recompiled)"),
        click.Option(["--recipe"], help="compile recipe (TOML) instead of the deployed version's"),
        click.Option(["--key"], help="private key to sign the next version with"),
        click.Option(["--margin"], type=float, default=0.01, help="required accuracy gain over the deployed version"),
        click.Option(["--out"], default="federated-run", help="run directory (rounds.json, aggregate.npz, next bundle)"),
        click.Option(["--timeout"], type=Duration(lo=0.001), help="time for the whole run (30m, 2h; bare: seconds)"),
        click.Option(["--api"], envvar="EDGEFLEET_API", show_envvar=True,
                     help=coord + "API URL (with --deploy default http://127.0.0.1:8080); rounds are recorded in the "
                     "fleet registry when an API is known"),
        click.Option(["--ca-cert"], envvar="EDGEFLEET_CA_CERT", show_envvar=True, metavar="PEM",
                     help=coord + "CA certificate an https API's certificate must chain to (default: the system's CAs)"),
        click.Option(["--token"], help=coord + "API token (default: EDGEFLEET_TOKEN, or the file EDGEFLEET_TOKEN_FILE)"),
        click.Option(["--deploy"], is_flag=True,
                     help=coord + "when the gate promotes the aggregate, start a staged rollout of it to --group"),
        click.Option(["--canary"], default="5%", type=Percent("canary"),
                     help="with --deploy: canary share, 5% or 0.05 (as for fleet deploy)"),
        click.Option(["--waves"], default="25%,50%,100%", type=Percent("wave", many=True),
                     help="with --deploy: wave shares"),
        click.Option(["--max-failure"], default="2%", type=Percent("max failure"),
                     help="with --deploy: failure rate that halts the rollout, 2% or 0.02"),
        click.Option(["--job-timeout"], default="1h",
                     help="with --deploy: a device job running longer is TIMED_OUT (90s, 10m, 2h, 1d)"),
        click.Option(["--record-id"], hidden=True),  # a run record made by the drift trigger
    ]


def serve_options() -> list[click.Parameter]:
    """The federated options of ``edgefleet cloud serve`` (see :func:`.autorun.start_for_coordinator`)."""
    fed = "federated retraining: "
    return [
        click.Option(["--federated-dir"], default="federated-runs",
                     help=fed + "where runs started by drift alerts (see fleet retrain) and the SuperLink keep their "
                     "files"),
        click.Option(["--superlink-port"], type=click.IntRange(0, 65535), default=0,
                     help=fed + "also run a supervised flower-superlink on this port (runs started by drift use it; "
                     "0: none)"),
        click.Option(["--superlink-host"], default="127.0.0.1", help=fed + "its address (insecure only on loopback)"),
        click.Option(["--superlink-ssl-certfile"], help=fed + "TLS certificate of the SuperLink"),
        click.Option(["--superlink-ssl-keyfile"], help=fed + "its private key"),
        click.Option(["--superlink-ssl-ca-certfile"], help=fed + "the CA certificate devices verify it with"),
        click.Option(["--superlink-node-auth"], is_flag=True,
                     help=fed + "admit only SuperNodes registered with `flwr supernode register` (needs TLS)"),
    ]


def _run_context(argv: list[str]) -> click.Context:
    """``federated run`` options parsed by its own command (click never abbreviates an option); a bad option
    raises ``ConfigError`` naming it, as the API reports stored run options."""
    from edgefleet.errors import ConfigError

    cmd = click.Command("run", params=run_options(), add_help_option=False)
    try:
        return cmd.make_context("edgefleet federated run", list(argv), resilient_parsing=False)
    except click.NoSuchOption as exc:  # named as it was given (``--ou=x``), as the API reports it back
        given = next((a for a in argv if a == exc.option_name or a.startswith(f"{exc.option_name}=")), exc.option_name)
        raise ConfigError(f"federated run options: unrecognized arguments: {given}") from None
    except click.UsageError as exc:
        raise ConfigError(f"federated run options: {exc.format_message()}") from None


def parse_run_args(argv: list[str]) -> SimpleNamespace:
    """Parse ``federated run`` options (no prefix abbreviations); a bad option raises ``ConfigError`` naming it."""
    return SimpleNamespace(**_run_context(argv).params)


def given_run_options(argv: list[str]) -> set[str]:
    """The ``federated run`` options ``argv`` sets, as their option strings (``--out``), read from the parsed
    result: however an option was spelled, it is named here (a bad option raises ``ConfigError``)."""
    ctx = _run_context(argv)
    return {p.opts[-1] for p in ctx.command.params
            if p.name and ctx.get_parameter_source(p.name) is ParameterSource.COMMANDLINE}


@click.group(no_args_is_help=True, epilog="Example: " + RUN_EXAMPLE)
def federated() -> None:
    """Federated retraining with Flower (coordinator side): run rounds, then compile, gate, sign and roll out."""


def _command(name: str, func: Callable[[Any], int], example: str, help: str, params: list[click.Parameter]) -> None:
    federated.add_command(handler_command(name, func, example, help, params))


def _spec_text(value: str | None) -> str:
    if not value:
        return ""
    p = Path(value)
    text = p.read_text() if p.is_file() else value
    return json.dumps(json.loads(text))


def _round_line(r: Mapping[str, Any]) -> str:
    parts = [f"round {r['round']}: {r.get('train_replies', 0)} device(s)"]
    if r.get("train_failures"):
        parts.append(f"{r['train_failures']} failed/declined")
    if "train" in r:
        parts.append(f"train acc {r['train'].get('train-accuracy', float('nan')):.3f}")
    if "evaluate" in r:
        parts.append(f"local holdout acc {r['evaluate'].get('eval-accuracy', float('nan')):.3f}")
    if "central" in r:
        parts.append(f"coordinator holdout acc {r['central']['accuracy']:.3f}")
    if "dp_epsilon" in r:
        parts.append(f"eps {r['dp_epsilon']:.2f}")
    parts.append(f"{r.get('seconds', 0):.1f}s")
    return ", ".join(parts)


def _api_of(args: Any) -> str | None:
    api = args.api or os.environ.get("EDGEFLEET_API")
    if not api and (args.deploy or args.record_id):
        api = "http://127.0.0.1:8080"
    return api


def cmd_run(args: Any) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from edgefleet.errors import ConfigError

    from ..coordinator.rows import RunStatus
    from .config import FederatedConfig
    from .runner import run_federated
    from .server_app import save_weights

    closing = bool(args.deployed or args.key or args.deploy)
    if closing and not (args.holdout and args.key):
        raise ConfigError("closing the loop needs --holdout and --key (and --deployed to gate against)")
    api = _api_of(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    deployed = _deployed_manifest(args.deployed) if args.deployed else None
    head_mode = deployed is not None and deployed.head is not None
    layers = args.layers
    initial = ""
    if head_mode:
        given = [o for o, v in (("--model", args.model), ("--layers", args.layers), ("--recipe", args.recipe),
                                ("--preprocessing", args.preprocessing)) if v]
        if given:
            raise ConfigError(f"{args.deployed} has a trainable head: devices train that head on its own backbone's "
                              f"features and nothing is recompiled, so {', '.join(given)} has no use here")
    elif args.model:
        from .loop import weights_from_keras

        weights, spec = weights_from_keras(args.model)
        if layers and layers.replace(" ", "") != str(spec):
            raise ConfigError(f"--layers {layers} does not match the model's layers {spec}")
        layers = str(spec)
        save_weights(out / "initial.npz", weights)
        initial = str(out / "initial.npz")
    preprocessing = "" if head_mode else _spec_text(args.preprocessing)
    if not preprocessing and deployed is not None and not head_mode and deployed.preprocessing:
        spec_doc = dict(deployed.preprocessing)
        if "steps" not in spec_doc and len(spec_doc) == 1:
            spec_doc = next(iter(spec_doc.values()))
        preprocessing = json.dumps(spec_doc)
    head_bundle = head_backbone = ""
    if head_mode:
        from .head_trainer import backbone_digest

        head_bundle, head_backbone = str(Path(args.deployed).resolve()), backbone_digest(deployed)
    cfg = FederatedConfig(
        rounds=args.rounds, strategy=args.strategy, layers=layers or "64,32,10", min_nodes=args.min_nodes,
        round_timeout=args.round_timeout, local_epochs=args.local_epochs, learning_rate=args.learning_rate,
        batch_size=args.batch_size, min_samples=args.min_samples, holdout_fraction=args.holdout_fraction, proximal_mu=args.proximal_mu, trim_beta=args.trim_beta,
        krum_malicious=args.krum_malicious, dp_noise=args.dp_noise, dp_clip=args.dp_clip, dp_delta=args.dp_delta,
        preprocessing=preprocessing, initial_weights=initial, optimizer=args.optimizer, class_weight=args.class_weight,
        holdout=str(Path(args.holdout).resolve()) if args.holdout else "", out_dir=str(out / "out"),
        head_bundle=head_bundle, head_backbone=head_backbone, personalize=args.personalize,
        personal_epochs=args.personal_epochs, personal_margin=args.personal_margin,
    )
    record = None
    if api:
        from .records import RunRecord

        record = RunRecord.open(api, args.token, group=args.group, strategy=cfg.strategy.value, rounds=cfg.rounds,
                                run_id=args.record_id, ca_cert=args.ca_cert,
                                config={k: v for k, v in cfg.to_run_config().items()
                                        if k not in ("preprocessing", "initial-weights", "out-dir", "head-bundle")
                                        and not (head_mode and k == "layers")})
    print(f"federated run {record.run_id + ' ' if record else ''}for group {args.group!r}: {cfg.strategy.value}, "
          f"{cfg.rounds} round(s), at least {cfg.min_nodes} device(s) per round, SuperLink {args.superlink}"
          + (f"; devices train the head of {deployed.name} v{deployed.version} ({cfg.optimizer})"
             if head_mode and deployed is not None else ""), flush=True)

    def on_round(r: Mapping[str, Any]) -> None:
        print("  " + _round_line(r), flush=True)
        if record is not None:
            record.round(r, cfg.strategy.value)

    def submitted(flower_run_id: int | None) -> None:
        print(f"  submitted as Flower run {flower_run_id}; waiting for {cfg.min_nodes} node(s)", flush=True)
        if record is not None and flower_run_id is not None:
            record.update(flower_run_id=flower_run_id)

    try:
        doc = run_federated(cfg, args.superlink, work_dir=out, timeout=args.timeout,
                            insecure=not args.root_certificates, root_certificates=args.root_certificates,
                            on_round=on_round, progress=lambda line: print("  " + line, flush=True),
                            should_stop=record.stop_requested if record is not None else None,
                            on_submitted=submitted)
    except BaseException as exc:
        if record is not None:
            record.ended(exc)  # stopped (asked through the API, SIGTERM, Ctrl-C) or failed, with the reason
        raise
    doc["group"] = args.group
    if record is not None:
        record.update(status=RunStatus.AGGREGATED, flower_run_id=doc.get("run_id"),
                      result={k: doc[k] for k in ("privacy", "personalization") if k in doc})
    if "privacy" in doc:
        p = doc["privacy"]
        print(f"privacy: ({p['epsilon']:.2f}, {p['delta']:g})-DP at device level over {p['rounds']} round(s)")
    if "personalization" in doc:
        from .records import personalization_lines

        for line in personalization_lines(doc["personalization"]):
            print(line, flush=True)
    summary: dict[str, Any] = {"run": {k: v for k, v in doc.items() if k != "config"},
                               "record_id": record.run_id if record else None}
    try:
        if closing:
            summary.update(_close(args, cfg, doc, preprocessing, out, record, api))
    except BaseException as exc:
        if record is not None:
            record.ended(exc)
        raise
    finally:
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    if record is not None:
        gate = summary.get("gate") or {}
        status = (RunStatus.DEPLOYED if summary.get("deployment")
                  else RunStatus.PROMOTED if gate.get("promoted") else RunStatus.FINISHED)
        record.update(status=status, result={k: summary[k] for k in ("gate", "deployment") if k in summary})
    if doc.get("aggregate"):
        print(f"aggregate: {doc['aggregate']}")
    return 0


def _deployed_manifest(path: str) -> Any:
    """The manifest of the deployed bundle (a directory or an .efb)."""
    from edgefleet.bundle import open_bundle

    b, tmp = open_bundle(Path(path))
    if tmp is not None:
        tmp.cleanup()
    return b.manifest


def _close(args: Any, cfg: Any, doc: Mapping[str, Any], preprocessing: str, out: Path, record: Any,
           api: str | None) -> dict[str, Any]:
    """Compile (or, for a head run, re-head), gate and sign the aggregate; with --deploy, roll the signed version
    out through the API."""
    from .loop import promote_aggregate, promote_head_aggregate

    lineage = {"federated": {"run_id": record.run_id if record else None, "flower_run_id": doc.get("run_id"),
                             "group": args.group, "rounds": cfg.rounds, "strategy": cfg.strategy.value,
                             "min_nodes": cfg.min_nodes, "dp_epsilon": (doc.get("privacy") or {}).get("epsilon")}}
    if cfg.head_mode:
        lineage["federated"].update({"trained": "head", "optimizer": cfg.optimizer, "class_weight": cfg.class_weight,
                                     "local_epochs": cfg.local_epochs})
        res = promote_head_aggregate(dict(doc), args.deployed, args.holdout, out / "next", private_key=args.key,
                                     margin=args.margin, lineage=lineage)
    else:
        recipe = None
        if args.recipe:
            from edgefleet.compiler import load_recipe

            recipe = load_recipe(args.recipe)
        res = promote_aggregate(dict(doc), cfg.spec, args.holdout, out / "next", private_key=args.key,
                                deployed=args.deployed, margin=args.margin, recipe=recipe, lineage=lineage,
                                preprocessing=json.loads(preprocessing) if preprocessing and not args.deployed else None)
    result: dict[str, Any] = {"gate": res.to_dict(), "deployment": None}
    verdict = f"signed version {res.version} at {res.bundle}" if res.promoted else "not promoted"
    print(f"gate: {res.reason}: {verdict}", flush=True)
    if not args.deploy:
        return result
    if not res.promoted or not res.bundle:
        print(f"deploy: nothing to roll out - the aggregate was not promoted ({res.reason}); "
              f"group {args.group!r} keeps its deployed version", flush=True)
        return result
    from edgefleet.cloud_sync.coordinator.client import deploy_bundle

    assert api is not None
    dep = deploy_bundle(api, args.token, res.bundle, args.group, args.canary, args.waves, args.max_failure,
                        args.job_timeout, ca_cert=args.ca_cert)
    result["deployment"] = {"id": dep["id"], "version": dep["version"], "group": dep["group"],
                            "targets": dep["targets"], "state": dep["state"]}
    print(f"deployment {dep['id']}: {dep['name']} {dep['version']} to {dep['targets']} device(s) of group "
          f"{dep['group']} (canary {args.canary}, waves {args.waves}, max failure {args.max_failure})", flush=True)
    return result


def cmd_superlink(args: Any) -> int:
    import signal
    import threading

    from .runner import SuperLink, SuperLinkConfig

    tls = bool(args.ssl_certfile)
    cfg = SuperLinkConfig(host=args.host, port=args.port, insecure=not tls, state_dir=args.state_dir,
                          ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                          ssl_ca_certfile=args.ssl_ca_certfile, enable_supernode_auth=args.enable_supernode_auth)
    link = SuperLink(cfg)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    link.start()
    try:
        link.wait_ready()
        print(f"flower-superlink supervised on {cfg.address} ({'TLS' if tls else 'insecure, loopback'}); Ctrl-C stops it",
              flush=True)
        done.wait()
    finally:
        link.stop()
    return 0


def api_options() -> list[click.Parameter]:
    """Where the coordinator's API is, how to trust it, the token, --json: as every ``fleet`` command takes them."""
    return [
        click.Option(["--api"], envvar="EDGEFLEET_API", show_envvar=True, default="http://127.0.0.1:8080",
                     help="the coordinator's API: http://HOST:PORT or https://HOST:PORT"),
        click.Option(["--ca-cert"], envvar="EDGEFLEET_CA_CERT", show_envvar=True, metavar="PEM",
                     help="CA certificate an https API's certificate must chain to (default: the system's CAs; "
                     "verification is never switched off)"),
        click.Option(["--token-file"], help="file holding the API token (default: EDGEFLEET_TOKEN, or the file "
                     "EDGEFLEET_TOKEN_FILE)"),
        click.Option(["--token"], help="API token (deprecated: other users see it in the process list; use the above)"),
        click.Option(["--json"], is_flag=True, help="print JSON"),
    ]


def _call(args: Any, method: str, path: str, **kw: Any) -> Any:
    from edgefleet.cloud_sync.coordinator.client import api_call, read_token

    return api_call(args.api, read_token(args.token, args.token_file), method, path, ca_cert=args.ca_cert, **kw)


def _run_path(run_id: str) -> str:
    from urllib.parse import quote

    return f"/v1/federated/runs/{quote(run_id, safe='')}"


def cmd_ls(args: Any) -> int:
    from .records import RUNS_HEADER, aligned, runs_table

    params: dict[str, Any] = {"limit": args.limit}
    if args.group:
        params["group"] = args.group
    runs = _call(args, "GET", "/v1/federated/runs", params=params)
    if args.json:
        print(json.dumps(runs, indent=2, sort_keys=True, default=str))
        return 0
    if not runs:
        print("federated runs: none" + (f" for group {args.group}" if args.group else ""))
        return 0
    print("\n".join(aligned(RUNS_HEADER, runs_table(runs))))
    return 0


def cmd_log(args: Any) -> int:
    from .records import log_lines

    run = _call(args, "GET", _run_path(args.run))
    events = _call(args, "GET", _run_path(args.run) + "/events")
    if args.json:
        print(json.dumps({"run": run, "events": events}, indent=2, sort_keys=True, default=str))
        return 0
    print("\n".join(log_lines(run, events)))
    return 0


def cmd_stop(args: Any) -> int:
    import time

    from ..coordinator.rows import RunStatus
    from .runner import FederatedError, RunEndedError

    # a run that has already ended: 409, nothing stopped (RunEndedError)
    answer = _call(args, "POST", _run_path(args.run) + "/stop", params={"force": "true"} if args.force else None,
                   errors={409: RunEndedError})
    run = answer["run"]
    how = ("the coordinator supervising it stops its process" if answer["supervised"]
           else "its `federated run` process stops when it next polls its record")
    if not args.json:
        print(f"federated run {args.run}: stop requested; {how}", flush=True)
    deadline = time.monotonic() + args.timeout
    while args.wait and RunStatus(run["status"]).active and time.monotonic() < deadline:
        time.sleep(0.5)
        run = _call(args, "GET", _run_path(args.run))
    if args.json:
        print(json.dumps(run, indent=2, sort_keys=True, default=str))
    status = RunStatus(run["status"])
    if status is RunStatus.STOPPED:
        if not args.json:
            print(f"federated run {args.run} stopped" + (f": {run['error']}" if run.get("error") else ""))
        return 0
    if not args.wait:
        return 0
    if status.active:
        raise FederatedError(f"federated run {args.run} is still {status} after {args.timeout:.0f}s: is its process "
                             f"alive? `edgefleet federated stop {args.run} --force` records it stopped")
    raise RunEndedError(f"federated run {args.run} ended {status} before the stop took effect"
                        + (f": {run['error']}" if run.get("error") else ""))


def cmd_status(args: Any) -> int:
    from edgefleet.errors import ConfigError

    from .runner import read_rounds

    base = Path(args.out)
    doc = read_rounds(base / "out") or read_rounds(base)
    if doc is None:
        raise ConfigError(f"no rounds.json under {base}")
    if args.json:
        print(json.dumps(doc, indent=1, default=float))
        return 0
    print(f"status: {doc.get('status')}  strategy: {doc.get('config', {}).get('strategy')}  "
          f"{doc.get('seconds', 0):.1f}s")
    for r in doc.get("rounds", []):
        if r.get("round", 0) > 0:
            print("  " + _round_line(r))
    if "privacy" in doc:
        p = doc["privacy"]
        print(f"  privacy: epsilon {p['epsilon']:.2f} at delta {p['delta']:g}")
    return 0


_command("run", cmd_run, RUN_EXAMPLE,
         "Run federated rounds on a SuperLink; with --holdout/--key (and --deployed) compile, gate and sign the "
         "aggregate as the next version, and with --deploy roll it out.", run_options())
_command("superlink", cmd_superlink, "edgefleet federated superlink --port 9092 --state-dir /var/lib/flwr",
         "Run a supervised flower-superlink in the foreground (Ctrl-C stops it).", [
             click.Option(["--host"], default="127.0.0.1", help="address to listen on (insecure only on loopback)"),
             click.Option(["--port"], type=click.IntRange(1, 65535), default=9092, help="Fleet API port"),
             click.Option(["--state-dir"], help="keep the SuperLink database here"),
             click.Option(["--ssl-certfile"], help="TLS certificate (PEM)"),
             click.Option(["--ssl-keyfile"], help="its private key (PEM)"),
             click.Option(["--ssl-ca-certfile"], help="the CA certificate (PEM)"),
             click.Option(["--enable-supernode-auth"], is_flag=True,
                          help="admit only SuperNodes registered with `flwr supernode register` (needs TLS)")])
_command("ls", cmd_ls, "edgefleet federated ls --group line-1 --api https://coordinator:8080",
         "The federated runs the coordinator's registry holds, newest first: status, group, trigger, rounds done, "
         "start time.", [
             click.Option(["--group"], help="only this group's runs"),
             click.Option(["--limit"], type=click.IntRange(1, 200), default=20, help="latest runs to show"),
             *api_options()])
_command("log", cmd_log, "edgefleet federated log 3f2a9c1b7d04",
         "One run's rounds (per-round metrics) and events (status changes, stop requests) in time order, then "
         "why it failed or stopped, and its gate and deployment.", [
             click.Argument(["run"]), *api_options()])
_command("stop", cmd_stop, "edgefleet federated stop 3f2a9c1b7d04 --timeout 2m",
         "Stop a run: the coordinator stops a run it supervises (started by drift) at once; a run started by hand "
         "stops when its `federated run` next polls its record. Waits until the run is stopped (exit 0), ended "
         "otherwise or still running at --timeout (non-zero).", [
             click.Argument(["run"]),
             click.Option(["--wait/--no-wait"], default=True, help="wait until the run has stopped"),
             click.Option(["--timeout"], type=Duration(lo=0.001), default="60s",
                          help="how long to wait (90s, 5m; a bare number is seconds)"),
             click.Option(["--force"], is_flag=True,
                          help="record the run stopped now, without waiting for its process (one that is gone)"),
             *api_options()])
_command("status", cmd_status, "edgefleet federated status federated-run --json",
         "Per-round metrics of a run directory.", [
             click.Argument(["out"], required=False, default="federated-run"),
             click.Option(["--json"], is_flag=True, help="print JSON")])
