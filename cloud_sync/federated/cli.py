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
- ``federated status`` shows the per-round metrics of a run directory.

This module is light: handlers import flwr/TensorFlow only when they run.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Mapping

# StrategyName's values, spelled out so that registering the CLI imports no numpy (fleet retrain uses it too)
STRATEGIES = ("fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "krum")


def register(sub: Any) -> None:
    f = sub.add_parser("federated", help="federated retraining with Flower (coordinator side)")
    fsub = f.add_subparsers(dest="federated_command", metavar="ACTION")

    r = fsub.add_parser("run", help="run federated rounds, then compile, gate and sign the aggregate")
    add_run_args(r)
    r.set_defaults(func=cmd_run)

    s = fsub.add_parser("superlink", help="run a supervised flower-superlink in the foreground")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=9092)
    s.add_argument("--state-dir", help="keep the SuperLink database here")
    s.add_argument("--ssl-certfile")
    s.add_argument("--ssl-keyfile")
    s.add_argument("--ssl-ca-certfile")
    s.add_argument("--enable-supernode-auth", action="store_true")
    s.set_defaults(func=cmd_superlink)

    st = fsub.add_parser("status", help="per-round metrics of a run directory")
    st.add_argument("out", nargs="?", default="federated-run")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    f.set_defaults(func=lambda args: (f.print_help(), 2)[1])


class _RunArgsParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # raise instead of exiting: the API validates stored run options
        from edgefleet.errors import ConfigError

        raise ConfigError(f"federated run options: {message}")


def add_run_args(r: argparse.ArgumentParser) -> None:
    from edgefleet.cloud_sync.coordinator.rollout import percent_option

    r.add_argument("--superlink", default="127.0.0.1:9092", help="HOST:PORT of the SuperLink (default %(default)s)")
    r.add_argument("--root-certificates", help="CA certificate for a TLS SuperLink (omit for insecure loopback)")
    r.add_argument("--group", default="default", help="device group the run is for (and --deploy rolls out to)")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--strategy", default="fedavg", choices=STRATEGIES)
    r.add_argument("--min-nodes", type=int, default=2, help="minimum devices per round")
    r.add_argument("--round-timeout", type=float, default=120.0, help="seconds to wait for devices in a round")
    r.add_argument("--local-epochs", type=int, default=2)
    r.add_argument("--learning-rate", type=float, default=0.1)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--min-samples", type=int, default=20, help="devices with fewer samples decline")
    r.add_argument("--proximal-mu", type=float, default=0.01, help="FedProx proximal term")
    r.add_argument("--trim-beta", type=float, default=0.2, help="FedTrimmedAvg: fraction cut from each tail")
    r.add_argument("--krum-malicious", type=int, default=1, help="Krum: number of malicious devices tolerated")
    r.add_argument("--dp-noise", type=float, default=0.0, help="central DP noise multiplier (0 = off)")
    r.add_argument("--dp-clip", type=float, default=1.0, help="central DP clipping norm")
    r.add_argument("--dp-delta", type=float, default=1e-5)
    r.add_argument("--layers", help="dense layer widths, e.g. 64,32,10 (default: from --model, else 64,32,10)")
    r.add_argument("--model", help="Keras source of the deployed version (Dense layers): the starting weights")
    r.add_argument("--preprocessing", help="pipeline spec (JSON text or file) applied to raw samples "
                                           "(default: the deployed bundle's)")
    r.add_argument("--holdout", help=".npz with raw x and y: the coordinator's holdout")
    r.add_argument("--deployed", help="the deployed bundle to gate against (its recipe compiles the aggregate)")
    r.add_argument("--recipe", help="compile recipe (TOML) instead of the deployed version's")
    r.add_argument("--key", help="private key to sign the next version with")
    r.add_argument("--margin", type=float, default=0.01, help="required accuracy gain over the deployed version")
    r.add_argument("--out", default="federated-run", help="run directory (rounds.json, aggregate.npz, next bundle)")
    r.add_argument("--timeout", type=float, help="seconds for the whole run")
    c = r.add_argument_group("coordinator", "record the rounds in the fleet registry and roll the next version out "
                                            "through the coordinator's API")
    c.add_argument("--api", default=None, help="coordinator API URL (default: EDGEFLEET_API; with --deploy "
                                               "http://127.0.0.1:8080); rounds are recorded when an API is known")
    c.add_argument("--ca-cert", default=None, metavar="PEM",
                   help="CA certificate an https API's certificate must chain to (default: EDGEFLEET_CA_CERT, else "
                        "the system's CAs)")
    c.add_argument("--token", default=None, help="API token (default: EDGEFLEET_TOKEN)")
    c.add_argument("--deploy", action="store_true",
                   help="when the gate promotes the aggregate, start a staged rollout of it to --group")
    c.add_argument("--canary", default="5%", type=percent_option("canary"),
                   help="with --deploy: canary share, 5%% or 0.05 (as for fleet deploy)")
    c.add_argument("--waves", default="25%,50%,100%", type=percent_option("wave", many=True),
                   help="with --deploy: wave shares")
    c.add_argument("--max-failure", default="2%", type=percent_option("max failure"),
                   help="with --deploy: failure rate that halts the rollout, 2%% or 0.02")
    c.add_argument("--job-timeout", default="1h", help="with --deploy: a device job running longer is TIMED_OUT")
    c.add_argument("--record-id", default=None, help=argparse.SUPPRESS)  # a run record made by the drift trigger


