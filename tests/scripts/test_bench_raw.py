"""scripts/bench_raw.py: its frames are the codec's, its peers do the four-frame exchange,
and the figures it derives (issue 15)."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from types import ModuleType

import pytest
import trio

from protocol import FrameDecoder, Inbound, InboundAck, Outbound, OutboundResult, encode_frame

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    # bench_raw imports bench_pipeline as a sibling, as it does when run from scripts/.
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(SCRIPTS))
        spec = importlib.util.spec_from_file_location("bench_raw", SCRIPTS / "bench_raw.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def decode(text: str) -> object:
    (frame,) = FrameDecoder().feed_text(text)
    return frame


def test_templates_are_the_codecs_frames_with_the_number_swapped(bench) -> None:
    t = bench.Templates.build()
    seq = 42
    inbound = decode(bench.Templates.render(t.inbound, seq))
    outbound = decode(bench.Templates.render(t.outbound, seq))
    result = decode(bench.Templates.render(t.result, seq))
    ack = decode(bench.Templates.render(t.ack, seq))
    assert isinstance(inbound, Inbound)
    assert inbound.event.text.startswith("b000000042 ")
    assert inbound.buffer_id == "buf-0a1b2c3d-000000042"
    assert isinstance(outbound, Outbound)
    assert outbound.action.content == inbound.event.text
    assert isinstance(result, OutboundResult)
    assert result.request_id == outbound.request_id
    assert isinstance(ack, InboundAck)
    assert ack.buffer_id == inbound.buffer_id
    # The template with its own marker is byte for byte what the codec wrote.
    assert bench.Templates.render(t.ack, int(bench.MARK)) == encode_frame(
        InboundAck(buffer_id=f"buf-0a1b2c3d-{bench.MARK}")
    )
    sizes = t.sizes()
    assert sizes["inbound"] == len(encode_frame(inbound).encode())
    assert sizes["outbound"] == len(encode_frame(outbound).encode())


async def test_the_client_answers_inbound_with_outbound_and_result_with_ack(bench) -> None:
    t = bench.Templates.build()
    to_client, client_inbox = trio.open_memory_channel[str](10)
    client_outbox, from_client = trio.open_memory_channel[str](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bench.exchange, client_inbox.receive, client_outbox.send)
        # A real connector's bufferId is not the message number: the client keeps it.
        inbound = encode_frame(
            Inbound(event=decode(bench.Templates.render(t.inbound, 7)).event, buffer_id="buf-x-1")
        )
        await to_client.send(inbound)
        outbound = decode(await from_client.receive())
        assert isinstance(outbound, Outbound)
        assert outbound.action.content.startswith("b000000007 ")
        await to_client.send(bench.Templates.render(t.result, 7))
        ack = decode(await from_client.receive())
        assert ack == InboundAck(buffer_id="buf-x-1")
        nursery.cancel_scope.cancel()


def sample(bench, stack: str, rep: int, completed: int, seconds: float, child: float, local: float):
    run = bench.bp.RunResult(stack, None, completed, completed, seconds, ())
    return bench.Sample(stack, rep, run, child, local)


def test_ratio_is_the_median_of_paired_repetitions(bench) -> None:
    samples = [
        sample(bench, bench.PIPELINE, 0, 1000, 1.0, 0.5, 0.25),  # 1,000 msg/s
        sample(bench, bench.RAW_TW, 0, 1000, 0.25, 0.1, 0.1),  # 4,000 msg/s
        sample(bench, bench.PIPELINE, 1, 1000, 0.5, 0.5, 0.25),  # 2,000
        sample(bench, bench.RAW_TW, 1, 1000, 0.25, 0.1, 0.1),  # 4,000
        sample(bench, bench.PIPELINE, 2, 1000, 2.0, 0.5, 0.25),  # 500: no raw in rep 2
    ]
    assert bench.ratios(samples) == pytest.approx([0.25, 0.5])
    assert bench.headline_ratio(samples) == pytest.approx(0.375)
    line = bench.ratio_line(samples)
    assert line.startswith("pipeline/raw ratio 0.38 ")
    assert "range 0.25-0.50" in line
    assert math.isnan(bench.headline_ratio(samples[-1:]))
    (pipe, raw) = bench.summarise(samples)
    assert pipe.reps == 3
    assert pipe.rate == pytest.approx((1000.0, 500.0, 2000.0))
    assert pipe.child_us == pytest.approx((500.0, 500.0, 500.0))
    assert raw.local_us == pytest.approx((100.0, 100.0, 100.0))
    (connector, gateway) = bench.cpu_lines(samples)[-2:]
    assert connector.startswith(
        "CPU per message connector/raw server (pipeline's connector): 2.50x"
    )
    assert gateway.startswith("CPU per message gateway/raw client: 5.00x")


def test_process_cpu_reads_this_process(bench) -> None:
    before = bench.process_cpu_s(os.getpid())
    sum(i * i for i in range(200_000))
    assert bench.process_cpu_s(os.getpid()) >= before >= 0.0
