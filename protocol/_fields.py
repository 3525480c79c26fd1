"""The contract's per-field read rules, as cattrs structure hooks, and where soft problems go.

Each factory returns a hook ``(value, type) -> field value`` for one wire field, named by its
path so that a problem names the field. ``None`` reads as absent everywhere. A required field
that is missing raises :class:`~protocol._errors.FieldError`; a soft problem (a boolean where
text was expected, a non-boolean flag) is reported with :func:`soft_problem` and the field
reads as its default. Soft problems go to the sink installed by :func:`collecting` (the
transport's rate-limited log, installed with :func:`soft_problems_to`), else to the
``relay.protocol`` logger.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from protocol._descriptor import CONTRACT_VERSION, DEFAULT_MAX_MESSAGE_LENGTH
from protocol._errors import FieldError
from protocol._events import MESSAGE_TYPES
from protocol._results import MALFORMED_RESULT

log = logging.getLogger("relay.protocol")

#: A structure hook: ``(value, type=None) -> field value``.
Hook = Callable[..., Any]
ProblemSink = Callable[[str], None]

#: Where :func:`soft_problem` reports while a frame is decoded; ``None``: the logger.
problem_sink: ContextVar[ProblemSink | None] = ContextVar("relay_problem_sink", default=None)


def soft_problem(message: str) -> None:
    """Report one soft field problem to the installed sink (else log it as a warning)."""
    sink = problem_sink.get()
    if sink is None:
        log.warning("%s", message)
    else:
        sink(message)


@contextmanager
def soft_problems_to(sink: ProblemSink) -> Iterator[None]:
    """Report the soft problems of everything decoded inside the block to ``sink``.

    The sink lives in the current context: a reader task that installs it once around its
    loop routes its own frames' problems there at no cost per frame, and other tasks are
    not affected.
    """
    token = problem_sink.set(sink)
    try:
        yield
    finally:
        problem_sink.reset(token)


# -- text ---------------------------------------------------------------------------------------


def opt_text(where: str, key: str) -> Hook:
    """Text, or a number read as its decimal text; anything else is a soft problem -> None."""
    name = f"{where}.{key}"

    def read(value: Any, _: Any = None) -> str | None:
        kind = type(value)
        if kind is str:
            return value  # type: ignore[no-any-return]
        if value is None:
            return None
        if kind is int or kind is float:
            return str(value)
        soft_problem(f"relay: ignoring non-text {name} ({kind.__name__})")
        return None

    return read


def text_or(where: str, key: str, default: str) -> Hook:
    """Text where absent, empty or unusable reads as ``default``."""
    read = opt_text(where, key)

    def text(value: Any, _: Any = None) -> str:
        return read(value) or default

    return text


def truthy_text(where: str, key: str) -> Hook:
    """Optional text that only counts when non-empty."""
    read = opt_text(where, key)

    def text(value: Any, _: Any = None) -> str | None:
        return read(value) or None

    return text


def required_text(where: str, key: str) -> Hook:
    """Text that must be present (``null`` and unusable values count as missing)."""
    read = opt_text(where, key)
    field = f"{where}.{key}" if where else key

    def required(value: Any, _: Any = None) -> str:
        text: str | None = read(value)
        if text is None:
            raise FieldError(field, "missing required text field")
        return text

    return required


def platform_name(where: str, key: str) -> Hook:
    """A platform name as the reader keeps it: stripped and lower-cased (``""`` if absent)."""
    read = opt_text(where, key)

    def platform(value: Any, _: Any = None) -> str:
        text = read(value)
        return text.strip().lower() if text else ""

    return platform


def metadata(where: str) -> Hook:
    """An action's ``metadata`` object; anything but an object reads as ``{}``."""

    def read(value: Any, _: Any = None) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        if value is not None:
            soft_problem(f"relay: ignoring non-object {where}.metadata")
        return {}

    return read


# -- events -------------------------------------------------------------------------------------


def message_type(value: Any, _: Any = None) -> str:
    """A v1 ``message_type``; anything else (including non-text) reads as ``text``."""
    return value if type(value) is str and value in MESSAGE_TYPES else "text"


