"""The environment of the processes edgefleet starts: built explicitly, never inherited whole.

``cloud serve`` holds secrets in its environment (``EDGEFLEET_TOKEN``, the admin API token;
``EDGEFLEET_SIGNING_KEY``; ``EDGEFLEET_MQTT_PASSWORD``), and so may a device agent (its MQTT
credentials, an operator's token or key left in the shell it was started from). Their children - the
coordinator's supervised ``flower-superlink`` (and the ``flower-superexec``/ServerApp processes it
starts), the runs started on drift and the ``flwr run`` they submit with, and a device's
``flower-supernode`` with its ClientApps - need none of them: a run is given its own deploy-scoped
token explicitly (see ``cloud_sync.federated.autorun``). :func:`child_env` keeps only what a
Python/Flower/TensorFlow process needs to run (locale, paths, proxies, ``FLWR_*``/``TF_*``-style
settings) plus the variables passed to it.

It lives in the SDK (``edgefleet.childenv``) so that the device agent, which may import nothing
of ``cloud_sync``, uses the same allow-list as the coordinator.
"""

from __future__ import annotations

import os
from typing import Mapping

# passed on by name
KEEP = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "TEMP", "TMP",
    "VIRTUAL_ENV", "SYSTEMROOT", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES",
    "PYTHONPATH", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PYTHONWARNINGS", "PYTHONIOENCODING",
    "SSL_CERT_FILE", "SSL_CERT_DIR",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "EDGEFLEET_DEBUG", "EDGEFLEET_DEMO_RUN",  # the demo finds every process it started by this mark
})
# passed on by prefix: settings of the libraries the children run (none of them holds an edgefleet secret)
KEEP_PREFIXES = ("LC_", "FLWR_", "TF_", "XLA_", "KERAS_", "CUDA_", "OMP_", "MKL_", "OPENBLAS_", "GRPC_", "COVERAGE_")
# never passed on, whatever the lists above say: what cloud serve and the operator CLI read secrets from
SECRETS = frozenset({"EDGEFLEET_TOKEN", "EDGEFLEET_TOKEN_FILE", "EDGEFLEET_SIGNING_KEY", "EDGEFLEET_MQTT_USER",
                     "EDGEFLEET_MQTT_PASSWORD"})


def child_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: the harmless variables of ``base`` (default ``os.environ``), then
    ``extra`` (which may name a secret the child does need, such as its own ``EDGEFLEET_TOKEN``)."""
    src = os.environ if base is None else base
    env = {k: v for k, v in src.items()
           if k not in SECRETS and (k in KEEP or k.startswith(KEEP_PREFIXES))}
    env.update(extra or {})
    return env


__all__ = ["child_env", "KEEP", "KEEP_PREFIXES", "SECRETS"]
