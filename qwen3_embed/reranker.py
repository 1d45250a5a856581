"""Reranker: (query, document) pairs -> relevance probabilities, by the Qwen3-Reranker recipe.

Each pair is judged by the chat prompt of the model card; the score is the probability of "yes" against "no" as
the next token, `sigmoid(l_yes - l_no)`. Only those two rows of the output projection are read and used, on the
last token of each sequence: never the vocabulary-wide logits.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from . import checkpoint
from .config import Qwen3Config
from .embedder import DEFAULT_BATCH_TOKENS, DEFAULT_MAX_LENGTH, default_device, default_dtype
from .model import Qwen3Model
from .tokenize import Tokenizer, batches

PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def format_pair(instruction: str, query: str, document: str) -> str:
    """The text between the prompt's prefix and suffix."""
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"


class Reranker:
    def __init__(self, model: Qwen3Model, tokenizer: Tokenizer, no_yes: torch.Tensor):
        self.model = model
        self.tokenizer = tokenizer
        self.no_yes = no_yes  # [2, hidden]: the output projection's rows for "no" and "yes"
        self.prefix = tokenizer.ids(PREFIX)
        self.suffix = tokenizer.ids(SUFFIX)

    @property
    def config(self) -> Qwen3Config:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.no_yes.device

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "Qwen/Qwen3-Reranker-0.6B",
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> Reranker:
        """Load a local folder or hub id (default: CUDA in bf16 when available, else CPU in float32)."""
        folder = checkpoint.resolve(name_or_path)
        device = torch.device(device) if device is not None else default_device()
        dtype = checkpoint.resolve_dtype(dtype) if dtype is not None else default_dtype(device)
        config = Qwen3Config.from_json(folder / "config.json")
        model = checkpoint.load_model(folder, config, dtype, device, skip=frozenset({"lm_head.weight"}))
        tokenizer = Tokenizer(folder / "tokenizer.json", config.vocab_size)
        rows = [tokenizer.token_id("no"), tokenizer.token_id("yes")]
        no_yes = checkpoint.read_rows(
            folder, "lm_head.weight", rows, (config.vocab_size, config.hidden_size), dtype, device
        )
        if no_yes is None:
            if not config.tie_word_embeddings:
                raise ValueError(f"{folder} has no lm_head.weight, yet config.json says the embeddings are not tied")
            no_yes = model.embed_tokens.weight[rows].clone()  # tied: the output projection is the embedding table
        return cls(model, tokenizer, no_yes)

    def score(
        self,
        query: str | Sequence[tuple[str, str]],
        documents: Sequence[str] | None = None,
        *,
        instruction: str | None = None,
        max_length: int | None = None,
        truncate: bool = True,
        batch_tokens: int | None = None,
        show_progress: bool = False,
    ) -> torch.Tensor:
        """Relevance probability of each document for the query: float32 CPU tensor [len(documents)], in order.

        Also takes a list of (query, document) pairs in place of query and documents.
        instruction: the task (default: the card's web-search instruction).
        max_length: tokens per pair, prompt included (default 8192); a longer pair has its document's end cut,
        never the prompt, with a warning, or is an error when `truncate` is False.
        batch_tokens: tokens per forward pass (default 2048 on CPU, 16384 on CUDA).
        """
        pairs = _pairs(query, documents)
        instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
        limit = self.config.max_position_embeddings
        max_length = min(DEFAULT_MAX_LENGTH, limit) if max_length is None else max_length
        if max_length > limit:
            raise ValueError(f"max_length={max_length} is more than the model's maximum sequence length {limit}")
        if batch_tokens is None:
            batch_tokens = DEFAULT_BATCH_TOKENS.get(self.device.type, DEFAULT_BATCH_TOKENS["cpu"])
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens={batch_tokens} must be at least 1")
        texts = [format_pair(instruction, q, d) for q, d in pairs]
        ids = self.tokenizer.encode(texts, max_length, truncate, prefix=self.prefix, suffix=self.suffix)

        scores = torch.empty(len(pairs), dtype=torch.float32)
        with torch.inference_mode(), tqdm(total=len(pairs), unit="pair", disable=not show_progress) as progress:
            for batch in batches(ids, batch_tokens):
                b = batch.to(self.device)
                last = self.model(b.input_ids, b.cu_seqlens, b.position_ids)  # [B, hidden]
                no, yes = (last @ self.no_yes.T).float().unbind(-1)
                scores[batch.index] = torch.sigmoid(yes - no).cpu()
                progress.update(len(batch.index))
        return scores

    def rank(
        self, query: str, documents: Sequence[str], *, top_k: int | None = None, **score_options
    ) -> list[tuple[int, float]]:
        """(index, score) of the documents, best first (ties in input order); the first `top_k` when given."""
        if top_k is not None and top_k < 0:
            raise ValueError(f"top_k={top_k} must not be negative")
        scores = self.score(query, documents, **score_options).tolist()
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        return [(i, scores[i]) for i in order[:top_k]]


def _pairs(query: str | Sequence[tuple[str, str]], documents: Sequence[str] | None) -> list[tuple[str, str]]:
    """(query, document) pairs from a query and its documents, or from a list of pairs; non-strings are named."""
    if isinstance(query, str):
        if documents is None or isinstance(documents, str):
            raise TypeError("pass a query and a list of documents, or a list of (query, document) pairs")
        pairs = [(query, d) for d in documents]
        for i, (_, d) in enumerate(pairs):
            if not isinstance(d, str):
                raise TypeError(f"documents[{i}] is a {type(d).__name__}, not a str")
        return pairs
    if documents is not None:
        raise TypeError("pass either a query with documents, or a list of (query, document) pairs, not both")
    pairs = list(query)
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise TypeError(f"pairs[{i}] is not a (query, document) pair of strings")
    return [tuple(p) for p in pairs]
