"""Trust fast-rule latency: `decide` with a warm view (TR §5 Performance, T48).

Runs N decisions (default 100 000) spread over the three presets and a 20-rule policy, for
a mix of client states and messages, timing each call, and prints the median and p99 in µs.
The target is a median under 20 µs. `bench_evaluate` times the engine's `evaluate` fast
path (real SQLite store, `careful`, warm view cache, no agent; target median < 100 µs).
`simulate_mixed` runs mixed traffic (known clients, strangers, invites, blocked clients)
through the engine and reports the share that needed the trust agent (target <= 10 %).

    python scripts/bench_trust.py [--iterations N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

import attrs
import trio

from protocol import MessageEvent, SessionSource
from trust import TrustConfig, decide, open_trust_engine
from trust import _functions as fn
from trust._model import AgentVerdict, ClientState, CommandKind, InviteCheck, Level, RequestFacts
from trust._policy import Policy, load_preset
from trust._store import open_sqlite_store

TARGET_MEDIAN_US = 20.0
TARGET_EVALUATE_MEDIAN_US = 100.0

TWENTY_RULES = """---
name: bench20
fast_rules:
  - {if: [is_admin, is_dm], action: allow}
  - {if: 'requests_hour > 500', action: block, reason: flooding}
  - {if: [not is_dm, is_stranger], action: deny, reason: strangers write directly}
  - {if: [is_whitelist, 'days_known >= 1'], action: allow}
  - {if: [is_contact, 'requests_today < 200'], action: allow}
  - {if: [is_contact, 'requests_today >= 200'], action: deny, reason: daily limit}
  - {if: has_invite_code, action: verify_invite, on_success: promote_to_contact}
  - {if: [is_stranger, 'requests > 1000'], action: block, reason: persistent stranger}
  - {if: [is_stranger, 'days_known > 30'], action: deny, reason: stale stranger}
  - {if: [is_stranger, 'requests_hour > 20'], action: deny, reason: slow down}
  - {if: [is_anonymous, is_dm], action: deny, reason: anonymous dm}
  - {if: ['requests == 1', is_dm], action: deny, reason: first message}
  - {if: ['requests == 2', is_dm], action: deny, reason: second message}
  - {if: ['requests == 3', is_dm], action: deny, reason: third message}
  - {if: [is_stranger, mentions_bot, 'requests < 5'], action: deny, reason: early mention}
  - {if: [is_stranger, 'days_known == 0', 'requests_today > 50'], action: deny}
  - {if: [not is_stranger, not is_contact, not is_whitelist], action: deny}
  - {if: ['requests_hour != 0', 'requests_today == 0'], action: deny, reason: clock skew}
  - {if: [is_stranger, is_dm, 'requests > 10'], action: use_agent, reason: regular stranger}
  - {if: always, action: deny}
use_agent:
  - {when: [is_stranger, 'requests > 10'], reason: keeps writing}
