"""TOML tables -> frozen dataclasses: the one coercer behind every config loader.

The agent's ``agent.toml`` (:mod:`edgefleet.device_agent.config`) and the
compiler's recipes (:mod:`edgefleet.compiler.config`) are typed dataclasses built
from parsed TOML with :func:`from_table`: every key must be a field (a typo is a
:class:`~edgefleet.errors.ConfigError`, never a silent default) and every value
must have its field's type (``bool``, ``int``, ``float``, ``str``, ``X | None``,
``tuple[X, ...]``, an ``Enum`` by value, a nested dataclass from a nested table).
The dataclasses' own ``__post_init__`` then checks ranges. Each loader keeps its
own wording (``[agent] has unknown option(s)``, ``prune: unknown key(s)``)
through :class:`Wording`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


@dataclass(frozen=True)
class Wording:
    """How a loader names its tables in errors (``str.format`` templates).

    ``not_table`` gets ``where`` and ``got`` (the type name of what was given);
    ``unknown`` gets ``where``, ``unknown`` and ``known`` (sorted key lists). Keys
    of the table named ``bare`` are named alone (``seed``, not ``recipe.seed``).
    """

    not_table: str = "{where} must be a table, got {got}"
    unknown: str = "{where}: unknown key(s) {unknown}; known keys are {known}"
    bare: str | None = None


def read_toml(path: str | os.PathLike[str], noun: str) -> dict[str, Any]:
    """Parse a TOML file; an unreadable or invalid file is a ``ConfigError`` naming the ``noun`` and path."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {noun} {p}: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{noun} {p} is not valid TOML: {exc}") from None


def from_table(cls: type[T], data: Any, where: str, wording: Wording = Wording()) -> T:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and checking every value's type."""
    if not isinstance(data, Mapping):
        raise ConfigError(wording.not_table.format(where=where, got=type(data).__name__))
    hints = get_type_hints(cls)
    known = sorted(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(wording.unknown.format(where=where, unknown=unknown, known=known))
    kwargs = {
        key: coerce(hints[key], value, key if where == wording.bare else f"{where}.{key}", wording)
        for key, value in data.items()
    }
    return cls(**kwargs)


def coerce(tp: Any, value: Any, where: str, wording: Wording = Wording()) -> Any:
    """``value`` checked (and where lossless, converted) to the annotation ``tp``; ``where`` names it in errors."""
    if tp is Any:
        return value
    origin, args = get_origin(tp), get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{where} must not be empty")
    if origin is Union or origin is types.UnionType:  # X | None
        inner = [a for a in args if a is not type(None)]
        return coerce(inner[0], value, where, wording) if len(inner) == 1 else value
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value.value if isinstance(value, Enum) else value)
        except ValueError:
            raise ConfigError(f"{where} must be one of {[m.value for m in tp]}, got {value!r}") from None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return value if isinstance(value, tp) else from_table(tp, value, where, wording)
    if origin is tuple:
        what = "a list of strings" if args and args[0] is str else "a list"
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{where} must be {what}, got {value!r}")
        try:
            return tuple(coerce(args[0] if args else Any, v, f"{where}[{i}]", wording) for i, v in enumerate(value))
        except ConfigError:
            raise ConfigError(f"{where} must be {what}, got {value!r}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


__all__ = ["Wording", "coerce", "from_table", "read_toml"]
