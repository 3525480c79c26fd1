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

import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import trio

from protocol.auth import make_token
from protocol.events import Identity
from protocol.urls import ENROLL, POLICY, PROVISION, control_base, control_url, redact_url
from relay_runtime.config import (
    ENV_FILE_NAME,
    HIDDEN,
    GatewayConfig,
    bool_word,
    mask,
    string_list,
)

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

logger = logging.getLogger("relay_runtime.control")

DEFAULT_TIMEOUT_S: Final = 15.0
UNCONFIRMED_WAKE_WARNING: Final = "connector did not confirm the wake URL; suspend() stays disabled"
ENROLL_401: Final = (
    "The connector could not verify your identity token (HTTP 401); "
    "log in again or refresh the IdP credentials."
)
ENROLL_403: Final = "Enrollment token invalid, expired, already used, or tenant mismatch (403)."
ENROLL_NO_SECRET: Final = "Connector returned an unexpected response (no secret)."
PROVISION_NO_SECRET: Final = "connector returned an unexpected response (no secret)"

_ALLOW_BOTS_ON: Final = frozenset({"mentions", "all"})
_ALLOW_BOTS_OFF: Final = frozenset({"none", "off", "false", "no", "0"})


class ControlError(Exception):
    """A control-plane call failed; ``str(error)`` is the message for the user (no secrets)."""


def _hidden(value: object) -> str:
    return mask(value)


@attrs.frozen
class Credentials:
    """The per-gateway channel credential: ``gateway_id`` + ``secret`` (RC §5).

    ``delivery_key`` is kept and never used (RC §1). ``wake_confirmed`` says the connector
    accepted our wake URL (provision success, or an exact echo from enroll).
    """

    gateway_id: str
    secret: str = attrs.field(repr=_hidden)
    delivery_key: str | None = attrs.field(default=None, repr=_hidden)
    tenant: str | None = None
    route_keys: tuple[str, ...] = ()
    wake_confirmed: bool = False


@attrs.frozen
class ProvisionResult:
    """What provisioning every identity produced.

    ``credentials`` come from the first credential-bearing response (``None`` if none did);
    ``errors`` pairs each failed identity with its RC §9 message, in order.
    """

    credentials: Credentials | None
    succeeded: tuple[Identity, ...]
    errors: tuple[tuple[Identity, str], ...]
    wake_confirmed: bool


@attrs.frozen
class EnrollResult:
    """A successful enrollment: the credentials and whether the wake URL was confirmed."""

    credentials: Credentials
    wake_url: str | None
    wake_confirmed: bool


# --------------------------------------------------------------------------- HTTP plumbing


def open_client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """An ``AsyncClient`` set up for control-plane calls (use it with ``async with``).

    TLS verified, redirects not followed. The deadline is not httpx's: httpx's own timeouts
    are off (its 5 s default would beat a longer ``http_timeout_s``) and each call wraps
    itself in :func:`trio.fail_after` with the configured ``http_timeout_s``.
    """
    return httpx.AsyncClient(follow_redirects=False, verify=True, transport=transport, timeout=None)


class _Unreachable(Exception):
    """No HTTP response: connection refused, DNS, TLS, timeout; ``str`` is the reason."""


@attrs.frozen
class _Reply:
    status: int
    body: object  # parsed JSON; _NOT_JSON when the body is not JSON

    def error_text(self) -> str | None:
        """The body's string ``error``, if it has one."""
        if isinstance(self.body, dict):
            error = self.body.get("error")
            if isinstance(error, str) and error:
                return error
        return None


_NOT_JSON: Final = object()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


