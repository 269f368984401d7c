"""``edgefleet agent ...``: a thin CLI over :class:`edgefleet.device_agent.agent.Agent`.

Light at import (click only); each handler imports what it needs. Errors are
raised as ``EdgefleetError`` and turned into exit codes by ``edgefleet.cli``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import click

RunCommand = Callable[[Any], int]


@dataclass(frozen=True)
class RunExtension:
    """Options another package adds to ``edgefleet agent run``, and the runner that reads them.

    ``options`` are click options added to the command; ``run(args, local)`` runs it with every option by its
    Python name in ``args`` (``local`` is the agent's own daemon, for when the extension's options are not
    used). The device agent never imports the packages that extend it (cloud_sync adds ``--broker``)."""

    options: tuple[click.Option, ...]
    run: Callable[[Any, RunCommand], int]


RUN_EXTENSIONS: list[RunExtension] = []


def extend_run(extension: RunExtension) -> RunExtension:
    """Register ``extension`` for ``agent run``: its options are added to the command, its runner wraps the
    daemon. Returns it, so a module can keep a name for it."""
    if extension not in RUN_EXTENSIONS:
        RUN_EXTENSIONS.append(extension)
        run.params.extend(extension.options)
    return extension


def _common(f: Any) -> Any:
    """The options every ``agent`` command takes."""
    for opt in reversed((
        click.option("--config", help="agent.toml (state dir, trusted keys, hardware tags, policies)"),
        click.option("--state-dir", help="the agent's state directory (overrides the config's)"),
        click.option("--trust", multiple=True, metavar="PUBKEY", callback=lambda c, p, v: list(v),
                     help="trusted public key (repeatable); install keeps it in STATE_DIR/trust/"),
        click.option("--hardware-tag", multiple=True, metavar="TAG", callback=lambda c, p, v: list(v),
                     help="a hardware tag of this device (repeatable; adds to the config's)"),
        click.option("--allow-unsigned", is_flag=True, help="accept unsigned bundles (development only)"),
        click.option("--model-name", metavar="NAME", help="the model this device serves (default: the config's, "
                     "else the first installed); bundles of another name are refused"),
    )):
        f = opt(f)
    return f


@click.group(no_args_is_help=True, epilog="Example: edgefleet agent status --state-dir /var/lib/edgefleet --json")
def agent() -> None:
    """The device agent: install, serve, roll back, report."""


@agent.command("run", epilog="Example: edgefleet agent run --config agent.toml")
@_common
@click.option("--tick", type=float, default=0.5, help="monitor period in seconds")
def run(**params: Any) -> int:
    """Run the agent as a daemon until SIGTERM (with --broker: connected to the fleet). It logs installs,
    activations, probation verdicts, rollbacks (and with --broker its broker connection and jobs) on stderr at info:
    set 'edgefleet --log-level LEVEL --log-format text|json agent run ...' (or EDGEFLEET_LOG_LEVEL,
    EDGEFLEET_LOG_FORMAT)."""
    command: RunCommand = cmd_run
    for ext in RUN_EXTENSIONS:
        command = (lambda inner, e: (lambda args: e.run(args, inner)))(command, ext)
    return command(SimpleNamespace(**params))


@agent.command("install", epilog="Example: edgefleet agent install digits-bundle.efb --state-dir /var/lib/edgefleet "
               "--trust keys/edgefleet.pub")
@click.argument("bundle", metavar="BUNDLE|ARCHIVE")
@_common
@click.option("--rollback-order", metavar="FILE", help="a signed order allowing an older version")
@click.option("--repo", metavar="DIR",
              help="TUF repository to check the archive against (required once a TUF root is pinned)")
@click.option("--probation", type=float, default=0.0, metavar="SECONDS",
              help="stay and watch the new version this long (0: a running daemon serves it)")
@click.option("--json", is_flag=True, help="print the job as JSON")
def install(**params: Any) -> int:
    """Verify, smoke-test and activate a bundle (directory or .efb)."""
    return cmd_install(SimpleNamespace(**params))


@agent.command("trust-root", epilog="Example: edgefleet agent trust-root repo/metadata/1.root.json --state-dir "
               "/var/lib/edgefleet")
@click.argument("root", metavar="ROOT.json")
@_common
def trust_root(**params: Any) -> int:
    """Pin a TUF root (e.g. metadata/1.root.json): installs are then checked against TUF metadata."""
    return cmd_trust_root(SimpleNamespace(**params))


@agent.command("status", epilog="Example: edgefleet agent status --state-dir /var/lib/edgefleet --json")
@_common
@click.option("--json", is_flag=True, help="print the status as JSON")
def status(**params: Any) -> int:
    """Show the active and previous versions and the last job."""
    return cmd_status(SimpleNamespace(**params))


@agent.command("rollback", epilog="Example: edgefleet agent rollback --state-dir /var/lib/edgefleet")
@_common
def rollback(**params: Any) -> int:
    """Go back to the previous version."""
    return cmd_rollback(SimpleNamespace(**params))


@agent.command("predict", epilog="Example: edgefleet agent predict --state-dir /var/lib/edgefleet --input x.npy")
@_common
@click.option("--input", required=True, help=".npy, .npz or .csv input")
@click.option("--json", is_flag=True, help="print predictions as JSON")
def predict(**params: Any) -> int:
    """Predict with the active version."""
    return cmd_predict(SimpleNamespace(**params))


def _config(args: Any, **update: Any) -> Any:
    from dataclasses import replace

    from edgefleet.errors import ConfigError

    from .config import AgentConfig, load_config

    cfg = load_config(args.config) if args.config else None
    if cfg is None:
        if not args.state_dir:
            raise ConfigError("give --state-dir DIR or --config agent.toml")
        cfg = AgentConfig(state_dir=args.state_dir)
    changes: dict[str, Any] = {}
    if args.state_dir:
        changes["state_dir"] = args.state_dir
    if args.trust:
        changes["trusted_keys"] = tuple(cfg.trusted_keys) + tuple(args.trust)
    if args.hardware_tag:
        changes["hardware_tags"] = tuple(cfg.hardware_tags) + tuple(args.hardware_tag)
    if getattr(args, "allow_unsigned", False):
        changes["require_signature"] = False
    if getattr(args, "model_name", None):
        changes["model_name"] = args.model_name
    if update:
        changes["update"] = replace(cfg.update, **update)
    return replace(cfg, **changes)


def _keep_trusted(args: Any, cfg: Any) -> None:
    """``--trust KEY`` keys are kept in STATE_DIR/trust/, so later commands (``agent predict``) verify with them."""
    if not args.trust:
        return
    from .store import Store

    store = Store(cfg.state_dir)
    for key in args.trust:
        store.add_trusted_key(key)


def config_from_args(args: Any, **update: Any) -> Any:
    """The agent config from the common flags, ``--trust`` keys kept with the device (``agent run``, also
    cloud_sync's ``agent run --broker``)."""
    cfg = _config(args, **update)
    _keep_trusted(args, cfg)
    return cfg


def _job_line(job: Any) -> str:
    line = f"{job.status.value} ({job.reason})"
    if job.target_version:
        line += f": {job.target_version}"
    if job.message and job.status.value != "SUCCEEDED":
        line += f" - {job.message}"
    return line


MAX_ORDER_FILE_BYTES = 64 << 10  # an order with a threshold of signatures is a few KiB


def _read_order(path: str) -> dict[str, Any]:
    """A rollback order file, bounded: a regular file (a FIFO or device is refused without blocking) of at most
    64 KiB holding a JSON object; anything else is a one-line ConfigError naming the file."""
    from edgefleet.canonical import load_json_bounded, read_regular
    from edgefleet.errors import ConfigError

    what = f"rollback order {path}"
    try:
        raw = read_regular(path, MAX_ORDER_FILE_BYTES, follow_symlinks=True, error=ConfigError, what=what)
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or exc}") from None
    doc = load_json_bounded(raw, max_bytes=MAX_ORDER_FILE_BYTES, max_depth=16, error=ConfigError, what=what)
    if not isinstance(doc, dict):
        raise ConfigError(f"{what} is not a signed order document (a JSON object with 'order' and 'signature')")
    return doc


