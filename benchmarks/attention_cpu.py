"""Attention of packed batches on the CPU: one SDPA call per sequence (the torch backend) against one call per
batch, in the three ways that make one: sequences of near-equal length right-padded into one batched call (causal
attention keeps the padding out of every real row), flex_attention with a document mask (compiled, the mask built
once per batch), and one SDPA call with a dense block-diagonal causal mask.

The batches are what the pipeline makes of texts of mixed lengths: sorted longest first and packed up to 2048
tokens; the heads are the 0.6B model's (16 query heads, 8 key/value heads of 128). Each way's output is checked
against the per-sequence one; times are the best of several calls, summed over the batches.

    python benchmarks/attention_cpu.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from common import log_uniform_lengths, machine, markdown_table, write_results
from qwen3_embed import ops
from qwen3_embed.tokenize import batches

HEADS, KV_HEADS, HEAD_DIM = 16, 8, 128


def per_sequence(q, k, v, bounds):
    return ops.varlen_attention(q, k, v, bounds, HEAD_DIM**-0.5)


def padded_groups(bounds, max_padding: float = 0.25):
    """A call per group of near-equal lengths (padded work at most 1 + max_padding times the real), right-padded."""
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    groups, members = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        real = sum(lengths[j] ** 2 for j in members) + lengths[i] ** 2
        if members and (len(members) + 1) * lengths[members[0]] ** 2 > (1 + max_padding) * real:
            groups.append(members)
            members = []
        members.append(i)
    groups.append(members)
    plans = []
    for members in groups:
        longest = lengths[members[0]]
        tokens = torch.cat([torch.arange(bounds[i], bounds[i + 1]) for i in members])
        rows = torch.cat([torch.arange(lengths[i]) + slot * longest for slot, i in enumerate(members)])
        plans.append((tokens, rows, len(members), longest))

    def run(q, k, v, _bounds):
        out = torch.empty_like(q)
        for tokens, rows, count, longest in plans:
            padded = (pad(t, tokens, rows, count, longest) for t in (q, k, v))
            o = F.scaled_dot_product_attention(*padded, is_causal=True, enable_gqa=True)
            out[tokens] = o.transpose(1, 2).reshape(-1, HEADS, HEAD_DIM)[rows]
        return out

    return run


def pad(t: torch.Tensor, tokens: torch.Tensor, rows: torch.Tensor, count: int, longest: int) -> torch.Tensor:
    """Rows `tokens` of t [T, H, D] into `rows` of zeros [count * longest, H, D], as [count, H, longest, D]."""
    p = t.new_zeros(count * longest, *t.shape[1:])
    p[rows] = t[tokens]
    return p.view(count, longest, *t.shape[1:]).transpose(1, 2)


def document_mask(bounds):
    t = bounds[-1]
    sequence = torch.repeat_interleave(torch.arange(len(bounds) - 1), torch.tensor(bounds).diff())
    return sequence, torch.arange(t)


torch._dynamo.config.recompile_limit = 256  # a compile per batch shape, not eager flex_attention past the 8th
COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)


def flex(bounds):
    sequence, _ = document_mask(bounds)
    t = bounds[-1]
    mask = create_block_mask(lambda b, h, i, j: (sequence[i] == sequence[j]) & (i >= j), 1, 1, t, t, device="cpu")

    def run(q, k, v, _bounds):
        qs, ks, vs = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        return COMPILED_FLEX(qs, ks, vs, block_mask=mask, enable_gqa=True)[0].transpose(0, 1)

    return run


def one_masked_call(bounds):
    sequence, position = document_mask(bounds)
    mask = (sequence[:, None] == sequence[None, :]) & (position[:, None] >= position[None, :])

    def run(q, k, v, _bounds):
        qs, ks, vs = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        return F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=True)[0].transpose(0, 1)

    return run


WAYS = {
    "one call per sequence (torch backend)": lambda bounds: per_sequence,
    "padded groups of near-equal lengths": padded_groups,
    "flex_attention, document mask (compiled)": flex,
    "one call, dense block-diagonal mask": one_masked_call,
}


def best_seconds(fn, args: tuple, repeats: int) -> float:
    fn(*args)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", type=int, default=256)
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--name", default="attention-cpu")
    args = p.parse_args()
    lengths = log_uniform_lengths(args.texts, 8, 1024)
    packed = [b.cu_seqlens.tolist() for b in batches([[0] * n for n in lengths], args.batch_tokens)]
    flops = sum(4 * n * (n + 1) / 2 * HEAD_DIM * HEADS for n in lengths)
    results, rows = {"machine": machine(), "lengths": lengths, "runs": []}, []
    for dtype in (torch.float32, torch.bfloat16):
        seconds = dict.fromkeys(WAYS, 0.0)
        worst = dict.fromkeys(WAYS, 0.0)
        for bounds in packed:
            g = torch.Generator().manual_seed(len(bounds))
            q, k, v = (torch.randn(bounds[-1], h, HEAD_DIM, generator=g).to(dtype) for h in (HEADS, KV_HEADS, KV_HEADS))
            reference = per_sequence(q, k, v, bounds)
            for way, make in WAYS.items():
                run = make(bounds)  # what is made once per batch (the masks, the groups) is not timed
                worst[way] = max(worst[way], (run(q, k, v, bounds).float() - reference.float()).abs().max().item())
                seconds[way] += best_seconds(run, (q, k, v, bounds), args.repeats)
        base = seconds["one call per sequence (torch backend)"]
        for way in WAYS:
            run = {"dtype": str(dtype), "way": way, "seconds": seconds[way], "gflops": flops / seconds[way] / 1e9,
                   "vs_per_sequence": base / seconds[way], "max_abs_diff": worst[way]}  # fmt: skip
            results["runs"].append(run)
            rows.append(f"| {str(dtype).removeprefix('torch.')} | {way} | {seconds[way] * 1e3:.0f} | "
                        f"{run['gflops']:.0f} | {run['vs_per_sequence']:.2f}x | {worst[way]:.1e} |")  # fmt: skip
            print(rows[-1], flush=True)
    m = results["machine"]
    table = markdown_table(
        f"{args.texts} texts of 8-1024 tokens ({sum(lengths)} tokens) packed by the pipeline into {len(packed)} "
        f"batches of at most {args.batch_tokens} tokens; 16 query and 8 key/value heads of 128; on {m['cpu']}, "
        f"{m['torch_threads']} threads, torch {m['torch']}. Time is the sum over the batches of each one's best of "
        f"{args.repeats} calls; GFLOP/s count the causal work.",
        ["dtype", "attention of a packed batch", "ms", "GFLOP/s", "speed vs one call per sequence", "max abs diff"],
        rows,
    )
    print("\n" + table)
    write_results(args.name, results, table)


if __name__ == "__main__":
    main()
