"""The replay-dedupe window in memory: claim decisions without a database round trip (RC §7.3).

:class:`DedupeWindow` is pure: no I/O, no clock (every call takes ``now``). The state
database keeps one, loaded from its file at open, decides every claim with it at once, and
records the decision in SQLite behind it (write-behind, in the same order), so a delivery's
turn can start without waiting for a commit. What is only in flight is not worth a commit
before the turn: crash recovery releases in-flight claims anyway, so a replay runs the
delivery again either way. Completion is what must be durable before an ``inbound_ack``:
the dispatcher has it committed before any ack that depends on it, and records the
completions nobody acks behind as well.

The window remembers completed deliveries for ``window_s`` seconds and at most
``max_completed`` of them, oldest completion forgotten first. Each change that forgets
claims returns their ids, so the database can delete exactly the same rows.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


class ClaimStatus(enum.Enum):
    """What a claim found for a delivery."""

    NEW = "new"  # nothing known: the caller owns the new claim and runs the turn
    IN_FLIGHT = "in_flight"  # the same delivery is running now: do not run
    COMPLETED = "completed"  # already handled within the window: do not run, ack at once


@attrs.frozen
class ClaimHandle:
    """Names one claim; for ``NEW`` it is the caller's own claim."""

    claim_id: int


@attrs.frozen
class ClaimResult:
    """Status of a delivery, and the claim it maps to (``None`` when it has no keys)."""

    status: ClaimStatus
    handle: ClaimHandle | None


@attrs.define(eq=False)
class _Claim:
    claim_id: int
    keys: tuple[str, ...]
    completed_at: float | None = None  # None while in flight


