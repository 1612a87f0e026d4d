"""The router app's own CPU per inference request, in process: no HTTP server, no load generator, no network.

Calls the ASGI app directly on uvloop (inline runner, the digits MLP, samples recorded in memory) and reports,
per batch size, the least process CPU time per request over chunks of requests: the figure a hot-path change
moves, steadier on a shared machine than the served throughput of bench/router.py. Compare two commits by
running this on each, alternating, a few times.
Usage: python bench/router_app.py [--chunks N] [--per-chunk N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # this file is in bench/: keep the `router` package importable
else:
    sys.path.insert(0, str(ROOT))


async def measure(app: Any, body: bytes, chunks: int, per_chunk: int) -> float:
    scope = {"type": "http", "method": "POST", "path": "/v2/models/digits/infer",
             "headers": [(b"content-length", str(len(body)).encode())]}
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(_: Any) -> None:
        return None

    best = float("inf")
    for _ in range(chunks):
        start = time.process_time()
        for _ in range(per_chunk):
            await app(scope, receive, send)
        await asyncio.sleep(0)  # the answered requests' metrics and samples are settled here, and counted
        best = min(best, (time.process_time() - start) / per_chunk)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=1500, help="chunks per batch size (the least is reported)")
    parser.add_argument("--per-chunk", type=int, default=20, help="requests per chunk")
    args = parser.parse_args()

    import orjson
    import uvloop

    from modelroll.live.memory import MemoryChannel
    from modelroll.settings import Settings
    from router.app import create_app
    from router.variants import StaticVariantSource, VariantSpec
    from tests.router_models import build_digits, digits_data

    with tempfile.TemporaryDirectory() as tmp:
        model = build_digits(Path(tmp) / "digits")["baseline"]
        settings = Settings(home=Path(tmp) / "home", router_runner="inline")
        app = create_app(settings, MemoryChannel(), StaticVariantSource([VariantSpec("digits", "baseline",
                                                                                     "baseline", model)]))
        x, _ = digits_data()
        try:
            for batch in (1, 32):
                body = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [batch, 64],
                                                 "data": x[:batch].reshape(-1).tolist()}]})
                seconds = uvloop.run(measure(app, body, args.chunks, args.per_chunk))
                print(f"batch {batch:>2}: {seconds * 1e6:6.1f} µs of the router app's CPU per request "
                      f"(least over {args.chunks} chunks of {args.per_chunk})", flush=True)
        finally:
            app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
