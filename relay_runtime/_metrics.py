"""Prometheus metrics and health probes of one gateway: ``/metrics``, ``/healthz``, ``/readyz``.

:class:`GatewayMetrics` holds a registry of the gateway's own (never the process-global
default registry, so tests and several embedded gateways do not collide). Counters and gauges
are read from ``gateway.stats`` when scraped, so the hot path pays nothing for them; the turn
duration histogram is fed by the dispatcher's ``on_turn_end`` observer.

:func:`serve_metrics` serves them over HTTP/1.1 with the reference connector's small h11
server, as a task in the gateway's nursery (``run --metrics [HOST:]PORT``)::

    /metrics   Prometheus text exposition (OpenMetrics when the scraper asks for it)
    /healthz   200 while the process runs the gateway
    /readyz    200 when the connection is READY, else 503 naming the state
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from protocol._connection import State
from relay_runtime.config import ConfigError, metrics_address

if TYPE_CHECKING:
    from relay_runtime.connector._control_plane import HttpRequest, HttpResponse, HttpServer


class _TurnEnds(Protocol):
    @property
    def on_turn_end(self) -> Callable[[str, float], None] | None: ...

    @on_turn_end.setter
    def on_turn_end(self, observer: Callable[[str, float], None] | None) -> None: ...


class ObservedGateway(Protocol):
    """What the metrics read of a gateway (the :class:`relay_runtime.Gateway` handle)."""

    @property
    def state(self) -> str: ...

    @property
    def stats(self) -> Mapping[str, Any]: ...

    @property
    def dispatcher(self) -> _TurnEnds: ...


log = logging.getLogger("relay_runtime.metrics")

#: Turn duration buckets (seconds): chat agents answer in tens of milliseconds (echo) to
#: minutes (LLM tool loops); the top bucket is the default turn time limit.
TURN_BUCKETS_S: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: How a turn ends (``relay_turns_total{outcome}``), the dispatcher's end states.
TURN_OUTCOMES: Final = ("completed", "failed", "interrupted", "denied", "cancelled", "timed_out")

# (metric name without _total, gateway.stats key, help)
_COUNTERS: Final = (
    ("relay_dials", "dials", "Connector dials attempted."),
    ("relay_dial_failures", "dial_failures", "Dials that did not open a socket."),
    ("relay_connects", "handshakes", "Handshakes completed (connection READY)."),
    ("relay_drops", "drops", "Connector sockets that ended (any close code)."),
    ("relay_frames_in", "frames_in", "Frames read from the connector."),
    ("relay_frames_out", "frames_out", "Frames written to the connector."),
    ("relay_frames_rejected", "malformed_frames", "Connector frames rejected as malformed."),
    ("relay_inbound", "received", "Inbound deliveries received."),
    ("relay_inbound_duplicates", "duplicates", "Inbound deliveries that were replays."),
    ("relay_inbound_acked", "acked", "Buffered deliveries acked."),
    ("relay_inbound_ack_failures", "ack_failures", "Acks not sent (socket gone)."),
    ("relay_passthrough_dropped", "dropped", "Passthrough forwards dropped."),
    ("relay_inbound_stalls", "inbound_stalls", "Backpressure episodes (reader paused)."),
    ("relay_replies_sent", "replies_sent", "Replies the connector confirmed."),
    ("relay_replies_queued", "replies_queued", "Replies queued in the outbox."),
    ("relay_outbox_flush_failures", "outbox_flush_failures", "Outbox entries that failed."),
)
_GAUGES: Final = (
    ("relay_turns_running", "running", "Turns running now."),
    ("relay_inbound_pending", "pending", "Admitted deliveries not yet finished."),
    ("relay_outbox_size", "outbox", "Replies waiting in the outbox."),
    ("relay_outbound_pending", "pending_requests", "Outbound requests awaiting a result."),
)


class _StatsCollector(Collector):
    """Reads ``gateway.stats`` at scrape time and yields it as metric families."""

    def __init__(self, gateway: ObservedGateway) -> None:
        self._gateway = gateway

    def collect(self) -> Iterator[Metric]:
        stats = self._gateway.stats
        state = GaugeMetricFamily(
            "relay_connection_state",
            "Connection state: 1 for the current one (ready, backoff, ...), else 0.",
            labels=["state"],
        )
        for each in State:
            state.add_metric([each.value], 1.0 if stats["state"] == each.value else 0.0)
        yield state
        for name, key, help_text in _COUNTERS:
            yield CounterMetricFamily(name, help_text, value=_number(stats, key))
        for name, key, help_text in _GAUGES:
            yield GaugeMetricFamily(name, help_text, value=_number(stats, key))
        turns = CounterMetricFamily("relay_turns", "Turns by how they ended.", labels=["outcome"])
        for outcome in TURN_OUTCOMES:
            turns.add_metric([outcome], _number(stats, outcome))
        yield turns
        yield from _trust_families(stats.get("trust"))


def _trust_families(trust: object) -> Iterator[Metric]:
    """Trust decisions by tier and verdict, when the trust evaluator keeps counters."""
    if not isinstance(trust, Mapping):
        return
    tiers = CounterMetricFamily(
        "relay_trust_decisions", "Trust decisions by the tier that made them.", labels=["tier"]
    )
    decisions = trust.get("decisions")
    if isinstance(decisions, Mapping):
        for tier, count in sorted(decisions.items()):
            tiers.add_metric([str(tier)], float(count))
    yield tiers
    verdicts = CounterMetricFamily(
        "relay_trust_verdicts", "Trust decisions by verdict.", labels=["verdict"]
    )
    verdicts.add_metric(["allow"], _number(trust, "allowed"))
    verdicts.add_metric(["deny"], _number(trust, "denied"))
    yield verdicts


def _number(stats: Mapping[str, Any], key: str) -> float:
    value = stats.get(key, 0)
    return float(value) if isinstance(value, int | float) else 0.0


class GatewayMetrics:
    """The Prometheus view of one gateway, in a registry of its own."""

    def __init__(self, gateway: ObservedGateway) -> None:
        self.gateway = gateway
        self.registry = CollectorRegistry()
        self.turn_duration = Histogram(
            "relay_turn_duration_seconds",
            "How long turns ran (trust, agent and replies), by how they ended.",
            ["outcome"],
            buckets=TURN_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_StatsCollector(gateway))
        gateway.dispatcher.on_turn_end = self.observe_turn

    def observe_turn(self, outcome: str, seconds: float) -> None:
        """Record one finished turn (the dispatcher's ``on_turn_end``)."""
        self.turn_duration.labels(outcome).observe(seconds)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry's exposition for an ``Accept`` header: ``(body, content type)``."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """The HTTP app: ``/metrics``, ``/healthz``, ``/readyz``."""
        from relay_runtime.connector._control_plane import HttpResponse

        text = "text/plain; charset=utf-8"
        if request.path not in ("/metrics", "/healthz", "/readyz"):
            return HttpResponse(404, b"not found: try /metrics, /healthz or /readyz\n", text)
        if request.method != "GET":
            return HttpResponse(405, b"method not allowed\n", text, (("allow", "GET"),))
        if request.path == "/metrics":
            body, content_type = self.exposition(request.header("accept"))
            return HttpResponse(200, body, content_type)
        if request.path == "/healthz":
            return HttpResponse(200, b"ok\n", text)
        state = self.gateway.state
        if state == State.READY.value:
            return HttpResponse(200, b"ready\n", text)
        return HttpResponse(503, f"not ready: {state}\n".encode(), text)


async def serve_metrics(
    metrics: GatewayMetrics,
    address: str,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``metrics`` on ``address`` (``[HOST:]PORT``) until cancelled.

    Logs and starts with the base URL, ``http://host:port`` (the bound port for port 0).

    Raises :class:`ConfigError` (``metrics``) when the address cannot be listened on.
    """
    from relay_runtime.connector._control_plane import serve_http

    try:
        parsed = metrics_address(address)
    except ValueError as exc:
        raise ConfigError("metrics", str(exc)) from None
    if parsed is None:
        raise ConfigError("metrics", f"{address!r} is not an address to listen on")
    host, port = parsed

    async def started(*, task_status: trio.TaskStatus[HttpServer]) -> None:
        try:
            await serve_http(metrics.handle, host=host, port=port, task_status=task_status)
        except OSError as exc:
            problem = f"cannot listen on {address} ({exc.strerror or exc})"
            raise ConfigError("metrics", problem) from None

    async with trio.open_nursery() as nursery:
        server: HttpServer = await nursery.start(started)
        shown = f"[{server.host}]" if ":" in server.host else server.host
        url = f"http://{shown}:{server.port}"
        log.info("serving metrics", extra={"url": f"{url}/metrics", "probes": "/healthz,/readyz"})
        task_status.started(url)
