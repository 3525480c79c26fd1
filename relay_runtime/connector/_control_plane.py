"""The reference connector's HTTP control plane: ``/relay/provision``, ``/relay/policy``,
``/relay/enroll`` (RC §9), served by a small h11-on-trio HTTP/1.1 server on loopback.

This is a **development and test peer**, not a production connector: it keeps everything in
memory, trusts a static table of identity tokens instead of an identity provider, and serves
plain HTTP. What it does do faithfully is the gateway-visible behaviour: bearer checks
(identity token for provision and enroll, an HMAC upgrade token verified with
:func:`protocol._auth.verify_token` for policy), per-gateway secret minting with a rotation
window, single-use enrollment tokens, the wake URL record (gap 12: enroll accepts and echoes
``wakeUrl``), JSON errors ``{"error": ...}`` with 400/401/403/404/405/413.

The WebSocket side of the reference connector consults the same
:class:`ControlPlaneRegistry` (:meth:`~ControlPlaneRegistry.secrets_for`,
:meth:`~ControlPlaneRegistry.policy_for`, :meth:`~ControlPlaneRegistry.wake_url_for`) and
pokes sleeping gateways with :class:`WakePoker`.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import httpx
import trio

from protocol._events import Identity
from protocol._urls import ENROLL, POLICY, PROVISION, RELAY_PATH, http_url_problem
from relay_runtime.connector._http_server import (
    HttpRequest as HttpRequest,
)
from relay_runtime.connector._http_server import (
    HttpResponse as HttpResponse,
)
from relay_runtime.connector._http_server import (
    HttpServer as HttpServer,
)
from relay_runtime.connector._http_server import (
    error_response,
)
from relay_runtime.connector._http_server import (
    json_response as json_response,
)
from relay_runtime.connector._http_server import (
    serve_http as serve_http,
)
from relay_runtime.connector._relevance import RelevancePolicy
from relay_runtime.connector._upgrade_auth import DEFAULT_MAX_TOKEN_LIFETIME_S, authenticate

logger = logging.getLogger("relay_runtime.connector.control_plane")

_V = TypeVar("_V")


@attrs.define
class _Secret:
    value: str
    # When a newer secret replaced this one; the rotation window counts from here.
    superseded_at: float | None = None


@attrs.define
class _Burst:
    """One boot's provision calls: the identities served with the current secret so far."""

    identities: set[Identity]
    last_at: float


@attrs.define
class GatewayRecord:
    """What the connector knows about one gateway."""

    gateway_id: str
    tenant: str
    # Newest (the primary) first.
    secrets: list[_Secret] = attrs.field(factory=list, repr=False)
    burst: _Burst | None = attrs.field(default=None, repr=False)
    identities: list[Identity] = attrs.field(factory=list)
    route_keys: tuple[str, ...] = ()
    endpoint: str = ""
    # (instance_id or None) -> wake URL
    wake_urls: dict[str | None, str] = attrs.field(factory=dict)
    policies: dict[str, RelevancePolicy] = attrs.field(factory=dict)


@attrs.define
class _EnrollmentToken:
    tenant: str
    used: bool = False


