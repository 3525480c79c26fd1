"""The engine's checks of ``/invite`` codes and ``/pay`` references before ``decide`` runs:
the store's failure windows (T50, issue 12) and the payment verifier (TR §6).

:class:`OnboardingChecks` is a part of :class:`trust._engine.TrustEngine`.
"""

from __future__ import annotations

import logging
import secrets
from decimal import Decimal
from typing import Final

from trust._engine_cache import ClientCache
from trust._invites import CLIENT_SCOPE_PREFIX, GLOBAL_SCOPE, lookup_invite
from trust._model import ClientState, InviteCheck, PaymentCheck
from trust._payments import check_payment
from trust._policy import Policy
from trust._records import StoreError
from trust._store.tx import AttemptWindow

log = logging.getLogger("trust.engine")

LIMIT_WARNING_EVERY_MS: Final = 60_000


class OnboardingChecks(ClientCache):
    """The invite and payment checks of the engine (state set up by :meth:`_init_checks`)."""

    policy: Policy

    def _init_checks(self) -> None:
        self._global_full_warned = -LIMIT_WARNING_EVERY_MS

    async def _check_invite(self, client: ClientState, code: str | None) -> InviteCheck:
        """Look a code up only within the store's failure windows (T50, issue 12).

        The attempt is counted in the client's window before the lookup, and, unless it
        found a generated 80-bit store code, in the deployment-wide window before its result
        is used: a full window answers ``too many attempts`` whatever the code. Both windows
        live in the store, so every instance sharing it shares them, and a window's last
        slot goes to one attempt only. A right code is un-counted.
        """
        if not code:
            return InviteCheck(ok=False, reason="missing code")
        cid = client.client_id
        attempt = secrets.token_hex(12)
        per_client = AttemptWindow(
            CLIENT_SCOPE_PREFIX + cid, self.config.invite_failures_per_client_hour
        )
        if await self._window_full(attempt, per_client):
            return InviteCheck(ok=False, reason="too many attempts")
        check, strong = await lookup_invite(self.store, code)
        if not strong:
            # Any guess at a weak code (custom store codes, 0.6.5 policy codes) lands here:
            # a failed guess cannot be told apart by the code it aimed at.
            everyone = AttemptWindow(GLOBAL_SCOPE, self.config.invite_failures_per_hour)
            if await self._window_full(attempt, everyone):
                return InviteCheck(ok=False, reason="too many attempts")
            if not check.ok:
                policy_id = self.policy.match_policy_code(code)
                if policy_id is not None:
                    check = InviteCheck(ok=True, invite_id=policy_id)
        if check.ok:
            try:
                await self.store.release_invite_attempt(attempt)
            except StoreError as exc:  # the slot stays counted: the limit errs on the safe side
                self._stats.store_errors += 1
                log.warning("could not un-count a successful invite attempt: %s", exc)
        else:
            now = self.store.clock()
            self._counts[cid].add(cid, now, failures=1)  # statistics; the limit is the store's
        return check

    async def _window_full(self, attempt: str, window: AttemptWindow) -> bool:
        full = await self.store.reserve_invite_attempt(attempt, (window,))
        if full is None:
            return False
        self._stats.invite_attempts_limited += 1
        self._warn_window_full(full)
        return True

    def _warn_window_full(self, scope: str) -> None:
        if scope != GLOBAL_SCOPE:
            return
        now = self.store.clock()
        if now - self._global_full_warned >= LIMIT_WARNING_EVERY_MS:
            self._global_full_warned = now
            log.warning(
                "invite attempts: %d failures in the last hour across all clients; every "
                "/invite is refused until the window drains (invite_failures_per_hour)",
                self.config.invite_failures_per_hour,
            )

    async def _check_payment(self, client: ClientState, reference: str) -> PaymentCheck:
        payment = self.policy.payment
        if payment is None:
            return PaymentCheck(ok=False, reason="no payment configured")
        return await check_payment(
            self.store,
            self.config.verifier,
            client_id=client.client_id,
            reference=reference,
            amount=Decimal(payment.amount),
            currency=payment.currency,
            canonical_payer=self.config.canonicalizer.parse,
        )
