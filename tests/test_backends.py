"""The backends a loaded model is put through: the choice (once per model), the CPU's packed weights (fast, and
still an nn.Module: conversions work, what cannot work is refused with the fix, never silently wrong), the Triton
kernels in place of the references, compiled layers and CUDA-graph buckets."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from checkpoints import REPO, texts_of_lengths
from qwen3_embed import Embedder, backends, ops
from qwen3_embed.backends import compiled, cpu
from qwen3_embed.tokenize import pack

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def packed_layers(model: nn.Module) -> list[cpu.PackedLinear]:
    return [m for m in model.modules() if isinstance(m, cpu.PackedLinear)]


def test_the_backend_is_chosen_once_at_load(monkeypatch):
    cuda, cpu_device = torch.device("cuda"), torch.device("cpu")
    assert backends.choose(cpu_device, "torch") == "torch"
    assert backends.choose(cpu_device) == "torch"
    with pytest.raises(ValueError, match="backend 'cuda' is not one of auto, torch, triton"):
        backends.choose(cpu_device, "cuda")
    monkeypatch.setenv("QWEN3_EMBED_BACKEND", "torch")
    assert backends.choose(cuda) == "torch"
    monkeypatch.setenv("QWEN3_EMBED_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="QWEN3_EMBED_BACKEND=triton asks for the Triton kernels, which run on CUDA"):
        backends.choose(cpu_device)
    with pytest.raises(ValueError, match="backend='triton' asks for"):
        backends.choose(cpu_device, "triton")
    monkeypatch.delenv("QWEN3_EMBED_BACKEND")
    assert backends.choose(cuda) == "triton"


def test_the_triton_backend_on_a_cpu_is_a_setup_error_that_says_what_to_set(tiny):
    """In a process of its own, as a user meets it: an error saying what to set, not a bug to report."""
    env = {**os.environ, "QWEN3_EMBED_BACKEND": "triton", "TRITON_INTERPRET": "0", "CUDA_VISIBLE_DEVICES": ""}
    argv = ["similarity", "--model", str(tiny[0]), "--query", "q", "--document", "d"]
    done = subprocess.run([sys.executable, "-m", "qwen3_embed.cli", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 1 and "looks like a bug" not in done.stderr
    assert done.stderr.startswith("qwen3-embed: error: QWEN3_EMBED_BACKEND=triton asks for the Triton kernels, "
                                  "which run on CUDA, for a model on the cpu: set TRITON_INTERPRET=1")  # fmt: skip


def test_a_cpu_model_is_packed_and_gives_the_plain_models_vectors(tiny, embedder):
    """A CPU model's projections hold oneDNN-packed weights (faster on the CPU); unpacked, it gives the same vectors
    within float32 rounding, and packs back."""
    layers = packed_layers(embedder.model)
    assert len(layers) == 4 * embedder.config.num_hidden_layers and all(m.packed_weight.is_mkldnn for m in layers)
    texts = texts_of_lengths(7, seed=2, max_words=90)
    with_packed = embedder.encode(texts)
    plain = Embedder.from_pretrained(tiny[0], device="cpu")
    cpu.unpack(plain.model)
    assert not packed_layers(plain.model) and all(type(m.o_proj) is nn.Linear for m in plain.model.modules()
                                                   if hasattr(m, "o_proj"))  # fmt: skip
    torch.testing.assert_close(plain.encode(texts), with_packed, rtol=0, atol=1e-5)
    cpu.pack(plain.model)
    torch.testing.assert_close(plain.encode(texts), with_packed, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_linear_pads_the_rows_oneDNN_sees_and_gives_F_linear(monkeypatch, dtype):
    """oneDNN keeps a kernel per row count: a packed layer hands it a few row counts only (memory stays bounded), at
    most 1/8 more rows than asked, and returns the caller's rows, equal to F.linear's."""
    seen = []
    pointwise = torch.ops.mkldnn._linear_pointwise
    record = lambda x, *args: seen.append(x.shape[0]) or pointwise(x, *args)  # noqa: E731
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", record)
    weight = torch.randn(48, 40).to(dtype)
    layer = cpu.PackedLinear(weight)
    with torch.inference_mode():
        for rows in (1, 5, 64, 70):
            x = torch.randn(rows, 40).to(dtype)
            expected = F.linear(x.double(), weight.double()).to(dtype)
            out = layer(x)
            assert out.shape == (rows, 48)
            torch.testing.assert_close(out, expected, rtol=0.02 if dtype == torch.bfloat16 else 1e-5, atol=1e-4)
        assert layer(torch.randn(2, 3, 40).to(dtype)).shape == (2, 3, 48)
    if layer.packed_weight.is_mkldnn:
        assert seen == [8, 8, 64, 72, 8], seen
    assert [cpu.padded_rows(n) for n in (1, 9, 100, 1000, 2047, 2048, 2049)] == [8, 16, 104, 1024, 2048, 2048, 2304]
    assert len({cpu.padded_rows(n) for n in range(1, 8193)}) == 64


def test_a_packed_model_converts_like_any_module(tiny):
    """.to(bfloat16), .half(), .double() and .float() work on the packed model as loaded: the same parameters, the
    vectors of that dtype, packed again where oneDNN takes the dtype."""
    loaded = Embedder.from_pretrained(tiny[0], device="cpu")
    texts = ["The capital of China is Beijing.", "gravity " * 20]
    reference = loaded.encode(texts)
    count = sum(p.numel() for p in loaded.model.parameters())
    plain = [m.weight for m in cpu.unpack(copy.deepcopy(loaded.model)).modules() if isinstance(m, nn.Linear)]
    for convert, dtype, tolerance in ((nn.Module.double, torch.float64, 1e-5), (nn.Module.half, torch.float16, 2e-2),
                                      (nn.Module.bfloat16, torch.bfloat16, 5e-2)):  # fmt: skip
        model = convert(copy.deepcopy(loaded.model))
        assert {p.dtype for p in model.parameters()} == {dtype}
        assert sum(p.numel() for p in model.parameters()) == count
        for layer, weight in zip(packed_layers(model), plain):
            torch.testing.assert_close(cpu.unpack_weight(layer.packed_weight.data), weight.to(dtype), rtol=0, atol=0)
        torch.testing.assert_close(Embedder(model, loaded.tokenizer).encode(texts), reference, rtol=0, atol=tolerance)
        model.float()
        assert all(m.packed_weight.is_mkldnn for m in packed_layers(model))  # float32 again: packed again


def test_what_a_packed_weight_cannot_do_is_refused_with_the_fix(tiny):
    """Reading a packed layer's .weight (for w.norm(), w[:k], in-place edits) and gradients are refused with a message
    that names the fix; after unpack(model) both work."""
    embedder = Embedder.from_pretrained(tiny[0], device="cpu")
    layer = embedder.model.layers[0].mlp.down_proj
    with pytest.raises(AttributeError, match=r"packed .*model.state_dict\(\) gives plain copies .*cpu.unpack\(model\)"):
        layer.weight.norm()
    assert not hasattr(layer, "weight")
    batch = pack(embedder.tokenizer.encode(["a b c", "d e"], max_length=64), [0, 1])
    args = batch.input_ids, batch.cu_seqlens, batch.position_ids
    embedder.model.requires_grad_(True)
    with pytest.raises(
        RuntimeError, match=r"gradients do not flow .*cpu.unpack\(model\) first .*requires_grad_\(True\) to train"
    ):
        embedder.model(*args)
    cpu.unpack(embedder.model).requires_grad_(True)
    embedder.model(*args).sum().backward()
    grads = {name: p.grad for name, p in embedder.model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    weight = embedder.model.layers[0].mlp.down_proj.weight
    assert weight.norm() > 0 and weight[:2].shape == (2, weight.shape[1])


def test_a_packed_model_copies_and_pickles(embedder):
    texts = ["a b c", "gravity"]
    reference = embedder.encode(texts)
    for model in (copy.deepcopy(embedder.model), pickle.loads(pickle.dumps(embedder.model))):
        assert all(m.packed_weight.is_mkldnn for m in packed_layers(model))
        clone = Embedder(model, embedder.tokenizer)
        torch.testing.assert_close(clone.encode(texts), reference, rtol=0, atol=0)


@pytest.mark.gpu
def test_the_kernels_agree_with_the_references(tiny):
    """The whole model with each kernel in place of its reference (Triton's interpreter on CPU; on a GPU in
    float16) against the reference model; a text's vector does not depend on its batch."""
    from qwen3_embed.backends import kernels

    dtype = torch.float32 if DEVICE == "cpu" else torch.float16
    reference = Embedder.from_pretrained(tiny[0], device=DEVICE, dtype=dtype)
    kernels.use_references(reference.model)
    fast = Embedder.from_pretrained(tiny[0], device=DEVICE, dtype=dtype)
    kernels.use_kernels(fast.model)
    assert type(fast.model.layers[0].self_attn) is kernels.KernelAttention
    texts = ["a", "The capital of China is Beijing.", "gravity " * 9, "x y"]
    together = fast.encode(texts)
    alone = torch.stack([fast.encode(t) for t in texts])
    atol = 2e-6 if dtype == torch.float32 else 1e-2  # unit vectors; float16 rounds at 5e-4 of each value
    torch.testing.assert_close(together, reference.encode(texts), rtol=0, atol=atol)
    torch.testing.assert_close(alone, together, rtol=0, atol=atol)


