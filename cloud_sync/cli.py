"""CLI: ``edgefleet cloud serve|acl|broker-config``, ``edgefleet sync run`` (device side), ``edgefleet fleet ...``
(operators), and ``agent run --broker`` through the agent's public hook. Commands only: the library code they
call lives in coordinator/, device/, broker.py and federated/.

Light at import time: handlers import paho, SQLAlchemy, FastAPI and httpx when they run.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any, Callable

import click

from edgefleet.cli import handler_command
from edgefleet.clitypes import Duration, Percent
from edgefleet.device_agent.cli import RunExtension, extend_run
from edgefleet.errors import ConfigError

from .coordinator.client import api_call, deploy_bundle, read_token
from .coordinator.rollout import MAX_MIN_FINISHED, MAX_TOKEN_TTL
from .federated.cli import STRATEGIES, serve_options


def _mqtt_config(args: Any, client_id: str) -> Any:
    from .transport import MqttConfig

    return MqttConfig(url=args.broker, client_id=client_id, username=args.username, password=args.password,
                      ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file)


def _wait_for_signal() -> None:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()


# -- coordinator ---------------------------------------------------------------------------------------
def _serve(args: Any) -> int:
    from edgefleet import logs

    from .api_tls import check_server_files

    logs.daemon()  # connects, rollouts, installs and halts at info unless --log-level says otherwise

    tls = check_server_files(args.tls_cert, args.tls_key)  # refused before anything starts
    from .coordinator.alerts import check_webhooks

    check_webhooks(args.alert_webhook)
    from .coordinator.alerts import webhook_verify

    webhook_verify(args.alert_ca_cert)  # a missing or non-PEM CA file: refused before anything starts
    args.api_url = _callback_url(args, tls is not None)
    if args.token:
        print("edgefleet: --token is visible to every user in the process list; use EDGEFLEET_TOKEN or --token-file",
              file=sys.stderr)
    args.token = read_token(args.token, args.token_file)
    if not args.token:
        raise ConfigError("the coordinator's admin API token is required: EDGEFLEET_TOKEN or --token-file")
    import uvicorn

    from .coordinator.api import create_app, server_config
    from .coordinator.registry import Registry
    from .coordinator.service import Coordinator
    from .transport import MqttTransport

    allow, groups = None, None
    if args.allow:
        from .coordinator.service import read_allow_file

        allow, groups = read_allow_file(args.allow)
    signing_key = None
    if args.signing_key:
        from edgefleet.keys import load_private_key

        signing_key = load_private_key(args.signing_key)
    from edgefleet.keys import load_public_key

    trusted = tuple(load_public_key(k) for k in args.trust)
    from .origin import make_origin

    origin = make_origin(args.origin_dir, args.origin_url, s3_endpoint=args.origin_endpoint)  # refused before start
    reg = Registry(args.db)
    transport = MqttTransport(_mqtt_config(args, args.client_id or f"edgefleet-coord-{os.getpid()}"))
    coord = Coordinator(reg, transport, args.fleet, share_group=args.share_group or None,
                        chunk_size=args.chunk_size, allow_list=allow, groups=groups, signing_key=signing_key,
                        trusted_keys=trusted, tuf_repo=args.tuf_repo, freeze_gc=True,
                        telemetry_rate=args.telemetry_rate, telemetry_burst=args.telemetry_burst, origin=origin)
    if args.broker_config:  # decommissioned devices are revoked from its ACL and password file
        from .coordinator.acl import BrokerAccess
        from .coordinator.housekeeping import sync_broker

        coord.broker_access = BrokerAccess.from_config(args.broker_config, args.fleet)
        if coord.gone:
            sync_broker(coord)
    coord.start()
    from .coordinator.alerts import start_alerts
    from .federated.autorun import start_for_coordinator

    try:
        retrain = start_for_coordinator(args, coord)  # drift-started runs; the supervised SuperLink if asked
        alerts = start_alerts(coord, args.alert_webhook, args.offline_after,  # webhooks; None without URLs
                              ca_cert=args.alert_ca_cert)
    except BaseException:
        coord.stop()
        raise
    ssl_files = {"ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key} if tls is not None else {}
    server = uvicorn.Server(server_config(create_app(coord, args.token), args.api_host, args.api_port,
                                          log_level="warning", **ssl_files))
    scheme = "https" if tls is not None else "http"
    import logging

    api = f"{scheme}://{args.api_host}:{args.api_port}"
    logging.getLogger(__name__).info(f"edgefleet coordinator: fleet {args.fleet}, broker {args.broker}, API {api}",
                                     extra={"event": "coordinator_serving", "fleet": args.fleet, "api": api,
                                            "broker": args.broker})
    if tls is not None:
        from .api_tls import self_check

        why = self_check(tls, args.api_url, args.tls_ca)
        if why:
            print(f"edgefleet: warning: runs started on drift will not verify the API at {args.api_url} ({why}); "
                  "set --tls-ca (the CA that signed --tls-cert) and --api-url (a host the certificate names)",
                  file=sys.stderr, flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        # uvicorn re-raises SIGINT/SIGTERM once it has shut down; with the default handler the process would die
        # right there, before the cleanup below (and leave the SuperLink and drift-started runs behind)
        signal.signal(sig, lambda *_: None)
    try:
        server.run()
    finally:
        if alerts is not None:
            alerts[0].stop()
            alerts[1].stop()
        retrain.stop()
        coord.stop()
        reg.close()
    return 0


def _callback_url(args: Any, tls: bool) -> str:
    """The URL the coordinator's own children (runs started on drift) call its API at."""
    from urllib.parse import urlsplit

    scheme = "https" if tls else "http"
    if args.api_url:
        parts = urlsplit(args.api_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--api-url {args.api_url}: give http(s)://HOST:PORT")
        if parts.scheme != scheme:
            raise ConfigError(f"--api-url {args.api_url} must be {scheme}:// "
                              f"({'with' if tls else 'without'} --tls-cert the API is served over {scheme})")
        return str(args.api_url).rstrip("/")
    host = "127.0.0.1" if args.api_host in ("0.0.0.0", "::", "") else args.api_host
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{args.api_port}"


def _broker_config(args: Any) -> int:
    from .broker import BrokerConfig, write_broker_config

    files = write_broker_config(BrokerConfig(
        args.out, port=args.port, bind=args.bind, tls_cert=args.tls_cert, tls_key=args.tls_key, cafile=args.cafile,
        require_certificate=args.require_certificate, acl_file=args.acl, fleet=args.fleet,
        coordinators=tuple(args.coordinator or ["edgefleet-coordinator"]), password_file=args.password_file,
        allow_anonymous=args.allow_anonymous, max_devices=args.max_devices, insecure=args.insecure,
        run_as=args.run_as))
    print(files.conf)
    print(f"start it with: mosquitto -c {files.conf}", file=sys.stderr)
    return 0


def _acl(args: Any) -> int:
    from .coordinator.acl import write_acl

    print(write_acl(args.out, args.fleet, list(args.coordinator) or ["edgefleet-coordinator"]))
    return 0


# -- device --------------------------------------------------------------------------------------------------
def _broker_options(default: str | None, note: str = "", who: str = "this device's") -> tuple[click.Option, ...]:
    """The MQTT broker options of a device (``agent run``'s extension, ``sync run``) or of the coordinator."""
    return (
        click.Option(["--broker"], default=default, help=note + "the fleet's MQTT broker, mqtt://host:port or "
                     "mqtts://host:port (jobs, OTA, telemetry through it)"),
        click.Option(["--username"], envvar="EDGEFLEET_MQTT_USER", show_envvar=True, help=note + "MQTT user"),
        click.Option(["--password"], envvar="EDGEFLEET_MQTT_PASSWORD", show_envvar=True, help=note + "MQTT password"),
        click.Option(["--ca-file"], help=note + "CA certificate(s) of the broker (PEM)"),
        click.Option(["--cert-file"], help=note + f"{who} client certificate (PEM)"),
        click.Option(["--key-file"], help=note + "its private key (PEM)"),
    )


def _agent_run_options() -> tuple[click.Option, ...]:
    """``edgefleet agent run --broker URL --fleet F --device-id D``: the agent daemon connected to the fleet."""
    sync = "cloud sync (with --broker): "
    return (
        *_broker_options(None, sync),
        click.Option(["--fleet"], help=sync + "the fleet to join"),
        click.Option(["--device-id"], help=sync + "this device's id (default: device_id of the config)"),
        click.Option(["--group"], default="", show_default=False, help=sync + "the group this device asks for: "
                     "recorded by the coordinator, applied only by the operator (fleet assign)"),
        click.Option(["--telemetry-interval"], type=float, default=5.0, help=sync + "seconds between telemetry drains"),
    )


def _agent_run(args: Any, local: Any) -> int:
    """Without --broker, ``agent run`` stays the local daemon (``local``)."""
    if not args.broker:
        given = [f for f, v in (("--fleet", args.fleet), ("--device-id", args.device_id), ("--group", args.group)) if v]
        if given:
            raise ConfigError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --broker URL "
                              "(the fleet's MQTT broker)")
        return int(local(args) or 0)
    from edgefleet.device_agent.cli import config_from_args

    cfg = config_from_args(args)
    device_id = args.device_id or cfg.device_id
    if not args.fleet or not device_id:
        raise ConfigError("with --broker, give --fleet and --device-id (or device_id in the config's [agent])")
    cfg = cfg.with_overrides(device_id=device_id)
    return _run_connected(args, cfg, os.path.join(cfg.state_dir, "sync"), args.tick)


