"""Records from database rows by column name, with cattrs-generated functions.

A query selects one of the ``*_COLUMNS`` lists of :mod:`trust._store.schema`; its row becomes
a mapping of column name to value, and the record's generated structure function reads each
field by name, converting what the two drivers return (SQLite's integers for booleans,
PostgreSQL's ``memoryview`` for BYTEA) to the field's type.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import cattrs
from cattrs.gen import make_dict_structure_fn

from trust._model import Level
from trust._records import AuditEntry, AuditTier, ClientRecord, Counters, Invite, as_audit_tier
from trust._records import as_level as _as_level
from trust._store.schema import AUDIT_COLUMNS, CLIENT_COLUMNS, COUNTER_COLUMNS, INVITE_COLUMNS

R = TypeVar("R")

_converter = cattrs.Converter(detailed_validation=False)
_hooks: dict[Any, Callable[[Any, Any], Any]] = {
    str: lambda v, _: str(v),
    int: lambda v, _: int(v),
    bool: lambda v, _: bool(v),
    bytes: lambda v, _: bytes(v),
    Level: lambda v, _: _as_level(str(v)),
    AuditTier: lambda v, _: as_audit_tier(str(v)),
    str | None: lambda v, _: None if v is None else str(v),
    int | None: lambda v, _: None if v is None else int(str(v)),
    bool | None: lambda v, _: None if v is None else bool(v),
}


def _is(expected: Any) -> Callable[[Any], bool]:
    return lambda t: bool(t == expected)


for _type, _hook in _hooks.items():
    if isinstance(_type, type):
        _converter.register_structure_hook(_type, _hook)
    else:  # a union or a Literal: matched by equality
        _converter.register_structure_hook_func(_is(_type), _hook)


def _columns(names: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in names.split(","))


class RowReader(Generic[R]):
    """Turns rows of ``columns`` into ``cls`` records, field by column name."""

    def __init__(self, cls: type[R], columns: str) -> None:
        self.columns = _columns(columns)
        self._structure = make_dict_structure_fn(cls, _converter)

    def __call__(self, row: Sequence[Any]) -> R:
        return self._structure(dict(zip(self.columns, row, strict=True)))


client_reader = RowReader(ClientRecord, CLIENT_COLUMNS)
audit_reader = RowReader(AuditEntry, AUDIT_COLUMNS)
invite_reader = RowReader(Invite, INVITE_COLUMNS)
counters_reader = RowReader(Counters, COUNTER_COLUMNS)
