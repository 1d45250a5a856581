"""Search speed and recall against FAISS, like with like, and the recall@10 of quantized search with rescoring.

Speed, in one process on the same vectors and the same threads for every system: queries/s of
qwen3_embed.search.Index over N x 1024 unit vectors (normal draws, normalized) held in memory, each beside the FAISS
index that does the same kind of search (its peer; "vs FAISS" is against the faster of a kind's FAISS rows):
- exact: ours over float16 vectors; FAISS IndexFlatIP over float32 copies of the same values, with its default BLAS
  path for batches of 20 queries or more and with it off.
- int8 against int8: ours, an int8 first stage rescoring 4 x top_k candidates against the int8 vectors; FAISS
  IndexScalarQuantizer (QT_8bit, trained on the vectors our ranges are calibrated on), which scores the float query
  against the decoded 8-bit values.
- int8 rescored against the float vectors: ours over the float16 vectors at precision int8 (an int8 copy in memory),
  rescoring 4 x top_k candidates against float16; FAISS IndexRefine of that IndexScalarQuantizer over the
  IndexFlatIP's float32 vectors (IndexRefineFlat's search) with k_factor 4.
- binary: ours over packed bits, rescoring 4 x top_k against the bits as 0/1 (as sentence-transformers rescores),
  and without rescoring (x1); FAISS IndexBinaryFlat over the same bits (Hamming distance, no rescoring).
Top 10, batches of 1 and of --queries queries; each the best of --repeats rounds after a warm-up, the systems taking
turns within each round. Recall@10 of each against exact search (ours over float16), on the --queries batch: these
vectors are random, so the true top 10 barely stand out; the recall table below is on embedded texts. Memory: the
bytes each index holds, and the process's peak resident memory during its searches above what it held before (VmHWM
reset through /proc/self/clear_refs, after malloc_trim).

Recall@10 against exact float32 search, on vectors embedded from texts by a random-weight checkpoint (the 0.6B layer
shapes at reduced depth, the real tokenizer; queries with the card's instruction), for our ways and FAISS's (the
same kinds as above): real weights will give other numbers. Also recorded: how far the true neighbours stand out
(the mean best cosine of a query, and of two documents).

FAISS is a dependency of this script only (pip install faiss-cpu).

    python benchmarks/search.py                    # 1M vectors: the indexes hold 8.2 GiB (4.7 of it FAISS's)
    python benchmarks/search.py --rows 250000 --threads 1   # a quick check (the README's figures)
    python benchmarks/search.py --device cuda --rows 10000000 --no-faiss   # on a GPU: 20 GB of float16 on it
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import (
    ROOT,
    SHARED_TOKENIZER,
    log_uniform_lengths,
    machine,
    markdown_table,
    matmul_gflops,
    memory,
    sync,
    texts_of_token_lengths,
    write_checkpoint,
    write_results,
)
from qwen3_embed import Embedder, Qwen3Config
from qwen3_embed.search import Index, quantization_ranges, quantize

CHUNK = 65536  # rows generated and quantized at a time


def peak_during(fn) -> int:
    """Bytes of resident memory above the current level at the peak of fn() (freed heap memory is first handed back
    to the system, so that fn's allocations show)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current VmRSS
    before = memory("VmRSS")
    fn()
    return memory("VmHWM") - before


def best_seconds(calls: list, device: str, repeats: int) -> list[float]:
    """The best time of each call over `repeats` rounds after a warm-up, the calls taking turns within each round
    (on a shared machine, a slow spell then hits every system alike)."""
    best = [float("inf")] * len(calls)
    for round in range(repeats + 1):
        for i, call in enumerate(calls):
            sync(device)
            start = time.perf_counter()
            call()
            sync(device)
            if round:
                best[i] = min(best[i], time.perf_counter() - start)
    return best


def faiss_indexes(dim: int):
    """FAISS's peers, empty: IndexFlatIP, IndexScalarQuantizer (8-bit, inner product), IndexBinaryFlat."""
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())  # the same threads as torch
    quantizer = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexFlatIP(dim), quantizer, faiss.IndexBinaryFlat(dim)


