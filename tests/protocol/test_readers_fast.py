"""The direct readers of ``inbound`` and ``outbound_result`` read what the generated ones do.

Each frame reader with a fast path for the common dict keeps the generated reader for
everything else; for any wire object both give the same frame, or the same error.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from protocol._errors import FieldError
from protocol._readers import (
    _inbound_general,
    _outbound_result_general,
    structure_inbound,
    structure_outbound_result,
)

_scalars = st.one_of(
    st.none(), st.text(max_size=8), st.integers(-5, 5), st.booleans(), st.just(1.5)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
_source = st.dictionaries(
    st.sampled_from(["platform", "chat_id", "user_id", "guild_id", "scope_id", "chat_type"]),
    _scalars,
)
_event = st.one_of(
    _values,
    st.fixed_dictionaries(
        {},
        optional={
            "text": _scalars,
            "message_type": st.sampled_from(["text", "photo", "nonsense"]) | _scalars,
            "source": _source | _values,
            "message_id": _scalars,
            "reply_to_message_id": _scalars,
            "media_urls": st.lists(_scalars, max_size=2) | _scalars,
        },
    ),
)


def _read(reader: Any, obj: Any) -> Any:
    try:
        return reader(obj)
    except FieldError as exc:
        return ("error", exc.field, exc.problem)


@settings(max_examples=400, deadline=None)
@given(
    st.fixed_dictionaries(
        {"type": st.just("inbound")},
        optional={"event": _event, "bufferId": _scalars | _values},
    )
)
@example({"type": "inbound", "event": {"text": "hi", "source": {"platform": "X"}}})
@example({"type": "inbound", "bufferId": ""})
@example({"type": "inbound", "event": None, "bufferId": 7})
def test_inbound_reads_as_the_generated_reader(obj: dict[str, Any]) -> None:
    assert _read(structure_inbound, obj) == _read(_inbound_general, obj)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {"type": st.just("outbound_result")},
        optional={"requestId": _scalars, "result": _values},
    )
)
@example({"type": "outbound_result", "requestId": "r1", "result": {"success": True}})
@example({"type": "outbound_result", "requestId": "", "result": {}})
@example({"type": "outbound_result", "requestId": 5, "result": "x"})
def test_outbound_result_reads_as_the_generated_reader(obj: dict[str, Any]) -> None:
    assert _read(structure_outbound_result, obj) == _read(_outbound_result_general, obj)
