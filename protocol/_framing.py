"""NDJSON framing: an incremental decoder and the encoder (RC §2).

A WebSocket message may hold several frames and a frame may span messages, so the reader
keeps a partial tail between messages. The decoder never raises on input: a bad line yields
a :class:`~protocol._errors.FrameError` and decoding goes on with the next line.
"""

from __future__ import annotations

import codecs

from protocol._codec import decode_line
from protocol._codec import encode_frame as encode_frame
from protocol._errors import FrameError
from protocol._frames import Frame

DEFAULT_MAX_FRAME_BYTES = 1 << 20


def utf8_length(text: str) -> int:
    """Length of ``text`` in UTF-8 bytes (lone surrogates count as their U+FFFD)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "replace"))


def exceeds_limit(text: str, max_bytes: int) -> bool:
    """Whether ``text`` is longer than ``max_bytes`` UTF-8 bytes, encoding only if needed."""
    n = len(text)
    if n > max_bytes:
        return True
    if n * 4 <= max_bytes:
        return False
    return utf8_length(text) > max_bytes


class FrameDecoder:
    """Turns a stream of WebSocket messages into frames and error values.

    Feed text messages with :meth:`feed_text` and binary ones with :meth:`feed_bytes` (a
    UTF-8 sequence split across binary messages is reassembled). Each call returns what the
    new data completed, in order. Lines over ``max_frame_bytes`` (UTF-8, without the
    newline) are dropped with one ``oversized`` error, and the decoder skips to the next
    newline without buffering the rest of the oversized line.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1:
            raise ValueError(f"max_frame_bytes must be >= 1, not {max_frame_bytes}")
        self.max_frame_bytes = max_frame_bytes
        self._tail: list[str] = []
        self._tail_len = 0
        self._skipping = False
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    @property
    def pending(self) -> int:
        """Characters held back as an incomplete last line."""
        return self._tail_len

    def feed_bytes(self, data: bytes) -> list[Frame | FrameError]:
        """Decode a binary message's bytes (UTF-8) and return the completed frames."""
        return self.feed_text(self._utf8.decode(data))

    def feed_text(self, text: str) -> list[Frame | FrameError]:
        """Add a text message and return the frames and errors it completed."""
        out: list[Frame | FrameError] = []
        start = 0
        while True:
            end = text.find("\n", start)
            if end < 0:
                self._hold(text[start:], out)
                return out
            piece = text[start:end]
            start = end + 1
            if self._skipping:
                self._skipping = False
                continue
            if self._tail:
                self._tail.append(piece)
                line = "".join(self._tail)
                self._tail.clear()
                self._tail_len = 0
            else:
                line = piece
            self._line(line, out)

    def _hold(self, rest: str, out: list[Frame | FrameError]) -> None:
        if not rest or self._skipping:
            return
        self._tail.append(rest)
        self._tail_len += len(rest)
        if self._tail_len > self.max_frame_bytes and exceeds_limit(
            "".join(self._tail), self.max_frame_bytes + 1
        ):
            # Too long already: drop what we hold and everything up to the next newline.
            self._tail.clear()
            self._tail_len = 0
            self._skipping = True
            out.append(self._oversized())

    def _line(self, line: str, out: list[Frame | FrameError]) -> None:
        if line.endswith("\r"):
            line = line[:-1]
        if not line or line.isspace():
            return
        if exceeds_limit(line, self.max_frame_bytes):
            out.append(self._oversized())
            return
        out.append(decode_line(line))

    def _oversized(self) -> FrameError:
        return FrameError(
            "oversized", f"relay: dropping oversized frame (> {self.max_frame_bytes} bytes)"
        )
