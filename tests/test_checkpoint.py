"""Loading: sharded files, key prefixes, dtypes, the hub cache, and every error case."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwen3_embed import Embedder
from qwen3_embed.checkpoint import resolve, resolve_dtype

TEXTS = ["The capital of China is Beijing.", "Gravity is a force.", "x"]


@pytest.fixture
def copy(tiny, tmp_path):
    """A writable copy of the tiny checkpoint folder."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny[0], folder)
    return folder


@pytest.fixture(scope="module")
def reference(embedder):
    return embedder.encode(TEXTS)


def test_sharded_checkpoint(tiny, tmp_path, reference):
    folder = tmp_path / "sharded"
    shutil.copytree(tiny[0], folder, ignore=shutil.ignore_patterns("model.safetensors"))
    tiny[1].save_pretrained(folder, max_shard_size="100KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2  # really sharded
    assert not (folder / "model.safetensors").exists()
    torch.testing.assert_close(Embedder.from_pretrained(folder).encode(TEXTS), reference, rtol=0, atol=0)


def test_missing_shard_is_named(tiny, tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(tiny[0], folder, ignore=shutil.ignore_patterns("model.safetensors"))
    tiny[1].save_pretrained(folder, max_shard_size="100KB")
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        Embedder.from_pretrained(folder)


def test_keys_with_the_model_prefix(copy, reference):
    weights = load_file(copy / "model.safetensors")
    save_file({f"model.{k}": v for k, v in weights.items()}, copy / "model.safetensors")
    torch.testing.assert_close(Embedder.from_pretrained(copy).encode(TEXTS), reference, rtol=0, atol=0)


def test_the_same_key_with_and_without_prefix_is_an_error(copy):
    weights = load_file(copy / "model.safetensors")
    save_file({**weights, "model.norm.weight": weights["norm.weight"].clone()}, copy / "model.safetensors")
    with pytest.raises(ValueError, match="'norm.weight' twice"):
        Embedder.from_pretrained(copy)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bf16_checkpoint_loads_into(build_checkpoint, dtype):
    from checkpoints import TINY_SHAPES

    folder, hf = build_checkpoint("bf16", TINY_SHAPES["gqa1"], dtype=torch.bfloat16)
    embedder = Embedder.from_pretrained(folder, device="cpu", dtype=dtype)
    stored = load_file(folder / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in stored.values())
    for name, param in embedder.model.state_dict().items():
        assert param.dtype == dtype and param.device.type == "cpu", name
        torch.testing.assert_close(param, stored[name].to(dtype), rtol=0, atol=0)
    assert embedder.encode("hello").dtype == torch.float32


def test_missing_key_is_named(copy):
    weights = load_file(copy / "model.safetensors")
    del weights["layers.1.mlp.up_proj.weight"]
    save_file(weights, copy / "model.safetensors")
    with pytest.raises(ValueError, match=r"lacks 1 tensors.*layers\.1\.mlp\.up_proj\.weight"):
        Embedder.from_pretrained(copy)


def test_unexpected_key_is_named(copy):
    weights = load_file(copy / "model.safetensors")
    weights["lm_head.weight"] = weights["embed_tokens.weight"]
    save_file({k: v.clone() for k, v in weights.items()}, copy / "model.safetensors")
    with pytest.raises(ValueError, match="unexpected key 'lm_head.weight'"):
        Embedder.from_pretrained(copy)


def test_wrong_shape_names_the_key_and_both_shapes(copy):
    config = json.loads((copy / "config.json").read_text())
    config["intermediate_size"] = 100
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"'layers\.0\.mlp\.down_proj\.weight' .* shape \[96, 160\], .* \[96, 100\]"):
        Embedder.from_pretrained(copy)


def test_truncated_file(copy):
    path = copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(OSError, match="model.safetensors is truncated or corrupt .*download or copy it again"):
        Embedder.from_pretrained(copy)


def test_corrupt_header(copy):
    path = copy / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))
    with pytest.raises(OSError, match="truncated or corrupt"):
        Embedder.from_pretrained(copy)


