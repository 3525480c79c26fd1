"""Payments (TR §6): the verifier seam and the engine's checks around it.

``/pay REFERENCE`` is the only payment input; no amount a client states is trusted. The
verifier is asked with the policy's amount and currency; the engine then re-checks the
amount it reports, refuses a ``tx_id`` that already onboarded a client, and records the
``tx_id`` in the promotion's transaction so one transfer onboards one client. Every
failure closes: timeout, exception, or no verifier at all.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Final, Protocol

import trio

from trust.model import PaymentCheck
from trust.store.base import ClientStore

log = logging.getLogger(__name__)

VERIFY_TIMEOUT_S: Final = 10.0


class PaymentVerifier(Protocol):
    """Confirms a transfer identified by a client's reference."""

    async def verify(
        self, *, client_id: str, reference: str, amount: Decimal, currency: str | None
    ) -> PaymentCheck:
        """Whether ``reference`` is a transfer of at least ``amount`` by ``client_id``."""
        ...


class NoPaymentVerifier:
    """The default: no verifier configured, so every payment is refused (fail closed)."""

    async def verify(
        self, *, client_id: str, reference: str, amount: Decimal, currency: str | None
    ) -> PaymentCheck:
        """Always ``no payment verifier configured``."""
        return PaymentCheck(ok=False, reason="no payment verifier configured")


async def check_payment(
    store: ClientStore,
    verifier: PaymentVerifier,
    *,
    client_id: str,
    reference: str,
    amount: Decimal,
    currency: str | None,
    timeout_s: float = VERIFY_TIMEOUT_S,
) -> PaymentCheck:
    """Ask ``verifier`` (bounded by ``timeout_s``) and re-check its answer (T54-T56)."""
    answer: PaymentCheck | None = None
    try:
        with trio.move_on_after(timeout_s):
            answer = await verifier.verify(
                client_id=client_id, reference=reference, amount=amount, currency=currency
            )
    except Exception as exc:  # a verifier's bug must not admit or crash
        log.warning("payment verifier error for %s: %s", client_id, type(exc).__name__)
        return PaymentCheck(ok=False, reason="payment verifier error")
    if answer is None:
        return PaymentCheck(ok=False, reason="payment verifier timed out")
    if not answer.ok:
        return PaymentCheck(ok=False, reason=answer.reason or "not verified")
    if answer.tx_id is None or answer.amount_paid is None:
        return PaymentCheck(ok=False, reason="payment verifier error")
    if answer.amount_paid < amount:
        return PaymentCheck(ok=False, reason="amount too low", tx_id=answer.tx_id)
    if await store.payment_used(answer.tx_id) is not None:
        return PaymentCheck(ok=False, reason="payment already used", tx_id=answer.tx_id)
    return answer


__all__ = ["VERIFY_TIMEOUT_S", "NoPaymentVerifier", "PaymentVerifier", "check_payment"]