def faiss_systems(flat, quantizer, binary, rows: int, dim: int) -> list[tuple]:
    """FAISS's rows of the speed table: (system, kind, peer group, bytes held, search(queries, their bits))."""
    import faiss

    refine = faiss.IndexRefine(quantizer, flat)  # IndexRefineFlat's search, over the IndexFlatIP's float32 vectors
    refine.k_factor = 4

    def flat_search(blas_from: int):
        def search(q, _):
            faiss.cvar.distance_compute_blas_threshold = blas_from  # batches this large go through BLAS
            return flat.search(q.numpy(), 10)

        return search

    return [
        ("FAISS IndexFlatIP", "float32 exact", "exact", rows * dim * 4, flat_search(20)),  # FAISS's default
        ("FAISS IndexFlatIP", "float32 exact, BLAS path off", "exact", rows * dim * 4, flat_search(1 << 30)),
        ("FAISS IndexScalarQuantizer", "int8 (QT_8bit), no rescoring", "int8", rows * dim,
         lambda q, _: quantizer.search(q.numpy(), 10)),
        ("FAISS IndexRefineFlat", "int8 (QT_8bit), rescored x4 against float32", "int8 + float", rows * dim * 5,
         lambda q, _, refine=refine: refine.search(q.numpy(), 10)),
        ("FAISS IndexBinaryFlat", "binary, no rescoring", "binary", rows * dim // 8,
         lambda _, b: binary.search(b, 10)),
    ]  # fmt: skip


def positions(found) -> np.ndarray:
    """The positions a search returned: from our Hits, or FAISS's (distances, labels)."""
    return np.asarray(found[1] if isinstance(found, tuple) else found.positions.cpu())


def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), exact.tolist())]))


def recalls(systems: list[tuple], queries: torch.Tensor, device: str) -> list[float]:
    """Each system's recall@10 against the first (exact) one's results, for a batch of queries."""
    qbits = quantize(queries, "ubinary")
    queries = queries.to(device) if device != "cpu" else queries
    found = [positions(search(queries, qbits)) for *_, search in systems]
    return [recall_at_10(f, found[0]) for f in found]


