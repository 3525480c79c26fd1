"""Capability descriptors the reference connector answers ``hello`` with.

The presets mirror the example descriptors of the hermes relay tests (Discord, Telegram) plus
a plain ``relay`` one. A platform without a preset gets :func:`generic_descriptor`, the
``relay`` preset renamed, so any identity a gateway announces completes its handshake.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from protocol._descriptor import CONTRACT_VERSION, CapabilityDescriptor

DISCORD = CapabilityDescriptor(
    contract_version=CONTRACT_VERSION,
    platform="discord",
    label="Discord",
    max_message_length=2000,
    supports_draft_streaming=False,
    supports_edit=True,
    supports_threads=True,
    markdown_dialect="discord",
    len_unit="chars",
)

TELEGRAM = CapabilityDescriptor(
    contract_version=CONTRACT_VERSION,
    platform="telegram",
    label="Telegram",
    max_message_length=4096,
    supports_draft_streaming=False,
    supports_edit=True,
    supports_threads=True,
    markdown_dialect="markdown_v2",
    len_unit="utf16",
    emoji="\u2708\ufe0f",
    platform_hint="You are on Telegram.",
)

RELAY = CapabilityDescriptor(
    contract_version=CONTRACT_VERSION,
    platform="relay",
    label="Relay",
    max_message_length=4096,
    supports_draft_streaming=False,
    supports_edit=True,
    supports_threads=False,
    markdown_dialect="plain",
    len_unit="chars",
)

#: A preset's value: a descriptor, or a raw wire object sent exactly as given (for tests of
#: the gateway's descriptor parsing, e.g. ``max_message_length: 0``).
DescriptorSpec = CapabilityDescriptor | Mapping[str, Any]

DEFAULT_DESCRIPTORS: Mapping[str, DescriptorSpec] = {
    "discord": DISCORD,
    "telegram": TELEGRAM,
    "relay": RELAY,
}

#: What ``descriptor_mode = "invalid"`` sends: required keys are missing, so no gateway may
#: complete a handshake with it (RC §6.3).
INVALID_DESCRIPTOR: Mapping[str, Any] = {"contract_version": CONTRACT_VERSION, "label": "Broken"}


def generic_descriptor(platform: str) -> CapabilityDescriptor:
    """The descriptor for a platform without a preset: the ``relay`` one under its name."""
    return attrs.evolve(RELAY, platform=platform, label=platform.title() or "Relay")
