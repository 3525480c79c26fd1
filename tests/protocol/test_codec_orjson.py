"""The codec's orjson fast path against the json module: same text out, same values in.

``to_json`` must write byte for byte what ``json`` with compact separators and
``ensure_ascii=False`` writes (then lone surrogates as U+FFFD), and ``parse`` must return
what ``json.loads`` returns, or raise what it raises with the same message, for any input:
including the values orjson writes differently (floats, NaN, subclasses, big ints) and the
texts it reads differently or refuses (ints beyond 64 bits, NaN, lone surrogate escapes).
"""

from __future__ import annotations

import enum
import json
import math
import re
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from protocol._codec import parse, to_json

_json_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_SURROGATE = re.compile("[\ud800-\udfff]")


def json_path(obj: Any) -> str:
    """What the codec wrote before orjson: json, then lone surrogates as U+FFFD."""
    return _SURROGATE.sub("\ufffd", _json_dumps(obj))


def same_outcome(run: Any, reference: Any, arg: Any) -> None:
    """``run(arg)`` and ``reference(arg)`` return equal values or raise alike."""
    try:
        expected = reference(arg)
    except Exception as exc:  # the reference's error is the expected outcome
        failure: Exception | None = exc
    else:
        failure = None
    if failure is not None:
        with pytest.raises(type(failure)) as caught:
            run(arg)
        assert str(caught.value) == str(failure)
        return
    got = run(arg)
    assert type(got) is type(expected)
    assert repr(got) == repr(expected)  # repr: tells 0 from 0.0 and -0.0, NaN equals NaN


# Text that orjson and json treat differently: lone surrogates, control characters, U+2028.
tricky_text = st.text(
    alphabet=st.characters(codec=None, categories=None)
    | st.sampled_from(["\ud800", "\udfff", "\x00", "\x1f", "\x7f", "\u2028", '"', "\\"]),
    max_size=12,
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**64 + 2)
    | st.integers(min_value=-(2**64) - 2, max_value=-(2**63) + 2)
    | st.floats()
    | st.sampled_from([1e16, 1e-05, 1e300, 5e-324, -0.0, 1.5])
    | tricky_text
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(tricky_text, inner, max_size=4)
        | st.dictionaries(st.integers() | st.booleans() | st.none(), inner, max_size=2)
    ),
    max_leaves=12,
)


class Colour(enum.IntEnum):
    RED = 1


class Tag(enum.StrEnum):
    A = "a"


class Text(str):
    pass


@given(values)
@settings(max_examples=1500, deadline=None)
@example(float("nan"))
@example({"x": [float("inf"), -float("inf")]})
@example({"big": 2**64, "small": -(2**63) - 1})
@example({"a": "\ud800", "b": "\U0001f600\u2028"})
@example({"id": Colour.RED, "tag": Tag.A, "text": Text("t")})
@example({2: "int key", None: "none key", True: "bool key"})
def test_to_json_writes_what_json_writes(obj: Any) -> None:
    same_outcome(to_json, json_path, obj)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": [value]}
    return value


@pytest.mark.parametrize("depth", [50, 101, 400])
def test_to_json_deep_nesting(depth: int) -> None:
    same_outcome(to_json, json_path, nested(depth))


@pytest.mark.parametrize("obj", [object(), {"x": {1, 2}}, b"bytes", Tag])
def test_to_json_raises_what_json_raises(obj: Any) -> None:
    same_outcome(to_json, json_path, obj)


@given(values)
@settings(max_examples=1500, deadline=None)
def test_parse_reads_what_json_writes(obj: Any) -> None:
    try:
        text = _json_dumps(obj)  # NaN, Infinity, huge ints, lone surrogates: all json's
    except (TypeError, ValueError):
        return
    same_outcome(parse, json.loads, text)


@given(st.text(max_size=40))
@settings(max_examples=1500, deadline=None)
@example('{"a":1,"b":2,"a":3}')
@example("123456789012345678901234567890")
@example("[18446744073709551615,18446744073709551616,-9223372036854775809]")
@example("1E400")
@example("[NaN,Infinity,-Infinity]")
@example('"\\ud800"')
@example("\ufeff{}")
@example('"\x01"')
@example("[1]x")
@example("[" * 1100 + "]" * 1100)
@example("[" * 120 + "]" * 120)
@example(' {"a" : 1.0e+2 } ')
def test_parse_any_text_like_json(text: str) -> None:
    same_outcome(parse, json.loads, text)


@given(st.lists(st.sampled_from(['"a"', "1", "-0", "0.5", "1e5", "true", "null", "[]", "{}"])))
@settings(max_examples=500, deadline=None)
def test_parse_json_arrays(items: list[str]) -> None:
    same_outcome(parse, json.loads, "[" + ",".join(items) + "]")


def test_nan_reads_as_nan() -> None:
    assert math.isnan(parse("NaN"))
