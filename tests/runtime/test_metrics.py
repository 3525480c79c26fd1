"""``/metrics``, ``/healthz`` and ``/readyz`` (issue 16), in-process and on a real process.

Real HTTP on 127.0.0.1 and the real clock throughout (a mock clock that jumps while bytes are
in flight gives false timeouts); every wait is on an observed event under a bound.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import prometheus_client
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from protocol import MessageEvent, SessionSource
from relay_runtime import Turn
from relay_runtime._cli import build_parser
from relay_runtime.config import ConfigError, GatewayConfig
from relay_runtime.connector import ReferenceConnector
from relay_runtime.testing import GATEWAY_ID as HARNESS_GATEWAY_ID
from relay_runtime.testing import open_harness
from tests.e2e.conftest import GATEWAY_ID, GUARD_S, gateway_env, gateway_process, new_secret

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def echo(turn: Turn) -> str:
    return turn.text


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and sorted labels (raises if malformed)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url)


async def scrape(base: str) -> Samples:
    response = await get(f"{base}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


# --------------------------------------------------------------------------- in-process


async def test_counters_move_with_traffic_and_readyz_follows_the_state() -> None:
    async with open_harness(
        echo,
        trust="careful",
        users={"discord:1": "whitelist"},
        transport="loopback",
        metrics="127.0.0.1:0",
    ) as harness:
        base = harness.gateway.metrics_url
        assert base is not None and re.fullmatch(r"http://127\.0\.0\.1:\d+", base)
        before = await scrape(base)
        assert value(before, "relay_connection_state", state="ready") == 1.0
        assert value(before, "relay_connection_state", state="backoff") == 0.0
        assert value(before, "relay_connects_total") == 1.0
        assert value(before, "relay_inbound_total") == 0.0
        assert (await get(f"{base}/readyz")).status_code == 200
        assert (await get(f"{base}/healthz")).status_code == 200

        await harness.say("hello", user="discord:1")
        await harness.say("who are you", user="discord:2")  # a stranger: denied
        after = await scrape(base)
        assert value(after, "relay_inbound_total") == 2.0
        assert value(after, "relay_inbound_acked_total") == 2.0
        assert value(after, "relay_turns_total", outcome="completed") == 1.0
        assert value(after, "relay_turns_total", outcome="denied") == 1.0
        assert value(after, "relay_turns_total", outcome="timed_out") == 0.0
        assert value(after, "relay_turn_duration_seconds_count", outcome="completed") == 1.0
        assert value(after, "relay_turn_duration_seconds_bucket", outcome="completed", le="+Inf")
        assert value(after, "relay_frames_in_total") >= value(before, "relay_frames_in_total") + 2
        assert value(after, "relay_frames_out_total") > value(before, "relay_frames_out_total")
        assert value(after, "relay_replies_sent_total") >= 1.0
        assert value(after, "relay_outbox_size") == 0.0
        tiers = {
            dict(labels)["tier"]: count
            for (name, labels), count in after.items()
            if name == "relay_trust_decisions_total"
        }
        assert sum(tiers.values()) == 2.0, tiers
        assert value(after, "relay_trust_verdicts_total", verdict="allow") == 1.0
        assert value(after, "relay_trust_verdicts_total", verdict="deny") == 1.0

        # From now on the connector sends no descriptor: after a drop the gateway redials
        # but cannot get back to READY, whatever the back-off jitter.
        harness.connector.descriptor_mode = "none"
        waiting = trio.Event()
        supervisor = harness.gateway.supervisor
        supervisor.on_state = lambda s: waiting.set() if s == "hello_sent" else None
        await harness.connector.drop(HARNESS_GATEWAY_ID, code=1011, reason="restarting")
        with trio.fail_after(10):
            await waiting.wait()
        not_ready = await get(f"{base}/readyz")
        assert not_ready.status_code == 503
        assert not_ready.text.startswith("not ready: ")
        assert not_ready.text != "not ready: ready\n"
        assert (await get(f"{base}/healthz")).status_code == 200
        dropped = await scrape(base)
        assert value(dropped, "relay_drops_total") == 1.0
        assert value(dropped, "relay_connection_state", state="ready") == 0.0
        assert value(dropped, "relay_dials_total") >= 2.0
        harness.gateway.stop()  # not READY, so there is no going_idle to drain through


async def test_unknown_paths_and_methods_and_openmetrics() -> None:
    async with open_harness(echo, transport="loopback", metrics="127.0.0.1:0") as harness:
        base = harness.gateway.metrics_url
        assert base is not None
        missing = await get(f"{base}/nope")
        assert missing.status_code == 404
        async with httpx.AsyncClient(timeout=10) as client:
            posted = await client.post(f"{base}/metrics")
            assert posted.status_code == 405
            openmetrics = await client.get(
                f"{base}/metrics", headers={"accept": "application/openmetrics-text"}
            )
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.endswith("# EOF\n")


async def test_each_gateway_has_its_own_registry() -> None:
    async with (
        open_harness(echo, transport="loopback", metrics="127.0.0.1:0") as one,
        open_harness(echo, transport="loopback", metrics="127.0.0.1:0") as two,
    ):
        assert one.gateway.metrics_url != two.gateway.metrics_url
        await one.say("only the first")
        first, second = (
            await scrape(one.gateway.metrics_url or ""),
            await scrape(two.gateway.metrics_url or ""),
        )
    assert value(first, "relay_inbound_total") == 1.0
    assert value(second, "relay_inbound_total") == 0.0
    # Nothing went to the process-global default registry.
    assert not [m for m in prometheus_client.REGISTRY.collect() if m.name.startswith("relay_")]


async def test_an_address_in_use_is_a_config_error(tmp_path: Path) -> None:
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Raised as itself or inside the nurseries' groups (the CLI unwraps either).
        with pytest.raises((ConfigError, BaseExceptionGroup)) as caught:
            async with open_harness(echo, transport="loopback", metrics=f"127.0.0.1:{port}"):
                pass
    error = caught.value
    while isinstance(error, BaseExceptionGroup):
        assert len(error.exceptions) == 1, error.exceptions
        error = error.exceptions[0]
    assert isinstance(error, ConfigError)
    assert error.name == "metrics"
    assert error.problem.startswith(f"cannot listen on 127.0.0.1:{port} (")


# --------------------------------------------------------------------------- a real process


def _url_from(line: str) -> str:
    found = re.search(r"url=(http://\S+)/metrics", line)
    assert found is not None, line
    return found.group(1)


async def test_metrics_of_a_running_relay_runtime_process(tmp_path: Path) -> None:
    secret = new_secret()
    connector = ReferenceConnector(secrets={GATEWAY_ID: secret})
    async with trio.open_nursery() as nursery:
        await nursery.start(connector.serve, "127.0.0.1", 0)
        env = gateway_env(secret, tmp_path / "state")
        args = ["run", "--relay-url", connector.base_url, "--trust", "open"]
        with trio.fail_after(GUARD_S):
            async with gateway_process([*args, "--metrics", "0"], env) as gw:
                base = _url_from(await gw.wait_line("serving metrics"))
                assert base.startswith("http://127.0.0.1:")  # a bare port: loopback
                await gw.wait_line("gateway ready")
                assert (await get(f"{base}/readyz")).status_code == 200
                before = await scrape(base)
                source = SessionSource(platform="telegram", chat_id="c1", user_id="100")
                for n in range(3):
                    event = MessageEvent(text=f"hi {n}", source=source, message_id=f"m{n}")
                    await connector.inject(event, gateway_id=GATEWAY_ID)
                await connector.wait_for(lambda: len(connector.messages) == 3)
                after = await scrape(base)
                gw.signal(2)
                assert await gw.wait_exit() == 0, gw.text()
        nursery.cancel_scope.cancel()
    assert value(before, "relay_inbound_total") == 0.0
    assert value(after, "relay_inbound_total") == 3.0
    assert value(after, "relay_turns_total", outcome="completed") == 3.0
    assert value(after, "relay_turn_duration_seconds_count", outcome="completed") == 3.0
    assert value(after, "relay_frames_in_total") >= 3.0
    assert value(after, "relay_connection_state", state="ready") == 1.0
    assert value(after, "relay_trust_verdicts_total", verdict="allow") == 3.0


async def test_readyz_is_503_while_the_process_cannot_connect(tmp_path: Path) -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        nothing = probe.getsockname()[1]
    env = gateway_env(new_secret(), tmp_path / "state", GATEWAY_RELAY_METRICS="127.0.0.1:0")
    with trio.fail_after(GUARD_S):
        args = ["run", "--relay-url", f"ws://127.0.0.1:{nothing}", "--trust", "open"]
        async with gateway_process(args, env) as gw:
            base = _url_from(await gw.wait_line("serving metrics"))
            await gw.wait_line("dial failed")
            assert (await get(f"{base}/healthz")).status_code == 200
            not_ready = await get(f"{base}/readyz")
            samples = await scrape(base)
            gw.signal(15)
            assert await gw.wait_exit() == 0, gw.text()
    assert not_ready.status_code == 503
    assert not_ready.text.startswith("not ready: ")
    assert value(samples, "relay_connection_state", state="ready") == 0.0
    assert value(samples, "relay_dial_failures_total") >= 1.0


# --------------------------------------------------------------------------- the option


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("9464", "127.0.0.1:9464"), ("0.0.0.0:9464", "0.0.0.0:9464"), ("[::1]:9464", "[::1]:9464")],
)
def test_metrics_option_reaches_the_config(raw: str, expected: str) -> None:
    args = build_parser().parse_args(["run", "--metrics", raw])
    config = GatewayConfig.load(args={"metrics": args.metrics}, environ={}, use_env_file=False)
    assert config.metrics == expected
    assert GatewayConfig.load(environ={}, use_env_file=False).metrics is None  # off by default


def test_metrics_off_on_the_command_line_wins_over_the_environment() -> None:
    args = build_parser().parse_args(["run", "--metrics", "off"])
    environ = {"GATEWAY_RELAY_METRICS": "9464"}
    assert GatewayConfig.load(environ=environ, use_env_file=False).metrics == "127.0.0.1:9464"
    config = GatewayConfig.load(args={"metrics": args.metrics}, environ=environ, use_env_file=False)
    assert config.metrics is None


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("99999", "'99999': the port must be an integer 0-65535"),
        ("::1:80", "'::1:80': write an IPv6 address in brackets, e.g. [::1]:9464"),
        (":80", "':80': the host before ':' is empty"),
    ],
)
def test_a_bad_metrics_address_is_one_usage_line(
    raw: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["run", "--metrics", raw])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"relay-runtime run: error: argument --metrics: {problem} (value {raw!r})"
    with pytest.raises(ConfigError) as caught:
        GatewayConfig.load(environ={"GATEWAY_RELAY_METRICS": raw}, use_env_file=False)
    assert str(caught.value) == f"GATEWAY_RELAY_METRICS: {problem} (value {raw!r})"