def _sync_run(args: Any) -> int:
    from edgefleet.device_agent.config import AgentConfig, load_config

    cfg = load_config(args.config) if args.config else AgentConfig()
    cfg = cfg.with_overrides(state_dir=os.path.join(args.state_dir, "agent"), device_id=args.device_id)
    return _run_connected(args, cfg, os.path.join(args.state_dir, "sync"))


def _run_connected(args: Any, cfg: Any, sync_dir: str, tick: float = 0.2) -> int:
    """The agent (``cfg``) connected through :class:`~.device.DeviceSync` until SIGTERM/SIGINT."""
    import importlib.util

    if importlib.util.find_spec("paho") is None:
        raise ConfigError("cloud sync needs paho-mqtt: pip install 'edgefleet[device]'")
    from edgefleet import logs

    logs.daemon()
    from edgefleet.device_agent.agent import Agent

    from .device import DeviceSync
    from .transport import MqttTransport

    agent = Agent(cfg, tick_seconds=tick)
    conf = _mqtt_config(args, cfg.device_id)
    sync = DeviceSync(agent, lambda will: MqttTransport(conf, will), args.fleet, cfg.device_id, sync_dir,
                      group=args.group, telemetry_interval=args.telemetry_interval)
    sync.start()
    import logging

    logging.getLogger(__name__).info(
        f"edgefleet sync: device {cfg.device_id} of fleet {args.fleet} via {args.broker}, serving "
        f"{agent.active_version or 'nothing yet'} from {cfg.state_dir}",
        extra={"event": "device_started", "device": cfg.device_id, "fleet": args.fleet, "broker": args.broker})
    try:
        _wait_for_signal()
    finally:
        sync.stop()
        agent.close()
    return 0


# -- operators -------------------------------------------------------------------------------------------------
def _token(args: Any) -> str | None:
    return read_token(args.token, args.token_file)


def _call(args: Any, method: str, path: str, **kw: Any) -> Any:
    return api_call(args.api, _token(args), method, path, ca_cert=args.ca_cert, **kw)


def _print(args: Any, data: Any, table: list[list[Any]] | None, headers: list[str] | None = None) -> None:
    if args.json or table is None:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(*(headers or []))
    for row in table:
        t.add_row(*[str(c) for c in row])
    Console().print(t)


def _fleet_devices(args: Any) -> int:
    data = _call(args, "GET", "/v1/devices", params={"group": args.group} if args.group else None)
    _print(args, data, [[d["device_id"], d["group"], "online" if d["online"] else "offline", _ago(d["last_seen"]),
                         d["active_version"], d["agent_version"], _platform(d.get("inventory") or {}),
                         ",".join(d.get("tags", [])), ",".join(d.get("claimed_tags", []))]
                        for d in data],
           ["device", "group", "state", "last seen", "version", "agent", "platform", "tags", "claimed tags"])
    return _coordinator_link(args)


def _coordinator_link(args: Any) -> int:
    """After a device list: 0, or a warning on stderr and SyncError's exit code when the coordinator is itself
    disconnected from the broker (its /healthz): the states listed are then the last it heard, not live ones."""
    from edgefleet.errors import SyncError

    health = _call(args, "GET", "/healthz")
    if not isinstance(health, dict) or health.get("broker_connected") is not False:
        return 0
    since = health.get("broker_since") or 0
    when = f" since {_when(since)}" if since else ""
    print(f"edgefleet: warning: the coordinator is disconnected from the broker{when}: the device states above are "
          "the last it heard, not live (see its log and /healthz)", file=sys.stderr)
    return SyncError.exit_code


class Rate(click.ParamType):
    """``--telemetry-rate``: records per second (None: off), from ``1000/s``, ``6000/min``, ``off``."""

    name = "rate"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, float):
            return value
        from .coordinator.rollout import parse_rate

        return parse_rate(str(value))


class Burst(click.ParamType):
    """``--telemetry-burst``: a number of records within 1..1e12."""

    name = "records"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = float("nan")
        if not 1 <= v <= 1e12:
            raise ConfigError(f"--telemetry-burst {value!r} is not a number of records within 1..1e12")
        return v


def _fleet_tag(args: Any) -> int:
    rows = [_call(args, "PATCH", f"/v1/devices/{d}", json={"tags": args.tags}) for d in args.devices]
    _print(args, rows, [[r["device_id"], ",".join(r["tags"]), ",".join(r.get("claimed_tags", []))] for r in rows],
           ["device", "tags", "claimed"])
    return 0


def _fleet_assign(args: Any) -> int:
    rows = [_call(args, "PATCH", f"/v1/devices/{d}", json={"group": args.group}) for d in args.devices]
    _print(args, rows, [[r["device_id"], r["group"]] for r in rows], ["device", "group"])
    return 0


