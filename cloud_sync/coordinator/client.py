"""The coordinator's HTTP API from the client side: the token, one request, a deployment.

Used by the ``edgefleet fleet`` commands, federated runs (records, ``--deploy``) and the demo. Light at
import: httpx is imported by the call.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping

from edgefleet.errors import ConfigError, EdgefleetError, SyncError


def read_token(token: str | None = None, token_file: str | None = None) -> str | None:
    """The API token: from ``token_file``, else ``token`` (the deprecated --token), else the environment
    (``EDGEFLEET_TOKEN``, or the file named by ``EDGEFLEET_TOKEN_FILE``)."""
    token_file = token_file or (None if token else os.environ.get("EDGEFLEET_TOKEN_FILE"))
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as fh:
                value = fh.read(4096).strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the token file {token_file}: {exc}") from None
        if not value or len(value.split()) != 1:
            raise ConfigError(f"the token file {token_file} must hold one token")
        return value
    return token or os.environ.get("EDGEFLEET_TOKEN") or None


def api_call(api: str, token: str | None, method: str, path: str, *, ca_cert: str | None = None,
             errors: Mapping[int, type[EdgefleetError]] | None = None, **kw: Any) -> Any:
    """One request to the coordinator's HTTP API; errors become ``ConfigError``/``SyncError`` naming the cause, or
    the error ``errors`` names for the answer's status (a rollout action's 409: ``ActionRefusedError``).

    An ``https://`` API's certificate is always verified: against ``ca_cert`` (else the CA file named by
    ``EDGEFLEET_CA_CERT``), else the system's CAs."""
    import httpx

    from ..api_tls import client_verify, connect_error

    token = token or read_token()
    if not token:
        raise ConfigError("an API token is required: EDGEFLEET_TOKEN or --token-file")
    verify: Any = client_verify(ca_cert) if api.lower().startswith("https:") else True
    try:
        with httpx.Client(base_url=api.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=60,
                          verify=verify) as c:
            r = c.request(method, path, **kw)
    except httpx.HTTPError as exc:
        raise connect_error(api, exc) from None
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        named = (errors or {}).get(r.status_code)
        raise (named or (ConfigError if r.status_code in (400, 403, 404, 409, 422) else SyncError))(
            f"coordinator: {r.status_code} {detail}")
    return r.json()


def deploy_bundle(api: str, token: str | None, bundle: str | os.PathLike[str], group: str | None, canary: str = "5%",
                  waves: str = "25%,50%,100%", max_failure: str = "2%", job_timeout: str = "1h", *,
                  ca_cert: str | None = None, tags: list[str] | tuple[str, ...] = (),
                  devices: list[str] | tuple[str, ...] = (), rate: int = 0, min_finished: int = 0,
                  quality: str = "") -> Any:
    """Start a staged rollout of a bundle (directory or ``.efb``) through the coordinator's API to ``group``,
    ``tags`` and/or ``devices`` (at least one), at most ``rate`` devices a minute (0: no limit), the failure rate
    judged once ``min_finished`` jobs have ended, the install jobs carrying the ``quality`` probation policy
    (``mode=enforce,agreement_bad=0.3``: see :func:`.rollout.parse_quality`); returns its summary."""
    from pathlib import Path

    from .rollout import parse_plan, parse_quality

    parse_plan(canary, waves, max_failure)  # refused here, before a bundle is uploaded
    parse_quality(quality)

    src = Path(bundle)
    if src.is_dir():
        import tempfile

        from edgefleet.bundle import write_archive

        with tempfile.TemporaryDirectory() as tmp:
            body = write_archive(src, Path(tmp) / "bundle.efb").read_bytes()
    elif src.is_file():
        body = src.read_bytes()
    else:
        raise ConfigError(f"{src} does not exist")
    return api_call(api, token, "POST", "/v1/deployments", ca_cert=ca_cert, content=body,
                    headers={"Content-Type": "application/octet-stream"},
                    params={**({"group": group} if group else {}), "canary": canary, "waves": waves,
                            "max_failure": max_failure, "job_timeout": job_timeout,
                            **({"tags": ",".join(tags)} if tags else {}),
                            **({"devices": ",".join(devices)} if devices else {}),
                            **({"rate": rate} if rate else {}), **({"min_finished": min_finished} if min_finished
                                                                   else {}),
                            **({"quality": quality} if quality else {})})


def follow(api: str, token: str | None, dep_id: str, until: Callable[[dict[str, Any]], bool], *,
           ca_cert: str | None = None, interval: float = 1.0, timeout: float | None = None,
           emit: Callable[[dict[str, Any]], None] | None = None,
           sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic
           ) -> tuple[dict[str, Any], bool]:
    """Poll a deployment's summary every ``interval`` seconds, handing each to ``emit``, until ``until(summary)``
    or ``timeout`` seconds (None: no limit); returns (the last summary, whether ``until`` held)."""
    deadline = None if timeout is None else clock() + timeout
    while True:
        s: dict[str, Any] = api_call(api, token, "GET", f"/v1/deployments/{dep_id}", ca_cert=ca_cert)
        if emit is not None:
            emit(s)
        if until(s):
            return s, True
        if deadline is not None and clock() >= deadline:
            return s, False
        sleep(interval if deadline is None else max(0.0, min(interval, deadline - clock())))
