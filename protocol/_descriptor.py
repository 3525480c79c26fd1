"""What a connector says a platform can do: the capability descriptor (RC §4.1)."""

from __future__ import annotations

import attrs

CONTRACT_VERSION = 1

#: Used when a descriptor's ``max_message_length`` is missing or unusable.
DEFAULT_MAX_MESSAGE_LENGTH = 4096

#: The ops a descriptor with an empty ``supported_ops`` allows (the v1 legacy set).
LEGACY_OPS: frozenset[str] = frozenset({"send", "edit", "typing", "follow_up"})


def text_length(text: str, len_unit: str) -> int:
    """Length of ``text`` in a descriptor's ``len_unit``.

    ``utf16`` counts UTF-16 code units (a code point at or above U+10000 counts 2, anything
    else 1, lone surrogates included); every other unit counts code points.
    """
    if len_unit == "utf16":
        if text.isascii():
            return len(text)
        return len(text.encode("utf-16-le", "surrogatepass")) // 2
    return len(text)


@attrs.frozen
class CapabilityDescriptor:
    """A platform's capabilities, as the connector declares them after ``hello``."""

    contract_version: int
    platform: str
    label: str
    max_message_length: int
    supports_draft_streaming: bool
    supports_edit: bool
    supports_threads: bool
    markdown_dialect: str
    len_unit: str
    emoji: str = "\U0001f50c"
    platform_hint: str = ""
    pii_safe: bool = False
    supports_context: bool = False
    supports_inchannel_continuable: bool = False
    supports_block_formatting: bool = False
    supported_ops: tuple[str, ...] = ()

    @property
    def supports_code_blocks(self) -> bool:
        """Whether the platform renders fenced code (any dialect but ``""``/``plain``)."""
        return self.markdown_dialect not in ("", "plain")

    @property
    def allowed_ops(self) -> frozenset[str]:
        """The outbound ops the connector accepts for this platform (``send`` always)."""
        if not self.supported_ops:
            return LEGACY_OPS
        return frozenset(self.supported_ops) | {"send"}

    def allows(self, op: str) -> bool:
        """Whether an outbound ``op`` may be sent under this descriptor (RC §3.3 gates)."""
        if op == "send":
            return True
        if op == "get_chat_info":
            return not self.supported_ops or op in self.supported_ops
        if op == "edit" and not self.supports_edit:
            return False
        return op in self.allowed_ops

    def length(self, text: str) -> int:
        """Length of ``text`` in this descriptor's ``len_unit``."""
        return text_length(text, self.len_unit)


def placeholder_descriptor(platform: str) -> CapabilityDescriptor:
    """The descriptor assumed for ``platform`` until its first handshake (RC §4.1)."""
    return CapabilityDescriptor(
        contract_version=CONTRACT_VERSION,
        platform=platform,
        label="Relay",
        max_message_length=DEFAULT_MAX_MESSAGE_LENGTH,
        supports_draft_streaming=False,
        supports_edit=True,
        supports_threads=False,
        markdown_dialect="plain",
        len_unit="chars",
    )