def _fleet_deploy(args: Any) -> int:
    if not (args.group or args.tags or args.devices):
        raise ConfigError("give the targets: --group, --tags and/or --devices")
    data = deploy_bundle(args.api, _token(args), args.bundle, args.group, args.canary, args.waves, args.max_failure,
                         args.job_timeout, ca_cert=args.ca_cert, tags=args.tags, devices=args.devices,
                         rate=args.rate, min_finished=args.min_finished, quality=args.quality)
    if args.json and not args.wait:
        _print(args, data, None)
    else:
        where = [f"of group {data['group']}" if data["group"] else "",
                 f"tagged {','.join(data['tags'])}" if data.get("tags") else "",
                 f"listed ({','.join(data['devices'])})" if data.get("devices") else ""]
        limits = [f"at most {data['rate']}/min" if data.get("rate") else "",
                  f"failure rate judged after {data['min_finished']} finished" if data.get("min_finished") else "",
                  "quality probation " + ",".join(f"{k}={v}" for k, v in data["quality"].items())
                  if data.get("quality") else ""]
        print(f"deployment {data['id']}: {data['name']} {data['version']} to {data['targets']} device(s) "
              + " ".join(w for w in where if w) + "".join(f", {x}" for x in limits if x),
              file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.wait:
        return _follow(args, data["id"], args.wait_timeout)
    return 0


def _follow(args: Any, dep_id: str, timeout: float | None) -> int:
    """``deploy --wait`` and ``status --watch``: a progress line whenever the deployment changes, until its outcome;
    0 when it completed, else the outcome's error (halted, rolled back, canceled: named exit codes)."""
    from edgefleet.errors import RolloutError

    from .coordinator.client import follow
    from .coordinator.watch import ended, outcome_error, progress_line

    shown: list[str] = []
    out = sys.stderr if args.json else sys.stdout

    def emit(s: dict[str, Any]) -> None:
        line = progress_line(s)
        if not shown or shown[-1] != line:
            shown.append(line)
            print(time.strftime("%H:%M:%S ") + line, file=out, flush=True)

    s, done = follow(args.api, _token(args), dep_id, ended, ca_cert=args.ca_cert, interval=args.interval,
                     timeout=timeout, emit=emit)
    if args.json:
        _print(args, s, None)
    elif s.get("failures"):
        _failures_table(s)
    if not done:
        raise RolloutError(f"deployment {dep_id} is still {s.get('state')} after {timeout:g}s "
                           f"({s.get('done', 0)}/{s.get('targets', 0)} done)")
    err = outcome_error(s)
    if err is not None:
        raise err
    if not args.json:
        print(f"deployment {dep_id} completed: {s.get('done', 0)}/{s.get('targets', 0)} device(s) done", flush=True)
    return 0


def _failures_table(d: dict[str, Any]) -> None:
    """The devices whose install failed: which device, its job's state and step, the reason and message it
    reported."""
    from rich.console import Console
    from rich.table import Table

    t = Table("device", "state", "step", "reason", "message", title="failed devices")
    for j in d.get("failures", []):
        t.add_row(j["device_id"], j["status"], j.get("step") or "", j.get("reason") or "",
                  (j.get("message") or "")[:200])
    Console().print(t)


def _status_table(d: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.progress_bar import ProgressBar

    c = Console()
    target = " ".join(w for w in (f"group {d['group']}" if d["group"] else "",
                                  f"tags {','.join(d['tags'])}" if d.get("tags") else "",
                                  f"devices {','.join(d['devices'])}" if d.get("devices") else "") if w)
    c.print(f"[bold]{d['id']}[/bold] {d['name']} {d['version']} -> {target or 'every group'}: {d['state']}"
            f"{' (' + d['reason'] + ')' if d['reason'] else ''}, stage {d['stage']}", highlight=False)
    c.print(ProgressBar(total=max(1, d["targets"]), completed=d["done"], width=40))
    c.print(f"{d['done']}/{d['targets']} done, {d.get('dispatched', 0)} dispatched  "
            + "  ".join(f"{k}={v}" for k, v in sorted(d["counts"].items())), highlight=False)
    if d.get("rollbacks"):
        c.print("rollback orders: " + "  ".join(f"{k}={v}" for k, v in sorted(d["rollbacks"].items())))
    limits = [f"job timeout {d['job_timeout']:g}s" if "job_timeout" in d else "",
              f"rate {d['rate']}/min" if d.get("rate") else "",
              f"failure rate judged after {d['min_finished']} finished" if d.get("min_finished") else ""]
    if any(limits):
        c.print(", ".join(x for x in limits if x))
    for e in d.get("events", [])[-8:]:  # the latest rollout events
        when = time.strftime("%H:%M:%S", time.localtime(e["ts"]))
        c.print(f"  {when} {e['kind']} (stage {e['stage']}){': ' + e['detail'] if e['detail'] else ''}",
                highlight=False)
    if d.get("device_quality"):
        c.print(_quality_table(d["device_quality"], "device", f"quality of {d['version']} per device"))
    if d.get("failures"):
        _failures_table(d)


def _quality_table(rows: list[dict[str, Any]], first: str, title: str) -> Any:
    """How well versions serve devices (their quality records; ``first``: the ``device`` or ``version`` column):
    agreement with the version replaced over the live inputs compared, the shifts, PSI, labelled accuracy and the
    quality test's verdict; "(own head)" marks a device serving its personal head (``--personalize``)."""
    from rich.table import Table

    t = Table(first, "vs", "compared", "agreement", "confidence", "conf. shift", "psi", "labelled accuracy",
              "verdict", title=title)
    for q in rows:
        acc = q.get("accuracy")
        name = (q["device_id"] if first == "device" else q["version"]) + (
            " (own head)" if q.get("head") == "personal" else "")
        t.add_row(name, q.get("reference") or "-",
                  str(q.get("compared", 0)),
                  f"{q['agreement']:.1%}" if q.get("compared") else "-",
                  f"{q['confidence']:.3f}" if q.get("scored") else "-",
                  f"{q['confidence_shift']:+.3f}" if q.get("compared") else "-",
                  f"{q['psi']:.3f}" if q.get("compared") else "-",
                  f"{acc:.1%} of {q['labelled']}" if acc is not None else "-",
                  (q.get("verdict") or "-") + (f" ({q['signal']})" if q.get("signal") else ""))
    return t


def _fleet_status(args: Any) -> int:
    if args.watch and not args.deployment:
        raise ConfigError("--watch follows one deployment: give its id")
    if args.deployment:
        if args.watch:
            return _follow(args, args.deployment, None)
        data = _call(args, "GET", f"/v1/deployments/{args.deployment}")
        if args.json:
            _print(args, data, None)
        else:
            _status_table(data)
        return 0
    data = _call(args, "GET", "/v1/deployments")
    runs = _call(args, "GET", "/v1/federated/runs", params={"limit": max(1, args.runs)}) if args.runs > 0 else []
    if args.json:
        _print(args, {"deployments": data, "federated_runs": runs}, None)
        return 0
    _print(args, data, [[d["id"], d["name"], d["version"], d["group"], d["state"], f"{d['done']}/{d['targets']}"]
                        for d in data], ["deployment", "model", "version", "group", "state", "done"])
    from .federated.records import print_runs

    print_runs(runs)
    return 0


def _fleet_retrain(args: Any) -> int:
    if args.on_drift is None:
        data = _call(args, "GET", "/v1/retrain", params={"group": args.group} if args.group else None)
        _print(args, data, [[r["group"], "on" if r["on_drift"] else "off", r["policy"].get("min_devices"),
                             r["policy"].get("cooldown_s"), r["policy"].get("rounds"), r["policy"].get("strategy"),
                             " ".join(r["policy"].get("args", []))] for r in data],
               ["group", "on drift", "min devices", "cooldown s", "rounds", "strategy", "run options"])
        return 0
    if not args.group:
        raise ConfigError("--on-drift needs --group")
    extra = list(args.run_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    body = {"on_drift": args.on_drift == "on", "min_devices": args.min_devices, "window_s": args.window,
            "cooldown_s": args.cooldown, "rounds": args.rounds, "strategy": args.strategy, "args": extra}
    data = _call(args, "PUT", f"/v1/retrain/{args.group}", json=body)
    if args.json:
        _print(args, data, None)
    else:
        print(f"group {data['group']}: federated retraining on drift {'on' if data['on_drift'] else 'off'}")
    return 0


def _fleet_action(args: Any) -> int:
    """pause, resume, cancel: a refusal (the state does not allow it: 409) is ActionRefusedError with the reason."""
    from edgefleet.errors import ActionRefusedError

    data = _call(args, "POST", f"/v1/deployments/{args.deployment}/{args.action}", errors={409: ActionRefusedError})
    if args.json:
        _print(args, data, None)
    else:
        print(f"deployment {data['id']}: {data['state']}" + (f" ({data['reason']})" if data.get("reason") else ""))
    return 0


def _fleet_rollback(args: Any) -> int:
    """Order the devices back, then wait (up to --timeout) for each device's result: a table of them; exit
    RollbackIncompleteError if one failed or did not answer."""
    from edgefleet.errors import ActionRefusedError

    from .coordinator.client import follow
    from .coordinator.watch import rollback_error, rollback_report

    data = _call(args, "POST", f"/v1/deployments/{args.deployment}/rollback", errors={409: ActionRefusedError})
    ordered = sorted({j["device_id"] for j in data.get("jobs", []) if j["action"] == "rollback"})
    print(f"deployment {data['id']}: {data['state']}; rollback ordered for {len(ordered)} device(s)"
          + (f": {', '.join(ordered[:20])}" if ordered else " (none runs its version)"),
          file=sys.stderr if args.json else sys.stdout, flush=True)
    s, _ = follow(args.api, _token(args), args.deployment, lambda s: rollback_report(s).settled,
                  ca_cert=args.ca_cert, interval=args.interval, timeout=args.timeout)
    report = rollback_report(s)
    if args.json:
        _print(args, {"deployment": s, "results": [dict(zip(("device_id", "status", "reason", "message"), r))
                                                   for r in report.results],
                      "waiting": list(report.waiting), "failed": list(report.failed)}, None)
    else:
        rows = [[d, st, reason, msg[:120]] for d, st, reason, msg in report.results]
        rows += [[d, "no answer", "", f"still installing or ordered back, no result within {args.timeout:g}s"]
                 for d in report.waiting if d not in {r[0] for r in report.results}]
        if rows:
            _print(args, None, rows, ["device", "result", "reason", "message"])
    err = rollback_error(s, report, args.timeout)
    if err is not None:
        raise err
    if not args.json:
        print(f"deployment {data['id']}: rolled back, {len(report.results)} device(s) answered")
    return 0


def _fleet_telemetry(args: Any) -> int:
    params = {k: v for k, v in (("group", args.group), ("version", args.model_version)) if v}
    if args.window is not None:
        params["window"] = f"{args.window:g}s"
    data = _call(args, "GET", "/v1/telemetry", params=params)
    if args.window is not None and not args.json:
        w = data["window"]
        print(f"the last {_span(w['seconds'])} (since {_when(w['since'])}):")
        _print(args, data, [[r["group"], r["version"], r["predictions"], r["errors"], f"{r['error_rate']:.2%}",
                             r["invalid"], _ms(r["p50_ms"]), _ms(r["p95_ms"])] for r in w["rows"]],
               ["group", "version", "predictions", "errors", "error rate", "invalid", "p50 ms", "p95 ms"])
        return 0
    _print(args, data, [[r["group_name"], r["version"], r["kind"], r["records"], r["predictions"], r["errors"],
                         r["invalid"]] for r in data["rows"]],
           ["group", "version", "kind", "records", "predictions", "errors", "invalid"])
    return 0


def _fleet_tokens_create(args: Any) -> int:
    body: dict[str, Any] = {"name": args.name, "scope": args.scope}
    if args.expires is not None:
        body["expires_in"] = int(args.expires)
    data = _call(args, "POST", "/v1/tokens", json=body)
    if args.json:
        _print(args, data, None)
        return 0
    until = f", expires {_when(data['expires'])}" if data.get("expires") else ""
    print(f"token {data['name']} (scope {data['scope']}{until}); it is shown once, keep it in a file (--token-file) "
          "or EDGEFLEET_TOKEN:", file=sys.stderr)
    print(data["token"])
    return 0


def _fleet_tokens_list(args: Any) -> int:
    data = _call(args, "GET", "/v1/tokens")
    _print(args, data, [[t["name"], t["scope"], _when(t["created"]),
                         ("EXPIRED " if t.get("expired") else "") + (_when(t["expires"]) if t.get("expires") else "never")]
                        for t in data], ["name", "scope", "created", "expires"])
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _fleet_tokens_revoke(args: Any) -> int:
    _call(args, "DELETE", f"/v1/tokens/{args.name}")
    print(f"token {args.name} revoked")
    return 0


def _fleet_audit(args: Any) -> int:
    data = _call(args, "GET", "/v1/audit", params={"limit": max(1, min(args.limit, 10_000))})
    _print(args, data, [[time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["ts"])), e["who"], e["method"],
                         e["path"], e["status"], e["summary"], e["client"]] for e in data],
           ["when", "who", "method", "path", "status", "summary", "client"])
    return 0


# device_agent may not import cloud_sync: the agent's ``run`` takes these options through its public hook
AGENT_RUN = extend_run(RunExtension(_agent_run_options(), _agent_run))


# -- operators: edgefleet fleet ... (click) --------------------------------------------------------------------
def _api_options(f: Any) -> Any:
    """The options every ``fleet`` command takes: where the API is, how to trust it, the token, --json."""
    for opt in reversed((
        click.option("--api", envvar="EDGEFLEET_API", show_envvar=True, default="http://127.0.0.1:8080",
                     help="the coordinator's API: http://HOST:PORT or https://HOST:PORT"),
        click.option("--ca-cert", envvar="EDGEFLEET_CA_CERT", show_envvar=True, metavar="PEM",
                     help="CA certificate an https API's certificate must chain to (default: the system's CAs; "
                     "verification is never switched off)"),
        click.option("--token-file", help="file holding the API token (default: EDGEFLEET_TOKEN, or the file "
                     "EDGEFLEET_TOKEN_FILE)"),
        click.option("--token", help="API token (deprecated: other users see it in the process list; use the above)"),
        click.option("--json", is_flag=True, help="print JSON"),
    )):
        f = opt(f)
    return f


class TagList(click.ParamType):
    """``a,b`` -> ``["a", "b"]``, refused with the rule (a ConfigError: one line, exit code 2) if they do not fit."""

    name = "tags"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        from .coordinator.rollout import check_tags

        return check_tags(t.strip() for t in str(value).split(",") if t.strip())


class DeviceList(click.ParamType):
    """``a,b`` -> ``["a", "b"]`` device ids (the protocol's ids), refused one line, exit code 2, if one does not fit."""

    name = "devices"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        from edgefleet.errors import ProtocolError

        from .wire.protocol import check_id

        try:
            return sorted({check_id(d.strip(), "device id") for d in str(value).split(",") if d.strip()})
        except ProtocolError as exc:
            raise ConfigError(f"--devices: {exc}") from None


class DispatchRate(click.ParamType):
    """``20/min``, ``600/h``, a bare number (per minute) or ``off`` -> devices per minute (0: no limit)."""

    name = "rate"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        from .coordinator.rollout import parse_dispatch_rate

        return parse_dispatch_rate(value)


def _fleet_command(group: click.Group, name: str, func: Callable[[Any], int], example: str,
                   **extra: Any) -> Callable[[Any], click.Command]:
    """``group``'s command ``name`` running ``func`` on its options (by their Python names, plus ``extra``)."""

    def make(f: Any) -> click.Command:
        def callback(**params: Any) -> int:
            return func(SimpleNamespace(**params, **extra))

        callback.__doc__ = f.__doc__
        return group.command(name, epilog=f"Example: {example}")(_api_options(_copy_params(f, callback)))

    return make


def _copy_params(src: Any, dst: Any) -> Any:
    dst.__click_params__ = list(getattr(src, "__click_params__", []))
    return dst


@click.group(no_args_is_help=True, epilog="Example: edgefleet fleet status --api https://coordinator:8080")
def fleet() -> None:
    """Operate the fleet through the coordinator's API (token: EDGEFLEET_TOKEN or --token-file)."""


@_fleet_command(fleet, "devices", _fleet_devices, "edgefleet fleet devices --group line-1")
@click.option("--group", help="only this group's devices")
def _devices() -> None:
    """List devices."""


@_fleet_command(fleet, "assign", _fleet_assign, "edgefleet fleet assign press-7 press-8 --group line-1")
@click.argument("devices", nargs=-1, required=True, metavar="DEVICE...")
@click.option("--group", required=True, help="the group")
def _assign() -> None:
    """Assign devices to a group (groups are the operator's; a device's own claim is recorded, never applied)."""


@_fleet_command(fleet, "tag", _fleet_tag, "edgefleet fleet tag cam-1 cam-2 --tags line-4,gpu")
@click.argument("devices", nargs=-1, required=True, metavar="DEVICE...")
@click.option("--tags", required=True, type=TagList(), help="comma-separated, replacing the devices' tags ('' clears them)")
def _tag() -> None:
    """Set devices' tags (the operator's; deployments select by them; a device's own hardware tags are a claim,
    never used)."""


@_fleet_command(fleet, "deploy", _fleet_deploy, "edgefleet fleet deploy digits.efb --group line-1 "
                "--canary 5% --waves 25%,50%,100% --rate 20/min --min-finished 10 --wait")
@click.argument("bundle")
@click.option("--group", help="the group to roll out to (or select by --tags/--devices across groups)")
@click.option("--canary", default="5%", type=Percent("canary"), help="the canary stage: 5% or 0.05")
@click.option("--waves", default="25%,50%,100%", type=Percent("wave", many=True), help="the stages after the canary")
@click.option("--max-failure", default="2%", type=Percent("max failure"),
              help="failure rate that halts the rollout: 2% or 0.02")
@click.option("--job-timeout", default="1h",
              help="a device job that started but did not end within this (90s, 10m, 2h, 1d) is TIMED_OUT")
@click.option("--tags", default="", show_default=False, type=TagList(),
              help="comma-separated: only devices (of the group) given all these tags (fleet tag)")
@click.option("--devices", default="", show_default=False, type=DeviceList(),
              help="comma-separated device ids: only these (each must exist and fit --group/--tags; no joiners)")
@click.option("--rate", default="off", type=DispatchRate(), help="devices dispatched per minute at most: 20/min, "
              "600/h or off")
@click.option("--min-finished", type=click.IntRange(0, MAX_MIN_FINISHED), default=0, metavar="N",
              help="devices whose jobs must have ended before the failure rate is judged (0: from the first one)")
@click.option("--quality", default="", metavar="POLICY", help="quality probation on the devices, over their "
              "[quality]: enforce (a version failing the test rolls back, reason quality: a failure for the gate), "
              "report or off, with options: enforce,agreement_bad=0.3,min_samples=100")
@click.option("--wait", is_flag=True, help="follow the rollout until its outcome; exit 0 if it completed, else "
              "30 halted, 31 rolled back, 32 canceled (28: still running at --wait-timeout)")
@click.option("--wait-timeout", type=Duration(lo=1.0), metavar="DURATION",
              help="with --wait: give up after this long (default: wait for the outcome)")
@click.option("--interval", type=Duration(lo=0.1, hi=3600.0), default="2s", help="seconds between polls (--wait)")
def _deploy() -> None:
    """Start a staged rollout of a bundle (archive .efb or directory) to a group, tagged devices or a list of
    devices; with --wait, follow it to its outcome."""


@_fleet_command(fleet, "status", _fleet_status, "edgefleet fleet status d1a2b3 --watch")
@click.argument("deployment", required=False)
@click.option("--runs", type=int, default=3, help="federated runs to show with their rounds")
@click.option("--watch", is_flag=True, help="follow DEPLOYMENT until its outcome (exit codes as deploy --wait)")
@click.option("--interval", type=Duration(lo=0.1, hi=3600.0), default="2s", help="seconds between polls (--watch)")
def _status() -> None:
    """Deployments and federated runs, or one deployment: per-state counts, events, the quality of its version
    per device, and the failed devices with their state and the reason each reported."""


@_fleet_command(fleet, "retrain", _fleet_retrain, "edgefleet fleet retrain --group line-1 --on-drift on "
                "--cooldown 6h -- --superlink 127.0.0.1:9092 --holdout h.npz --deploy")
@click.option("--group", help="the group (without --on-drift: show its settings)")
@click.option("--on-drift", type=click.Choice(["on", "off"]), help="start a federated run when the group reports drift")
@click.option("--min-devices", type=int, default=1, help="distinct devices reporting drift")
@click.option("--window", type=Duration(), default="1h", help="... within this long (a bare number is seconds)")
@click.option("--cooldown", type=Duration(), default="6h", help="time between two automatic runs")
@click.option("--rounds", type=int, default=3, help="federated rounds of a run")
@click.option("--strategy", default="fedavg", type=click.Choice(STRATEGIES), help="the aggregation strategy")
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- RUN OPTIONS]")
def _retrain() -> None:
    """Start federated runs on drift alerts of a group (or show the settings). RUN OPTIONS (after --) go to
    `edgefleet federated run` on the coordinator host."""


