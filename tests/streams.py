"""Stream wrappers the transport tests share."""

from __future__ import annotations

from typing import Any


class CountingStream:
    """Wraps a stream and counts its ``send_all`` calls (everything else passes through)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes = 0

    async def send_all(self, data: bytes) -> None:
        self.writes += 1
        await self.inner.send_all(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
