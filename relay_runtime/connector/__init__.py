"""The reference connector: a development and test peer for relay gateways.

It implements the connector side of the relay contract v1 on a real loopback WebSocket
server (``/relay``, HMAC upgrade auth, descriptors, inbound injection, outbound results,
``going_idle`` buffering with ack-gated replay, revocation, forced drops). It is what the
end-to-end tests, the demo and the benchmarks run against. It is **not** a production
connector: it holds everything in memory, fronts no real platform, and trusts its caller.
"""

from relay_runtime.connector._buffer import DeliveryBuffer as DeliveryBuffer
from relay_runtime.connector._core import DEFAULT_KEEP_RECORDS as DEFAULT_KEEP_RECORDS
from relay_runtime.connector._outcomes import Delay as Delay
from relay_runtime.connector._outcomes import Fail as Fail
from relay_runtime.connector._outcomes import NoAnswer as NoAnswer
from relay_runtime.connector._outcomes import Outcome as Outcome
from relay_runtime.connector._outcomes import OutcomeTable as OutcomeTable
from relay_runtime.connector._outcomes import Reply as Reply
from relay_runtime.connector._outcomes import Succeed as Succeed
from relay_runtime.connector._presets import DEFAULT_DESCRIPTORS as DEFAULT_DESCRIPTORS
from relay_runtime.connector._presets import DISCORD as DISCORD
from relay_runtime.connector._presets import RELAY as RELAY
from relay_runtime.connector._presets import TELEGRAM as TELEGRAM
from relay_runtime.connector._presets import generic_descriptor as generic_descriptor
from relay_runtime.connector._records import BadFrame as BadFrame
from relay_runtime.connector._records import Delivery as Delivery
from relay_runtime.connector._records import GatedDrop as GatedDrop
from relay_runtime.connector._records import Post as Post
from relay_runtime.connector._records import Received as Received
from relay_runtime.connector._records import Rejection as Rejection
from relay_runtime.connector._records import Sent as Sent
from relay_runtime.connector._records import SentMessage as SentMessage
from relay_runtime.connector._relevance import RelevancePolicy as RelevancePolicy
from relay_runtime.connector._server import AcceptHook as AcceptHook
from relay_runtime.connector._server import Connection as Connection
from relay_runtime.connector._server import GoingIdleHook as GoingIdleHook
from relay_runtime.connector._server import OutboundObserver as OutboundObserver
from relay_runtime.connector._server import ReferenceConnector as ReferenceConnector
from relay_runtime.connector._server import open_connector as open_connector

__all__ = [
    "DEFAULT_DESCRIPTORS",
    "DEFAULT_KEEP_RECORDS",
    "DISCORD",
    "RELAY",
    "TELEGRAM",
    "AcceptHook",
    "BadFrame",
    "Connection",
    "Delay",
    "Delivery",
    "DeliveryBuffer",
    "Fail",
    "GatedDrop",
    "GoingIdleHook",
    "NoAnswer",
    "OutboundObserver",
    "Outcome",
    "OutcomeTable",
    "Post",
    "Received",
    "ReferenceConnector",
    "Rejection",
    "RelevancePolicy",
    "Reply",
    "Sent",
    "SentMessage",
    "Succeed",
    "generic_descriptor",
    "open_connector",
]