def _deployment_action(action: str, doc_text: str) -> None:
    def doc() -> None:
        pass

    doc.__doc__ = doc_text
    _fleet_command(fleet, action, _fleet_action, f"edgefleet fleet {action} d1a2b3", action=action)(
        click.argument("deployment")(doc))


for _action, _doc in (("pause", "Pause a running deployment (exit 29 with the reason if it is not running)."),
                      ("resume", "Resume a paused deployment (exit 29 with the reason if it is not paused: a halted "
                                 "one cannot resume)."),
                      ("cancel", "Cancel a running or paused deployment: devices not dispatched get nothing, jobs "
                                 "not started are canceled on the devices, installs under way finish (exit 29 if "
                                 "it has ended).")):
    _deployment_action(_action, _doc)


@_fleet_command(fleet, "rollback", _fleet_rollback, "edgefleet fleet rollback d1a2b3 --timeout 5m")
@click.argument("deployment")
@click.option("--timeout", type=Duration(lo=0.0, hi=86400.0), default="2m",
              help="how long to wait for the devices' results (0: do not wait)")
@click.option("--interval", type=Duration(lo=0.1, hi=3600.0), default="1s", help="seconds between polls")
def _rollback() -> None:
    """Roll a deployment back: devices on its version are ordered back; prints each device's result and exits 33
    if one failed or did not answer within --timeout (29 if it is rolled back already)."""