def media_urls(value: Any, _: Any = None) -> tuple[str, ...]:
    """The text entries of ``media_urls``; a non-list is a soft problem."""
    if not value:
        return ()
    if not isinstance(value, list):
        soft_problem("relay: ignoring non-list event.media_urls")
        return ()
    return tuple(u for u in value if isinstance(u, str))


# -- descriptor ---------------------------------------------------------------------------------


def contract_version(value: Any, _: Any = None) -> int:
    """An integer >= 1 (an integral float counts); newer versions read with v1 semantics."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is None:
        raise FieldError("descriptor.contract_version", "missing required field")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FieldError("descriptor.contract_version", f"must be an integer >= 1, not {value!r}")
    if value > CONTRACT_VERSION:
        soft_problem(
            f"relay: descriptor contract_version {value} > {CONTRACT_VERSION}; "
            f"using v{CONTRACT_VERSION} semantics"
        )
    return value


def descriptor_text(key: str) -> Hook:
    """A required text field of the descriptor (a wrong type makes the descriptor invalid)."""
    field = f"descriptor.{key}"

    def read(value: Any, _: Any = None) -> str:
        if value is None:
            raise FieldError(field, "missing required field")
        if not isinstance(value, str):
            raise FieldError(field, f"must be text, not {type(value).__name__}")
        return value

    return read


def len_unit(value: Any, _: Any = None) -> str:
    """``chars`` or ``utf16``; another unit reads as ``chars``."""
    unit = descriptor_text("len_unit")(value)
    return unit if unit in ("chars", "utf16") else "chars"


def text_else(default: str) -> Hook:
    """Optional text where anything but text reads as ``default``."""

    def text(value: Any, _: Any = None) -> str:
        return value if isinstance(value, str) else default

    return text


def flag(key: str, *, required: bool) -> Hook:
    """A descriptor boolean; a non-boolean is a soft problem and reads as false."""
    field = f"descriptor.{key}"

    def read(value: Any, _: Any = None) -> bool:
        if value is None:
            if required:
                raise FieldError(field, "missing required field")
            return False
        if isinstance(value, bool):
            return value
        soft_problem(f"relay: {field} is not a boolean ({value!r}); reading it as false")
        return False

    return read


def max_message_length(value: Any, _: Any = None) -> int:
    """A positive integer; anything unusable reads as the default length."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return DEFAULT_MAX_MESSAGE_LENGTH
    if isinstance(value, float) and not value.is_integer():
        return DEFAULT_MAX_MESSAGE_LENGTH
    n = int(value)
    return n if n > 0 else DEFAULT_MAX_MESSAGE_LENGTH


def supported_ops(value: Any, _: Any = None) -> tuple[str, ...]:
    """The text entries of ``supported_ops``; a non-list is a soft problem."""
    if value is None:
        return ()
    if not isinstance(value, list):
        soft_problem("relay: ignoring non-list descriptor.supported_ops")
        return ()
    return tuple(op for op in value if isinstance(op, str))


# -- passthrough and results --------------------------------------------------------------------


def headers(value: Any, _: Any = None) -> tuple[tuple[str, str], ...]:
    """Header pairs in arrival order; malformed pairs are dropped."""
    if not isinstance(value, list):
        return ()
    pairs: list[tuple[str, str]] = []
    for pair in value:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            continue
        k, v = pair
        if all(isinstance(x, str | int | float) and not isinstance(x, bool) for x in (k, v)):
            pairs.append((str(k), str(v)))
    return tuple(pairs)


def body(value: Any, _: Any = None) -> bytes:
    """The decoded ``bodyB64``; absent or malformed reads as ``b""``."""
    if not isinstance(value, str) or not value:
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return b""


def result_object(value: Any, _: Any = None) -> dict[str, Any]:
    """An ``outbound_result``'s result: absent is ``{}``, a non-object a malformed failure."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        return {"success": False, "error": MALFORMED_RESULT}
    return value