def cmd_install(args: Any) -> int:
    from edgefleet.errors import StoreError, UpdateRejectedError

    from .agent import Agent

    cfg = _config(args, probation_seconds=args.probation)
    order = _read_order(args.rollback_order) if args.rollback_order else None
    _keep_trusted(args, cfg)
    agent = Agent(cfg, monitor=args.probation > 0, tick_seconds=0.2)
    try:
        job = agent.install(args.bundle, rollback_order=order, wait=args.probation > 0,
                            timeout=args.probation + 30 if args.probation > 0 else None, repo=args.repo)
    finally:
        agent.close()
    if args.json:
        json.dump(job.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"job {job.job_id}: {_job_line(job)}")
    status = job.status.value
    if status in ("REJECTED", "ROLLED_BACK"):
        raise UpdateRejectedError(f"update {status.lower()}: {job.reason}: {job.message}", reason=job.reason)
    if status == "FAILED":
        raise StoreError(f"update failed: {job.reason}: {job.message}")
    return 0


def cmd_trust_root(args: Any) -> int:
    """Pin a TUF root in the agent's state (``STATE_DIR/tuf/``)."""
    from pathlib import Path

    from .tuf_mode import provision_root, tuf_dir

    cfg = _config(args)
    Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
    done = provision_root(cfg.state_dir, args.root)
    where = tuf_dir(cfg.state_dir)
    if not done.changed:
        print(f"TUF root v{done.version} is already pinned in {where}")
        return 0
    print(f"pinned TUF root v{done.version} (threshold {done.threshold} of {len(done.keyids)} key(s)) in {where}; "
          "installs are now checked against TUF metadata (agent install ARCHIVE --repo DIR)")
    if done.cleared:
        print(f"re-provisioned: dropped metadata trusted under the previous root ({', '.join(done.cleared)})")
    return 0