@_fleet_command(fleet, "telemetry", _fleet_telemetry, "edgefleet fleet telemetry --window 1h --group line-1")
@click.option("--group", help="only this group")
@click.option("--version", "model_version", help="only this model version")
@click.option("--window", type=Duration(lo=60.0, hi=7 * 86400.0), metavar="DURATION",
              help="per group and version over the last 1h, 1d, 90m... (1m..7d), with p50/p95 latency; default: "
              "all-time counts per kind")
def _telemetry() -> None:
    """Telemetry per group and version: all-time counts, or over a time window with latency percentiles."""


@fleet.group("tokens", no_args_is_help=True, epilog="Example: edgefleet fleet tokens create --scope deploy --name ci "
             "--expires 30d > ci.token")
def tokens() -> None:
    """API tokens of scope read, deploy or admin (needs an admin token)."""


@_fleet_command(tokens, "create", _fleet_tokens_create, "edgefleet fleet tokens create --scope deploy "
                "--name ci --expires 30d > ci.token")
@click.option("--name", required=True, help="its name, shown in the audit log")
@click.option("--scope", required=True, type=click.Choice(["read", "deploy", "admin"]),
              help="read: GETs; deploy: also deployments, rollouts, retraining; admin: also tokens, devices, audit")
@click.option("--expires", type=Duration(lo=1.0, hi=MAX_TOKEN_TTL), metavar="DURATION",
              help="valid for this long (90s, 12h, 30d; at most 366d); default: until revoked")