def add_serve_args(serve: argparse.ArgumentParser) -> None:
    """The federated options of ``edgefleet cloud serve`` (see :func:`.autorun.start_for_coordinator`)."""
    g = serve.add_argument_group("federated retraining")
    g.add_argument("--federated-dir", default="federated-runs",
                   help="where runs started by drift alerts (see fleet retrain) and the SuperLink keep their files")
    g.add_argument("--superlink-port", type=int, default=0,
                   help="also run a supervised flower-superlink on this port (runs started by drift use it)")
    g.add_argument("--superlink-host", default="127.0.0.1", help="its address (insecure only on loopback)")
    g.add_argument("--superlink-ssl-certfile", help="TLS certificate of the SuperLink")
    g.add_argument("--superlink-ssl-keyfile", help="its private key")
    g.add_argument("--superlink-ssl-ca-certfile", help="the CA certificate devices verify it with")
    g.add_argument("--superlink-node-auth", action="store_true",
                   help="admit only SuperNodes registered with `flwr supernode register` (needs TLS)")


def parse_run_args(argv: list[str], namespace: argparse.Namespace | None = None) -> argparse.Namespace:
    """Parse ``federated run`` options (no prefix abbreviations); a bad option raises ``ConfigError`` naming it."""
    p = _RunArgsParser(prog="edgefleet federated run", add_help=False, allow_abbrev=False)
    add_run_args(p)
    return p.parse_args(argv, namespace)


def given_run_options(argv: list[str]) -> set[str]:
    """The ``federated run`` options ``argv`` sets, as their option strings (``--out``), read from the parsed
    result: however an option was spelled, it is named here (a bad option raises ``ConfigError``)."""
    p = _RunArgsParser(prog="edgefleet federated run", add_help=False, allow_abbrev=False)
    add_run_args(p)
    unset = object()
    ns = argparse.Namespace(**{a.dest: unset for a in p._actions if a.option_strings})
    p.parse_args(argv, ns)  # argparse fills in defaults only where the namespace has no value
    return {a.option_strings[-1] for a in p._actions
            if a.option_strings and getattr(ns, a.dest, unset) is not unset}


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


def _api_of(args: argparse.Namespace) -> str | None:
    api = args.api or os.environ.get("EDGEFLEET_API")
    if not api and (args.deploy or args.record_id):
        api = "http://127.0.0.1:8080"
    return api


