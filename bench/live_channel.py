"""Live channel throughput on loopback Redis: modelroll's batched append and group read against raw redis-py.

The ceilings are raw redis-py loops on the same payload bytes (pipelined XADD; XREADGROUP + XACK without
decoding), run in the same process in alternating rounds so that both see the same machine load.
Usage: python bench/live_channel.py [--samples N] [--batch B] [--rounds R] [--redis-url URL] (exit 1: a sample lost)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without install

from modelroll.live import Sample
from modelroll.live.redis_backend import RedisChannel

TARGET_PER_S = 50_000
MAX_SECONDS = 300.0


def realistic_samples(n: int) -> list[Sample]:
    """Request samples as a router records them: two variants, runner and total latency, a prediction."""
    return [
        Sample(kind="request", model="digits", variant="int8" if i % 10 == 0 else "baseline",
               ts=1_750_000_000.0 + i * 0.001, rollout_id=42, step=3, request_id=f"{uuid.UUID(int=i)}",
               latency_ms=0.35 + (i % 97) * 0.01, total_ms=0.9 + (i % 89) * 0.01, cpu_ms=0.3,
               batch_size=1, prediction=[i % 10])
        for i in range(n)
    ]


class Raw:
    """The ceiling: redis-py used directly, payloads already encoded, replies never decoded."""

    def __init__(self, client: redis.Redis, key: str, max_len: int) -> None:
        self.client, self.key, self.max_len = client, key, max_len
        client.xgroup_create(key, "bench", id="0", mkstream=True)

    def append(self, payloads: list[bytes], batch: int) -> int:
        pipe = self.client.pipeline(transaction=False)
        for offset in range(0, len(payloads), batch):
            for payload in payloads[offset: offset + batch]:
                pipe.xadd(self.key, {b"d": payload}, maxlen=self.max_len, approximate=True)
            pipe.execute()
        return len(payloads)

    def read(self, expected: int, batch: int) -> int:
        read = 0
        while read < expected:
            reply: Any = self.client.xreadgroup("bench", "reader", {self.key: ">"}, count=min(batch, expected - read))
            if not reply:
                break
            ids = [entry_id for entry_id, _ in reply[0][1]]
            self.client.xack(self.key, "bench", *ids)
            read += len(ids)
        return read


def modelroll_append(channel: RedisChannel, samples: list[Sample], batch: int) -> int:
    for offset in range(0, len(samples), batch):
        channel.append_samples(samples[offset: offset + batch])
    return len(samples)


def modelroll_read(channel: RedisChannel, expected: int, batch: int) -> int:
    read = 0
    while read < expected:
        got = channel.read_samples("bench", "reader", count=min(batch, expected - read))
        if not got.ids:
            break
        channel.ack_samples("bench", got.ids)
        read += len(got.ids)
    return read


def timed(fn: Callable[..., int], *args: Any) -> tuple[float, float, int]:
    """Wall seconds, this process's CPU seconds and samples handled by one call."""
    start, cpu_start = time.perf_counter(), time.process_time()
    handled = fn(*args)
    return time.perf_counter() - start, time.process_time() - cpu_start, handled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    n, batch, rounds = args.samples, args.batch, args.rounds
    per_round = n // rounds
    prefix = f"modelroll-bench:{uuid.uuid4().hex[:12]}:"
    client = redis.Redis.from_url(args.redis_url, socket_timeout=10)
    channel = RedisChannel(args.redis_url, prefix=prefix, timeout_s=10.0, samples_max_len=n)
    deadline = time.monotonic() + MAX_SECONDS
    secs = {"raw_append": 0.0, "append": 0.0, "raw_read": 0.0, "read": 0.0}
    counts = {"raw_append": 0, "append": 0, "raw_read": 0, "read": 0}
    cpu = dict.fromkeys(secs, 0.0)
    try:
        raw = Raw(client, prefix + "raw", n)
        samples = realistic_samples(per_round * rounds)
        payloads = [s.to_bytes() for s in samples]
        for r in range(rounds):
            if time.monotonic() > deadline:
                break
            chunk = slice(r * per_round, (r + 1) * per_round)
            appends: list[tuple[str, Callable[..., int], tuple[Any, ...]]] = [
                ("raw_append", raw.append, (payloads[chunk],)),
                ("append", modelroll_append, (channel, samples[chunk]))]
            reads: list[tuple[str, Callable[..., int], tuple[Any, ...]]] = [
                ("raw_read", raw.read, (per_round,)), ("read", modelroll_read, (channel, per_round))]
            if r % 2:  # alternate who goes first, so neither always runs on a warmer machine
                appends.reverse()
                reads.reverse()
            for name, fn, fn_args in appends + reads:
                elapsed, cpu_s, handled = timed(fn, *fn_args, batch)
                secs[name] += elapsed
                cpu[name] += cpu_s
                counts[name] += handled
    finally:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        channel.close()
        client.close()

    rate = {name: counts[name] / secs[name] if secs[name] else 0.0 for name in secs}
    us = {name: cpu[name] / counts[name] * 1e6 if counts[name] else 0.0 for name in secs}
    print(f"live channel on {args.redis_url}: {counts['append']:,} samples of ~{len(payloads[0])} bytes, "
          f"batches of {batch}, {rounds} alternating rounds; client CPU per sample in brackets")
    print(f"  append  raw redis-py pipelined XADD (ceiling): {rate['raw_append']:>9,.0f} samples/s "
          f"[{us['raw_append']:.1f} us]")
    print(f"          modelroll append_samples:              {rate['append']:>9,.0f} samples/s "
          f"[{us['append']:.1f} us]  modelroll/raw = {rate['append'] / rate['raw_append']:.2f}")
    print(f"  read    raw XREADGROUP + XACK, not decoded:    {rate['raw_read']:>9,.0f} samples/s "
          f"[{us['raw_read']:.1f} us]")
    print(f"          modelroll read_samples + ack_samples:  {rate['read']:>9,.0f} samples/s "
          f"[{us['read']:.1f} us]  modelroll/raw = {rate['read'] / rate['raw_read']:.2f}  "
          f"(read back {counts['read']:,} of {counts['append']:,})")
    met = rate["append"] >= TARGET_PER_S and rate["read"] >= TARGET_PER_S
    print(f"  target >= {TARGET_PER_S:,} samples/s appended and read back: {'met' if met else 'NOT met'}"
          f" (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    # A loaded machine can miss the rate; losing a sample is a failure on any machine.
    return 0 if counts["read"] == counts["append"] == per_round * rounds else 1


if __name__ == "__main__":
    sys.exit(main())
