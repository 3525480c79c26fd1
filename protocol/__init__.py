"""The relay wire contract v1, sans-IO: frames, codec, NDJSON framing, auth, session keys.

Nothing here imports trio, httpx or sockets; the trio runtime in ``relay_runtime`` carries
bytes and timers around these pure pieces.
"""

from protocol.actions import Action as Action
from protocol.actions import Edit as Edit
from protocol.actions import FollowUp as FollowUp
from protocol.actions import GetChatInfo as GetChatInfo
from protocol.actions import Send as Send
from protocol.actions import Typing as Typing
from protocol.auth import make_token as make_token
from protocol.auth import make_upgrade_token as make_upgrade_token
from protocol.auth import sign as sign
from protocol.auth import verify_signature as verify_signature
from protocol.auth import verify_token as verify_token
from protocol.codec import decode_object as decode_object
from protocol.codec import encode_frame as encode_frame
from protocol.descriptor import CONTRACT_VERSION as CONTRACT_VERSION
from protocol.descriptor import CapabilityDescriptor as CapabilityDescriptor
from protocol.descriptor import placeholder_descriptor as placeholder_descriptor
from protocol.descriptor import text_length as text_length
from protocol.errors import FrameError as FrameError
from protocol.events import Identity as Identity
from protocol.events import MessageEvent as MessageEvent
from protocol.events import SessionSource as SessionSource
from protocol.frames import DescriptorFrame as DescriptorFrame
from protocol.frames import Frame as Frame
from protocol.frames import GoingIdle as GoingIdle
from protocol.frames import GoingIdleAck as GoingIdleAck
from protocol.frames import Hello as Hello
from protocol.frames import Inbound as Inbound
from protocol.frames import InboundAck as InboundAck
from protocol.frames import Interrupt as Interrupt
from protocol.frames import InterruptInbound as InterruptInbound
from protocol.frames import Outbound as Outbound
from protocol.frames import OutboundResult as OutboundResult
from protocol.frames import PassthroughForward as PassthroughForward
from protocol.frames import PassthroughForwardFrame as PassthroughForwardFrame
from protocol.framing import FrameDecoder as FrameDecoder
from protocol.keys import build_session_key as build_session_key
from protocol.keys import message_key as message_key
from protocol.keys import session_key as session_key
from protocol.passthrough import PassthroughError as PassthroughError
from protocol.passthrough import decode_forward as decode_forward
from protocol.passthrough import discord_interaction_event as discord_interaction_event
from protocol.relay_connection import RelayConnection as RelayConnection
from protocol.relay_connection import RelayProtocolError as RelayProtocolError
from protocol.results import ChatInfo as ChatInfo
from protocol.results import SendResult as SendResult
