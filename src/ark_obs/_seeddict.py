"""Typed results that are also the seed's dicts.

The seed's ``get_histogram_stats``, ``check_slos`` and ``validate_trace_continuity`` return dicts, and
code written against it does ``"p95" in stats``, ``report.get("complete")``, ``dict(stats)`` and
``json.dumps(collector.check_slos())``. ``json`` serializes only real dicts (the C encoder reads the
dict's own storage), so a result is a read-only ``dict`` subclass: a frozen dataclass whose fields are
the typed attributes and whose dict content is the same data in the seed's JSON shape, filled once.
"""

from __future__ import annotations

from dataclasses import asdict, fields, is_dataclass
from enum import Enum
from typing import Any, NoReturn

__all__ = ["SeedDict"]


class SeedDict(dict[str, Any]):
    """Base of a ``@dataclass(frozen=True, slots=True, eq=False)`` result that reads as a plain dict.

    Equality is the dict's (a result equals the dict the seed would return); mutation raises.
    """

    __slots__ = ()

    def __post_init__(self) -> None:
        dict.update(self, self._seed_items())

    def _seed_items(self) -> dict[str, Any]:
        """The dict content: every field, sequences as lists, enums as their string values."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    def _field_values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))  # type: ignore[arg-type]

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(f"{type(self).__name__} is read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        # copy and pickle rebuild through __init__, never through the blocked __setitem__
        return (type(self), self._field_values())

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(self._field_values())

    def as_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready dict of the same content (nested results become plain dicts too)."""
        return {k: _deep(v) for k, v in self.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if is_dataclass(value) and not isinstance(value, SeedDict | type):
        return asdict(value)
    return value


def _deep(value: Any) -> Any:
    if isinstance(value, SeedDict):
        return value.as_dict()
    if isinstance(value, list):
        return [_deep(v) for v in value]
    if isinstance(value, dict):
        return {k: _deep(v) for k, v in value.items()}
    return value