def test_no_weights(copy):
    (copy / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor model.safetensors.index.json"):
        Embedder.from_pretrained(copy)


def test_missing_local_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a checkpoint folder"):
        resolve(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="is not a checkpoint folder"):
        resolve("./nowhere")


@pytest.fixture
def offline_cache(monkeypatch, tmp_path):
    """An empty hub cache with the hub switched off."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub"


def test_hub_id_neither_cached_nor_reachable(offline_cache):
    with pytest.raises(
        FileNotFoundError,
        match=r"neither in the local Hugging Face cache nor reachable on the hub \(HF_HUB_OFFLINE is set\)",
    ):
        resolve("Qwen/Qwen3-Embedding-0.6B")


def test_invalid_hub_id(offline_cache):
    with pytest.raises(ValueError, match="not a valid hub id"):
        resolve("Qwen/Qwen3 Embedding??")


def test_hub_id_from_the_cache(offline_cache, tiny, reference):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_cache / "models--Qwen--Qwen3-Embedding-0.6B"
    shutil.copytree(tiny[0], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert resolve("Qwen/Qwen3-Embedding-0.6B") == repo / "snapshots" / commit
    torch.testing.assert_close(Embedder.from_pretrained("Qwen/Qwen3-Embedding-0.6B").encode(TEXTS), reference)


def test_resolve_dtype():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
        resolve_dtype("int8")


def test_missing_tokenizer_names_the_folder_and_the_fix(copy):
    (copy / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"{copy} has no tokenizer.json; copy the model's tokenizer.json"):
        Embedder.from_pretrained(copy)


def test_broken_tokenizer_names_the_file(copy):
    (copy / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match=r"tokenizer.json could not be read as a tokenizer .*download it again"):
        Embedder.from_pretrained(copy)


def test_empty_folder_says_what_a_checkpoint_holds(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no config.json: is it a checkpoint folder"):
        Embedder.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", ["config.json", "config_sentence_transformers.json"])
@pytest.mark.parametrize("text, message", [("{broken", "is not valid JSON"), ("[1]", "holds a JSON list")])
def test_broken_config_names_the_file(copy, name, text, message):
    (copy / name).write_text(text)
    with pytest.raises(ValueError, match=f"{copy / name} {message}.*; download it again"):
        Embedder.from_pretrained(copy)


def test_foreign_config_names_the_file(copy):
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match=r"config.json: model_type is 'llama'"):
        Embedder.from_pretrained(copy)


def test_a_reranker_is_not_loaded_as_an_embedder_and_back(tiny, tmp_path):
    from checkpoints import TINY_SHAPES, make_reranker_checkpoint
    from qwen3_embed import Reranker

    reranker_folder = tmp_path / "reranker"
    make_reranker_checkpoint(reranker_folder, TINY_SHAPES["gqa2"], tied=True)
    with pytest.raises(ValueError, match=r"looks like a Qwen3-Reranker checkpoint .* load it with Reranker"):
        Embedder.from_pretrained(reranker_folder)
    with pytest.raises(ValueError, match=r"looks like a Qwen3-Embedding checkpoint .* load it with Embedder"):
        Reranker.from_pretrained(tiny[0])
    assert Embedder.from_pretrained(reranker_folder, check_kind=False).encode("a").shape == (96,)
    assert Reranker.from_pretrained(tiny[0], check_kind=False).score("q", ["a"]).shape == (1,)


@pytest.mark.parametrize(
    "device, message",
    [
        ("gpu", "device 'gpu' is not a device name; use 'cpu', 'cuda' or 'cuda:N'"),
        ("mps", "device 'mps' is not supported; use 'cpu' or 'cuda'"),
        pytest.param(
            "cuda",
            "device 'cuda' was asked for, but torch sees no CUDA GPU here",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here"),
        ),
    ],
)
def test_bad_device_is_named_before_loading(tmp_path, device, message):
    with pytest.raises(ValueError, match=message):
        Embedder.from_pretrained(tmp_path / "not even a checkpoint", device=device)


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_is_bfloat16_where_the_cpu_multiplies_it_natively(tiny, monkeypatch, native, expected):
    from qwen3_embed import pipeline

    monkeypatch.setattr(pipeline, "native_bf16", lambda: native)
    assert Embedder.from_pretrained(tiny[0], device="cpu", dtype="auto").dtype == expected
    assert pipeline.resolve_dtype(torch.device("cuda"), "auto") == torch.bfloat16
    assert pipeline.resolve_dtype(torch.device("cpu"), None) == torch.float32  # the default keeps fidelity