def speed(args, device: str) -> tuple[list[dict], list[str]]:
    g = torch.Generator().manual_seed(0)
    n, dim = args.rows, args.dim
    vectors = torch.empty(n, dim, dtype=torch.float16, device=device)
    codes = np.empty((n, dim), np.int8)
    bits = np.empty((n, dim // 8), np.uint8)
    ranges = None
    flat = quantizer = binary = None
    if not args.no_faiss:
        flat, quantizer, binary = faiss_indexes(dim)
    for s in range(0, n, CHUNK):
        chunk = F.normalize(torch.randn(min(CHUNK, n - s), dim, generator=g), dim=-1)
        if ranges is None:  # calibrated on the first chunk, as FAISS's quantizer is trained
            ranges = quantization_ranges(chunk)
            if quantizer is not None:
                quantizer.train(chunk.half().float().numpy())
        vectors[s : s + len(chunk)] = chunk.half().to(device)
        codes[s : s + len(chunk)] = quantize(chunk, "int8", ranges=ranges)
        bits[s : s + len(chunk)] = quantize(chunk, "ubinary")
        if flat is not None:
            flat.add(chunk.half().float().numpy())  # the float16 values, in float32
            quantizer.add(chunk.half().float().numpy())
            binary.add(bits[s : s + len(chunk)])
    on_device = [torch.from_numpy(codes).to(device), torch.from_numpy(bits).to(device)]
    ours = [
        Index(vectors),
        Index(on_device[0], precision="int8", ranges=ranges),
        Index(vectors, precision="int8", ranges=ranges),
        Index(on_device[1], precision="ubinary"),
    ]
    systems = [  # (system, kind, peer group, bytes held, search(queries, their bits))
        ("qwen3-embed", "float16 exact", "exact", vectors.numel() * 2, lambda q, _: ours[0].search(q, 10)),
        ("qwen3-embed", "int8, rescored x4 against int8", "int8", codes.size, lambda q, _: ours[1].search(q, 10)),
        ("qwen3-embed", "int8 copy, rescored x4 against float16", "int8 + float", codes.size + vectors.numel() * 2,
         lambda q, _: ours[2].search(q, 10)),
        ("qwen3-embed", "binary, rescored x4 against its bits", "binary", bits.size,
         lambda q, _: ours[3].search(q, 10)),
        ("qwen3-embed", "binary, no rescoring (x1)", "binary", bits.size,
         lambda q, _: ours[3].search(q, 10, rescore_multiplier=1)),
    ]  # fmt: skip
    if flat is not None:
        systems += faiss_systems(flat, quantizer, binary, n, dim)
    recall = recalls(systems, F.normalize(torch.randn(args.queries, dim, generator=g), dim=-1), device)
    results, rows = [], []
    for batch in (1, args.queries):
        queries = F.normalize(torch.randn(batch, dim, generator=g), dim=-1)
        qbits = quantize(queries, "ubinary")
        queries = queries.to(device) if device != "cpu" else queries
        calls = [lambda search=search, q=queries, b=qbits: search(q, b) for *_, search in systems]
        seconds = best_seconds(calls, device, args.repeats)
        batch_results = []
        for (system, kind, group, held, _), call, t, found in zip(systems, calls, seconds, recall):
            peak = peak_during(call) if device == "cpu" else None
            batch_results.append({"system": system, "kind": kind, "peer_group": group, "rows": n, "batch": batch,
                                  "queries_per_s": batch / t, "recall_at_10": found, "index_bytes": held,
                                  "search_peak_bytes": peak})  # fmt: skip
        for r in batch_results:
            peers = [p["queries_per_s"] for p in batch_results if "FAISS" in p["system"]
                     and p["peer_group"] == r["peer_group"]]  # fmt: skip
            versus = f"{r['queries_per_s'] / max(peers):.2f}x" if peers and "FAISS" not in r["system"] else "-"
            peak = f"{r['search_peak_bytes'] / 2**20:.0f} MiB" if r["search_peak_bytes"] is not None else "-"
            rows.append(f"| {r['system']} | {r['kind']} | {batch} | {r['queries_per_s']:.1f} | {versus} | "
                        f"{r['recall_at_10']:.3f} | {r['index_bytes'] / 2**20:.0f} MiB | {peak} |")  # fmt: skip
            print(rows[-1], flush=True)
        results += batch_results
    return results, rows


def recall(args) -> tuple[dict, list[str]]:
    config = replace(Qwen3Config.preset("0.6B"), num_hidden_layers=args.layers)
    folder = write_checkpoint(ROOT / "local" / f"bench-embed-0.6B-{args.layers}", config, args.tokenizer)
    cache = ROOT / "local" / f"bench-search-{args.layers}-{args.recall_docs}-{args.recall_queries}.npz"
    if cache.exists():
        stored = np.load(cache)
        documents, queries = torch.from_numpy(stored["documents"]), torch.from_numpy(stored["queries"])
    else:
        embedder = Embedder.from_pretrained(folder, device=args.device)
        texts = texts_of_token_lengths(args.tokenizer, log_uniform_lengths(args.recall_docs, 8, 128, seed=1), seed=1)
        asked = texts_of_token_lengths(args.tokenizer, log_uniform_lengths(args.recall_queries, 4, 24, seed=2), seed=2)
        documents = embedder.encode_document(texts, show_progress=True)
        queries = embedder.encode_query(asked, show_progress=True)
        np.savez(cache, documents=documents.numpy(), queries=queries.numpy())
    exact = Index(documents).search(queries, 10).positions

    def recall_of(index: Index, multiplier: int) -> float:
        found = index.search(queries, 10, rescore_multiplier=None if index.exact else multiplier).positions
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), exact.tolist())]))

    calibration = documents[:1000]
    ranges = quantization_ranges(calibration)
    ways = {
        "float16 exact": (Index(documents.half()), [1]),
        "int8 stored, rescored against int8": (
            Index(quantize(documents, "int8", ranges=ranges), precision="int8", ranges=ranges), [1, 4, 10]),
        "int8 copy, rescored against float32": (Index(documents, precision="int8", ranges=ranges), [1, 4, 10]),
        "binary stored, rescored against its bits": (
            Index(quantize(documents, "ubinary"), precision="ubinary"), [1, 4, 10]),
        "binary copy, rescored against float32": (Index(documents, precision="binary"), [1, 4, 10, 40, 100]),
    }  # fmt: skip
    out, rows = {}, []
    for way, (index, multipliers) in ways.items():
        for m in multipliers:
            out[f"{way}, x{m}"] = value = recall_of(index, m)
            rows.append(f"| {way} | {m if 'exact' not in way else '-'} | {value:.4f} |")
            print(rows[-1], flush=True)
    # For comparison, sentence-transformers' int8 first stage: the query quantized with the corpus's ranges.
    codes = quantize(documents, "int8", ranges=ranges).astype(np.int64)
    first = quantize(queries, "int8", ranges=ranges).astype(np.int64) @ codes.T
    dequantized = torch.from_numpy((codes + 128) * ((ranges[1] - ranges[0]) / 255) + ranges[0]).float()
    for m in (1, 4, 10):
        candidates = torch.from_numpy(np.argsort(-first, axis=1, kind="stable")[:, : 10 * m])
        rescored = torch.einsum("qd,qcd->qc", queries, dequantized[candidates])
        found = candidates.gather(1, rescored.topk(10, dim=1).indices)
        value = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), exact.tolist())]))
        out[f"int8 stored, query quantized as sentence-transformers does, x{m}"] = value
        rows.append(f"| int8 stored, query quantized as sentence-transformers does | {m} | {value:.4f} |")
        print(rows[-1], flush=True)
    if not args.no_faiss:
        rows += faiss_recall(documents, queries, calibration, exact.numpy(), out)
    cosines = {
        "query_best_mean": (queries @ documents.T).max(1).values.mean().item(),
        "document_best_other_mean": (documents @ documents.T).fill_diagonal_(-1).max(1).values.mean().item(),
    }
    return {"documents": len(documents), "queries": len(queries), "layers": args.layers, "recall@10": out,
            "neighbour_cosines": cosines}, rows  # fmt: skip


