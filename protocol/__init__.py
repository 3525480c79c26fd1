"""The relay wire contract v1, sans-IO: frames, codec, NDJSON framing, auth, session keys.

Nothing here imports trio, httpx or sockets; the trio runtime in ``relay_runtime`` carries
bytes and timers around these pure pieces.
"""

from protocol._actions import Action as Action
from protocol._actions import Edit as Edit
from protocol._actions import FollowUp as FollowUp
from protocol._actions import GetChatInfo as GetChatInfo
from protocol._actions import Send as Send
from protocol._actions import Typing as Typing
from protocol._auth import make_token as make_token
from protocol._auth import make_upgrade_token as make_upgrade_token
from protocol._auth import sign as sign
from protocol._auth import verify_signature as verify_signature
from protocol._auth import verify_token as verify_token
from protocol._codec import decode_object as decode_object
from protocol._codec import encode_frame as encode_frame
from protocol._codec import soft_problems_to as soft_problems_to
from protocol._descriptor import CONTRACT_VERSION as CONTRACT_VERSION
from protocol._descriptor import CapabilityDescriptor as CapabilityDescriptor
from protocol._descriptor import placeholder_descriptor as placeholder_descriptor
from protocol._descriptor import text_length as text_length
from protocol._errors import FrameError as FrameError
from protocol._events import Identity as Identity
from protocol._events import MessageEvent as MessageEvent
from protocol._events import SessionSource as SessionSource
from protocol._events import find_identity as find_identity
from protocol._frames import DescriptorFrame as DescriptorFrame
from protocol._frames import Frame as Frame
from protocol._frames import GoingIdle as GoingIdle
from protocol._frames import GoingIdleAck as GoingIdleAck
from protocol._frames import Hello as Hello
from protocol._frames import Inbound as Inbound
from protocol._frames import InboundAck as InboundAck
from protocol._frames import Interrupt as Interrupt
from protocol._frames import InterruptInbound as InterruptInbound
from protocol._frames import Outbound as Outbound
from protocol._frames import OutboundResult as OutboundResult
from protocol._frames import PassthroughForward as PassthroughForward
from protocol._frames import PassthroughForwardFrame as PassthroughForwardFrame
from protocol._framing import FrameDecoder as FrameDecoder
from protocol._keys import build_session_key as build_session_key
from protocol._keys import message_key as message_key
from protocol._keys import session_key as session_key
from protocol._passthrough import PassthroughError as PassthroughError
from protocol._passthrough import decode_forward as decode_forward
from protocol._passthrough import discord_interaction_event as discord_interaction_event
from protocol._relay_connection import RelayConnection as RelayConnection
from protocol._relay_connection import RelayProtocolError as RelayProtocolError
from protocol._results import ChatInfo as ChatInfo
from protocol._results import ErrorKind as ErrorKind
from protocol._results import SendResult as SendResult

__all__ = [
    "CONTRACT_VERSION",
    "Action",
    "CapabilityDescriptor",
    "ChatInfo",
    "DescriptorFrame",
    "Edit",
    "ErrorKind",
    "FollowUp",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "GetChatInfo",
    "GoingIdle",
    "GoingIdleAck",
    "Hello",
    "Identity",
    "Inbound",
    "InboundAck",
    "Interrupt",
    "InterruptInbound",
    "MessageEvent",
    "Outbound",
    "OutboundResult",
    "PassthroughError",
    "PassthroughForward",
    "PassthroughForwardFrame",
    "RelayConnection",
    "RelayProtocolError",
    "Send",
    "SendResult",
    "SessionSource",
    "Typing",
    "build_session_key",
    "decode_forward",
    "decode_object",
    "discord_interaction_event",
    "encode_frame",
    "find_identity",
    "make_token",
    "make_upgrade_token",
    "message_key",
    "placeholder_descriptor",
    "session_key",
    "sign",
    "soft_problems_to",
    "text_length",
    "verify_signature",
    "verify_token",
]
