from __future__ import annotations

import json

import pytest

from qwen3_embed import Qwen3Config
from qwen3_embed.config import PRESETS

# config.json of Qwen/Qwen3-Embedding-0.6B as transformers 4.51 wrote it (the keys the real repos carry).
REAL_0_6B = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.3",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151669,
}


def test_reads_the_transformers_4_layout_of_the_real_repos():
    config = Qwen3Config.from_dict(REAL_0_6B)
    assert config == PRESETS["0.6B"]
    assert config.rope_theta == 1e6 and config.dtype == "bfloat16"


def test_reads_the_transformers_5_layout(tiny):
    folder, hf = tiny
    raw = json.loads((folder / "config.json").read_text())
    assert "rope_parameters" in raw and "rope_theta" not in raw and "dtype" in raw  # the layout under test
    config = Qwen3Config.from_json(folder / "config.json")
    assert config.rope_theta == 1e6
    assert config.dtype == "float32"
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_key_value_heads", "head_dim"):
        assert getattr(config, key) == getattr(hf.config, key)


def test_presets_have_the_real_shapes():
    shapes = {
        name: (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size)
        for name, c in PRESETS.items()
    }
    assert shapes == {"0.6B": (1024, 28, 16, 3072), "4B": (2560, 36, 32, 9728), "8B": (4096, 36, 32, 12288)}
    assert Qwen3Config.preset("8B").tie_word_embeddings is False
    with pytest.raises(ValueError, match="unknown preset '1B'"):
        Qwen3Config.preset("1B")


@pytest.mark.parametrize("key", ["hidden_size", "head_dim", "num_key_value_heads", "rms_norm_eps"])
def test_missing_key_is_named(key):
    broken = {k: v for k, v in REAL_0_6B.items() if k != key}
    with pytest.raises(ValueError, match=f"config.json has no '{key}'"):
        Qwen3Config.from_dict(broken)


def test_missing_rope_theta():
    broken = {k: v for k, v in REAL_0_6B.items() if k != "rope_theta"}
    with pytest.raises(ValueError, match="rope_theta"):
        Qwen3Config.from_dict(broken)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type 'yarn' is not supported"),
        ({"attention_bias": True}, "attention_bias=True"),
        ({"use_sliding_window": True}, "use_sliding_window=True"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"model_type": "llama"}, "model_type is 'llama'"),
        ({"num_key_value_heads": 5}, "not a multiple"),
        ({"hidden_size": "1024"}, "hidden_size='1024' must be a positive integer"),  # a hand-edited config.json
        ({"num_hidden_layers": 0}, "num_hidden_layers=0 must be a positive integer"),
        ({"rms_norm_eps": True}, "rms_norm_eps=True must be a positive number"),
        ({"tie_word_embeddings": "yes"}, "tie_word_embeddings='yes' must be true or false"),
    ],
)
def test_unsupported_features_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        Qwen3Config.from_dict({**REAL_0_6B, **change})
