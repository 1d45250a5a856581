"""Qwen3Config: the shape of a Qwen3 decoder, read from a checkpoint's `config.json`."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class Qwen3Config:
    vocab_size: int  # rows of the embedding table
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    dtype: str | None = None  # the dtype the weights were saved in, when config.json says

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{f.name}={value!r} must be a positive integer")
            if f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"{f.name}={value!r} must be a positive number")
            if f.type == "bool" and not isinstance(value, bool):
                raise ValueError(f"{f.name}={value!r} must be true or false")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )

    @classmethod
    def from_dict(cls, d: dict) -> Qwen3Config:
        """Read both layouts: transformers 4.x (`rope_theta`, `torch_dtype`) and 5.x (`rope_parameters`, `dtype`)."""

        def need(key: str):
            if key not in d:
                raise ValueError(f"config.json has no {key!r}; is this a Qwen3 checkpoint?")
            return d[key]

        if d.get("model_type", "qwen3") != "qwen3":
            raise ValueError(f"model_type is {d['model_type']!r}; only 'qwen3' checkpoints are supported")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"rope_type {rope_type!r} is not supported; Qwen3 embedding models use 'default'")
        rope_theta = rope.get("rope_theta", d.get("rope_theta"))
        if rope_theta is None:
            raise ValueError("config.json has neither 'rope_theta' nor 'rope_parameters.rope_theta'")
        for key, plain in (("attention_bias", False), ("use_sliding_window", False), ("hidden_act", "silu")):
            if d.get(key, plain) != plain:
                raise ValueError(f"config.json sets {key}={d[key]!r}; only {key}={plain!r} is supported")
        return cls(
            vocab_size=need("vocab_size"),
            hidden_size=need("hidden_size"),
            intermediate_size=need("intermediate_size"),
            num_hidden_layers=need("num_hidden_layers"),
            num_attention_heads=need("num_attention_heads"),
            num_key_value_heads=need("num_key_value_heads"),
            head_dim=need("head_dim"),
            rms_norm_eps=need("rms_norm_eps"),
            rope_theta=rope_theta,
            max_position_embeddings=need("max_position_embeddings"),
            tie_word_embeddings=d.get("tie_word_embeddings", True),
            dtype=d.get("dtype", d.get("torch_dtype")),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> Qwen3Config:
        """The config of a checkpoint's config.json; a missing, unreadable or foreign file is an error naming it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path.parent} has no config.json: is it a checkpoint folder? A Qwen3-Embedding or Qwen3-Reranker "
                "folder holds config.json, tokenizer.json and model.safetensors (download the whole repository)"
            )
        d = read_json_object(path)
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def preset(cls, name: str) -> Qwen3Config:
        """The real shapes of a released model size: '0.6B', '4B' or '8B' (for random-weight benchmarks)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name]


def read_json_object(path: Path) -> dict:
    """A checkpoint's JSON file holding an object; an unreadable one is an error naming it and the fix."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); download it again") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} holds a JSON {type(d).__name__}, not an object; download it again")
    return d


def _size(vocab: int, hidden: int, layers: int, heads: int, inter: int, max_pos: int, tied: bool) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=8,
        head_dim=128,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        max_position_embeddings=max_pos,
        tie_word_embeddings=tied,
        dtype="bfloat16",
    )


# Qwen3-Embedding / Qwen3-Reranker sizes (the 4B and 8B vocab rows are derived, not read from their files).
PRESETS = {
    "0.6B": _size(151669, 1024, 28, 16, 3072, 32768, tied=True),
    "4B": _size(151665, 2560, 36, 32, 9728, 40960, tied=True),
    "8B": _size(151665, 4096, 36, 32, 12288, 40960, tied=False),
}