def cmd_run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from edgefleet.errors import ConfigError

    from .config import FederatedConfig
    from .runner import run_federated
    from .server_app import save_weights

    closing = bool(args.deployed or args.key or args.deploy)
    if closing and not (args.holdout and args.key):
        raise ConfigError("closing the loop needs --holdout and --key (and --deployed to gate against)")
    api = _api_of(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    layers = args.layers
    initial = ""
    if args.model:
        from .loop import weights_from_keras

        weights, spec = weights_from_keras(args.model)
        if layers and layers.replace(" ", "") != str(spec):
            raise ConfigError(f"--layers {layers} does not match the model's layers {spec}")
        layers = str(spec)
        save_weights(out / "initial.npz", weights)
        initial = str(out / "initial.npz")
    preprocessing = _spec_text(args.preprocessing)
    if not preprocessing and args.deployed:
        from edgefleet.bundle import open_bundle

        b, _ = open_bundle(Path(args.deployed))
        if b.manifest.preprocessing:
            spec_doc = dict(b.manifest.preprocessing)
            if "steps" not in spec_doc and len(spec_doc) == 1:
                spec_doc = next(iter(spec_doc.values()))
            preprocessing = json.dumps(spec_doc)
    cfg = FederatedConfig(
        rounds=args.rounds, strategy=args.strategy, layers=layers or "64,32,10", min_nodes=args.min_nodes,
        round_timeout=args.round_timeout, local_epochs=args.local_epochs, learning_rate=args.learning_rate,
        batch_size=args.batch_size, min_samples=args.min_samples, proximal_mu=args.proximal_mu, trim_beta=args.trim_beta,
        krum_malicious=args.krum_malicious, dp_noise=args.dp_noise, dp_clip=args.dp_clip, dp_delta=args.dp_delta,
        preprocessing=preprocessing, initial_weights=initial,
        holdout=str(Path(args.holdout).resolve()) if args.holdout else "", out_dir=str(out / "out"),
    )
    record = None
    if api:
        from .records import RunRecord

        record = RunRecord.open(api, args.token, group=args.group, strategy=cfg.strategy.value, rounds=cfg.rounds,
                                run_id=args.record_id, ca_cert=args.ca_cert,
                                config={k: v for k, v in cfg.to_run_config().items()
                                        if k not in ("preprocessing", "initial-weights", "out-dir")})
    print(f"federated run {record.run_id + ' ' if record else ''}for group {args.group!r}: {cfg.strategy.value}, "
          f"{cfg.rounds} round(s), at least {cfg.min_nodes} device(s) per round, SuperLink {args.superlink}", flush=True)

    def on_round(r: Mapping[str, Any]) -> None:
        print("  " + _round_line(r), flush=True)
        if record is not None:
            record.round(r, cfg.strategy.value)

    try:
        doc = run_federated(cfg, args.superlink, work_dir=out, timeout=args.timeout,
                            insecure=not args.root_certificates, root_certificates=args.root_certificates,
                            on_round=on_round)
    except BaseException as exc:
        if record is not None:
            record.update(status=f"failed: {exc}" if str(exc) else f"failed: {type(exc).__name__}")
        raise
    doc["group"] = args.group
    if record is not None:
        record.update(status="aggregated", flower_run_id=doc.get("run_id"),
                      result={"privacy": doc["privacy"]} if "privacy" in doc else {})
    if "privacy" in doc:
        p = doc["privacy"]
        print(f"privacy: ({p['epsilon']:.2f}, {p['delta']:g})-DP at device level over {p['rounds']} round(s)")
    summary: dict[str, Any] = {"run": {k: v for k, v in doc.items() if k != "config"},
                               "record_id": record.run_id if record else None}
    try:
        if closing:
            summary.update(_close(args, cfg, doc, preprocessing, out, record, api))
    except BaseException as exc:
        if record is not None:
            record.update(status=f"failed: {exc}")
        raise
    finally:
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    if record is not None:
        gate = summary.get("gate") or {}
        status = "deployed" if summary.get("deployment") else ("promoted" if gate.get("promoted") else "finished")
        record.update(status=status, result={k: summary[k] for k in ("gate", "deployment") if k in summary})
    if doc.get("aggregate"):
        print(f"aggregate: {doc['aggregate']}")
    return 0


def _close(args: argparse.Namespace, cfg: Any, doc: Mapping[str, Any], preprocessing: str, out: Path, record: Any,
           api: str | None) -> dict[str, Any]:
    """Compile, gate and sign the aggregate; with --deploy, roll the signed version out through the API."""
    from .loop import promote_aggregate

    recipe = None
    if args.recipe:
        from edgefleet.compiler import load_recipe

        recipe = load_recipe(args.recipe)
    lineage = {"federated": {"run_id": record.run_id if record else None, "flower_run_id": doc.get("run_id"),
                             "group": args.group, "rounds": cfg.rounds, "strategy": cfg.strategy.value,
                             "min_nodes": cfg.min_nodes, "dp_epsilon": (doc.get("privacy") or {}).get("epsilon")}}
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


def cmd_superlink(args: argparse.Namespace) -> int:
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


def cmd_status(args: argparse.Namespace) -> int:
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
