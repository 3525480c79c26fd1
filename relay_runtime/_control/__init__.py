"""The gateway's side of the HTTP control plane (RC §9): provision, relevance policy, enroll.

Every call is one JSON ``POST`` with a bearer token, bounded by ``http_timeout_s`` (15 s) of
our own (:func:`trio.fail_after`, so it also holds under a mock clock), TLS verified,
redirects not followed (a redirect could carry the bearer elsewhere), no automatic retry.

At boot, :func:`boot_control_plane` self-provisions (when configured) and
:func:`declare_policy` declares the relevance policy; neither raises nor stops start-up, they
log a WARNING instead. :func:`enroll` is the ``enroll`` command's call; it raises
:class:`ControlError` with the message the user sees. Credentials from provisioning live in
memory only; :func:`persist_enrollment` writes enrolled ones to ``<state dir>/relay.env``.
Secrets, tokens and the delivery key never reach a log.
"""

from __future__ import annotations

from relay_runtime._control._client import DEFAULT_TIMEOUT_S as DEFAULT_TIMEOUT_S
from relay_runtime._control._client import ControlError as ControlError
from relay_runtime._control._client import Credentials as Credentials
from relay_runtime._control._client import EnrollResult as EnrollResult
from relay_runtime._control._client import ProvisionResult as ProvisionResult
from relay_runtime._control._client import default_gateway_id as default_gateway_id
from relay_runtime._control._client import open_client as open_client
from relay_runtime._control._client import upgrade_token as upgrade_token
from relay_runtime._control._client import upgrade_token_factory as upgrade_token_factory
from relay_runtime._control._enroll import ENROLL_401 as ENROLL_401
from relay_runtime._control._enroll import ENROLL_403 as ENROLL_403
from relay_runtime._control._enroll import ENROLL_NO_SECRET as ENROLL_NO_SECRET
from relay_runtime._control._enroll import UNCONFIRMED_WAKE_WARNING as UNCONFIRMED_WAKE_WARNING
from relay_runtime._control._enroll import enroll as enroll
from relay_runtime._control._enroll import persist_enrollment as persist_enrollment
from relay_runtime._control._enroll import shown_credentials as shown_credentials
from relay_runtime._control._policy import declare_policy as declare_policy
from relay_runtime._control._policy import policy_for as policy_for
from relay_runtime._control._policy import project_policy as project_policy
from relay_runtime._control._policy import send_policy as send_policy
from relay_runtime._control._provision import PROVISION_NO_SECRET as PROVISION_NO_SECRET
from relay_runtime._control._provision import boot_control_plane as boot_control_plane
from relay_runtime._control._provision import pinned_credentials as pinned_credentials
from relay_runtime._control._provision import provision as provision
from relay_runtime._control._provision import resolve_identity_token as resolve_identity_token

__all__ = [
    "ControlError",
    "Credentials",
    "EnrollResult",
    "ProvisionResult",
    "boot_control_plane",
    "declare_policy",
    "default_gateway_id",
    "enroll",
    "open_client",
    "persist_enrollment",
    "project_policy",
    "provision",
    "resolve_identity_token",
    "send_policy",
    "upgrade_token",
    "upgrade_token_factory",
]