def _tokens_create() -> None:
    """Make a token and print it (once: the coordinator keeps its hash)."""


@_fleet_command(tokens, "list", _fleet_tokens_list, "edgefleet fleet tokens list")
def _tokens_list() -> None:
    """The tokens' names, scopes and expiry (expired ones are marked)."""


@_fleet_command(tokens, "revoke", _fleet_tokens_revoke, "edgefleet fleet tokens revoke ci")
@click.argument("name")
def _tokens_revoke() -> None:
    """Revoke a token by name."""


@_fleet_command(fleet, "audit", _fleet_audit, "edgefleet fleet audit --limit 50")
@click.option("--limit", type=int, default=50, help="latest entries to show")
def _audit() -> None:
    """The audit log: every mutating API call (who, what, when, status)."""


# -- fleet housekeeping: one device, decommissioning, artifacts ----------------------------------------------------
def _ago(ts: float | None) -> str:
    """How long ago a wall-clock time was: ``12s ago``, ``3.5h ago``; ``never`` for 0."""
    if not ts:
        return "never"
    return f"{_span(max(0.0, time.time() - ts))} ago"


def _span(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n:
            return f"{seconds / n:.3g}{unit}"
    return f"{seconds:.0f}s"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def _bytes(n: int) -> str:
    for unit, k in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def _platform(inv: dict[str, Any]) -> str:
    return " ".join(v for v in (inv.get("os"), inv.get("arch")) if v) or "-"


def _fleet_device(args: Any) -> int:
    changes: dict[str, Any] = {}
    if args.group:
        changes["group"] = args.group
    if args.tags is not None:
        changes["tags"] = args.tags
    if changes:
        _call(args, "PATCH", f"/v1/devices/{args.device}", json=changes)
    d = _call(args, "GET", f"/v1/devices/{args.device}")
    if args.json:
        _print(args, d, None)
        return 0
    from rich.console import Console
    from rich.table import Table

    c = Console()
    state = "online" if d["online"] else "offline"
    c.print(f"[bold]{d['device_id']}[/bold]  group {d['group']}  tags {','.join(d['tags']) or '-'}  {state}, last "
            f"seen {_ago(d['last_seen'])}  (first seen {_when(d['first_seen'])})", highlight=False)
    c.print(f"running {d['active_version'] or 'nothing'}  agent {d['agent_version'] or '?'}  claimed tags "
            f"{','.join(d.get('claimed_tags', [])) or '-'}", highlight=False)
    inv = d.get("inventory") or {}
    if inv.get("reported"):
        disk = (f"{_bytes(inv['free_disk_bytes'])} free of {_bytes(inv['total_disk_bytes'])}"
                if inv.get("total_disk_bytes") else "not reported")
        c.print(f"inventory: {inv.get('os') or '?'} {inv.get('os_release', '')} {inv.get('arch') or '?'}, Python "
                f"{inv.get('python') or '?'}, disk {disk} (reported {_ago(inv['reported'])})", highlight=False)
    else:
        c.print("inventory: not reported yet (an agent before 0.2, or no birth since)")
    jobs = Table("updated", "deployment", "action", "status", "step", "reason", "message", title="jobs (newest last)")
    for j in d.get("jobs", []):
        jobs.add_row(_when(j["updated"]), j["deployment_id"], j["action"], j["status"], j["step"], j["reason"],
                     j["message"][:80])
    c.print(jobs if d.get("jobs") else "jobs: none")
    recent = d.get("recent") or {}
    if recent.get("versions") is not None:
        t = Table("version", "predictions", "errors", "invalid", "p50 ms", "p95 ms",
                  title=f"recent telemetry ({_ago(recent.get('ts'))})")
        for v, st in recent["versions"].items():
            t.add_row(v, str(st["predictions"]), str(st["errors"]), str(st["invalid_inputs"]), _ms(st["p50_ms"]),
                      _ms(st["p95_ms"]))
        c.print(t)
        drift = recent.get("drift")
        if drift:
            c.print(f"drift of {drift.get('version') or '?'}: PSI max {_ms(drift.get('psi_max'))}, mean "
                    f"{_ms(drift.get('psi_mean'))}{' (ALERTING)' if drift.get('alerting') else ''}", highlight=False)
    else:
        c.print("recent telemetry: none yet")
    if d.get("quality"):
        c.print(_quality_table(d["quality"], "version", "quality per version"))
    for a in d.get("alerts", []):
        c.print(f"alert {_when(a['ts'])}: {a['kind']} on {a['version'] or '?'} (PSI max "
                f"{_ms(a['data'].get('psi_max'))})", highlight=False)
    rejected, limited = d.get("telemetry_rejected", 0), d.get("telemetry_rate_limited", 0)
    if rejected or limited:
        c.print(f"telemetry refused: {rejected} record(s) out of bounds, {limited} batch(es) over the rate")
    return 0


def _fleet_decommission(args: Any) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"decommissioning {args.device} cannot be undone by the device itself: give --yes")
        click.confirm(f"Decommission {args.device}? It is removed from the registry, its messages are refused and "
                      "its broker credentials revoked", abort=True)
    data = _call(args, "DELETE", f"/v1/devices/{args.device}")
    if args.json:
        _print(args, data, None)
    else:
        print(f"device {data['device_id']} (group {data['group']}) decommissioned"
              + (f"; broker: {'; '.join(data['broker'])}" if data.get("broker") else ""))
    if data.get("broker_error"):
        from edgefleet.errors import SyncError

        raise SyncError(f"device {data['device_id']} is decommissioned, but its broker credentials were not revoked: "
                        f"{data['broker_error']}")
    return 0


