"""edgefleet: compile models for small devices, run them offline, keep a fleet improving.

``import edgefleet`` is light: it never imports TensorFlow, flwr or paho, and
runtimes are imported only when a model is opened.
"""

from __future__ import annotations

from ._version import __version__
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all
from .lazy import lazy_getattr

_LAZY = {
    "load": ("edgefleet.model", "load"),
    "Model": ("edgefleet.model", "Model"),
    "Manifest": ("edgefleet.manifest", "Manifest"),
    "TensorSpec": ("edgefleet.manifest", "TensorSpec"),
    "Session": ("edgefleet.session", "Session"),
    "Pipeline": ("edgefleet.preprocess", "Pipeline"),
    "verify_bundle": ("edgefleet.bundle", "open_bundle"),
}


__getattr__ = lazy_getattr("edgefleet", _LAZY, globals())

__all__ = ["__version__", *_LAZY, *_errors_all]