def faiss_recall(documents: torch.Tensor, queries: torch.Tensor, calibration: torch.Tensor, exact: np.ndarray,
                 out: dict) -> list[str]:  # fmt: skip
    """The recall@10 of FAISS's peers on the embedded vectors (recorded in `out`) and their table rows."""
    import faiss

    flat, quantizer, binary = faiss_indexes(documents.shape[1])
    quantizer.train(calibration.numpy())  # the vectors our int8 ranges come from
    for index in (flat, quantizer):
        index.add(documents.numpy())
    binary.add(quantize(documents, "ubinary"))
    refine = faiss.IndexRefine(quantizer, flat)
    ways = [
        ("FAISS IndexScalarQuantizer (QT_8bit), no rescoring", "-", lambda: quantizer.search(queries.numpy(), 10)),
        ("FAISS IndexBinaryFlat, no rescoring", "-", lambda: binary.search(quantize(queries, "ubinary"), 10)),
    ]
    for m in (1, 4, 10):
        params = faiss.IndexRefineSearchParameters(k_factor=m)
        ways.append(("FAISS IndexRefineFlat (QT_8bit, rescored against float32)", m,
                     lambda params=params: refine.search(queries.numpy(), 10, params=params)))  # fmt: skip
    rows = []
    for way, m, search in ways:
        out[f"{way}, x{m}"] = value = recall_at_10(positions(search()), exact)
        rows.append(f"| {way} | {m} | {value:.4f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="vectors searched for speed")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--queries", type=int, default=64, help="the larger query batch")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (the best counts)")
    p.add_argument("--threads", type=int, help="CPU threads of torch and FAISS alike (default: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda: vectors held on the GPU (FAISS stays off)")
    p.add_argument("--no-faiss", action="store_true", help="skip FAISS (it runs on the CPU only here)")
    p.add_argument("--recall-docs", type=int, default=5000, help="documents embedded for recall")
    p.add_argument("--recall-queries", type=int, default=200)
    p.add_argument("--layers", type=int, default=2, help="depth of the random 0.6B-shaped checkpoint")
    p.add_argument("--tokenizer", type=Path, default=SHARED_TOKENIZER)
    args = p.parse_args()
    if args.device != "cpu":
        args.no_faiss = True
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        import faiss
    except ImportError:
        if not args.no_faiss:
            sys.exit("FAISS is not installed: pip install faiss-cpu (for this benchmark only), or pass --no-faiss")

    m = machine()
    results = {"machine": m, "rows": args.rows, "dim": args.dim, "device": args.device,
               "threads": torch.get_num_threads()}  # fmt: skip
    if not args.no_faiss:
        results["faiss"] = faiss.__version__
    results["float32_matmul_gflops"] = peak = matmul_gflops(torch.float32, args.device)
    results["speed"], speed_rows = speed(args, args.device)
    results["recall"], recall_rows = recall(args)
    cosines = results["recall"]["neighbour_cosines"]
    where = m.get("gpu", m["cpu"]) if args.device != "cpu" else f"{m['cpu']} ({torch.get_num_threads()} threads)"
    where += f", float32 matmul peak {peak:.0f} GFLOP/s"
    table = markdown_table(
        f"Search over {args.rows:,} x {args.dim} unit vectors on {where}, top 10:",
        ["system", "vectors", "queries per call", "queries/s", "vs FAISS", "recall@10", "index holds", "search peak"],
        speed_rows,
    ) + "\n\n" + markdown_table(
        f"Recall@10 against exact float32 search: {results['recall']['documents']:,} documents and "
        f"{results['recall']['queries']} queries embedded by a random-weight checkpoint (0.6B layer shapes, "
        f"{args.layers} layers); real weights will give other numbers:",
        ["search", "rescore multiplier", "recall@10"],
        recall_rows,
    ) + (f"\n\nHow far the true neighbours stand out: a query's best cosine is {cosines['query_best_mean']:.3f} on "
         f"average, a document's best other document {cosines['document_best_other_mean']:.3f}.")  # fmt: skip
    print("\n" + table)
    write_results(f"search-{args.device.split(':')[0]}-{torch.get_num_threads()}threads", results, table)


if __name__ == "__main__":
    main()