def _lineage(lineage: dict[str, Any]) -> str:
    """The scalar facts of a lineage, and which nested documents it holds (federated, recipe, ...)."""
    parts = [f"{k}={v}" for k, v in sorted(lineage.items()) if not isinstance(v, (dict, list))]
    parts += [f"{k}{{...}}" for k, v in sorted(lineage.items()) if isinstance(v, dict)]
    return ", ".join(parts) or "-"


def _fleet_artifacts(args: Any) -> int:
    data = _call(args, "GET", "/v1/artifacts")
    _print(args, data, [[a["sha256"][:12], a["name"], a["version"], _bytes(a["size"]), _when(a["created"]),
                         _lineage(a["lineage"])[:80],
                         " ".join(f"{d['id']}:{d['state']}" for d in a["deployments"]) or "-"] for a in data],
           ["sha256", "model", "version", "size", "stored", "lineage", "deployments"])
    return 0


@_fleet_command(fleet, "device", _fleet_device, "edgefleet fleet device press-7 --group line-2 --tags gpu,line-2")
@click.argument("device")
@click.option("--group", help="assign the device to this group first")
@click.option("--tags", type=TagList(), help="set its tags first (comma-separated, replacing them; '' clears them)")
def _device() -> None:
    """One device: inventory, last seen, job history with reasons, recent telemetry and alerts (and set its group
    or tags)."""


@_fleet_command(fleet, "decommission", _fleet_decommission, "edgefleet fleet decommission press-7 --yes")
@click.argument("device")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def _decommission() -> None:
    """Remove a device for good: out of the registry, its jobs canceled, its messages refused, its broker
    credentials revoked (cloud serve --broker-config). Assigning it a group again re-admits it."""


@_fleet_command(fleet, "artifacts", _fleet_artifacts, "edgefleet fleet artifacts --json")
def _artifacts() -> None:
    """The model versions the coordinator stores: size, sha256, lineage and the deployments that used them."""


# -- devices: edgefleet sync run (click) -----------------------------------------------------------------------
@click.group(no_args_is_help=True, epilog="Example: edgefleet sync run --fleet plant1 --device-id press-7 --state-dir "
             "/var/lib/edgefleet")
def sync() -> None:
    """Connect a device agent to the fleet."""


sync.add_command(click.Command(
    "run", callback=lambda **params: _sync_run(SimpleNamespace(**params)),
    help="Run the agent with cloud sync (birth/will, jobs, OTA, telemetry); like 'agent run --broker', with "
    "STATE_DIR/agent and STATE_DIR/sync. Logs connects, disconnects, jobs, installs and rollbacks on stderr at "
    "info: set 'edgefleet --log-level LEVEL --log-format text|json sync run ...' (or EDGEFLEET_LOG_LEVEL, "
    "EDGEFLEET_LOG_FORMAT).",
    epilog="Example: edgefleet sync run --broker mqtts://broker:8883 --fleet plant1 --device-id press-7 "
    "--state-dir /var/lib/edgefleet",
    params=[*_broker_options("mqtt://127.0.0.1:1883"),
            click.Option(["--fleet"], required=True, help="the fleet to join"),
            click.Option(["--device-id"], required=True, help="this device's id"),
            click.Option(["--state-dir"], required=True, help="STATE_DIR/agent holds the agent, STATE_DIR/sync the sync"),
            click.Option(["--config"], help="agent.toml (its state_dir/device_id are overridden)"),
            click.Option(["--group"], default="", show_default=False, help="the group this device asks for: recorded "
                         "by the coordinator, applied only by the operator (fleet assign)"),
            click.Option(["--telemetry-interval"], type=float, default=5.0, help="seconds between telemetry drains")]))


# -- coordinator: edgefleet cloud ... (click) ------------------------------------------------------------------
@click.group(no_args_is_help=True, epilog="Example: edgefleet cloud serve --fleet plant1 --token-file admin.token "
             "--broker mqtt://127.0.0.1:1883 --trust keys/edgefleet.pub")
def cloud() -> None:
    """Run the fleet coordinator, and write its broker's configuration."""


def _cloud_command(name: str, func: Callable[[Any], int], example: str, help: str,
                   params: list[click.Parameter]) -> None:
    cloud.add_command(handler_command(name, func, example, help, params))