class DedupeWindow:
    """Claims by delivery key: who is running, what completed recently.

    Claim ids are handed out here, from ``next_claim_id`` up, so a write-behind record can
    use the id its caller already holds.
    """

    def __init__(self, *, window_s: float, max_completed: int, next_claim_id: int = 1) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s!r}")
        if max_completed <= 0:
            raise ValueError(f"max_completed must be > 0, got {max_completed!r}")
        self.window_s = window_s
        self.max_completed = max_completed
        self._next_id = next_claim_id
        self._by_key: dict[str, _Claim] = {}
        self._by_id: dict[int, _Claim] = {}
        #: Completed claim ids, oldest completion first. An OrderedDict, not a dict: taking
        #: the oldest of a dict whose front was deleted scans the holes left there.
        self._completed: OrderedDict[int, None] = OrderedDict()
        self._newest = float("-inf")  # the latest completion time recorded
        #: The oldest completion's time (``inf``: none): nothing expires before
        #: ``_oldest + window_s``, so most calls need not look at the oldest claim.
        self._oldest = math.inf

    @property
    def completed(self) -> int:
        """Completed deliveries remembered now."""
        return len(self._completed)

    @property
    def in_flight(self) -> int:
        """Claims taken and not yet completed or released."""
        return len(self._by_id) - len(self._completed)

    @property
    def next_claim_id(self) -> int:
        """The id the next new claim gets."""
        return self._next_id

    def load_completed(self, claim_id: int, keys: Sequence[str], completed_at: float) -> None:
        """Remember a completed claim read back from the database (oldest first)."""
        claim = _Claim(claim_id, tuple(keys), completed_at)
        self._by_id[claim_id] = claim
        for key in claim.keys:
            self._by_key[key] = claim
        self._completed[claim_id] = None
        self._next_id = max(self._next_id, claim_id + 1)
        self._newest = max(self._newest, completed_at)
        self._oldest = min(self._oldest, completed_at)

    def skip_to(self, next_claim_id: int) -> None:
        """Hand out no claim id below ``next_claim_id`` (ids the database has used)."""
        self._next_id = max(self._next_id, next_claim_id)

    def trim_one(self) -> list[int]:
        """Forget the oldest completion (to shrink to a lower ``max_completed``); its id."""
        if not self._completed:
            return []
        return [self._forget(next(iter(self._completed)))]

    def claim(self, keys: Sequence[str], now: float) -> tuple[ClaimResult, list[int]]:
        """Claim a delivery by its keys; also returns the ids forgotten by the window.

        ``COMPLETED`` (either key completed within the window) wins over ``IN_FLIGHT``
        (either key running); between two claims of the same kind the older one is named.
        A delivery with no keys is not deduplicated: ``NEW`` with no handle.
        """
        forgotten = self._expire(now)
        if not keys:
            return ClaimResult(ClaimStatus.NEW, None), forgotten
        by_key = self._by_key
        found: _Claim | None = None
        for key in keys:
            claim = by_key.get(key)
            if claim is not None and (found is None or _named_before(claim, found)):
                found = claim
        if found is not None:
            status = ClaimStatus.IN_FLIGHT if found.completed_at is None else ClaimStatus.COMPLETED
            return ClaimResult(status, ClaimHandle(found.claim_id)), forgotten
        claim = _Claim(self._next_id, tuple(dict.fromkeys(keys)))
        self._next_id += 1
        self._by_id[claim.claim_id] = claim
        for key in claim.keys:
            by_key[key] = claim
        return ClaimResult(ClaimStatus.NEW, ClaimHandle(claim.claim_id)), forgotten

    def complete(self, handle: ClaimHandle | None, now: float) -> tuple[bool, list[int]]:
        """Mark an in-flight claim completed at ``now`` (or at the newest completion's time,
        if later: see :meth:`completed_at`); False if it is not in flight.

        Also returns the ids forgotten by the window and by ``max_completed``.
        """
        completed, forgotten = self.completion(handle, now)
        return completed is not None, forgotten

    def completion(
        self, handle: ClaimHandle | None, now: float
    ) -> tuple[tuple[float, tuple[str, ...]] | None, list[int]]:
        """:meth:`complete`, telling when the claim completed (as :meth:`completed_at`) and
        its keys (as :meth:`keys_of`) instead of True; ``None`` if it was not in flight."""
        claim = None if handle is None else self._by_id.get(handle.claim_id)
        if claim is None or claim.completed_at is not None:
            return None, []
        # Never before the newest completion: the order kept here is then the order of the
        # times recorded, which is the order a restart reads back (and trims by).
        if now > self._newest:
            self._newest = now
        at = claim.completed_at = self._newest
        completed = self._completed
        if not completed:
            self._oldest = at
        completed[claim.claim_id] = None
        forgotten = self._expire(now)
        while len(completed) > self.max_completed:
            forgotten.append(self._forget(next(iter(completed))))
        return (at, claim.keys), forgotten

    def completed_at(self, handle: ClaimHandle) -> float | None:
        """When the claim completed, as recorded here; None if in flight or unknown."""
        claim = self._by_id.get(handle.claim_id)
        return None if claim is None else claim.completed_at

    def keys_of(self, handle: ClaimHandle) -> tuple[str, ...]:
        """The keys a claim holds (none if unknown)."""
        claim = self._by_id.get(handle.claim_id)
        return () if claim is None else claim.keys

    def release(self, handle: ClaimHandle | None) -> bool:
        """Drop an in-flight claim (its delivery will run if replayed); False if not in flight."""
        claim = None if handle is None else self._by_id.get(handle.claim_id)
        if claim is None or claim.completed_at is not None:
            return False
        self._forget(claim.claim_id)
        return True

    def status(self, keys: Iterable[str]) -> ClaimStatus:
        """Read-only lookup: ``NEW`` if no key is known (expired but not yet forgotten count)."""
        found = [self._by_key[key] for key in keys if key in self._by_key]
        if any(c.completed_at is not None for c in found):
            return ClaimStatus.COMPLETED
        return ClaimStatus.IN_FLIGHT if found else ClaimStatus.NEW

    def expire(self, now: float) -> list[int]:
        """Forget completions older than the window; their ids."""
        return self._expire(now)

    def _expire(self, now: float) -> list[int]:
        cutoff = now - self.window_s
        forgotten: list[int] = []
        if self._oldest > cutoff:
            return forgotten  # the common case: nothing is old enough
        while self._completed:
            oldest = self._by_id[next(iter(self._completed))]
            assert oldest.completed_at is not None
            if oldest.completed_at > cutoff:
                break  # completions are kept in order; a clock step back only delays this
            forgotten.append(self._forget(oldest.claim_id))
        return forgotten

    def _forget(self, claim_id: int) -> int:
        claim = self._by_id.pop(claim_id)
        if claim.completed_at is not None:
            completed = self._completed
            del completed[claim_id]
            if claim.completed_at <= self._oldest:  # it was the oldest: the next one is now
                self._oldest = self._oldest_completion()
        by_key = self._by_key
        for key in claim.keys:
            if by_key.get(key) is claim:
                del by_key[key]
        return claim_id

    def _oldest_completion(self) -> float:
        for claim_id in self._completed:
            at = self._by_id[claim_id].completed_at
            assert at is not None
            return at
        return math.inf


def _named_before(claim: _Claim, other: _Claim) -> bool:
    """Whether a claim found by a key is named before ``other``, found by another: a
    completed one before one in flight, else the older one."""
    if (claim.completed_at is None) != (other.completed_at is None):
        return claim.completed_at is not None
    return claim.claim_id < other.claim_id
