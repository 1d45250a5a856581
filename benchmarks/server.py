"""Requests per second and latency of `qwen3-embed serve` under concurrent clients, with dynamic batching on and
off (each request run alone), on CPU.

The server runs in its own process on a random-weight checkpoint (the 0.6B layer shapes, at reduced depth by
default, with the real tokenizer); one client process keeps `concurrency` requests in flight, each embedding one
query-sized text (8-64 tokens), and times every request.

    python benchmarks/server.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from common import (
    ROOT,
    SHARED_TOKENIZER,
    log_uniform_lengths,
    machine,
    markdown_table,
    texts_of_token_lengths,
    write_checkpoint,
    write_results,
)
from qwen3_embed import Qwen3Config


async def load(url: str, texts: list[str], concurrency: int) -> tuple[float, list[float]]:
    """Seconds for all requests, and each request's latency."""
    import httpx

    latencies: list[float] = []
    pending = iter(texts)

    async def client(http: httpx.AsyncClient) -> None:
        for text in pending:
            start = time.perf_counter()
            response = await http.post(f"{url}/embed", json={"inputs": text})
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return time.perf_counter() - start, latencies


def serve(folder: Path, port: int, batching: bool) -> subprocess.Popen:
    command = [sys.executable, "-m", "qwen3_embed.cli", "serve", "--model", str(folder), "--port", str(port)]
    command += [] if batching else ["--no-batching"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4, help="depth of the 0.6B-shaped checkpoint")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=8, help="requests per concurrent client")
    p.add_argument("--port", type=int, default=8093)
    p.add_argument("--tokenizer", type=Path, default=SHARED_TOKENIZER)
    args = p.parse_args()
    config = replace(Qwen3Config.preset("0.6B"), num_hidden_layers=args.layers)
    folder = write_checkpoint(ROOT / "local" / f"bench-embed-0.6B-{args.layers}", config, args.tokenizer)

    rows, results = [], {"machine": machine(), "layers": args.layers, "runs": []}
    for batching in (False, True):
        process = serve(folder, args.port, batching)
        try:
            for concurrency in args.concurrency:
                n = max(16, concurrency * args.requests)
                texts = texts_of_token_lengths(args.tokenizer, log_uniform_lengths(n, 8, 64, seed=concurrency))
                asyncio.run(load(f"http://127.0.0.1:{args.port}", texts[:4], 1))  # warm-up
                seconds, latencies = asyncio.run(load(f"http://127.0.0.1:{args.port}", texts, concurrency))
                q = statistics.quantiles(latencies, n=100)
                run = {"batching": batching, "concurrency": concurrency, "requests": n, "seconds": seconds,
                       "requests_per_s": n / seconds, "p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98]}  # fmt: skip
                results["runs"].append(run)
                print(run, flush=True)
        finally:
            process.terminate()
            process.wait()
    base = {r["concurrency"]: r for r in results["runs"] if not r["batching"]}
    for r in results["runs"]:
        gain = r["requests_per_s"] / base[r["concurrency"]]["requests_per_s"]
        rows.append(f"| {'on' if r['batching'] else 'off (one request at a time)'} | {r['concurrency']} | "
                    f"{r['requests_per_s']:.1f} | {gain:.2f}x | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |")  # fmt: skip
    m = results["machine"]
    table = markdown_table(
        f"`qwen3-embed serve` on {m['cpu']} ({m['torch_threads']} threads, shared with the client), random weights of "
        f"the 0.6B layer shapes at {args.layers} layers, float32; each request embeds one text of 8-64 tokens:",
        ["dynamic batching", "concurrency", "requests/s", "vs off", "p50 ms", "p99 ms"],
        rows,
    )  # fmt: skip
    print("\n" + table)
    write_results("server-cpu", results, table)


if __name__ == "__main__":
    main()