_cloud_command("serve", _serve, "edgefleet cloud serve --fleet plant1 --token-file admin.token --db "
               "postgresql+psycopg://edgefleet@db/fleet --trust keys/edgefleet.pub --signing-key keys/edgefleet.key",
               "Coordinator: registry, rollouts, telemetry ingest, HTTP API with Prometheus /metrics (token: "
               "EDGEFLEET_TOKEN, EDGEFLEET_TOKEN_FILE or --token-file). Logs its broker connection, device connects "
               "and disconnects, rollout stages, halts with their reason, installs, rollbacks and ingest errors on "
               "stderr at info: set 'edgefleet --log-level LEVEL --log-format text|json cloud serve ...' (or "
               "EDGEFLEET_LOG_LEVEL, EDGEFLEET_LOG_FORMAT).", [
    *_broker_options("mqtt://127.0.0.1:1883", who="the coordinator's"),
    click.Option(["--db"], default="sqlite:///edgefleet-registry.db", help="SQLAlchemy URL of the registry"),
    click.Option(["--fleet"], required=True, help="the fleet this coordinator runs"),
    click.Option(["--api-host"], default="127.0.0.1", help="address the API listens on"),
    click.Option(["--api-port"], type=click.IntRange(0, 65535), default=8080, help="port the API listens on"),
    click.Option(["--tls-cert"], metavar="PEM", help="serve the API over https with this certificate (with --tls-key)"),
    click.Option(["--tls-key"], metavar="PEM", help="its private key (PEM, unencrypted)"),
    click.Option(["--tls-ca"], envvar="EDGEFLEET_CA_CERT", show_envvar=True, metavar="PEM",
                 help="the CA certificate that signed --tls-cert: runs started on drift verify the API with it "
                 "(default: the system's CAs)"),
    click.Option(["--api-url"], metavar="URL",
                 help="the URL runs started on drift call the API back at (default http(s)://API_HOST:API_PORT, "
                 "127.0.0.1 when listening on every address); with TLS, a host its certificate names"),
    click.Option(["--token-file"], help="file holding the coordinator's admin API token (or EDGEFLEET_TOKEN / "
                 "EDGEFLEET_TOKEN_FILE)"),
    click.Option(["--token"], hidden=True),  # deprecated: visible in the process list
    click.Option(["--share-group"], default="edgefleet", help="MQTT 5 shared-subscription group ('' to disable)"),
    click.Option(["--client-id"], default="", show_default=False, help="MQTT client id (default edgefleet-coord-PID)"),
    click.Option(["--allow"], help="provisioning file: 'DEVICE' or 'DEVICE GROUP' a line (only these devices; "
                 "their groups)"),
    click.Option(["--chunk-size"], type=click.IntRange(1024, 16 * 1024 * 1024), default=64 * 1024,
                 help="bytes per OTA chunk over MQTT"),
    click.Option(["--telemetry-rate"], type=Rate(), default="1000/s", metavar="RATE",
                 help="telemetry records ingested per device at most (1000/s, 6000/min, off): a batch beyond it is "
                 "dropped unacknowledged (the device sends it again later) and counted per device"),
    click.Option(["--telemetry-burst"], type=Burst(), metavar="RECORDS",
                 help="records a device may send at once above the rate (default 10 x the rate per second, at "
                 "least one full batch)"),
    click.Option(["--signing-key"], envvar="EDGEFLEET_SIGNING_KEY", show_envvar=True,
                 help="operator Ed25519 key (PEM, as for bundles) signing rollback orders; devices refuse unsigned "
                 "ones"),
    click.Option(["--trust"], multiple=True, metavar="KEY.pub",
                 help="a bundle-signing public key deployments are accepted from (repeatable); without it and without "
                 "--tuf-repo every deployment is refused"),
    click.Option(["--tuf-repo"], metavar="DIR",
                 help="TUF repository (edgefleet repo ...): a deployment must be a signed target of it, signed by a "
                 "key delegated to its model; devices get its metadata with every install job"),
    click.Option(["--origin-dir"], metavar="DIR",
                 help="publish every bundle and delta here as <sha256> for a web server or CDN to serve at "
                 "--origin-url: devices download them over HTTP(S) (Range requests, resumed, verified; redirects "
                 "followed, at most 5, never https to http) and fall back "
                 "to MQTT chunks when the origin fails"),
    click.Option(["--origin-url"], metavar="URL",
                 help="the base URL devices fetch --origin-dir's files at (https://cdn.example/bundles/), or "
                 "s3://BUCKET/PREFIX: upload there and send presigned URLs (needs boto3: pip install 'edgefleet[s3]')"),
    click.Option(["--origin-endpoint"], metavar="URL",
                 help="with an s3:// origin: the S3-compatible endpoint (MinIO, Ceph...; default: AWS)"),
    click.Option(["--alert-webhook"], multiple=True, metavar="URL",
                 help="POST a JSON alert here on a rollout halt, a drift alert, a device offline longer than "
                 "--offline-after and a federated run failure (repeatable; retried with backoff)"),
    click.Option(["--alert-ca-cert"], envvar="EDGEFLEET_ALERT_CA_CERT", show_envvar=True, metavar="PEM",
                 help="CA certificate (PEM) an https --alert-webhook's certificate must chain to: a private CA "
                 "(default: the public CAs, or SSL_CERT_FILE; verification is never switched off)"),
    click.Option(["--offline-after"], type=Duration(lo=10.0, hi=366 * 86400.0), default="15m", metavar="DURATION",
                 help="with --alert-webhook: alert when a device has been offline this long (90s, 15m, 2h)"),
    click.Option(["--broker-config"], metavar="FILE",
                 help="the broker's mosquitto.conf (cloud broker-config): a decommissioned device is revoked from "
                 "its ACL and password file and the broker reloaded (its pid_file)"),
    *serve_options(),  # --federated-dir, --superlink-port and its TLS/auth options
])
_cloud_command("acl", _acl, "edgefleet cloud acl --fleet plant1 --out /etc/mosquitto/edgefleet.acl",
               "Write a Mosquitto ACL confining each device to its own topics.", [
    click.Option(["--fleet"], required=True, help="the fleet"),
    click.Option(["--coordinator"], multiple=True, help="privileged MQTT user (repeatable; default "
                 "edgefleet-coordinator)"),
    click.Option(["--out"], required=True, help="the ACL file to write"),
])
_cloud_command("broker-config", _broker_config, "edgefleet cloud broker-config --out /etc/edgefleet/broker --fleet "
               "plant1 --tls-cert broker.pem --tls-key broker.key --cafile devices-ca.pem --require-certificate",
               "Write a production mosquitto.conf (TLS, auth, ACL, queues sized for the fleet).", [
    click.Option(["--out"], required=True, help="directory for mosquitto.conf, the ACL and the persistence data"),
    click.Option(["--port"], type=int, default=8883, help="port to listen on"),
    click.Option(["--bind"], default="", show_default=False, help="address to listen on (default: every interface)"),
    click.Option(["--tls-cert"], help="the broker's certificate (PEM)"),
    click.Option(["--tls-key"], help="its private key (PEM, unencrypted)"),
    click.Option(["--cafile"], help="CA certificate(s) that signed device certificates (PEM)"),
    click.Option(["--require-certificate"], is_flag=True,
                 help="clients must present a certificate; its CN is their username (= device id)"),
    click.Option(["--acl"], help="an existing ACL file (default: write one for --fleet)"),
    click.Option(["--fleet"], help="fleet whose ACL to write when --acl is not given"),
    click.Option(["--coordinator"], multiple=True, help="privileged MQTT user (repeatable; default "
                 "edgefleet-coordinator)"),
    click.Option(["--password-file"], help="mosquitto_passwd file"),
    click.Option(["--allow-anonymous"], is_flag=True, help="let clients connect without credentials"),
    click.Option(["--max-devices"], type=int, default=1000, help="fleet size the queues and limits "
                 "are sized for"),
    click.Option(["--insecure"], is_flag=True, help="a listener without TLS (loopback test benches only)"),
    click.Option(["--run-as"], help="the 'user' mosquitto drops to when started as root"),
])
