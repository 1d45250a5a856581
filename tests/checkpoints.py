"""Random-weight Qwen3 checkpoints written by transformers, laid out like the real Qwen3-Embedding repos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# The real Qwen3 tokenizer, as the benchmarks find it: $QWEN3_TOKENIZER_DIR, else the checkout's git-ignored
# local/qwen3-tokenizer (where a GPU run carries it), else ../shared/qwen3-tokenizer beside the checkout.
_LOCAL_TOKENIZER = REPO / "local" / "qwen3-tokenizer"
SHARED_TOKENIZER = Path(
    os.environ.get(
        "QWEN3_TOKENIZER_DIR",
        _LOCAL_TOKENIZER
        if (_LOCAL_TOKENIZER / "tokenizer.json").exists()
        else REPO.parent / "shared" / "qwen3-tokenizer",
    )
)

# Runs a command and prints its peak resident memory. A child's ru_maxrss starts from the hiwater of the process that
# exec'd it (the kernel keeps the old address space's peak), so the child is started from this small process, not
# from pytest, whose peak would hide the child's.
_PEAK = """import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
sys.stderr.write(f"\\npeak KiB {usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))"""


def encode_peak(*args: str) -> tuple[int, str, float]:
    """(exit code, stderr, peak resident memory in MiB) of `qwen3-embed encode ARGS` in a process of its own."""
    command = [sys.executable, "-c", _PEAK, sys.executable, "-m", "qwen3_embed.cli", "encode", *args]
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    text, _, kib = done.stderr.rpartition("\npeak KiB ")
    return done.returncode, text, int(kib) / 1024


CARD_QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"

# (vocab, hidden, layers, q heads, kv heads, head_dim, intermediate): GQA 1, 2 and 4, two head dims, odd vocabs.
TINY_SHAPES = {
    "gqa1": (389, 64, 2, 4, 4, 16, 96),
    "gqa2": (401, 96, 3, 4, 2, 32, 160),
    "gqa4": (397, 128, 2, 8, 2, 16, 224),
}
# The real 0.6B layer shapes at reduced depth and vocabulary.
SHAPE_0_6B = (1031, 1024, 2, 16, 8, 128, 3072)

CORPUS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "It gives weight to physical objects and is responsible for the movement of planets around the sun.",
    "Explain gravity. What is the capital of China? Retrieve relevant passages that answer the query.",
    "Embeddings map text to vectors; similar texts land close together under cosine similarity.",
    "Qwen3 models use grouped-query attention, rotary position embeddings and RMSNorm.",
    "Les modèles multilingues comprennent aussi le français, el español y el 中文。",
    "0123456789 !?.,;:()[]{}<>+-*/=_'\"",
    'Judge whether the Document meets the requirements. Note that the answer can only be "yes" or "no".',
    "yes\nno\nyes\nno\nyes\nno",
]


def make_tokenizer(folder: Path, vocab_size: int = 300, post_processor: bool = True) -> int:
    """A byte-level BPE like Qwen's, trained on a small corpus; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    if post_processor:
        eos = tok.token_to_id("<|endoftext|>")
        tok.post_processor = processors.TemplateProcessing(
            single="$A <|endoftext|>",
            pair="$A <|endoftext|> $B:1 <|endoftext|>:1",
            special_tokens=[("<|endoftext|>", eos)],
        )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "padding_side": "left",
            "model_max_length": 131072,
        },
    )
    return tok.get_vocab_size()


def random_model(
    architecture: str, shape: tuple[int, ...], *, tied: bool = True, seed: int = 0, device: str = "cpu", **config
):
    """A transformers Qwen3 model ("Qwen3Model" or "Qwen3ForCausalLM") of `shape` with random weights, its norms
    too (not all ones), so that a skipped or misplaced norm shows; built on `device` (a GPU builds 8B quickly)."""
    import transformers

    vocab, hidden, layers, heads, kv_heads, head_dim, inter = shape
    hf_config = transformers.Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rope_theta=1_000_000.0,
        initializer_range=hidden**-0.5,
        tie_word_embeddings=tied,
        **config,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = getattr(transformers, architecture)(hf_config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def install_tokenizer(folder: Path, tokenizer: Path | None, vocab: int, eos: bool) -> None:
    """A copy of the tokenizer in `tokenizer` (or a small trained one), appending <|endoftext|> or not."""
    if tokenizer is None:
        assert make_tokenizer(folder, post_processor=eos) <= vocab
        return
    data = json.loads((tokenizer / "tokenizer.json").read_text(encoding="utf-8"))
    if not eos:
        data["post_processor"] = None
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    (folder / "tokenizer_config.json").write_bytes((tokenizer / "tokenizer_config.json").read_bytes())


def make_checkpoint(
    folder: Path,
    shape: tuple[int, ...],
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_position_embeddings: int = 32768,
    tokenizer: Path | None = None,
    device: str = "cpu",
):
    """Save a random Qwen3Model with transformers' save_pretrained, plus a tokenizer that appends the EOS and the
    sentence-transformers files of the real Qwen3-Embedding repos; returns the transformers model (float32)."""
    model = random_model("Qwen3Model", shape, seed=seed, device=device, max_position_embeddings=max_position_embeddings)
    model.to(dtype).save_pretrained(folder)
    install_tokenizer(folder, tokenizer, shape[0], eos=True)
    write_sentence_transformers_files(folder, shape[1])
    return model.float()


def make_reranker_checkpoint(
    folder: Path,
    shape: tuple[int, ...],
    *,
    tied: bool,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    tokenizer: Path | None = None,
):
    """Save a random Qwen3ForCausalLM (keys with the `model.` prefix, `lm_head.weight` only when untied) and a
    tokenizer that appends no EOS, like the Qwen3-Reranker repos; returns the transformers model (float32)."""
    model = random_model("Qwen3ForCausalLM", shape, tied=tied, seed=seed)
    model.to(dtype).save_pretrained(folder)
    install_tokenizer(folder, tokenizer, shape[0], eos=False)
    return model.float()


def write_sentence_transformers_files(folder: Path, hidden: int) -> None:
    write_json(
        folder / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": 8192, "do_lower_case": False})
    write_json(
        folder / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": True,
            "include_prompt": True,
        },
    )
    (folder / "2_Normalize").mkdir(exist_ok=True)
    write_json(
        folder / "config_sentence_transformers.json",
        {
            "prompts": {"query": CARD_QUERY_PROMPT, "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False))


def texts_of_lengths(n: int, seed: int = 0, max_words: int = 120) -> list[str]:
    """n texts of mixed lengths (1 to max_words words) drawn from the corpus's words."""
    g = torch.Generator().manual_seed(seed)
    words = " ".join(CORPUS).split()
    out = []
    for _ in range(n):
        count = int(torch.randint(1, max_words + 1, (1,), generator=g))
        picks = torch.randint(len(words), (count,), generator=g).tolist()
        out.append(" ".join(words[i] for i in picks))
    return out
