"""Generation of the codec's (un)structure functions with cattrs, and the shared converter.

Every contract type's functions are made by ``make_dict_structure_fn``/
``make_dict_unstructure_fn`` with an ``override`` per field: its wire name, its read rule
(:mod:`protocol._fields`), whether it is written only when set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.fns import identity
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from protocol import _fields as f
from protocol._errors import FieldError

T = TypeVar("T")
JSONDict = dict[str, Any]
Unstructure = Callable[[Any], JSONDict]

converter = cattrs.Converter(forbid_extra_keys=False, detailed_validation=False)
"""The converter for every contract type (frames, actions, events, descriptors)."""


def read(hook: f.Hook, rename: str | None = None) -> Any:
    """A field read from the wire key ``rename`` (else its own name) by ``hook``."""
    return override(rename=rename, struct_hook=hook)


def write(
    rename: str | None = None,
    hook: Callable[[Any], Any] = identity,
    *,
    omit_if_default: bool = False,
) -> Any:
    """A field written under ``rename`` (else its own name), as is unless ``hook`` is given."""
    return override(rename=rename, unstruct_hook=hook, omit_if_default=omit_if_default or None)


SKIP = override(omit=True)


def structurer(
    cls: type[T],
    where: str,
    *,
    none_is_empty: bool = False,
    absent: Mapping[str, FieldError] | None = None,
    **fields: Any,
) -> Callable[..., T]:
    """The generated structure function for ``cls``, with the contract's missing-field rules.

    A missing key reads as ``null``: the field's hook decides whether that is an error (a
    required field) or a default; ``absent`` names keys whose absence is an error of its own.
    A value that is not an object raises a :class:`FieldError` on ``where`` (or reads as
    ``{}`` when ``none_is_empty`` and it is ``null``).
    """
    generated = make_dict_structure_fn(cls, converter, **fields)
    wire_keys = {o.rename or name for name, o in fields.items() if not o.omit}
    gaps = dict(absent or {})

    def structure(obj: Any, _: Any = None) -> T:
        if type(obj) is not dict and not isinstance(obj, Mapping):
            if obj is None and none_is_empty:
                obj = {}
            else:
                raise FieldError(where, f"must be an object, not {type(obj).__name__}")
        while True:
            try:
                return generated(obj)
            except KeyError as exc:
                key = exc.args[0] if exc.args else None
                if key not in wire_keys or key in obj:
                    raise
                if key in gaps:
                    raise gaps[key] from None
                obj = {**obj, key: None}

    return structure


def unstructurer(cls: type[Any], tag: tuple[str, str] | None = None, **fields: Any) -> Unstructure:
    """The unstructure function for ``cls``, generated on its first call.

    ``tag`` is (wire key, class constant): e.g. ``("type", "TYPE")`` writes the frame's
    ``TYPE`` first. cattrs writes attrs fields in order, so the function is generated from a
    copy of ``cls`` whose first field is that constant; it reads ``instance.TYPE``, which
    every instance of ``cls`` has (a class-level constant, not a field). Every field gets an
    explicit override, so the converter's hooks (registered after this) do not change it.
    """
    return _Generated(lambda: _generate_unstructure(cls, tag, fields))


class _Generated:
    """An unstructure function generated when first called, not at import.

    Generating the writers of every contract type (a class copy and a ``compile`` each) was
    ~8 ms of the gateway's start-up; a gateway writes a few frame types before READY.
    """

    __slots__ = ("_fn", "_make")

    def __init__(self, make: Callable[[], Unstructure]) -> None:
        self._make = make
        self._fn: Unstructure | None = None

    def __call__(self, obj: Any) -> JSONDict:
        fn = self._fn
        if fn is None:
            fn = self.generate()
        return fn(obj)

    def generate(self) -> Unstructure:
        """The generated function (generating it now if it was not yet).

        Two threads calling it first at once may both generate it; the functions are the
        same, and either one is kept.
        """
        fn = self._fn
        if fn is None:
            fn = self._fn = self._make()
        return fn


def _generate_unstructure(
    cls: type[Any], tag: tuple[str, str] | None, overrides: dict[str, Any]
) -> Unstructure:
    fields = dict(overrides)  # the caller's stay as given: a second generation sees them too
    for a in attrs.fields(cls):
        fields.setdefault(a.name, write())
    shape: type[Any] = cls
    if tag is not None:
        key, constant = tag
        fields[constant] = write(key)
        shape = attrs.make_class(
            cls.__name__,
            {
                constant: attrs.field(),
                **{a.name: attrs.field(default=a.default) for a in attrs.fields(cls)},
            },
        )
    generated: Unstructure = make_dict_unstructure_fn(shape, converter, **fields)
    return generated