def cmd_status(args: Any) -> int:
    from pathlib import Path

    from .agent import read_status

    cfg = _config(args)
    status = read_status(cfg.state_dir)
    db = Path(cfg.state_dir) / "telemetry.db"
    if db.exists():
        from .telemetry import TelemetryQueue

        q = TelemetryQueue(db, cfg.telemetry.max_events, repair=False)  # read-only: the agent repairs its queue
        status["telemetry"] = q.stats()
        q.close()
    if args.json:
        json.dump(status, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    act, prev = status["active"], status["previous"]
    print(f"state dir: {status['state_dir']}")
    print(f"active:    {act['name']} v{act['version']} ({act['id'][:12]})" if act else "active:    (none)")
    print(f"previous:  {prev['name']} v{prev['version']} ({prev['id'][:12]})" if prev else "previous:  (none)")
    if status.get("tuf_root_version") is not None:
        print(f"trust:     TUF root v{status['tuf_root_version']} pinned (installs are checked against TUF "
              "metadata: --repo DIR)")
    job = status["job"]
    if job:
        print(f"last job:  {job['job_id']} {job['status']} ({job['reason']})"
              + (f" step {job['step']}" if job["step"] else ""))
    if status.get("pointer_error"):
        print(f"pointer:   DAMAGED ({status['pointer_error']}); the agent rebuilds it from the newest verified "
              "version when it next starts")
    if "telemetry" in status:
        t = status["telemetry"]
        line = f"telemetry: {t['queued']} queued, {t['dropped']} dropped"
        if t.get("lost_queues"):
            line += f", {t['lost_queues']} corrupt queue(s) moved aside ({t.get('lost_bytes', 0)} bytes lost)"
        if t.get("degraded"):
            line += f", in memory only ({t['degraded']})"
        print(line)
    return 0


def cmd_rollback(args: Any) -> int:
    from .agent import Agent

    agent = Agent(_config(args), monitor=False)
    try:
        state = agent.rollback()
    finally:
        agent.close()
    assert state.active is not None
    print(f"rolled back to {state.active.name} v{state.active.version}"
          + (f" (from v{state.previous.version})" if state.previous else ""))
    return 0


def cmd_predict(args: Any) -> int:
    import numpy as np

    from edgefleet.commands import read_array_file

    from .agent import Agent

    agent = Agent(_config(args), monitor=False, resume=False)
    try:
        data = read_array_file(args.input)
        model = agent.model
        if isinstance(data, dict) and model is not None and len(model.manifest.inputs) == 1:
            name = model.manifest.inputs[0].name
            data = data.get(name, data.get("x", next(iter(data.values()))))
        out = agent.predict(data)
    finally:
        agent.close()
    outs = out if isinstance(out, dict) else {"output": out}
    if args.json:
        json.dump({k: np.asarray(v).tolist() for k, v in outs.items()}, sys.stdout)
        sys.stdout.write("\n")
    else:
        for v in outs.values():
            print(np.array2string(np.asarray(v), precision=5, threshold=200))
    return 0


def cmd_run(args: Any) -> int:
    import signal
    import threading

    from edgefleet import logs

    from .agent import Agent

    logs.daemon()
    cfg = config_from_args(args)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    agent = Agent(cfg, tick_seconds=args.tick)
    try:
        served = agent.active_version
        print(f"edgefleet agent: serving {served or 'nothing yet'} from {cfg.state_dir}", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        agent.close()
        for s, h in old.items():
            signal.signal(s, h)
    print("edgefleet agent: stopped", flush=True)
    return 0
