"""Lazy attributes for package ``__init__`` modules (heavy submodules load on first use).

Every package that loads its public names lazily does it with one call::

    _LAZY = {"load": ("edgefleet.model", "load"), ...}

    if TYPE_CHECKING:  # the same names, for type checkers and IDEs
        from .model import load as load

    __getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

The ``TYPE_CHECKING`` imports never run; they make ``edgefleet.load`` a typed
name for mypy and IDEs instead of the ``Any`` a module ``__getattr__`` gives.
A test keeps them and ``_LAZY`` in step.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_attributes(
    package: str, table: Mapping[str, tuple[str, str]], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module's ``__getattr__`` and ``__dir__`` for ``table[name] = (module, attribute)``.

    ``__getattr__`` imports the module on first access and caches the value in
    ``namespace`` (the package's ``globals()``); ``__dir__`` lists the lazy names
    beside what is already defined, so ``dir(package)`` shows the public API.
    """

    def __getattr__(name: str) -> Any:
        if name in table:
            module, attr = table[name]
            value = getattr(importlib.import_module(module), attr)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
