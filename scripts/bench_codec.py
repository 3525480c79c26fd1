"""Codec throughput: our FrameDecoder + encode_frame against plain json.loads + json.dumps.

One typical inbound frame (a Discord group message with source ids, ~300 bytes) is decoded
and re-encoded over and over, and so is the same text with the bare json module, in the same
run. Prints frames/s (best and median of several repeats) and the cost ratio; the target is
that ours costs at most 2x plain json.

    python scripts/bench_codec.py [--iterations N] [--repeats R] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable

from protocol import FrameDecoder, encode_frame

TARGET_RATIO = 2.0

TYPICAL_INBOUND = {
    "type": "inbound",
    "event": {
        "text": "can you summarise this thread?",
        "message_type": "text",
        "source": {
            "platform": "discord",
            "chat_id": "1187254117388431412",
            "chat_name": None,
            "chat_type": "group",
            "user_id": "310998876231254016",
            "user_name": "xavier",
            "thread_id": None,
            "chat_topic": None,
            "guild_id": "1187254116490846218",
        },
        "message_id": "1250931806215409754",
        "reply_to_message_id": None,
        "media_urls": [],
    },
}


def typical_line() -> str:
    """The benchmark frame as the connector would send it (compact JSON, one line)."""
    return json.dumps(TYPICAL_INBOUND, separators=(",", ":")) + "\n"


def ours(line: str, n: int) -> None:
    """Decode ``line`` with a FrameDecoder and re-encode the frame, ``n`` times."""
    decoder = FrameDecoder()
    feed = decoder.feed_text
    for _ in range(n):
        (frame,) = feed(line)
        encode_frame(frame)  # type: ignore[arg-type]


def plain(line: str, n: int) -> None:
    """json.loads + json.dumps of the same text, ``n`` times."""
    loads, dumps = json.loads, json.dumps
    text = line[:-1]
    for _ in range(n):
        dumps(loads(text))


def seconds_per_frame(fn: Callable[[str, int], None], line: str, n: int) -> float:
    """One timed run of ``n`` frames after a short warm-up."""
    fn(line, min(n, 1000))
    start = time.perf_counter()
    fn(line, n)
    return (time.perf_counter() - start) / n


def check(line: str) -> None:
    """Fail loudly if the benchmark frame does not decode, so we never time an error path."""
    out = FrameDecoder().feed_text(line)
    if len(out) != 1 or type(out[0]).__name__ != "Inbound":
        raise SystemExit(f"benchmark frame did not decode to one Inbound: {out!r}")


def profile(line: str, n: int) -> None:
    """cProfile our path and print where the time goes."""
    profiler = cProfile.Profile()
    profiler.runcall(ours, line, n)
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(15)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000, help="frames per repeat")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--profile", action="store_true", help="cProfile our codec path")
    args = parser.parse_args(argv)

    line = typical_line()
    check(line)
    size = len(line.encode("utf-8")) - 1
    print(f"frame: inbound, {size} bytes; {args.repeats} repeats x {args.iterations} frames")

    # Interleave so that machine noise hits both sides alike.
    ours_t: list[float] = []
    plain_t: list[float] = []
    for _ in range(args.repeats):
        ours_t.append(seconds_per_frame(ours, line, args.iterations))
        plain_t.append(seconds_per_frame(plain, line, args.iterations))
    results = {"ours (FrameDecoder + encode_frame)": ours_t, "plain json.loads + dumps": plain_t}
    for name, ts in results.items():
        best, median = min(ts), statistics.median(ts)
        print(
            f"{name:36} best {1 / best:>10,.0f} frames/s ({best * 1e6:6.2f} us)"
            f"   median {1 / median:>10,.0f} frames/s ({median * 1e6:6.2f} us)"
        )
    ratio_best = min(ours_t) / min(plain_t)
    # Each repeat times both sides back to back, so its ratio is the least noisy figure.
    ratio_paired = statistics.median(o / p for o, p in zip(ours_t, plain_t, strict=True))
    verdict = "within" if ratio_best <= TARGET_RATIO else "OVER"
    print(
        f"cost ratio ours/plain: best/best {ratio_best:.2f}x, median of paired repeats "
        f"{ratio_paired:.2f}x ({verdict} the {TARGET_RATIO:.0f}x target)"
    )
    if args.profile:
        profile(line, args.iterations)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
