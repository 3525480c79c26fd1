"""Payments (TR §6): the verifier seam, re-checks, single-use transfers."""

from __future__ import annotations

from decimal import Decimal

import attrs
import pytest
import trio

from trust._model import PaymentCheck, StateChange
from trust._payments import NoPaymentVerifier, check_payment
from trust._records import PreconditionFailed
from trust._store import ApplyContext, SqlClientStore


class Verifier:
    """A verifier answering from a table of references (a stand-in for a payment API).

    With ``echo_payer`` it is lax: it reports whoever asks as the payer (a payment system
    that cannot tell payers apart), so only the engine's tx_id check stops a replay."""

    def __init__(
        self, answers: dict[str, PaymentCheck], delay: float = 0.0, *, echo_payer: bool = False
    ) -> None:
        self.answers = answers
        self.delay = delay
        self.echo_payer = echo_payer
        self.calls: list[tuple[str, str, Decimal, str | None]] = []

    async def verify(
        self, *, client_id: str, reference: str, amount: Decimal, currency: str | None
    ) -> PaymentCheck:
        self.calls.append((client_id, reference, amount, currency))
        await trio.sleep(self.delay)
        if reference == "boom":
            raise RuntimeError("api down")
        answer = self.answers.get(reference, PaymentCheck(ok=False, reason="unknown reference"))
        return attrs.evolve(answer, payer=client_id) if self.echo_payer else answer


PAID = PaymentCheck(ok=True, tx_id="tx-1", amount_paid=Decimal("10"), currency="EUR", payer="x:a")


async def _check(
    store: SqlClientStore, verifier: object, ref: str, cid: str = "x:a"
) -> PaymentCheck:
    return await check_payment(
        store,
        verifier,  # type: ignore[arg-type]
        client_id=cid,
        reference=ref,
        amount=Decimal("10"),
        currency="EUR",
    )


async def test_T56_no_verifier_fails_closed(store: SqlClientStore) -> None:
    result = await _check(store, NoPaymentVerifier(), "ref")
    assert (result.ok, result.reason) == (False, "no payment verifier configured")


async def test_verifier_gets_policy_amount_and_answers_are_rechecked(
    store: SqlClientStore,
) -> None:
    cheap = PaymentCheck(True, "", "tx-2", Decimal("9.99"), currency="EUR", payer="x:a")
    verifier = Verifier({"good": PAID, "cheap": cheap})
    assert (await _check(store, verifier, "good")).ok
    assert verifier.calls == [("x:a", "good", Decimal("10"), "EUR")]
    assert (await _check(store, verifier, "cheap")).reason == "amount too low"
    assert (await _check(store, verifier, "nope")).reason == "unknown reference"
    assert (await _check(store, verifier, "boom")).reason == "payment verifier error"


async def test_verifier_timeout_fails_closed(
    store: SqlClientStore, autojump_clock: trio.testing.MockClock
) -> None:
    slow = Verifier({"good": PAID}, delay=30)
    start = trio.current_time()
    result = await _check(store, slow, "good")
    assert (result.ok, result.reason) == (False, "payment verifier timed out")
    assert trio.current_time() - start == pytest.approx(10.0)


async def test_T55_one_tx_id_promotes_only_the_first_client(store: SqlClientStore) -> None:
    verifier = Verifier({"good": PAID}, echo_payer=True)
    first = await _check(store, verifier, "good", "x:a")
    assert first.ok
    change = StateChange("promote_to_contact", payment_tx=first.tx_id, rule_index=0)
    ctx = ApplyContext("x:a", policy="p", payment_amount="10", payment_currency="EUR")
    (entry,) = await store.apply([change], "rule:p", "rule", ctx)
    assert entry.payment_tx == "tx-1"
    assert await store.payment_used("tx-1") == "x:a"
    # The same transfer, verified again for another client, is refused before and at apply.
    second = await _check(store, verifier, "good", "x:b")
    assert (second.ok, second.reason) == (False, "payment already used")
    with pytest.raises(PreconditionFailed):
        await store.apply(
            [change], "rule:p", "rule", ApplyContext("x:b", policy="p", payment_amount="10")
        )
    assert (await store.get("x:b")).stored is False


async def test_issue12_a_learned_reference_cannot_be_claimed_by_another_client(
    store: SqlClientStore,
) -> None:
    """x:b learned x:a's transfer reference and races to claim it: the verifier reports
    who paid, and the engine refuses a payer who is not the claimant."""
    verifier = Verifier({"good": PAID})
    stolen = await _check(store, verifier, "good", "x:b")
    assert (stolen.ok, stolen.reason) == (False, "payer is not the sender")
    own = await _check(store, verifier, "good", "x:a")
    assert (own.ok, own.payer, own.currency) == (True, "x:a", "EUR")


async def test_payer_is_canonicalised_and_may_be_an_alias_of_the_sender(
    store: SqlClientStore,
) -> None:
    answers = {
        "spelled": attrs.evolve(PAID, tx_id="tx-s", payer=" X: a"),
        "alias": attrs.evolve(PAID, tx_id="tx-al", payer="y:a-alt"),
        "garbage": attrs.evolve(PAID, tx_id="tx-g", payer="nobody"),
        "other": attrs.evolve(PAID, tx_id="tx-o", payer="x:ab"),
    }
    verifier = Verifier(answers)
    assert (await _check(store, verifier, "spelled")).payer == "x:a"
    assert (await _check(store, verifier, "alias")).reason == "payer is not the sender"
    await store.bind_alias("y:a-alt", "x:a")
    assert (await _check(store, verifier, "alias")).ok
    assert (await _check(store, verifier, "garbage")).reason == "payer is not the sender"
    assert (await _check(store, verifier, "other")).reason == "payer is not the sender"


async def test_issue12_wrong_currency_is_refused(store: SqlClientStore) -> None:
    answers = {
        "usd": attrs.evolve(PAID, tx_id="tx-u", currency="USD"),
        "lower": attrs.evolve(PAID, tx_id="tx-l", currency=" eur "),
    }
    verifier = Verifier(answers)
    # 10 USD is not 10 EUR, whatever the amount says.
    assert (await _check(store, verifier, "usd")).reason == "wrong currency"
    assert (await _check(store, verifier, "lower")).currency == "EUR"
    # A policy without a currency takes the one the verifier reports.
    free = await check_payment(
        store, verifier, client_id="x:a", reference="usd", amount=Decimal("10"), currency=None
    )
    assert (free.ok, free.currency) == (True, "USD")


@pytest.mark.parametrize("field", ["tx_id", "amount_paid", "currency", "payer"])
async def test_an_ok_answer_without_amount_currency_or_payer_is_a_verifier_error(
    store: SqlClientStore, field: str
) -> None:
    verifier = Verifier({"good": attrs.evolve(PAID, **{field: None})})
    result = await _check(store, verifier, "good")
    assert (result.ok, result.reason) == (False, "payment verifier error")
