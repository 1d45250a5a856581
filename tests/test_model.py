"""The packed, padding-free model against transformers' Qwen3Model run on each sequence alone; its checkpoint keys;
and the modules behaving as their names promise (what the README's reader's guide relies on)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from checkpoints import texts_of_lengths
from qwen3_embed import Embedder, Qwen3Model
from qwen3_embed.backends import cpu
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


def test_state_dict_speaks_the_checkpoint_keys(tiny, embedder):
    """q/k/v and gate/up run as one GEMM each, yet state_dict() gives the safetensors' keys and tensors (from the
    packed CPU model as loaded, and from a plain one), and load_state_dict() takes them back."""
    from safetensors.torch import load_file

    stored = load_file(tiny[0] / "model.safetensors")
    state = embedder.model.state_dict()
    assert sorted(state) == sorted(stored)
    for key, tensor in stored.items():
        torch.testing.assert_close(state[key], tensor, rtol=0, atol=0)
    copy = Qwen3Model(embedder.config)
    copy.load_state_dict(stored, strict=True)
    assert {name for name, _ in copy.named_parameters() if "proj" in name} >= {
        "layers.0.self_attn.qkv_proj.weight",
        "layers.0.mlp.gate_up_proj.weight",
    }
    for key, tensor in copy.state_dict().items():
        torch.testing.assert_close(tensor, stored[key], rtol=0, atol=0)


def test_load_state_dict_errors_name_the_checkpoint_keys(tiny):
    """The CPU model as loaded (weights packed) takes its checkpoint back and gives the same vectors; a missing or
    misshapen tensor is reported by the checkpoint's key, not the stacked parameter's, and changes nothing."""
    from safetensors.torch import load_file

    loaded = Embedder.from_pretrained(tiny[0], device="cpu")
    stored = load_file(tiny[0] / "model.safetensors")
    texts = texts_of_lengths(3, seed=4, max_words=40)
    before = loaded.encode(texts)
    loaded.model.load_state_dict(stored, strict=True)
    assert all(m.packed_weight.is_mkldnn for m in loaded.model.modules() if isinstance(m, cpu.PackedLinear))
    torch.testing.assert_close(loaded.encode(texts), before, rtol=0, atol=0)
    key = "layers.0.self_attn.q_proj.weight"
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "layers.0.self_attn.q_proj.weight"\.'):
        loaded.model.load_state_dict({k: v for k, v in stored.items() if k != key})
    with pytest.raises(ValueError, match=rf"{key} has shape \({stored[key].shape[0] - 1}, "):
        loaded.model.load_state_dict({**stored, key: stored[key][:-1]})
    torch.testing.assert_close(loaded.encode(texts), before, rtol=0, atol=0)
    result = Qwen3Model(loaded.config).load_state_dict({k: v for k, v in stored.items() if k != key}, strict=False)
    assert result.missing_keys == [key] and "layers.0.self_attn.k_proj.weight" in result.unexpected_keys


def test_every_module_is_called_as_its_name_promises(embedder):
    """Forward hooks fire on every layer's modules with the shapes a reader expects: input_layernorm and self_attn
    take and return [T, hidden] tensors in every layer, q_norm sees [T, Hq, D]; the model's own result is a pooled
    [B, hidden]."""
    config, seen = embedder.config, {}

    def record(name):
        return lambda module, args, out: seen.setdefault(name, []).append((args[0].shape, out.shape))

    hooks = []
    for i, layer in enumerate(embedder.model.layers):
        for name in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"):
            hooks.append(getattr(layer, name).register_forward_hook(record(f"{i}.{name}")))
        hooks.append(layer.self_attn.q_norm.register_forward_hook(record(f"{i}.q_norm")))
    embedder.encode(["a b c", "the capital of China"])
    for hook in hooks:
        hook.remove()
    tokens = seen["0.input_layernorm"][0][0][0]
    hidden = (tokens, config.hidden_size)
    for i in range(config.num_hidden_layers):
        for name in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"):
            assert seen[f"{i}.{name}"] == [(hidden, hidden)], (i, name)
        head = (tokens, config.num_attention_heads, config.head_dim)
        assert seen[f"{i}.q_norm"] == [(head, head)]


def test_the_activation_is_a_module_and_dropping_a_layer_changes_the_vectors(tiny):
    """The MLP's act_fn (transformers' name) can be swapped, and a layer dropped, on the model as loaded."""
    embedder = Embedder.from_pretrained(tiny[0], device="cpu")
    texts = ["The capital of China is Beijing.", "gravity"]
    before = embedder.encode(texts)
    assert all(isinstance(layer.mlp.act_fn, nn.SiLU) for layer in embedder.model.layers)
    for layer in embedder.model.layers:
        layer.mlp.act_fn = nn.GELU()
    gelu = embedder.encode(texts)
    assert (before - gelu).abs().max() > 1e-3
    for layer in embedder.model.layers:
        layer.mlp.act_fn = nn.SiLU()
    torch.testing.assert_close(embedder.encode(texts), before, rtol=0, atol=0)
    del embedder.model.layers[-1]
    assert (embedder.encode(texts) - before).abs().max() > 1e-3


def test_the_checkpoint_keys_follow_the_layers_the_model_holds(tiny):
    """A reader who appends or drops a decoder layer still round-trips state_dict() through load_state_dict()."""
    import copy

    from safetensors.torch import load_file

    model = Qwen3Model(Embedder.from_pretrained(tiny[0], device="cpu").config)
    model.load_state_dict(load_file(tiny[0] / "model.safetensors"))
    model.layers.append(copy.deepcopy(model.layers[0]))
    state = model.state_dict()
    assert "layers.3.self_attn.q_proj.weight" in state and model.config.num_hidden_layers == 3
    copy.deepcopy(model).load_state_dict(state, strict=True)
    del model.layers[0]
    model.load_state_dict(model.state_dict(), strict=True)


def test_what_load_state_dict_cannot_place_is_reported_never_dropped(tiny):
    """On the packed CPU model as loaded: a key a layer does not have (a bias) is unexpected, and a stacked key given
    beside its parts replaces nothing silently (the parts are unexpected)."""
    from safetensors.torch import load_file

    loaded = Embedder.from_pretrained(tiny[0], device="cpu")
    stored = load_file(tiny[0] / "model.safetensors")
    bias = "layers.0.self_attn.o_proj.bias"
    with pytest.raises(RuntimeError, match=rf'Unexpected key\(s\) in state_dict: "{bias}"'):
        loaded.model.load_state_dict({**stored, bias: torch.ones(loaded.config.hidden_size)})
    stacked = Qwen3Model(loaded.config).state_dict(keep_vars=True)  # as the checkpoint's keys
    both = {**stored, "layers.0.self_attn.qkv_proj.weight": torch.cat([stacked[f"layers.0.self_attn.{p}_proj.weight"]
                                                                      for p in "qkv"])}  # fmt: skip
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: .*"layers.0.self_attn.q_proj.weight"'):
        loaded.model.load_state_dict(both)


def test_an_empty_sequence_has_nothing_to_pool(embedder):
    ids = torch.tensor([5, 6, 7, 8, 9])
    with pytest.raises(ValueError, match=r"sequences \[1\] of cu_seqlens are empty"):
        embedder.model(ids, torch.tensor([0, 3, 3, 5], dtype=torch.int32), torch.tensor([0, 1, 2, 0, 1]))
