"""Error values of the wire layer: what went wrong with one frame, said precisely."""

from __future__ import annotations

from typing import Literal

import attrs

FrameErrorKind = Literal[
    "malformed",  # bad JSON, not an object, or no string "type"
    "unknown_type",  # ignored by contract (RC §2 Dispatch); reported at debug level
    "bad_field",  # a known type with a required field missing or mistyped
    "invalid_descriptor",  # a descriptor that can complete no handshake (RC §6.3)
    "oversized",  # over max_frame_bytes (RC §2 Max frame)
]


@attrs.frozen
class FrameError:
    """One frame the decoder could not turn into a frame object.

    The decoder returns these instead of raising; ``message`` is the log line the contract
    asks for, naming the problem. The next frame is decoded normally.
    """

    kind: FrameErrorKind
    message: str
    frame_type: str | None = None
    field: str | None = None

    @property
    def severity(self) -> Literal["debug", "warning", "error"]:
        """The log level the contract gives this kind of problem."""
        if self.kind == "oversized":
            return "error"
        if self.kind == "unknown_type":
            return "debug"
        return "warning"


class FieldError(ValueError):
    """A required field is missing or has the wrong shape (raised inside the codec only)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
