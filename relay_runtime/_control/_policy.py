"""The relevance policy (RC §9): projecting the config file's platform blocks to a policy and
declaring it to the connector."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from protocol._urls import POLICY, control_url
from relay_runtime._control._client import (
    Credentials,
    _http_failure,
    _maybe_client,
    _send,
    _Unreachable,
    logger,
    upgrade_token,
)
from relay_runtime.config import (
    GatewayConfig,
    bool_word,
    string_list,
)

if TYPE_CHECKING:
    import httpx

_ALLOW_BOTS_ON: Final = frozenset({"mentions", "all"})
_ALLOW_BOTS_OFF: Final = frozenset({"none", "off", "false", "no", "0"})


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
        policies = {}
        for identity in config.identities:
            if identity.platform not in policies:
                policies[identity.platform] = policy_for(config, identity.platform)
        todo = [(platform, policy) for platform, policy in policies.items() if policy is not None]
        if todo:  # no HTTP client at all when nothing is declared (start-up time)
            async with _maybe_client(client) as http:
                for platform, policy in todo:
                    sent[platform] = await send_policy(config, credentials, policy, http)
    except Exception as exc:  # the policy is fail-soft: never stop the gateway booting
        logger.warning("relay: declaring the relevance policy failed: %s", type(exc).__name__)
    return sent
