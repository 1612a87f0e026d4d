"""Live channel throughput on loopback Redis: modelroll's batched append and group read against raw redis-py.

The ceiling is a raw pipelined XADD loop of the same payload bytes, measured in the same run.
Usage: python bench/live_channel.py [--samples N] [--batch B] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without install

from modelroll.live import Sample
from modelroll.live.redis_backend import RedisChannel

TARGET_PER_S = 50_000
MAX_SECONDS = 120.0


def realistic_samples(n: int) -> list[Sample]:
    """Request samples as a router records them: two variants, runner and total latency, a prediction."""
    return [
        Sample(kind="request", model="digits", variant="int8" if i % 10 == 0 else "baseline",
               ts=1_750_000_000.0 + i * 0.001, rollout_id=42, step=3, request_id=f"{uuid.UUID(int=i)}",
               latency_ms=0.35 + (i % 97) * 0.01, total_ms=0.9 + (i % 89) * 0.01, cpu_ms=0.3,
               batch_size=1, prediction=[i % 10])
        for i in range(n)
    ]


def raw_xadd(client: redis.Redis, key: str, payloads: list[bytes], batch: int, max_len: int) -> float:
    start = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for offset in range(0, len(payloads), batch):
        for payload in payloads[offset: offset + batch]:
            pipe.xadd(key, {b"d": payload}, maxlen=max_len, approximate=True)
        pipe.execute()
    return time.perf_counter() - start


def modelroll_append(channel: RedisChannel, samples: list[Sample], batch: int) -> float:
    start = time.perf_counter()
    for offset in range(0, len(samples), batch):
        channel.append_samples(samples[offset: offset + batch])
    return time.perf_counter() - start


def modelroll_read(channel: RedisChannel, expected: int, batch: int, deadline: float) -> tuple[float, int]:
    start = time.perf_counter()
    read = 0
    while read < expected and time.monotonic() < deadline:
        got = channel.read_samples("bench", "reader", count=batch)
        if not got.ids:
            break
        channel.ack_samples("bench", got.ids)
        read += len(got.ids)
    return time.perf_counter() - start, read


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    n, batch = args.samples, args.batch
    prefix = f"modelroll-bench:{uuid.uuid4().hex[:12]}:"
    client = redis.Redis.from_url(args.redis_url, socket_timeout=10)
    channel = RedisChannel(args.redis_url, prefix=prefix, timeout_s=10.0, samples_max_len=n)
    deadline = time.monotonic() + MAX_SECONDS
    try:
        samples = realistic_samples(n)
        payloads = [s.to_bytes() for s in samples]
        raw_s = raw_xadd(client, prefix + "raw", payloads, batch, n)
        append_s = modelroll_append(channel, samples, batch)
        read_s, read = modelroll_read(channel, n, batch, deadline)
    finally:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        channel.close()
        client.close()

    raw_rate, append_rate, read_rate = n / raw_s, n / append_s, read / read_s
    print(f"live channel on {args.redis_url}: {n:,} samples of ~{sum(map(len, payloads)) // n} bytes, "
          f"batches of {batch}")
    print(f"  raw redis-py pipelined XADD (ceiling): {raw_rate:>10,.0f} samples/s")
    print(f"  modelroll append_samples:              {append_rate:>10,.0f} samples/s  "
          f"(modelroll/raw = {append_rate / raw_rate:.2f})")
    print(f"  modelroll read_samples + ack_samples:  {read_rate:>10,.0f} samples/s  "
          f"(read back {read:,} of {n:,}; read/raw = {read_rate / raw_rate:.2f})")
    ok = read == n and append_rate >= TARGET_PER_S and read_rate >= TARGET_PER_S
    print(f"  target >= {TARGET_PER_S:,} samples/s appended and read back: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