cache: 1h
agent_tools: [get_level, promote_to_contact]
default: deny
---
Judge one stranger who keeps writing. Deny when unsure.
"""


@attrs.frozen
class BenchResult:
    """Per-call latency of one benchmark."""

    name: str
    count: int
    median_us: float
    p99_us: float

    def line(self) -> str:
        """One human-readable line."""
        return (
            f"{self.name}: {self.count} calls, median {self.median_us:.2f} µs, "
            f"p99 {self.p99_us:.2f} µs"
        )


def workload() -> list[tuple[Policy, ClientState, RequestFacts]]:
    """The (policy, warm client view, facts) cases the benchmark cycles through."""
    policies = [load_preset("open"), load_preset("careful"), load_preset("strict")]
    policies.append(Policy.from_text(TWENTY_RULES, name="bench20"))
    clients = [
        ClientState("discord:1", level=Level.STRANGER, requests=3, requests_today=3),
        ClientState("discord:2", level=Level.STRANGER, requests=12, requests_hour=2),
        ClientState("discord:3", level=Level.CONTACT, requests=80, requests_today=9, days_known=4),
        ClientState("discord:4", level=Level.WHITELIST, requests=900, days_known=40),
        ClientState("discord:5", level=Level.CONTACT, is_admin=True, requests=5),
        ClientState("discord:6", level=Level.WHITELIST, blocked=True),
        ClientState.anonymous_sender(),
    ]
    facts = [
        RequestFacts(is_dm=True),
        RequestFacts(mentions_bot=True),
        RequestFacts(
            command=CommandKind.INVITE, is_dm=True, invite=InviteCheck(True, invite_id="inv")
        ),
        RequestFacts(is_dm=True, agent=AgentVerdict(True, "regular", cached=True)),
    ]
    return [(p, c, f) for p in policies for c in clients for f in facts]


def _summarise(name: str, samples_ns: Sequence[int]) -> BenchResult:
    ordered = sorted(samples_ns)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return BenchResult(name, len(ordered), statistics.median(ordered) / 1000, p99 / 1000)


def bench_decide(iterations: int = 100_000) -> BenchResult:
    """Time `iterations` calls of `decide` over `workload()`, one timer per call."""
    cases = workload()
    for policy, client, facts in cases:  # warm up every path once
        decide(policy, client, facts)
    clock = time.perf_counter_ns
    samples = [0] * iterations
    n_cases = len(cases)
    for i in range(iterations):
        policy, client, facts = cases[i % n_cases]
        start = clock()
        decide(policy, client, facts)
        samples[i] = clock() - start
    return _summarise("decide", samples)


def bench_evaluate(iterations: int = 100_000) -> BenchResult:
    """Time `iterations` awaits of `TrustEngine.evaluate` on its fast path.

    A real SQLite store in a temporary directory, the `careful` preset, no trust agent; a
    few contacts and whitelisted clients whose views are cached after one warm-up message
    each, so every timed call is identify, parse, cached view, counters, `decide`.
    Target: median < 100 µs.
    """
    return trio.run(_bench_evaluate, iterations)


async def _bench_evaluate(iterations: int) -> BenchResult:
    with tempfile.TemporaryDirectory() as state_dir:
        store = await open_sqlite_store(state_dir)
        try:
            ids = [f"discord:{n}" for n in range(1, 9)]
            for n, cid in enumerate(ids):
                await fn.promote_to_contact(store, cid, actor="local:bench", tier="operator")
                if n % 2:
                    await fn.promote_to_whitelist(store, cid, actor="local:bench", tier="operator")
            events = [
                MessageEvent(
                    text=f"message {n}",
                    source=SessionSource(platform="discord", user_id=cid.split(":")[1]),
                    delivered_via_relay=True,
                )
                for n, cid in enumerate(ids)
            ]
            config = TrustConfig(policy="careful", store=store)
            async with open_trust_engine(config) as engine:
                for event in events:  # warm: every view cached
                    await engine.evaluate(event)
                clock = time.perf_counter_ns
                samples = [0] * iterations
                for i in range(iterations):
                    event = events[i % len(events)]
                    start = clock()
                    outcome = await engine.evaluate(event)
                    samples[i] = clock() - start
                    if not outcome.decision.allow:
                        raise RuntimeError(f"bench client denied: {outcome.decision.reason}")
        finally:
            await store.aclose()
    return _summarise("evaluate", samples)


#: The mixed-traffic simulation's target: share of messages that needed a fresh LLM call.
TARGET_LLM_SHARE = 0.10


@attrs.frozen
class MixedResult:
    """What the mixed-traffic simulation saw, by kind of sender and by decision tier."""

    messages: int
    by_kind: dict[str, int]
    allowed_by_kind: dict[str, int]
    tiers: dict[str, int]
    agent_consults: int

    @property
    def llm_share(self) -> float:
        """Messages that needed a fresh trust-agent call, as a share of all messages."""
        return self.agent_consults / self.messages

    def line(self) -> str:
        kinds = ", ".join(
            f"{k} {self.allowed_by_kind.get(k, 0)}/{n} allowed" for k, n in self.by_kind.items()
        )
        return (
            f"mixed traffic, careful: {self.messages} messages ({kinds}); tiers {self.tiers}; "
            f"LLM share {self.llm_share:.1%} (target <= {TARGET_LLM_SHARE:.0%})"
        )


class _AllowingAgent:
    """A trust agent that answers at once: allow (the policy's TTL caches it). Counts calls."""

    def __init__(self) -> None:
        self.consults = 0

    async def consult(self, request: object) -> AgentVerdict:
        self.consults += 1
        return AgentVerdict(True, "simulation: reads like a real person")


def simulate_mixed(messages: int = 20_000, strangers: int = 100) -> MixedResult:
    """Run mixed traffic through a real engine (SQLite, `careful`) and count LLM calls.

    Senders, per 20 messages: 15 from known clients (contacts and whitelisted), 2 from a pool
    of ``strangers`` strangers who keep writing (careful consults the agent once a stranger
    has sent more than 10 messages), 1 `/invite` from a new stranger with a valid code, 1 from
    a stranger with a wrong code, 1 from a blocked client.
    """
    return trio.run(_simulate_mixed, messages, strangers)


async def _simulate_mixed(messages: int, stranger_pool: int) -> MixedResult:
    agent = _AllowingAgent()
    by_kind: dict[str, int] = {}
    allowed: dict[str, int] = {}
    tiers: dict[str, int] = {}

    def event(user: str, text: str, n: int) -> MessageEvent:
        source = SessionSource(platform="discord", chat_type="dm", chat_id=user, user_id=user)
        return MessageEvent(text=text, source=source, message_id=f"x{n}", delivered_via_relay=True)

    with tempfile.TemporaryDirectory() as state_dir:
        config = TrustConfig(policy="careful", state_dir=state_dir, agent=agent)
        async with open_trust_engine(config) as engine:
            known = [str(10_000 + i) for i in range(300)]
            for i, user in enumerate(known):
                await engine.ops.promote(f"discord:{user}", "contact", "local:sim", tier="operator")
                if i % 3 == 0:
                    await engine.ops.promote(
                        f"discord:{user}", "whitelist", "local:sim", tier="operator"
                    )
            blocked = [str(20_000 + i) for i in range(20)]
            for user in blocked:
                await engine.ops.block(f"discord:{user}", "spam", "local:sim", tier="operator")
            strangers = [str(30_000 + i) for i in range(stranger_pool)]
            invites = [
                (await engine.ops.create_invite("local:sim", tier="operator")).code
                for _ in range(messages // 20 + 1)
            ]
            for n in range(messages):
                slot = n % 20
                if slot < 15:
                    kind, ev = "known", event(known[n % len(known)], "hi", n)
                elif slot < 17:
                    who = strangers[(n // 20 * 2 + slot - 15) % len(strangers)]
                    kind, ev = "stranger", event(who, "hello?", n)
                elif slot == 17:
                    kind, ev = "invite", event(str(40_000 + n), f"/invite {invites[n // 20]}", n)
                elif slot == 18:
                    kind, ev = "bad invite", event(str(50_000 + n), "/invite WRONG-CODE-00", n)
                else:
                    kind, ev = "blocked", event(blocked[n % len(blocked)], "let me in", n)
                outcome = await engine.evaluate(ev)
                by_kind[kind] = by_kind.get(kind, 0) + 1
                allowed[kind] = allowed.get(kind, 0) + outcome.decision.allow
                tiers[outcome.decision.tier] = tiers.get(outcome.decision.tier, 0) + 1
    return MixedResult(messages, by_kind, allowed, tiers, agent.consults)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and the simulation; exit 1 when any misses its target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100_000)
    args = parser.parse_args(argv)
    result = bench_decide(args.iterations)
    print(result.line())
    print(f"target: median < {TARGET_MEDIAN_US:.0f} µs")
    evaluated = bench_evaluate(min(args.iterations, 20_000))
    print(evaluated.line())
    print(f"target: median < {TARGET_EVALUATE_MEDIAN_US:.0f} µs")
    mixed = simulate_mixed(min(args.iterations, 20_000))
    print(mixed.line())
    met = (
        result.median_us < TARGET_MEDIAN_US
        and evaluated.median_us < TARGET_EVALUATE_MEDIAN_US
        and mixed.llm_share <= TARGET_LLM_SHARE
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
