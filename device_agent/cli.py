"""``edgefleet agent ...``: a thin CLI over :class:`edgefleet.device_agent.agent.Agent`.

Light at import (argparse only); each handler imports what it needs. Errors are
raised as ``EdgefleetError`` and turned into exit codes by ``edgefleet.cli``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable

RunCommand = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class RunExtension:
    """Options another package adds to ``edgefleet agent run``, and the runner that reads them.

    ``add_options(group)`` adds the options to an argument group titled ``title``; ``run(args, local)``
    runs the command (``local`` is the agent's own daemon, for when the extension's options are not used).
    The device agent never imports the packages that extend it (cloud_sync adds ``--broker``)."""

    title: str
    add_options: Callable[[Any], None]
    run: Callable[[argparse.Namespace, RunCommand], int]


RUN_EXTENSIONS: list[RunExtension] = []


def extend_run(extension: RunExtension) -> RunExtension:
    """Register ``extension`` for ``agent run`` (before the command is built; ``edgefleet.cli`` imports the
    extending modules first). Returns it, so a module can keep a name for it."""
    if extension not in RUN_EXTENSIONS:
        RUN_EXTENSIONS.append(extension)
    return extension


def _run_with_extensions(run: argparse.ArgumentParser) -> None:
    command: RunCommand = cmd_run
    for ext in RUN_EXTENSIONS:
        ext.add_options(run.add_argument_group(ext.title))
        command = (lambda inner, e: (lambda args: e.run(args, inner)))(command, ext)
    run.set_defaults(func=command)


def register(sub: Any) -> None:
    agent = sub.add_parser("agent", help="the device agent: install, serve, roll back, report")
    asub = agent.add_subparsers(dest="agent_command", metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="agent.toml (state dir, trusted keys, hardware tags, policies)")
        p.add_argument("--state-dir", help="the agent's state directory (overrides the config's)")
        p.add_argument("--trust", action="append", default=[], metavar="PUBKEY",
                       help="trusted public key (repeatable); install keeps it in STATE_DIR/trust/")
        p.add_argument("--hardware-tag", action="append", default=[], metavar="TAG",
                       help="a hardware tag of this device (repeatable; adds to the config's)")
        p.add_argument("--allow-unsigned", action="store_true", help="accept unsigned bundles (development only)")
        p.add_argument("--model-name", metavar="NAME",
                       help="the model this device serves (default: the config's, else the first installed); "
                       "bundles of another name are refused")

    run = asub.add_parser("run", help="run the agent as a daemon until SIGTERM (with --broker: connected to the fleet)")
    common(run)
    run.add_argument("--tick", type=float, default=0.5, help="monitor period in seconds (default 0.5)")
    _run_with_extensions(run)

    ins = asub.add_parser("install", help="verify, smoke-test and activate a bundle (directory or .efb)")
    ins.add_argument("bundle", metavar="BUNDLE|ARCHIVE")
    common(ins)
    ins.add_argument("--rollback-order", metavar="FILE", help="a signed order allowing an older version")
    ins.add_argument("--repo", metavar="DIR",
                     help="TUF repository to check the archive against (required once a TUF root is pinned)")
    ins.add_argument("--probation", type=float, default=0.0, metavar="SECONDS",
                     help="stay and watch the new version this long (default 0: a running daemon serves it)")
    ins.add_argument("--json", action="store_true", help="print the job as JSON")
    ins.set_defaults(func=cmd_install)

    tr = asub.add_parser("trust-root", help="pin a TUF root: installs are then checked against TUF metadata")
    tr.add_argument("root", metavar="ROOT.json", help="the repository's root metadata (e.g. metadata/1.root.json)")
    common(tr)
    tr.set_defaults(func=cmd_trust_root)

    st = asub.add_parser("status", help="show the active and previous versions and the last job")
    common(st)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    rb = asub.add_parser("rollback", help="go back to the previous version")
    common(rb)
    rb.set_defaults(func=cmd_rollback)

    pr = asub.add_parser("predict", help="predict with the active version")
    common(pr)
    pr.add_argument("--input", required=True, help=".npy, .npz or .csv input")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_predict)

    agent.set_defaults(func=lambda args: (agent.print_help(), 2)[1])


def _config(args: argparse.Namespace, **update: Any) -> Any:
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


def _keep_trusted(args: argparse.Namespace, cfg: Any) -> None:
    """``--trust KEY`` keys are kept in STATE_DIR/trust/, so later commands (``agent predict``) verify with them."""
    if not args.trust:
        return
    from .store import Store

    store = Store(cfg.state_dir)
    for key in args.trust:
        store.add_trusted_key(key)


def config_from_args(args: argparse.Namespace, **update: Any) -> Any:
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


def cmd_install(args: argparse.Namespace) -> int:
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


def cmd_trust_root(args: argparse.Namespace) -> int:
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


def cmd_status(args: argparse.Namespace) -> int:
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


def cmd_rollback(args: argparse.Namespace) -> int:
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


def cmd_predict(args: argparse.Namespace) -> int:
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


def cmd_run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .agent import Agent

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