@pytest.mark.parametrize("capability", [(8, 0), (8, 9), (9, 0)])
def test_float32_attention_on_a_gpu_runs_sdpa(monkeypatch, tiny, capability):
    """The kernel backend sends float32 attention to the reference (SDPA) on every GPU, 16-bit to the kernel. CPU
    tensors stand in for CUDA ones, with the capability patched and the kernel replaced by a recorder."""
    from qwen3_embed.backends import kernels
    from qwen3_embed.kernels import attention

    calls = []
    monkeypatch.setattr(attention, "capability_of", lambda device: capability)
    monkeypatch.setattr(attention, "varlen_attention", lambda q, *a, **k: calls.append(q.dtype) or q)
    module = Embedder.from_pretrained(tiny[0], device="cpu").model.layers[0].self_attn
    kernels.use_kernels(module)
    q, k, v = (
        torch.randn(12, h, module.head_dim) for h in (module.num_heads, module.num_kv_heads, module.num_kv_heads)
    )
    plan = ops.AttentionPlan(torch.tensor([0, 3, 12], dtype=torch.int32), 12, q.device)
    out = module.attend(q, k, v, plan)
    assert calls == [] and torch.equal(out, ops.varlen_attention(q, k, v, [0, 3, 12], module.scale))
    module.attend(q.half(), k.half(), v.half(), plan)
    assert calls == [torch.float16]