async def _send(
    client: httpx.AsyncClient,
    url: str,
    http_timeout_s: float,
    *,
    bearer: str | None,
    json_body: Mapping[str, object] | None = None,
    form: Mapping[str, str] | None = None,
) -> _Reply:
    """One POST, bounded by ``http_timeout_s``; raises :class:`_Unreachable` without reply."""
    headers = {"Accept": "application/json"}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    content: bytes | None = None
    if json_body is not None:
        headers["Content-Type"] = "application/json"
        content = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        with trio.fail_after(http_timeout_s):
            response = await client.post(
                url, content=content, data=form, headers=headers, follow_redirects=False
            )
    except trio.TooSlowError:
        raise _Unreachable(f"timed out after {http_timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise _Unreachable(_reason(exc)) from None
    try:
        body: object = json.loads(response.content) if response.content else _NOT_JSON
    except ValueError:
        body = _NOT_JSON
    return _Reply(response.status_code, body)


def _http_failure(reply: _Reply, prefix: str) -> str:
    error = reply.error_text()
    return f"{prefix} HTTP {reply.status}" + (f": {error}" if error else "")


def _nonempty_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _credentials_from(body: Mapping[str, Any], gateway_id: str, *, wake: bool) -> Credentials:
    route_keys = body.get("routeKeys")
    return Credentials(
        gateway_id=_nonempty_str(body.get("gatewayId")) or gateway_id,
        secret=str(body["secret"]),
        delivery_key=_nonempty_str(body.get("deliveryKey")),
        tenant=_nonempty_str(body.get("tenant")),
        route_keys=tuple(k for k in route_keys if isinstance(k, str))
        if isinstance(route_keys, list)
        else (),
        wake_confirmed=wake,
    )


def default_gateway_id(hostname: str | None = None) -> str:
    """``gw-<hostname>``, or ``gw-hermes`` when the host has no name (RC §9)."""
    name = (socket.gethostname() if hostname is None else hostname).strip()
    return f"gw-{name}" if name else "gw-hermes"


# --------------------------------------------------------------------------- bearer tokens


def upgrade_token(config: GatewayConfig, gateway_id: str, secret: str, *, now: float) -> str:
    """The bearer for one upgrade or control-plane call: valid ``config.token_ttl_s`` seconds.

    ``now`` is wall-clock time (token expiry is wall time, compared by the connector).
    """
    return make_token(gateway_id, secret, config.token_ttl_s, now=now)


def upgrade_token_factory(
    config: GatewayConfig, wall_clock: Callable[[], float] = time.time
) -> Callable[[str, str], str]:
    """``(gateway_id, secret) -> token`` minting with ``config.token_ttl_s`` (the supervisor's)."""

    def mint(gateway_id: str, secret: str) -> str:
        return upgrade_token(config, gateway_id, secret, now=wall_clock())

    return mint


# --------------------------------------------------------------------------- identity token


async def resolve_identity_token(config: GatewayConfig, client: httpx.AsyncClient) -> str | None:
    """The bearer for provision/enroll: an OIDC client-credentials token, else the static one.

    The IdP is preferred when configured; if it fails (WARNING) the static
    ``identity_token`` is used when set. ``None`` when neither yields a token.
    """
    if config.idp_token_url is not None:
        token = await _client_credentials_token(config, config.idp_token_url, client)
        if token is not None:
            return token
    return config.identity_token


async def _client_credentials_token(
    config: GatewayConfig, url: str, client: httpx.AsyncClient
) -> str | None:
    form = {
        "grant_type": "client_credentials",
        "client_id": config.idp_client_id or "",
        "client_secret": config.idp_client_secret or "",
    }
    if config.idp_scope:
        form["scope"] = config.idp_scope
    try:
        reply = await _send(
            client, url, http_timeout_s=config.http_timeout_s, bearer=None, form=form
        )
    except _Unreachable as exc:
        logger.warning("relay: could not reach the identity provider: %s", exc)
        return None
    if reply.status != 200:
        logger.warning("relay: %s", _http_failure(reply, "identity provider returned"))
        return None
    token = reply.body.get("access_token") if isinstance(reply.body, dict) else None
    if not isinstance(token, str) or not token:
        logger.warning("relay: identity provider response has no access_token")
        return None
    return token


# --------------------------------------------------------------------------- provision


def _provision_body(config: GatewayConfig, gateway_id: str, identity: Identity) -> dict[str, Any]:
    body: dict[str, Any] = {
        "gatewayId": gateway_id,
        "platform": identity.platform,
        "botId": identity.bot_id,
        "gatewayEndpoint": config.endpoint or "",
        "routeKeys": list(config.route_keys),
    }
    if config.instance_id:
        body["instanceId"] = config.instance_id
    if config.wake_url:
        body["wakeUrl"] = config.wake_url
    return body


async def provision(
    config: GatewayConfig,
    identity_token: str,
    client: httpx.AsyncClient,
    *,
    gateway_id: str | None = None,
) -> ProvisionResult:
    """``POST /relay/provision`` once per identity, in order, with one ``gatewayId``.

    Never raises for connector or transport failures: each failed identity gets its RC §9
    message (logged at WARNING) and the others still run.
    """
    if config.relay_url is None:
        raise ValueError("provision needs a relay URL")
    url = control_url(config.relay_url, PROVISION)
    asserted = gateway_id or config.gateway_id or default_gateway_id()
    credentials: Credentials | None = None
    succeeded: list[Identity] = []
    errors: list[tuple[Identity, str]] = []
    for identity in config.identities:
        body = _provision_body(config, asserted, identity)
        message: str | None = None
        try:
            reply = await _send(
                client,
                url,
                http_timeout_s=config.http_timeout_s,
                bearer=identity_token,
                json_body=body,
            )
        except _Unreachable as exc:
            message = f"could not reach connector: {exc}"
        else:
            if not 200 <= reply.status < 300:
                message = _http_failure(reply, "connector returned")
            elif not isinstance(reply.body, dict):
                message = PROVISION_NO_SECRET
            elif reply.body.get("secret") and isinstance(reply.body["secret"], str):
                if credentials is None:
                    wake = config.wake_url is not None
                    credentials = _credentials_from(reply.body, asserted, wake=wake)
            elif reply.body.get("secretIssued") is not False:
                message = PROVISION_NO_SECRET
        if message is None:
            succeeded.append(identity)
        else:
            errors.append((identity, message))
            logger.warning(
                "relay: provision failed for platform=%s: %s", identity.platform, message
            )
    return ProvisionResult(
        credentials=credentials,
        succeeded=tuple(succeeded),
        errors=tuple(errors),
        wake_confirmed=bool(succeeded) and config.wake_url is not None,
    )


def pinned_credentials(config: GatewayConfig) -> Credentials | None:
    """The configured ``(gateway_id, secret)`` pair as :class:`Credentials`, if both are set."""
    if config.gateway_id is None or config.secret is None:
        return None
    return Credentials(
        gateway_id=config.gateway_id,
        secret=config.secret,
        delivery_key=config.delivery_key,
        route_keys=config.route_keys,
        wake_confirmed=config.wake_confirmed,
    )


async def boot_control_plane(
    config: GatewayConfig, *, client: httpx.AsyncClient | None = None
) -> Credentials | None:
    """The credentials to dial with, self-provisioning when RC §9 says to.

    Pinned credentials are returned as they are. Otherwise, with a relay URL and an identity
    token, every identity is provisioned and the first issued credentials are returned (in
    memory only). Returns ``None`` (dial unauthenticated) when there is nothing to do or
    everything failed. Never raises for connector trouble; it logs a WARNING.
    """
    pinned = pinned_credentials(config)
    if pinned is not None or not config.relay_active:
        return pinned
    try:
        async with _maybe_client(client) as http:
            token = await resolve_identity_token(config, http)
            if token is None:
                logger.info("relay: no identity token; skipping self-provisioning")
                return None
            result = await provision(config, token, http)
    except Exception as exc:  # never let the control plane stop the gateway booting
        logger.warning("relay: self-provisioning failed: %s", type(exc).__name__)
        return None
    if result.credentials is None:
        if result.errors and not result.succeeded:
            logger.warning("relay: every identity failed to provision; dialing unauthenticated")
        return None
    if result.wake_confirmed and not result.credentials.wake_confirmed:
        return attrs.evolve(result.credentials, wake_confirmed=True)
    return result.credentials


@asynccontextmanager
async def _maybe_client(client: httpx.AsyncClient | None) -> AsyncIterator[httpx.AsyncClient]:
    """The given client untouched, or a fresh one closed afterwards."""
    if client is not None:
        yield client
        return
    async with open_client() as owned:
        yield owned


# --------------------------------------------------------------------------- relevance policy


def _block_for(platform: str, settings: Mapping[str, Any]) -> Mapping[str, Any]:
    direct = settings.get(platform)
    if isinstance(direct, Mapping):
        return direct
    gateway = settings.get("gateway")
    if isinstance(gateway, Mapping):
        nested = gateway.get("platforms")
        if isinstance(nested, Mapping) and isinstance(nested.get(platform), Mapping):
            block: Mapping[str, Any] = nested[platform]
            return block
    platforms = settings.get("platforms")
    if isinstance(platforms, Mapping) and isinstance(platforms.get(platform), Mapping):
        block = platforms[platform]
        return block
    return {}


def _truthy(value: object, what: str) -> bool:
    """``require_mention`` truthiness; an unreadable value degrades to false + WARNING."""
    if value is None or isinstance(value, bool | int | float):
        return bool(value)
    if isinstance(value, str):
        if not value.strip():  # an empty YAML value reads as unset: false, quietly
            return False
        if (word := bool_word(value)) is not None:
            return word
    logger.warning("relay: %s is not a boolean (%r); treating it as false", what, value)
    return False


def _scopes(value: object, what: str) -> list[str]:
    """``free_response_channels``: list or comma string of names; else [] + WARNING."""
    if value is None:
        return []

    def skip(item: object) -> None:
        logger.warning("relay: %s holds a non-string entry %r; skipping it", what, item)

    scopes = string_list(value, on_bad_item=skip)
    if scopes is None:
        logger.warning("relay: %s is not a list or comma string; ignoring it", what)
        return []
    return scopes


def project_policy(
    platform: str, settings: Mapping[str, Any], environ: Mapping[str, str]
) -> dict[str, Any] | None:
    """The ``/relay/policy`` body for ``platform``, or ``None`` when there is nothing to send.

    ``settings`` is the config file's mapping; ``environ`` supplies
    ``<PLATFORM>_ALLOW_BOTS``. Pure; malformed inputs degrade to the default with a WARNING
    (the policy is fail-soft, RC §10).
    """
    if not platform or platform == "relay":
        return None
    block = _block_for(platform, settings)
    if "require_mention" in block:
        require = _truthy(block["require_mention"], f"{platform}.require_mention")
    elif settings.get("require_mention") is not None:
        require = _truthy(settings["require_mention"], "require_mention")
    else:
        require = False
    if block.get("free_response_channels") is not None:
        scopes = _scopes(block["free_response_channels"], f"{platform}.free_response_channels")
    else:
        scopes = _scopes(settings.get("free_response_channels"), "free_response_channels")
    variable = f"{platform.upper()}_ALLOW_BOTS"
    allow_text = environ.get(variable, "").strip().lower()
    allow = allow_text in _ALLOW_BOTS_ON
    if allow_text and not allow and allow_text not in _ALLOW_BOTS_OFF:
        logger.warning("relay: %s=%r is not mentions/all; treating it as off", variable, allow_text)
    if not require and not scopes and not allow:
        return None
    return {
        "platform": platform,
        "requireAddress": require,
        "freeResponseScopes": scopes,
        "allowOtherBots": allow,
    }


def policy_for(config: GatewayConfig, platform: str) -> dict[str, Any] | None:
    """:func:`project_policy` fed from a loaded config."""
    environ = {f"{name.upper()}_ALLOW_BOTS": value for name, value in config.allow_bots.items()}
    return project_policy(platform, config.platform_settings, environ)


async def send_policy(
    config: GatewayConfig,
    credentials: Credentials,
    policy: Mapping[str, Any],
    client: httpx.AsyncClient,
    *,
    wall_clock: Callable[[], float] = time.time,
) -> bool:
    """``POST /relay/policy`` with a fresh upgrade token; ``True`` only on HTTP 200.

    The token is minted for this call from ``wall_clock`` (token expiry is wall time).
    """
    if config.relay_url is None:
        return False
    platform = policy.get("platform")
    try:
        token = upgrade_token(config, credentials.gateway_id, credentials.secret, now=wall_clock())
        reply = await _send(
            client,
            control_url(config.relay_url, POLICY),
            config.http_timeout_s,
            bearer=token,
            json_body=policy,
        )
    except _Unreachable as exc:
        logger.warning(
            "relay: relevance policy for platform=%s not sent: could not reach connector: %s",
            platform,
            exc,
        )
        return False
    except Exception as exc:
        logger.warning(
            "relay: relevance policy for platform=%s not sent: %s", platform, type(exc).__name__
        )
        return False
    if reply.status != 200:
        logger.warning(
            "relay: relevance policy for platform=%s not accepted: %s",
            platform,
            _http_failure(reply, "connector returned"),
        )
        return False
    return True


async def declare_policy(
    config: GatewayConfig,
    credentials: Credentials | None,
    *,
    client: httpx.AsyncClient | None = None,
) -> dict[str, bool]:
    """Declare each identity's relevance policy; ``{platform: accepted}`` for those sent.

    Skipped without a relay URL or credentials; all-default projections send nothing.
    Never raises for connector trouble (WARNING instead).
    """
    if not config.relay_active or credentials is None:
        return {}
    sent: dict[str, bool] = {}
    try:
        async with _maybe_client(client) as http:
            for identity in config.identities:
                if identity.platform in sent:
                    continue
                policy = policy_for(config, identity.platform)
                if policy is not None:
                    sent[identity.platform] = await send_policy(config, credentials, policy, http)
    except Exception as exc:  # the policy is fail-soft: never stop the gateway booting
        logger.warning("relay: declaring the relevance policy failed: %s", type(exc).__name__)
    return sent


# --------------------------------------------------------------------------- enroll


async def enroll(
    *,
    connector_url: str,
    enrollment_token: str,
    identity_token: str,
    gateway_id: str,
    wake_url: str | None,
    client: httpx.AsyncClient,
    http_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> EnrollResult:
    """``POST /relay/enroll``; raises :class:`ControlError` with the RC §9 message.

    ``wakeUrl`` is sent when known (gap 12) and confirmed only on an exact echo; a 400 whose
    ``error`` mentions ``wakeUrl`` is retried once without it.
    """
    url = control_url(connector_url, ENROLL)
    body: dict[str, Any] = {"enrollmentToken": enrollment_token, "gatewayId": gateway_id}
    if wake_url:
        body["wakeUrl"] = wake_url
    reply = await _enroll_once(client, url, connector_url, body, identity_token, http_timeout_s)
    error = reply.error_text() or ""
    if reply.status == 400 and "wakeUrl" in body and "wakeurl" in error.lower():
        logger.warning("relay: connector rejected the wake URL (%s); retrying without it", error)
        del body["wakeUrl"]
        reply = await _enroll_once(client, url, connector_url, body, identity_token, http_timeout_s)
    if reply.status == 401:
        raise ControlError(ENROLL_401)
    if reply.status == 403:
        raise ControlError(reply.error_text() or ENROLL_403)
    if not 200 <= reply.status < 300:
        raise ControlError(_http_failure(reply, "Connector returned"))
    if not isinstance(reply.body, dict) or not _nonempty_str(reply.body.get("secret")):
        raise ControlError(ENROLL_NO_SECRET)
    sent_wake = body.get("wakeUrl")
    confirmed = sent_wake is not None and reply.body.get("wakeUrl") == sent_wake
    if wake_url and not confirmed:
        logger.warning("relay: %s", UNCONFIRMED_WAKE_WARNING)
    credentials = _credentials_from(reply.body, gateway_id, wake=confirmed)
    return EnrollResult(credentials=credentials, wake_url=wake_url, wake_confirmed=confirmed)


async def _enroll_once(
    client: httpx.AsyncClient,
    url: str,
    connector_url: str,
    body: Mapping[str, Any],
    identity_token: str,
    http_timeout_s: float,
) -> _Reply:
    try:
        return await _send(client, url, http_timeout_s, bearer=identity_token, json_body=body)
    except _Unreachable as exc:
        base = redact_url(control_base(connector_url))
        raise ControlError(f"Could not reach the connector at {base}: {exc}") from None


def persist_enrollment(
    state_dir: Path,
    result: EnrollResult,
    *,
    connector_url: str | None = None,
) -> list[tuple[str, str]]:
    """Write the enrolled credentials to ``<state dir>/relay.env`` (mode 0600), idempotently.

    Other lines of the file are kept; our keys are replaced in place or appended; empty
    values are skipped, and ``GATEWAY_RELAY_WAKE_CONFIRMED`` is removed unless this
    enrollment confirmed the wake URL. Returns the written ``(key, shown value)`` pairs,
    secrets shown as ``<hidden>``.
    """
    creds = result.credentials
    wanted: list[tuple[str, str | None, bool]] = [
        ("GATEWAY_RELAY_ID", creds.gateway_id, False),
        ("GATEWAY_RELAY_SECRET", creds.secret, True),
        ("GATEWAY_RELAY_DELIVERY_KEY", creds.delivery_key, True),
        ("GATEWAY_RELAY_URL", connector_url.rstrip("/") if connector_url else None, False),
        ("GATEWAY_RELAY_WAKE_URL", result.wake_url.rstrip("/") if result.wake_url else None, False),
        ("GATEWAY_RELAY_WAKE_CONFIRMED", "1" if result.wake_confirmed else None, False),
    ]
    for name, value, _ in wanted:
        if value is not None and ("\n" in value or "\r" in value):
            raise ControlError(f"Connector returned a value that cannot be stored in {name}.")
    updates = {key: value for key, value, _ in wanted if value}
    removals = {"GATEWAY_RELAY_WAKE_CONFIRMED"} - set(updates)

    path = state_dir / ENV_FILE_NAME
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    existing = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    lines: list[str] = []
    done: set[str] = set()
    for line in existing:
        key = line.partition("=")[0].strip() if "=" in line else None
        if key in removals:
            continue
        if key is not None and key in updates:
            if key not in done:
                lines.append(f"{key}={updates[key]}")
                done.add(key)
            continue
        lines.append(line)
    lines.extend(f"{key}={value}" for key, value in updates.items() if key not in done)
    _write_private(path, "".join(f"{line}\n" for line in lines))
    return [
        (key, HIDDEN if secret else redact_url(value)) for key, value, secret in wanted if value
    ]


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable by the owner only (0600).

    The text goes to a new, uniquely named file (``O_EXCL | O_NOFOLLOW``, so nothing planted
    in a shared state dir can redirect it) that is then renamed over ``path``; the rename
    replaces a symlink at ``path`` instead of following it.
    """
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)  # the creation mode is masked by the umask
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def shown_credentials(credentials: Credentials) -> Sequence[tuple[str, str]]:
    """``(name, value)`` pairs to print, secrets as ``<hidden>``."""
    pairs = [("GATEWAY_RELAY_ID", credentials.gateway_id), ("GATEWAY_RELAY_SECRET", HIDDEN)]
    if credentials.delivery_key:
        pairs.append(("GATEWAY_RELAY_DELIVERY_KEY", HIDDEN))
    if credentials.tenant:
        pairs.append(("tenant", credentials.tenant))
    return pairs
