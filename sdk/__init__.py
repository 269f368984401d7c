"""edgefleet: compile models for small devices, run them offline, keep a fleet improving.

``import edgefleet`` is light: it never imports TensorFlow, flwr or paho, and
runtimes are imported only when a model is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all
from .lazy import lazy_attributes

_LAZY = {
    "load": ("edgefleet.model", "load"),
    "Model": ("edgefleet.model", "Model"),
    "Manifest": ("edgefleet.manifest", "Manifest"),
    "TensorSpec": ("edgefleet.manifest", "TensorSpec"),
    "Session": ("edgefleet.session", "Session"),
    "Pipeline": ("edgefleet.preprocess", "Pipeline"),
    "verify_bundle": ("edgefleet.bundle", "open_bundle"),
}

if TYPE_CHECKING:  # the names _LAZY loads, typed for mypy and IDEs (a test keeps both in step)
    from .bundle import open_bundle as verify_bundle  # noqa: F401 (in __all__ through _LAZY)
    from .manifest import Manifest as Manifest
    from .manifest import TensorSpec as TensorSpec
    from .model import Model as Model
    from .model import load as load
    from .preprocess import Pipeline as Pipeline
    from .session import Session as Session

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = ["__version__", *_LAZY, *_errors_all]
