"""The packed, padding-free model against transformers' Qwen3Model run on each sequence alone."""

from __future__ import annotations

import pytest
import torch

from checkpoints import texts_of_lengths
from qwen3_embed import Embedder, ops
from qwen3_embed.model import CudaGraphs, Linear, pad_to_bucket
from qwen3_embed.tokenize import pack


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def test_hidden_states_match_transformers(any_shape):
    folder, hf = any_shape
    embedder = Embedder.from_pretrained(folder, device="cpu", dtype="float32")
    ids = embedder.tokenizer.encode(texts_of_lengths(5, seed=1) + ["", "x"], max_length=8192)
    batch = pack(ids, list(range(len(ids))))
    last, states = embedder.model(batch.input_ids, batch.cu_seqlens, batch.position_ids, output_hidden_states=True)
    assert last.shape == (len(ids), hf.config.hidden_size)
    assert len(states) == hf.config.num_hidden_layers + 1
    bounds = batch.cu_seqlens.tolist()
    with torch.no_grad():
        for i, seq in enumerate(ids):
            ref = hf(torch.tensor([seq]), output_hidden_states=True)
            assert relative_error(last[i], ref.last_hidden_state[0, -1]) < 1e-5
            for layer, (ours, theirs) in enumerate(zip(states, ref.hidden_states)):
                err = relative_error(ours[bounds[i] : bounds[i + 1]], theirs[0])
                assert err < 1e-5, f"sequence {i}, hidden state {layer}: relative error {err:.2e}"


def test_forward_without_hidden_states_returns_the_pooled_rows(tiny):
    embedder = Embedder.from_pretrained(tiny[0], device="cpu")
    ids = embedder.tokenizer.encode(["a b c", "d"], max_length=64)
    batch = pack(ids, [0, 1])
    args = batch.input_ids, batch.cu_seqlens, batch.position_ids
    last = embedder.model(*args)
    _, states = embedder.model(*args, output_hidden_states=True)
    torch.testing.assert_close(last, states[-1][batch.cu_seqlens[1:].long() - 1], rtol=0, atol=0)


def test_triton_backend_agrees_with_the_reference(tiny, monkeypatch):
    """The whole model with every op forced onto its Triton kernel (the interpreter on CPU)."""
    embedder = Embedder.from_pretrained(tiny[0])
    texts = ["a", "The capital of China is Beijing.", "gravity " * 9, "x y"]
    monkeypatch.setenv("QWEN3_EMBED_BACKEND", "torch")
    reference = embedder.encode(texts)
    monkeypatch.setenv("QWEN3_EMBED_BACKEND", "triton")
    together = embedder.encode(texts)
    alone = torch.stack([embedder.encode(t) for t in texts])
    torch.testing.assert_close(together, reference, rtol=0, atol=2e-6)
    torch.testing.assert_close(alone, together, rtol=0, atol=2e-6)


def test_a_batch_padded_to_its_cuda_graph_bucket_gives_the_same_rows(tiny):
    """What a CUDA-graph replay runs: the batch grown by a padding sequence and empty ones (`pad_to_bucket`)."""
    embedder = Embedder.from_pretrained(tiny[0], device="cpu", dtype="float32")
    ids = embedder.tokenizer.encode(["a b c", "d", "The capital of China is Beijing."], max_length=64)
    batch = pack(ids, [0, 1, 2])
    last = embedder.model(batch.input_ids, batch.cu_seqlens, batch.position_ids)
    padded = pad_to_bucket(batch.input_ids, batch.cu_seqlens, batch.position_ids, 64, 8)
    assert padded[0].shape == (64,) and padded[1].tolist()[-5:] == [64] * 5
    rows = embedder.model.encode(padded[0], ops.AttentionPlan(padded[1], 64, padded[0].device), padded[2])
    torch.testing.assert_close(rows[:3], last, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="need a float16 or bfloat16 model on CUDA"):
        CudaGraphs(embedder.model)