@attrs.define
class ControlPlaneRegistry:
    """The reference connector's gateway records, shared by its HTTP and WebSocket sides.

    ``identity_tokens`` maps an accepted identity bearer to its tenant (the stand-in for an
    identity provider). Each enroll, and each boot's provisioning, mints a new secret; the
    secret it replaces stays valid for ``rotation_window_s`` after being *superseded* (so a
    restarted instance overlaps the previous one). The provision calls of one boot (one per
    identity, back to back, RC §9) all get the same secret, since the gateway keeps the first
    response's: a call starts a new burst when its identity was already served in the current
    one (a new boot) or when ``provision_burst_s`` passed since the burst's last call.
    ``clock`` is injectable for tests. Upgrade tokens presented to ``/relay/policy`` follow
    the same lifetime policy as the WebSocket side (``max_token_lifetime_s``, ``None`` for
    legacy tokens; see :mod:`~relay_runtime.connector._upgrade_auth`).

    Bearer secrets (identity tokens, enrollment tokens) are compared in constant time
    against every known one, never looked up by value.
    """

    identity_tokens: dict[str, str] = attrs.field(factory=dict, repr=False)
    rotation_window_s: float = 900.0
    provision_burst_s: float = 60.0
    accept_wake_url_on_enroll: bool = True
    clock: Callable[[], float] = time.time
    max_token_lifetime_s: float | None = DEFAULT_MAX_TOKEN_LIFETIME_S
    gateways: dict[str, GatewayRecord] = attrs.field(factory=dict)
    delivery_keys: dict[str, str] = attrs.field(factory=dict, repr=False)
    # (route, body) of every request that reached a handler, for tests to inspect.
    received: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list, repr=False)
    _enrollment_tokens: dict[str, _EnrollmentToken] = attrs.field(factory=dict, repr=False)
    _revoke_listeners: list[Callable[[str], None]] = attrs.field(factory=list, repr=False)

    # ------------------------------------------------------------------ set-up

    def add_identity_token(self, token: str, tenant: str) -> None:
        """Accept ``token`` as the identity bearer of ``tenant``."""
        self.identity_tokens[token] = tenant

    def issue_enrollment_token(self, tenant: str) -> str:
        """A fresh single-use enrollment token for ``tenant``."""
        token = "enr_" + secrets.token_urlsafe(24)
        self._enrollment_tokens[token] = _EnrollmentToken(tenant)
        return token

    def pin_gateway(self, gateway_id: str, secret: str, *, tenant: str = "dev") -> GatewayRecord:
        """Register a gateway with an operator-chosen secret (a pinned deployment)."""
        record = self.record_for(gateway_id, tenant)
        self._push(record, secret)
        return record

    def revoke(self, gateway_id: str) -> None:
        """Forget every secret of ``gateway_id`` (its next upgrade is refused).

        Every listener (:meth:`on_revoke`) is told, so a connector serving this registry
        closes the gateway's live sockets 4401 as well.
        """
        record = self.gateways.get(gateway_id)
        if record is not None:
            record.secrets.clear()
            record.burst = None
        for listener in list(self._revoke_listeners):
            listener(gateway_id)

    def on_revoke(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(gateway_id)`` on each :meth:`revoke`."""
        self._revoke_listeners.append(listener)

    # ------------------------------------------------------------------ queries

    def secrets_for(self, gateway_id: str) -> list[str]:
        """The secrets an upgrade for ``gateway_id`` may be signed with, newest first."""
        record = self.gateways.get(gateway_id)
        if record is None:
            return []
        self._expire(record)
        return [secret.value for secret in record.secrets]

    def verify_bearer(self, token: str) -> str | None:
        """The gateway id a valid HMAC upgrade token belongs to, else ``None``."""
        auth = authenticate(
            token, self.secrets_for, now=self.clock(), max_lifetime_s=self.max_token_lifetime_s
        )
        return auth.gateway_id if auth.ok else None

    def policy_for(self, gateway_id: str, platform: str) -> RelevancePolicy | None:
        """The declared relevance policy of ``gateway_id`` for ``platform``, if any."""
        record = self.gateways.get(gateway_id)
        return None if record is None else record.policies.get(platform)

    def wake_url_for(self, gateway_id: str, instance_id: str | None = None) -> str | None:
        """The wake URL registered for this instance, else the gateway-wide one."""
        record = self.gateways.get(gateway_id)
        if record is None:
            return None
        return record.wake_urls.get(instance_id) or record.wake_urls.get(None)

    def tenant_for(self, identity_token: str | None) -> str | None:
        """The tenant an identity bearer proves, if it is known."""
        if identity_token is None:
            return None
        return _constant_time_find(identity_token, self.identity_tokens)

    # ------------------------------------------------------------------ mutations

    def record_for(self, gateway_id: str, tenant: str) -> GatewayRecord:
        """The record of ``gateway_id``, created for ``tenant`` if it is new."""
        record = self.gateways.get(gateway_id)
        if record is None:
            record = self.gateways[gateway_id] = GatewayRecord(gateway_id, tenant)
        return record

    def _expire(self, record: GatewayRecord) -> None:
        cutoff = self.clock() - self.rotation_window_s
        record.secrets[1:] = [
            s for s in record.secrets[1:] if s.superseded_at is None or s.superseded_at >= cutoff
        ]

    def _push(self, record: GatewayRecord, secret: str) -> None:
        if record.secrets and record.secrets[0].superseded_at is None:
            record.secrets[0].superseded_at = self.clock()
        record.secrets.insert(0, _Secret(secret))
        record.burst = None
        self._expire(record)

    def mint_secret(self, record: GatewayRecord) -> str:
        """A new primary secret for ``record``; the one it replaces stays for the window."""
        secret = secrets.token_hex(32)
        self._push(record, secret)
        return secret

    def provision_secret(self, record: GatewayRecord, identity: Identity) -> str:
        """The secret for one provision call: the burst's current one, or a newly minted one."""
        now = self.clock()
        burst = record.burst
        if (
            burst is not None
            and record.secrets
            and identity not in burst.identities
            and now - burst.last_at <= self.provision_burst_s
        ):
            burst.identities.add(identity)
            burst.last_at = now
            return record.secrets[0].value
        secret = self.mint_secret(record)
        record.burst = _Burst({identity}, now)
        return secret

    def delivery_key_for(self, tenant: str) -> str:
        """The tenant's delivery key, created on first use."""
        if tenant not in self.delivery_keys:
            self.delivery_keys[tenant] = "dk_" + secrets.token_urlsafe(24)
        return self.delivery_keys[tenant]

    def consume_enrollment_token(self, token: str, tenant: str) -> str | None:
        """``None`` if ``token`` is valid for ``tenant`` (and now used), else why not."""
        entry = _constant_time_find(token, self._enrollment_tokens)
        if entry is None:
            return "enrollment token invalid or expired"
        if entry.used:
            return "enrollment token already used"
        if entry.tenant != tenant:
            return "enrollment token belongs to another tenant"
        entry.used = True
        return None


def _constant_time_find(given: str, table: Mapping[str, _V]) -> _V | None:
    """The value of the key equal to ``given``, comparing with every key in constant time.

    A dict lookup by a secret leaks, through timing, how much of a guess matches a stored
    key's hash bucket and prefix; this compares every key with ``secrets.compare_digest`` and
    does not stop at the first match.
    """
    wanted = given.encode("utf-8", "surrogateescape")
    found: _V | None = None
    for key, value in table.items():
        if secrets.compare_digest(key.encode("utf-8", "surrogateescape"), wanted):
            found = value
    return found


# --------------------------------------------------------------------------- the app


class _BadBody(Exception):
    pass


def _body_object(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body)
    except ValueError:
        raise _BadBody("body is not valid JSON") from None
    except RecursionError:
        raise _BadBody("body is nested too deeply") from None
    if not isinstance(body, dict):
        raise _BadBody("body must be a JSON object")
    return body


def _field(body: Mapping[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise _BadBody(f"missing field: {name}")
        return None
    value = body[name]
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is list:
        ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
    else:
        ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok:
        wanted = {bool: "a boolean", list: "a list of strings", str: "a string"}[kind]
        raise _BadBody(f"{name} must be {wanted}")
    return value


def _wake_url(body: Mapping[str, Any]) -> str | None:
    url = _field(body, "wakeUrl", str, required=False)
    if url is not None and http_url_problem(url) is not None:
        raise _BadBody("wakeUrl must be an http(s) URL")
    return None if url is None else url.rstrip("/")


@attrs.frozen
class ControlPlane:
    """The HTTP app: routes the three control-plane calls to the registry."""

    registry: ControlPlaneRegistry

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        routes: dict[str, Callable[[HttpRequest], HttpResponse]] = {
            f"{RELAY_PATH}/{PROVISION}": self._provision,
            f"{RELAY_PATH}/{POLICY}": self._policy,
            f"{RELAY_PATH}/{ENROLL}": self._enroll,
        }
        handler = routes.get(request.path.rstrip("/"))
        if handler is None:
            return error_response(404, f"no such route: {request.path}")
        if request.method != "POST":
            return error_response(405, f"method {request.method} not allowed", ("allow", "POST"))
        try:
            return handler(request)
        except _BadBody as exc:
            return error_response(400, str(exc))

    def _log(self, route: str, body: dict[str, Any]) -> None:
        self.registry.received.append((route, body))

    def _provision(self, request: HttpRequest) -> HttpResponse:
        registry = self.registry
        tenant = registry.tenant_for(request.bearer())
        if tenant is None:
            return error_response(401, "identity token not recognised")
        body = _body_object(request)
        self._log("provision", body)
        gateway_id = _field(body, "gatewayId", str)
        platform = _field(body, "platform", str)
        bot_id = _field(body, "botId", str)
        endpoint = _field(body, "gatewayEndpoint", str)
        route_keys = _field(body, "routeKeys", list)
        instance_id = _field(body, "instanceId", str, required=False)
        wake_url = _wake_url(body)
        if not gateway_id or not platform:
            raise _BadBody("gatewayId and platform must not be empty")
        existing = registry.gateways.get(gateway_id)
        if existing is not None and existing.tenant != tenant:
            return error_response(403, "gatewayId belongs to another tenant")
        record = registry.record_for(gateway_id, tenant)
        identity = Identity(platform=platform, bot_id=bot_id)
        if identity not in record.identities:
            record.identities.append(identity)
        record.route_keys = tuple(route_keys)
        record.endpoint = endpoint
        if wake_url is not None:
            record.wake_urls[instance_id] = wake_url
        secret = registry.provision_secret(record, identity)
        return json_response(
            200,
            {
                "secret": secret,
                "deliveryKey": registry.delivery_key_for(tenant),
                "tenant": tenant,
                "gatewayId": gateway_id,
                "routeKeys": list(record.route_keys),
            },
        )

    def _policy(self, request: HttpRequest) -> HttpResponse:
        token = request.bearer()
        gateway_id = None if token is None else self.registry.verify_bearer(token)
        if gateway_id is None:
            return error_response(401, "upgrade token invalid or expired")
        body = _body_object(request)
        self._log("policy", body)
        platform = _field(body, "platform", str)
        if not platform:
            raise _BadBody("platform must not be empty")
        policy = RelevancePolicy(
            require_address=_field(body, "requireAddress", bool),
            free_response_scopes=tuple(_field(body, "freeResponseScopes", list)),
            allow_other_bots=_field(body, "allowOtherBots", bool),
        )
        self.registry.gateways[gateway_id].policies[platform] = policy
        return json_response(200, {"ok": True})

    def _enroll(self, request: HttpRequest) -> HttpResponse:
        registry = self.registry
        tenant = registry.tenant_for(request.bearer())
        if tenant is None:
            return error_response(401, "identity token not recognised")
        body = _body_object(request)
        self._log("enroll", body)
        enrollment_token = _field(body, "enrollmentToken", str)
        gateway_id = _field(body, "gatewayId", str)
        if not gateway_id:
            raise _BadBody("gatewayId must not be empty")
        if "wakeUrl" in body and not registry.accept_wake_url_on_enroll:
            raise _BadBody("unknown field: wakeUrl")
        wake_url = _wake_url(body)
        existing = registry.gateways.get(gateway_id)
        if existing is not None and existing.tenant != tenant:
            return error_response(403, "gatewayId belongs to another tenant")
        problem = registry.consume_enrollment_token(enrollment_token, tenant)
        if problem is not None:
            return error_response(403, problem)
        record = registry.record_for(gateway_id, tenant)
        if wake_url is not None:
            record.wake_urls[None] = wake_url
        reply: dict[str, Any] = {
            "secret": registry.mint_secret(record),
            "deliveryKey": registry.delivery_key_for(tenant),
            "tenant": tenant,
            "gatewayId": gateway_id,
        }
        if wake_url is not None:
            reply["wakeUrl"] = wake_url
        return json_response(200, reply)


async def serve_control_plane(
    registry: ControlPlaneRegistry,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[HttpServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control plane for ``registry`` until cancelled (``nursery.start`` it)."""
    await serve_http(ControlPlane(registry), host=host, port=port, task_status=task_status)


# --------------------------------------------------------------------------- wake poker


class WakePoker:
    """Wakes a sleeping gateway: a payload-free, unsigned ``GET <wakeUrl>`` (RC §8).

    At most one poke per ``key`` (an instance) per ``cooldown_s`` of trio time; best effort:
    failures are logged at DEBUG and swallowed, each attempt bounded by ``http_timeout_s``.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        cooldown_s: float = 60.0,
        http_timeout_s: float = 5.0,
    ) -> None:
        self._client = client
        self._cooldown_s = cooldown_s
        self._http_timeout_s = http_timeout_s
        self._last: dict[str, float] = {}

    async def poke(self, key: str, url: str) -> bool:
        """Poke ``url`` for instance ``key``; ``False`` if still within the cooldown."""
        now = trio.current_time()
        last = self._last.get(key)
        if last is not None and now - last < self._cooldown_s:
            return False
        self._last[key] = now
        try:
            with trio.move_on_after(self._http_timeout_s):
                # A poke is rare: no pooled connection is left to go stale between pokes.
                await self._client.get(url, follow_redirects=False, headers={"Connection": "close"})
        except httpx.HTTPError as exc:
            logger.debug("wake poke for %s failed: %s", key, type(exc).__name__)
        return True
