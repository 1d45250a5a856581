"""`qwen3-embed serve` under concurrent clients, on CPU: requests per second and latency with dynamic batching on
and off (each request run alone), and an overload run with and without the server's limits.

The server runs in its own process on a random-weight checkpoint (the 0.6B layer shapes, at reduced depth by
default, with the real tokenizer); one client process (asyncio, httpx) sends requests that each embed one
query-sized text (8-64 tokens) and times every request.

Overload: the server admits `--admitted` concurrent requests (`--max-concurrent-requests`). First as many clients
as it admits send requests in a loop for `--seconds` (unloaded, no deadline); then 4x as many, each request with a
deadline (`--deadline`, default twice the unloaded p99) after which the client gives up and closes its connection.
A client answered 429 retries after 50 ms (not after Retry-After, to keep the pressure on). Reported: goodput
(answers within the deadline per second), p50/p99 of the admitted requests answered 200, the share answered 429,
the requests abandoned at the deadline, and how far the server's resident memory rose above its loaded baseline
(its peak, VmHWM, reset through /proc/PID/clear_refs once the model is loaded and before any request); for the
server with its limits and for one without them (admission and queue bounds lifted), under the same overload. The
batching part reports the same growth, since the server loaded, after each concurrency.

    python benchmarks/server.py                      # both parts
    python benchmarks/server.py --part overload      # the overload run only
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
    memory,
    texts_of_token_lengths,
    write_checkpoint,
    write_results,
)
from qwen3_embed import Qwen3Config

UNLIMITED = ["--max-concurrent-requests", "1000000", "--max-queue-tokens", "1000000000"]


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


async def overload(url: str, texts: list[str], clients: int, seconds: float, deadline: float) -> dict:
    """`clients` clients sending in a loop for `seconds`, each request abandoned after `deadline` seconds."""
    import httpx

    answered: list[float] = []  # latencies of the requests answered 200 within the deadline
    counts = {"late": 0, "refused": 0, "failed": 0}
    stop = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient, k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            start = time.perf_counter()
            try:
                response = await asyncio.wait_for(http.post(f"{url}/embed", json={"inputs": texts[i % len(texts)]}),
                                                  deadline)  # fmt: skip
            except asyncio.TimeoutError:
                counts["late"] += 1
                continue
            finally:
                i += clients
            if response.status_code == 200:
                answered.append(time.perf_counter() - start)
            elif response.status_code == 429:
                counts["refused"] += 1
                await asyncio.sleep(0.05)
            else:
                counts["failed"] += 1

    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(http, k) for k in range(clients)))
    total = len(answered) + sum(counts.values())
    q = statistics.quantiles(answered, n=100) if len(answered) > 1 else [float("nan")] * 99
    return {"clients": clients, "seconds": seconds, "deadline_s": deadline, "requests": total,
            "answered": len(answered), **counts, "goodput_per_s": len(answered) / seconds,
            "refused_share": counts["refused"] / max(total, 1), "p50_ms": 1000 * q[49],
            "p99_ms": 1000 * q[98]}  # fmt: skip


def serve(folder: Path, port: int, options: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "qwen3_embed.cli", "serve", "--model", str(folder), "--port", str(port)]
    process = subprocess.Popen(command + options, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start")


def reset_peak(pid: int) -> int:
    """Reset a process's peak resident memory to its current one (VmHWM := VmRSS): the baseline, in bytes, above
    which later growth shows (the lifetime peak includes the model's load, which hides any growth below it)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    return memory("VmRSS", pid)


def growth(pid: int, baseline: int) -> dict:
    """The peak resident memory since `reset_peak`, and its rise above the baseline, in bytes."""
    peak = memory("VmHWM", pid)
    return {"rss_baseline_bytes": baseline, "rss_peak_bytes": peak, "rss_growth_bytes": peak - baseline}


def mib(r: dict) -> str:
    """The memory column: the growth above the loaded baseline, and the peak."""
    return f"+{r['rss_growth_bytes'] / 2**20:.0f} MiB (peak {r['rss_peak_bytes'] / 2**30:.2f} GiB)"


def batching_part(args, folder: Path, m: dict) -> None:
    results = {"machine": m, "layers": args.layers, "runs": []}
    for batching in (False, True):
        process = serve(folder, args.port, [] if batching else ["--no-batching"])
        baseline = reset_peak(process.pid)  # loaded, before any request
        try:
            for concurrency in args.concurrency:
                n = max(16, concurrency * args.requests)
                texts = texts_of_token_lengths(args.tokenizer, log_uniform_lengths(n, 8, 64, seed=concurrency))
                asyncio.run(load(f"http://127.0.0.1:{args.port}", texts[:4], 1))  # warm-up
                seconds, latencies = asyncio.run(load(f"http://127.0.0.1:{args.port}", texts, concurrency))
                q = statistics.quantiles(latencies, n=100)
                run = {"batching": batching, "concurrency": concurrency, "requests": n, "seconds": seconds,
                       "requests_per_s": n / seconds, "p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98],
                       **growth(process.pid, baseline)}  # fmt: skip
                results["runs"].append(run)
                print(run, flush=True)
        finally:
            process.terminate()
            process.wait()
    base = {r["concurrency"]: r for r in results["runs"] if not r["batching"]}
    rows = []
    for r in results["runs"]:
        gain = r["requests_per_s"] / base[r["concurrency"]]["requests_per_s"]
        rows.append(f"| {'on' if r['batching'] else 'off (one request at a time)'} | {r['concurrency']} | "
                    f"{r['requests_per_s']:.1f} | {gain:.2f}x | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                    f"{mib(r)} |")  # fmt: skip
    table = markdown_table(
        f"`qwen3-embed serve` on {m['cpu']} ({m['torch_threads']} threads, shared with the client), random weights of "
        f"the 0.6B layer shapes at {args.layers} layers, float32; each request embeds one text of 8-64 tokens:",
        ["dynamic batching", "concurrency", "requests/s", "vs off", "p50 ms", "p99 ms", "RSS since loaded"],
        rows,
    )  # fmt: skip
    print("\n" + table)
    write_results("server-cpu", results, table)


def overload_part(args, folder: Path, m: dict) -> None:
    texts = texts_of_token_lengths(args.tokenizer, log_uniform_lengths(512, 8, 64, seed=7))
    url = f"http://127.0.0.1:{args.port}"
    admitted = ["--max-concurrent-requests", str(args.admitted)]
    runs = []
    deadline = args.deadline
    for name, options, clients in [("limits, unloaded", admitted, args.admitted),
                                   ("limits, 4x overload", admitted, 4 * args.admitted),
                                   ("no limits, 4x overload", UNLIMITED, 4 * args.admitted)]:  # fmt: skip
        process = serve(folder, args.port, options)
        baseline = reset_peak(process.pid)  # loaded, before any request
        try:
            asyncio.run(load(url, texts[:8], 2))  # warm-up
            # The unloaded run has no deadline; the overload runs' default is twice its p99 (the target).
            wait = 600.0 if not runs else deadline or 2 * runs[0]["p99_ms"] / 1000
            run = {"server": name, **asyncio.run(overload(url, texts, clients, args.seconds, wait))}
            run |= growth(process.pid, baseline)
        finally:
            process.terminate()
            process.wait()
        runs.append(run)
        print(run, flush=True)
    unloaded_p99, deadline = runs[0]["p99_ms"], runs[1]["deadline_s"]
    rows = [f"| {r['server']} | {r['clients']} | {r['goodput_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
            f"({r['p99_ms'] / unloaded_p99:.2f}x) | {100 * r['refused_share']:.0f}% | {r['late']} | {mib(r)} |"
            for r in runs]  # fmt: skip
    table = markdown_table(
        f"`qwen3-embed serve` under overload on {m['cpu']} ({m['torch_threads']} threads, shared with the client), "
        f"random weights of the 0.6B layer shapes at {args.layers} layers, float32; requests of one 8-64-token text; "
        f"{args.admitted} admitted concurrent requests; under overload clients give up after {deadline:.2f} s "
        f"(twice the unloaded p99, unless --deadline says otherwise), {args.seconds:g} s per run:",
        ["server", "clients", "goodput (200 within deadline)/s", "p50 ms (200s)", "p99 ms (200s, vs unloaded)",
         "answered 429", "abandoned at deadline", "RSS since loaded"],
        rows,
    )  # fmt: skip
    print("\n" + table)
    results = {"machine": m, "layers": args.layers, "admitted": args.admitted, "deadline_s": deadline, "runs": runs}
    write_results("server-overload-cpu", results, table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["batching", "overload", "both"], default="both")
    p.add_argument("--layers", type=int, default=4, help="depth of the 0.6B-shaped checkpoint")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="batching part: clients")
    p.add_argument("--requests", type=int, default=8, help="batching part: requests per concurrent client")
    p.add_argument("--admitted", type=int, default=8, help="overload part: --max-concurrent-requests")
    p.add_argument("--seconds", type=float, default=30, help="overload part: length of each run")
    p.add_argument("--deadline", type=float, help="overload part: seconds a client waits (default: twice the "
                   "unloaded p99)")  # fmt: skip
    p.add_argument("--port", type=int, default=8093)
    p.add_argument("--tokenizer", type=Path, default=SHARED_TOKENIZER)
    args = p.parse_args()
    config = replace(Qwen3Config.preset("0.6B"), num_hidden_layers=args.layers)
    folder = write_checkpoint(ROOT / "local" / f"bench-embed-0.6B-{args.layers}", config, args.tokenizer)
    m = machine()
    if args.part in ("batching", "both"):
        batching_part(args, folder, m)
    if args.part in ("overload", "both"):
        overload_part(args, folder, m)


if __name__ == "__main__":
    main()
