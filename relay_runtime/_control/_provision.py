"""Provisioning (RC §9): the identity token, ``POST /relay/provision`` per identity, and the
boot sequence that either uses pinned credentials or self-provisions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import attrs

from protocol._events import Identity
from protocol._urls import PROVISION, control_url
from relay_runtime._control._client import (
    Credentials,
    ProvisionResult,
    _credentials_from,
    _http_failure,
    _maybe_client,
    _send,
    _Unreachable,
    default_gateway_id,
    logger,
)
from relay_runtime.config import (
    GatewayConfig,
)

if TYPE_CHECKING:
    import httpx

PROVISION_NO_SECRET: Final = "connector returned an unexpected response (no secret)"


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