def test_a_batch_padded_to_its_cuda_graph_bucket_gives_the_same_rows(tiny):
    """What a CUDA-graph replay runs: the batch grown by a padding sequence and empty ones (`pad_to_bucket`)."""
    embedder = Embedder.from_pretrained(tiny[0], device="cpu", dtype="float32")
    ids = embedder.tokenizer.encode(["a b c", "d", "The capital of China is Beijing."], max_length=64)
    batch = pack(ids, [0, 1, 2])
    last = embedder.model(batch.input_ids, batch.cu_seqlens, batch.position_ids)
    padded = compiled.pad_to_bucket(batch.input_ids, batch.cu_seqlens, batch.position_ids, 64, 8)
    assert padded[0].shape == (64,) and padded[1].tolist()[-5:] == [64] * 5
    rows = embedder.model(padded[0], ops.AttentionPlan(padded[1], 64, padded[0].device), padded[2])
    torch.testing.assert_close(rows[:3], last, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="need a float16 or bfloat16 model on CUDA"):
        compiled.use_cuda_graphs(embedder.model)


@pytest.mark.slow
def test_compiled_layers_agree_and_never_recompile_for_a_new_batch_shape(tiny):
    """compile_layers: the same vectors as the eager path within float32 rounding, and one set of graphs for every
    batch shape (token counts and sequence counts are dynamic; attention stays out of the traced code)."""
    import torch._dynamo.utils

    eager = Embedder.from_pretrained(tiny[0], device="cpu")
    fast = Embedder.from_pretrained(tiny[0], device="cpu")
    compiled.compile_layers(fast.model)
    warm_up = texts_of_lengths(9, seed=1, max_words=60)
    fast.encode(warm_up, batch_tokens=200)
    fast.encode(warm_up[:2], batch_tokens=200)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for seed, count in [(2, 3), (3, 17), (4, 1)]:
        texts = texts_of_lengths(count, seed=seed, max_words=90)
        torch.testing.assert_close(fast.encode(texts, batch_tokens=250), eager.encode(texts), rtol=0, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs, "a new batch shape compiled again"


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="the kernels run on CPU tensors under Triton's interpreter only (a GPU machine: its gpu tests cover them)",
)
def test_the_kernel_attention_never_recompiles_for_a_new_token_count(tiny):
    """Traced with dynamic shapes (as compile_layers traces a layer), the kernel attention stays out of the traced
    code: its autotune bucket follows the token count, which traced would pin it (a recompile per count, then eager
    after 8). Triton's interpreter on CPU; the same code on a GPU."""
    import torch._dynamo.utils

    from qwen3_embed.backends import kernels

    module = kernels.use_kernels(Embedder.from_pretrained(tiny[0], device="cpu").model.layers[0].self_attn)
    heads = (module.num_heads, module.num_kv_heads, module.num_kv_heads)

    @torch.compile(dynamic=True, backend="eager")
    def attend(q, k, v, plan):
        return module.attend(q * 2, k, v, plan) + 1

    def run(tokens):
        q, k, v = (torch.randn(tokens, h, module.head_dim) for h in heads)
        cu = torch.tensor([0, tokens // 3, tokens], dtype=torch.int32)
        out = attend(q, k, v, ops.AttentionPlan(cu, tokens, q.device))
        torch.testing.assert_close(out, ops.varlen_attention(q * 2, k, v, cu.tolist(), module.scale) + 1)

    torch._dynamo.reset()
    run(7), run(20)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for tokens in (33, 129, 1100, 3000):
        run(tokens)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs, "a new token count compiled again"


def test_packing_frees_each_plain_layer_before_packing_the_next(tiny, monkeypatch):
    """Loading peaks at one plain layer beside the packed model, not at two models: `pack` keeps no reference to the
    layers it replaces (a list of the model's modules held them all, doubling the peak of a 0.6B float32 load)."""
    import weakref

    from qwen3_embed.pipeline import load_model

    folder = tiny[0]
    model = load_model(
        folder, Embedder.from_pretrained(folder, device="cpu").config, torch.float32, torch.device("cpu")
    )
    plain = [weakref.ref(m) for m in model.modules() if type(m) is nn.Linear]
    packed = []
    pack_weight = cpu.pack_weight

    def spy(weight):
        dead = sum(ref() is None for ref in plain)
        assert dead >= len(packed), f"{len(packed)} layers packed, but only {dead} plain ones freed"
        packed.append(pack_weight(weight))
        return packed[-1]

    monkeypatch.setattr(cpu, "pack_weight", spy)
    cpu.pack(model)
    assert len(packed) == len(plain) and all(ref() is None for ref in plain)