def test_state_dict_speaks_the_checkpoint_keys(tiny, embedder):
    """q/k/v and gate/up run as one GEMM each, yet state_dict() gives the safetensors' keys and tensors, and
    load_state_dict() takes them back."""
    from safetensors.torch import load_file

    from qwen3_embed import Qwen3Model

    stored = load_file(tiny[0] / "model.safetensors")
    state = embedder.model.state_dict()
    assert sorted(state) == sorted(stored)
    for key, tensor in stored.items():
        torch.testing.assert_close(state[key], tensor, rtol=0, atol=0)
    copy = Qwen3Model(embedder.config)
    copy.load_state_dict(stored, strict=True)
    for name, param in embedder.model.named_parameters():
        torch.testing.assert_close(copy.get_parameter(name), ops.unpacked(param), rtol=0, atol=0)
    assert {name for name, _ in copy.named_parameters() if "proj" in name} >= {
        "layers.0.self_attn.qkv_proj.weight",
        "layers.0.mlp.gate_up_proj.weight",
    }


def test_load_state_dict_into_the_loaded_model_and_its_errors_name_the_checkpoint_keys(tiny):
    """The CPU model as loaded (weights packed) takes its checkpoint back and stays packed; a missing or misshapen
    tensor is reported by the checkpoint's key, not the stacked parameter's."""
    from safetensors.torch import load_file

    loaded = Embedder.from_pretrained(tiny[0], device="cpu")
    stored = load_file(tiny[0] / "model.safetensors")
    texts = texts_of_lengths(3, seed=4, max_words=40)
    before = loaded.encode(texts)
    loaded.model.load_state_dict(stored, strict=True)
    assert all(m.weight.is_mkldnn for m in loaded.model.modules() if isinstance(m, Linear))
    torch.testing.assert_close(loaded.encode(texts), before, rtol=0, atol=0)
    key = "layers.0.self_attn.q_proj.weight"
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "layers.0.self_attn.q_proj.weight"\.'):
        loaded.model.load_state_dict({k: v for k, v in stored.items() if k != key})
    with pytest.raises(ValueError, match=rf"{key} has shape \({stored[key].shape[0] - 1}, "):
        loaded.model.load_state_dict({**stored, key: stored[key][:-1]})
    torch.testing.assert_close(loaded.encode(texts), before, rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_layers_agree_and_never_recompile_for_a_new_batch_shape(tiny):
    """Qwen3Model.compile_layers: the same vectors as the eager path within float32 rounding, and one set of graphs
    for every batch shape (token counts and sequence counts are dynamic)."""
    import torch._dynamo.utils

    eager = Embedder.from_pretrained(tiny[0], device="cpu")
    compiled = Embedder.from_pretrained(tiny[0], device="cpu")
    compiled.model.compile_layers()
    warm_up = texts_of_lengths(9, seed=1, max_words=60)
    compiled.encode(warm_up, batch_tokens=200)
    compiled.encode(warm_up[:2], batch_tokens=200)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for seed, count in [(2, 3), (3, 17), (4, 1)]:
        texts = texts_of_lengths(count, seed=seed, max_words=90)
        torch.testing.assert_close(compiled.encode(texts, batch_tokens=250), eager.encode(texts), rtol=0, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs, "a new batch shape compiled again"


def test_weights_packed_for_the_cpu_give_the_plain_weights_results(tiny, embedder):
    """A CPU model's projections hold oneDNN-packed weights (faster on the CPU); unpacked, it gives the same vectors
    within float32 rounding, and packs back."""
    packed = [m.weight for m in embedder.model.modules() if isinstance(m, Linear)]
    assert packed and all(w.is_mkldnn for w in packed)
    texts = texts_of_lengths(7, seed=2, max_words=90)
    with_packed = embedder.encode(texts)
    plain = Embedder.from_pretrained(tiny[0], device="cpu")
    plain.model.pack_weights(False)
    assert not any(m.weight.is_mkldnn for m in plain.model.modules() if isinstance(m, Linear))
    torch.testing.assert_close(plain.encode(texts), with_packed, rtol=0, atol=1e-5)
    plain.model.pack_weights()
    torch.testing.assert_close(plain.encode(texts), with_packed, rtol=0, atol=0)
