"""The Triton varlen attention kernel against a float64 reference: on CPU through Triton's interpreter (float32 and
float16: bf16 is broken there), on a GPU when there is one (float16 and bfloat16: float32 runs SDPA on a GPU)."""

from __future__ import annotations

import math

import pytest
import torch
from gradients import assert_grads_close, grads

from qwen3_embed import ops
from qwen3_embed.kernels import attention
from qwen3_embed.kernels.attention import varlen_attention
from qwen3_embed.kernels.experimental import attention as experimental

pytestmark = pytest.mark.gpu
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float16, torch.bfloat16] if DEVICE == "cuda" else [torch.float32, torch.float16]
DTYPE = DTYPES[0]  # for the tests of one dtype
FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def pack(lengths, hq, hkv, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = sum(lengths)
    q, k, v = (torch.randn(t, h, d, generator=g).to(DEVICE, dtype) for h in (hq, hkv, hkv))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    return q, k, v, cu


def attention64(q, k, v, cu, scale):
    """Causal GQA attention in float64, one sequence at a time, with the softmax written out."""
    group = q.shape[1] // k.shape[1]
    out = torch.empty(q.shape, dtype=torch.float64)
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (x[a:b].double().cpu().transpose(0, 1) for x in (q, k, v))  # [H, L, D]
        ks, vs = ks.repeat_interleave(group, 0), vs.repeat_interleave(group, 0)
        s = qs @ ks.transpose(1, 2) * scale
        s = s.masked_fill(torch.ones(b - a, b - a, dtype=torch.bool).triu(1), -math.inf)
        out[a:b] = (s.softmax(-1) @ vs).transpose(0, 1)
    return out


def check(lengths, hq, hkv, d, dtype, variant=None):
    q, k, v, cu = pack(lengths, hq, hkv, d, dtype)
    scale = d**-0.5
    if variant is None:
        out = varlen_attention(q, k, v, cu, scale)
    else:
        out = experimental.varlen_attention(q, k, v, cu, scale, variant)
    exact = attention64(q, k, v, cu, scale)
    same_dtype = ops.varlen_attention(q, k, v, cu.tolist(), scale)
    assert out.shape == q.shape and out.dtype == dtype
    assert torch.isfinite(out).all(), "some outputs were not written"
    kernel_error = (out.double().cpu() - exact).abs().max().item()
    torch_error = (same_dtype.double().cpu() - exact).abs().max().item()
    assert kernel_error <= 2 * torch_error + FLOOR[dtype], f"kernel {kernel_error:.3g}, torch {torch_error:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [1, 2, 4, 8])
@pytest.mark.parametrize("d", [64, 128])
def test_gqa_ratios_and_head_dims(poisoned, dtype, group, d):
    check([1, 7, 33, 130], hq=2 * group, hkv=2, d=d, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "lengths",
    [[1], [1, 1, 1], [64], [65], [200], [3, 0, 5], [17, 1, 63, 129, 2, 31, 64, 5, 9, 40]],
    ids=["one-token", "ones", "one-block", "block+1", "long", "empty-sequence", "many"],
)
def test_sequence_lengths(poisoned, dtype, lengths):
    check(lengths, hq=4, hkv=2, d=64, dtype=dtype)


EVERY_CONFIG = [  # (architecture class, head dim, config): every launch setting any GPU would autotune among
    (name, d, config)
    for name, table in (("hopper", attention.HOPPER_CONFIGS), ("ampere", attention.AMPERE_CONFIGS))
    for d in attention.HEAD_DIMS
    for config in table[max(64, d)]
]


@pytest.mark.parametrize("group", [pytest.param(g, marks=[] if g == 3 else [pytest.mark.slow]) for g in range(1, 9)])
@pytest.mark.parametrize(
    "arch, d, config", EVERY_CONFIG, ids=[f"{a}-d{d}-{c['BLOCK_M']}x{c['BLOCK_N']}" for a, d, c in EVERY_CONFIG]
)
def test_every_config_of_every_architecture_at_every_group(poisoned, monkeypatch, arch, d, config, group):
    """Each config run alone (here, whatever GPU this is), for GQA groups 1-8: a block of BLOCK_M // group tokens
    that starts off a key tile needs keys past max(BLOCK_M, BLOCK_N) on the diagonal (groups 3, 5, 6, 7 with 128-key
    tiles), which only a sequence longer than a key tile shows (group 3 runs without `-m slow` too)."""
    monkeypatch.setattr(attention, "configs", lambda *args: [config])
    check([1, 7, 150], hq=group, hkv=1, d=d, dtype=DTYPE)


@pytest.mark.parametrize("block_m, block_n", [(128, 128), (128, 64), (128, 32), (64, 64), (64, 32), (64, 128)])
def test_the_diagonal_tiles_cover_every_block_of_every_group(block_m, block_n):
    """The keys a block needs on the diagonal, first % BLOCK_N + BLOCK_M // group, fit the diagonal tiles."""
    for diag_n in {block_n, min(32, block_n)}:
        covered = attention.diagonal_tiles(block_m, block_n, diag_n) * diag_n
        for group in range(1, block_m + 1):
            per_block = block_m // group
            assert all(first % block_n + per_block <= covered for first in range(0, 4 * block_n, per_block))
    assert attention.diagonal_tiles(128, 128, 128) == 2  # group 3: a block at 126 reaches key 167
    assert attention.diagonal_tiles(128, 64, 64) == 2  # as many as before: the Ampere configs were right


@pytest.mark.parametrize("variant", list(experimental.VARIANTS))
@pytest.mark.parametrize("group", [1, 3, 4])
def test_experimental_variants(poisoned, variant, group):
    """The speed variants against the same float64 reference: 32-key diagonal tiles, and K/V tiles through tensor
    descriptors, at the head dim and dtype they run at (on a GPU: sm_90 only, bf16, d=128; the interpreter runs them
    anywhere, in float32 and float16; on other GPUs they are skipped)."""
    d, dtype = (128, torch.bfloat16) if DEVICE == "cuda" else (64, torch.float16)
    if variant not in experimental.variants(attention.capability_of(torch.device(DEVICE)), d, dtype):
        pytest.skip(f"{variant} does not run on this GPU (sm_90 only)")
    check([1, 7, 33, 130, 200], hq=2 * group, hkv=2, d=d, dtype=dtype, variant=variant)


@pytest.mark.parametrize("d", [16, 32, 256])
def test_other_head_dims(poisoned, d):
    check([5, 40], hq=2, hkv=1, d=d, dtype=DTYPE)


def test_sequences_do_not_see_each_other():
    """Changing one sequence's keys leaves every other sequence's output bit for bit the same."""
    q, k, v, cu = pack([9, 20, 4], 4, 2, 64, DTYPE)
    before = varlen_attention(q, k, v, cu, 0.125)
    k2, v2 = k.clone(), v.clone()
    k2[9:29] += 1.0
    v2[9:29] -= 1.0
    after = varlen_attention(q, k2, v2, cu, 0.125)
    assert torch.equal(before[:9], after[:9]) and torch.equal(before[29:], after[29:])
    assert not torch.equal(before[9:29], after[9:29])


def test_empty_pack():
    q, k, v, cu = pack([], 4, 2, 64, DTYPE)
    assert varlen_attention(q, k, v, cu, 0.125).shape == (0, 4, 64)


def test_bad_inputs_are_refused():
    q, k, v, cu = pack([3, 5], 4, 2, 64, DTYPE)
    with pytest.raises(ValueError, match="dtype torch.int64; it must be torch.int32"):
        varlen_attention(q, k, v, cu.long(), 0.125)
    with pytest.raises(ValueError, match="runs from 1 to 9; it must run from 0 to 8"):
        varlen_attention(q, k, v, cu + 1, 0.125)
    with pytest.raises(ValueError, match="runs from 0 to 7; it must run from 0 to 8"):
        varlen_attention(q, k, v, torch.tensor([0, 3, 7], dtype=torch.int32, device=DEVICE), 0.125)
    with pytest.raises(ValueError, match=r"decreases at index 2 \(5 -> 3\)"):
        varlen_attention(q, k, v, torch.tensor([0, 5, 3, 8], dtype=torch.int32, device=DEVICE), 0.125)
    with pytest.raises(ValueError, match="3 query heads are not a multiple of 2"):
        varlen_attention(q[:, :3], k, v, cu, 0.125)
    with pytest.raises(ValueError, match="head_dim=48 is not supported"):
        varlen_attention(q[..., :48], k[..., :48], v[..., :48], cu, 0.125)
    with pytest.raises(ValueError, match="must share one of"):
        varlen_attention(q, k.double(), v, cu, 0.125)
    with pytest.raises(ValueError, match=r"must both be \[8, kv_heads, 64\]"):
        varlen_attention(q, k[:7], v[:7], cu, 0.125)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        varlen_attention(q, k.transpose(1, 2).contiguous().transpose(1, 2), v, cu, 0.125)


def test_the_work_table_covers_every_block_once_heaviest_first():
    lengths = [5, 0, 64, 65, 1, 200, 31]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    table = attention.work_table(cu, sum(lengths), 32)
    assert table.dtype == torch.int32 and table.shape == (attention.work_capacity(sum(lengths), len(lengths), 32), 3)
    used = table[table[:, 2] > 0].tolist()
    expected = sorted(
        (cu[b].item(), first, min(first + 32, n)) for b, n in enumerate(lengths) for first in range(0, n, 32)
    )
    assert sorted(map(tuple, used)) == expected
    assert table[:, 2].tolist() == sorted(table[:, 2].tolist(), reverse=True)  # by keys visited, descending
    assert not table[len(used) :].any()  # spare rows do nothing


@pytest.mark.parametrize("lengths", [[1] * 40, [33] * 7, [32, 32, 1], [100]])
def test_the_work_capacity_holds_any_pack(lengths):
    """The capacity bound a CUDA graph sizes its table by holds for packs that fill it: all ones, just past a block."""
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    blocks = sum(-(-n // 32) for n in lengths)
    assert blocks <= attention.work_capacity(sum(lengths), len(lengths), 32)
    assert (attention.work_table(cu, sum(lengths), 32)[:, 2] > 0).sum() == blocks


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)])
def test_configs_per_architecture(capability):
    """16-bit dtypes have configs on every GPU from sm_80, one BLOCK_M per list (the work table's granularity) and the
    same list for every GQA group (one binary serves them all); float32 has none: it goes to SDPA."""
    for d in (16, 64, 128, 256):
        for dtype in (torch.float16, torch.bfloat16):
            found = [attention.configs(d, g, dtype, capability) for g in (1, 2, 4, 8)]
            assert found[0] and all(f == found[0] for f in found)
            assert {c["BLOCK_M"] for c in found[0]} == {found[0][0]["BLOCK_M"]}
            assert all(set(c) == {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"} for c in found[0])
        assert attention.configs(d, 2, torch.float32, capability) == []
    assert attention.configs(128, 2, torch.bfloat16, (7, 5)) == []  # before sm_80: SDPA
    assert {c["BLOCK_N"] for c in attention.configs(128, 4, torch.bfloat16, (9, 0))} == {64, 128}


def test_the_interpreter_runs_exactly_one_config():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for d in (64, 128, 256):
            assert len(attention.configs(d, 4, dtype, None)) == 1


def test_experimental_variants_run_only_where_they_are_timed(monkeypatch):
    assert experimental.variants((8, 0), 128, torch.bfloat16) == []
    assert experimental.variants((9, 0), 64, torch.bfloat16) == []
    assert set(experimental.variants((9, 0), 128, torch.bfloat16)) == set(experimental.VARIANTS)
    monkeypatch.setattr(attention, "capability_of", lambda device: (8, 0))
    q, k, v, cu = pack([3], 2, 2, 64, torch.float16)
    with pytest.raises(ValueError, match="variant 'tma' does not run here; none do"):
        experimental.varlen_attention(q, k, v, cu, 0.125, "tma")
    with pytest.raises(ValueError, match="variant 'fast' is not one of diag32, tma"):
        experimental.varlen_attention(q, k, v, cu, 0.125, "fast")


def test_the_custom_op(poisoned):
    """torch.ops.qwen3_embed.varlen_attention (what torch.compile and CUDA graphs capture) against the reference, and
    torch.library.opcheck's schema and autograd-registration checks (its fake-tensor checks need a GPU: the
    interpreter reads the fake tensors' data; benchmarks/gpu_check.py runs them)."""
    q, k, v, cu = pack([5, 40, 1], 4, 2, 64, DTYPE)
    work = attention.work_for(q, k, cu, None)
    out = torch.ops.qwen3_embed.varlen_attention(q, k, v, work, 0.125)
    atol = 1e-5 if DTYPE == torch.float32 else 2e-3
    torch.testing.assert_close(out, ops.varlen_attention(q, k, v, cu.tolist(), 0.125), rtol=0, atol=atol)
    checks = torch.library.opcheck(torch.ops.qwen3_embed.varlen_attention.default, (q, k, v, work, 0.125),
                                   test_utils=("test_schema", "test_autograd_registration"))  # fmt: skip
    assert set(checks.values()) == {"SUCCESS"}


def test_each_launch_runs_on_its_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device: a model on cuda:1 must make cuda:1 current for each launch, or it
    launches on device 0 (an illegal address). The guard for a CUDA tensor, nothing for a CPU one; every launch of
    the attention kernel and the RMSNorm kernels goes through it (recorded here on CPU tensors)."""
    from types import SimpleNamespace

    from qwen3_embed import kernels
    from qwen3_embed.kernels import rmsnorm

    guard = kernels.on_device(SimpleNamespace(is_cuda=True, device=torch.device("cuda", 1)))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    seen = []
    for module in (attention, rmsnorm):
        monkeypatch.setattr(module, "on_device", lambda t: seen.append(t.device) or kernels.on_device(t))
    q, k, v, cu = pack([3, 9], 4, 2, 64, DTYPE)
    varlen_attention(q, k, v, cu, 0.125)
    rmsnorm.rms_norm(q, torch.ones(64, device=DEVICE, dtype=DTYPE), 1e-6)
    cos = torch.ones(12, 32, device=DEVICE, dtype=DTYPE)
    rmsnorm.qk_norm_rope(q, k, cos[0].repeat(2), cos[0].repeat(2), 1e-6, cos, cos)
    assert seen == [q.device] * 3


GPU_CALL_CHAIN = """
import torch
from triton.runtime.autotuner import Autotuner
launched = []
Autotuner.run = lambda self, *args, **kwargs: launched.append(kwargs["HEAD_DIM"])  # the launch itself, stubbed
from qwen3_embed.kernels import attention
from qwen3_embed.kernels.experimental import attention as experimental
attention.capability_of = lambda device: (9, 0)  # an H100's configs and variants
q, k, v = (torch.randn(371, h, 128).bfloat16() for h in (8, 2, 2))
cu = torch.tensor([0, 1, 8, 41, 171, 371], dtype=torch.int32)
attention.varlen_attention(q, k, v, cu, 128**-0.5)
for variant in experimental.variants((9, 0), 128, torch.bfloat16):
    experimental.varlen_attention(q, k, v, cu, 128**-0.5, variant)
print(len(launched))
"""


def test_the_gpu_call_chain_reaches_the_launch_for_the_kernel_and_every_variant():
    """What a GPU runs, down to the launch (stubbed), with compiled kernels rather than the interpreter, which hands
    torch's wrappers its functions unwrapped: the variants launched through torch's tracing wrapper failed there
    (it refuses the TMA variant's autotune pre-hook), and only on a GPU."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", GPU_CALL_CHAIN], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == str(1 + len(experimental.variants((9, 0), 128, torch.bfloat16)))


# ----------------------------------------------------------------------------------------------------------------
# Backward: the gradients through the forward that saves the log-sum-exp (`varlen_attention_lse`, registered with
# torch.library.register_autograd), against float64 autograd of `attention64` (`gradients.assert_grads_close` states
# the tolerance: twice the same-dtype SDPA autograd error plus a floor relative to the largest gradient).


def check_backward(lengths, hq, hkv, d, dtype):
    q, k, v, cu = pack(lengths, hq, hkv, d, dtype)
    do = pack(lengths, hq, hq, d, dtype, seed=1)[0]
    scale = d**-0.5
    assert_grads_close(
        grads(lambda q, k, v: varlen_attention(q, k, v, cu, scale), [q, k, v], [do]),
        grads(lambda q, k, v: ops.varlen_attention(q, k, v, cu.tolist(), scale), [q, k, v], [do]),
        grads(lambda q, k, v: attention64(q, k, v, cu, scale), [q, k, v], [do], torch.float64),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "group", [pytest.param(g, marks=[] if g in (1, 3, 8) else [pytest.mark.slow]) for g in range(1, 9)]
)
def test_backward_gqa_groups(poisoned, dtype, group):
    """dQ, dK, dV for GQA groups 1-8 (1, 3 and 8 without `-m slow`), with sequences over several key blocks."""
    check_backward([1, 7, 33, 130], hq=2 * group, hkv=2, d=64, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "lengths",
    [[1], [1, 1, 1], [3, 0, 5], pytest.param([65], marks=pytest.mark.slow),
     pytest.param([17, 1, 63, 129, 2, 31, 64, 5, 9, 40], marks=pytest.mark.slow)],
    ids=["one-token", "ones", "empty-sequence", "block+1", "many"],
)  # fmt: skip
def test_backward_sequence_lengths(poisoned, dtype, lengths):
    check_backward(lengths, hq=4, hkv=2, d=64, dtype=dtype)


@pytest.mark.parametrize(
    "d", [16, pytest.param(128, marks=pytest.mark.slow), pytest.param(256, marks=pytest.mark.slow)]
)
def test_backward_other_head_dims(poisoned, d):
    check_backward([5, 40], hq=2, hkv=1, d=d, dtype=DTYPE)


@pytest.mark.slow
@pytest.mark.parametrize("d", [64, 128, 256])
def test_every_backward_config(poisoned, d):
    """Each head dim's backward settings (the GPUs' own) at group 3: tiles of BLOCK_M // 3 tokens that start off a
    key block."""
    check_backward([1, 7, 150], hq=3, hkv=1, d=d, dtype=DTYPE)


def test_backward_of_an_empty_pack():
    q, k, v, cu = pack([], 4, 2, 64, DTYPE)
    dq, dk, dv = grads(lambda q, k, v: varlen_attention(q, k, v, cu, 0.125), [q, k, v], [q])
    assert dq.shape == (0, 4, 64) and dk.shape == dv.shape == (0, 2, 64)


def test_only_a_forward_that_needs_a_gradient_saves_the_log_sum_exp(monkeypatch):
    """Inference launches the kernel without the log-sum-exp output (its cost unchanged); with a gradient to take,
    the forward writes it: log2-sum-exp of the scaled scores of each (token, head), checked against float64."""
    seen = []
    launch = attention.launch
    monkeypatch.setattr(attention, "launch", lambda *a, **k: seen.append(k.get("lse")) or launch(*a, **k))
    q, k, v, cu = pack([3, 20], 4, 2, 64, DTYPE)
    with torch.no_grad():
        varlen_attention(q.requires_grad_(), k, v, cu, 0.125)
    varlen_attention(q.detach(), k, v, cu, 0.125)
    assert seen == [None, None]
    out = varlen_attention(q, k, v, cu, 0.125)
    lse = seen[-1]
    assert out.requires_grad and lse is not None and lse.shape == (23, 4) and lse.dtype == torch.float32
    scores = torch.einsum("thd,shd->hts", q.double(), k.double().repeat_interleave(2, 1)) * 0.125
    mask = torch.ones(23, 23, dtype=torch.bool).tril()
    mask[3:, :3] = mask[:3, 3:] = False
    exact = scores.masked_fill(~mask, -math.inf).logsumexp(-1).T / math.log(2)
    torch.testing.assert_close(lse.double(), exact, rtol=0, atol=1e-5 if DTYPE == torch.float32 else 2e-3)


def test_the_backward_custom_ops():
    """The training forward's autograd registration and the backward op's schema, as opcheck sees them."""
    q, k, v, cu = pack([5, 40, 1], 4, 2, 64, DTYPE)
    work = attention.work_for(q, k, cu, None)
    args = (q.requires_grad_(), k, v, cu, work, 0.125)
    checks = torch.library.opcheck(torch.ops.qwen3_embed.varlen_attention_lse.default, args,
                                   test_utils=("test_schema", "test_autograd_registration"))  # fmt: skip
    assert set(checks.values()) == {"SUCCESS"}
    out, lse = torch.ops.qwen3_embed.varlen_attention_lse(*args)
    args = (torch.randn_like(out), q.detach(), k, v, out.detach(), lse, cu, 0.125)
    checks = torch.library.opcheck(torch.ops.qwen3_embed.varlen_attention_backward.default, args,
                                   test_utils=("test_schema",))  # fmt: skip
    assert set(checks.values()) == {"SUCCESS"}


def test_the_key_table_covers_every_key_block_once_most_queries_first():
    lengths = [5, 0, 64, 65, 1, 200, 31]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    table = attention.key_table(cu, sum(lengths), 32)
    used = table[table[:, 2] > 0].tolist()
    expected = sorted(
        (cu[b].item(), first, min(first + 32, n), n) for b, n in enumerate(lengths) for first in range(0, n, 32)
    )
    assert sorted(map(tuple, used)) == expected
    queries = (table[:, 3] - table[:, 1]).tolist()
    assert queries == sorted(queries, reverse=True) and not table[len(used) :].any()


def test_a_kernel_model_has_the_reference_models_gradients():
    """Autograd through a whole (tiny, random) model on the kernel path, every weight's gradient against the reference
    path's: the three backward kernels in place, in float32 (the training path a GPU runs in 16-bit)."""
    import copy
    from dataclasses import replace

    from qwen3_embed import Qwen3Config
    from qwen3_embed.backends import kernels
    from qwen3_embed.model import Qwen3Model

    config = replace(Qwen3Config.preset("0.6B"), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=100)  # fmt: skip
    reference = Qwen3Model(config)
    for p in reference.parameters():  # norm weights away from 1, so their gradients are seen through
        torch.nn.init.normal_(p, 1.0 if p.dim() == 1 else 0.0, 0.3 if p.dim() == 1 else 0.1)
    fast = kernels.use_kernels(copy.deepcopy(reference))
    lengths = [1, 9, 30]
    ids = torch.randint(0, 100, (sum(lengths),), generator=torch.Generator().manual_seed(0))
    cu = torch.tensor([0, 1, 10, 40], dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in lengths])
    for model in (reference, fast):
        (model(ids, cu, positions) * torch.linspace(-1, 1, 64)).sum().backward()
    for (name, a), b in zip(fast.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)
