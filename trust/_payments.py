"""Payments (TR §6): the verifier seam and the engine's checks around it.

``/pay REFERENCE`` is the only payment input; no amount a client states is trusted. The
verifier is asked with the policy's amount and currency and answers with the transfer's
amount, currency and payer; the engine then re-checks all three (the policy's currency,
at least the policy's amount, paid by the sender or an alias of the sender), refuses a
``tx_id`` that already onboarded a client, and records the ``tx_id`` in the promotion's
transaction so one transfer onboards one client. Every failure closes: timeout,
exception, a missing field, or no verifier at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Final, Protocol

import attrs
import trio

from trust._identity import DEFAULT_CANONICALIZER, InvalidClientId
from trust._model import PaymentCheck
from trust._store.base import ClientStore

log = logging.getLogger("trust.payments")

VERIFY_TIMEOUT_S: Final = 10.0


class PaymentVerifier(Protocol):
    """Confirms a transfer identified by a client's reference."""

    async def verify(
        self, *, client_id: str, reference: str, amount: Decimal, currency: str | None
    ) -> PaymentCheck:
        """Whether ``reference`` is a transfer of at least ``amount`` by ``client_id``.

        An ``ok`` answer must carry ``tx_id``, ``amount_paid``, ``currency`` and ``payer``
        (the client id of whoever paid, as the verifier's payment system knows them); an
        answer missing any of them is treated as a verifier error.
        """
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
    canonical_payer: Callable[[str], str] = DEFAULT_CANONICALIZER.parse,
    timeout_s: float = VERIFY_TIMEOUT_S,
) -> PaymentCheck:
    """Ask ``verifier`` (bounded by ``timeout_s``) and re-check its answer (T54-T56).

    ``client_id`` is the sender's primary id; ``canonical_payer`` parses the payer the
    verifier reports (the engine passes its canonicalizer's). A policy without a currency
    accepts the currency the verifier reports.
    """
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
    missing = [
        name
        for name in ("tx_id", "amount_paid", "currency", "payer")
        if getattr(answer, name) in (None, "")
    ]
    if missing or answer.tx_id is None or answer.amount_paid is None:
        log.warning("payment verifier answered ok without %s", ", ".join(missing))
        return PaymentCheck(ok=False, reason="payment verifier error")
    tx_id = answer.tx_id
    paid_in = str(answer.currency).strip().upper()
    if currency is not None and paid_in != currency.strip().upper():
        return PaymentCheck(ok=False, reason="wrong currency", tx_id=tx_id)
    if answer.amount_paid < amount:
        return PaymentCheck(ok=False, reason="amount too low", tx_id=tx_id)
    try:
        payer = canonical_payer(str(answer.payer))
        paid_by_sender = await store.resolve_alias(payer) == client_id
    except InvalidClientId:
        payer, paid_by_sender = str(answer.payer)[:80], False
    if not paid_by_sender:
        log.warning("payment claimed by %s was made by %r: refused", client_id, payer)
        return PaymentCheck(ok=False, reason="payer is not the sender", tx_id=tx_id)
    if await store.payment_used(tx_id) is not None:
        return PaymentCheck(ok=False, reason="payment already used", tx_id=tx_id)
    return attrs.evolve(answer, currency=paid_in, payer=payer)
