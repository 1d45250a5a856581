"""Reranker: (query, document) pairs -> relevance probabilities, by the Qwen3-Reranker recipe.

Each pair is judged by the chat prompt of the model card; the score is the probability of "yes" against "no" as
the next token, `sigmoid(l_yes - l_no)`. Only those two rows of the output projection are read and used, on the
last token of each sequence: never the vocabulary-wide logits.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from . import checkpoint
from .checks import check_bools, check_int
from .model import Qwen3Model
from .pipeline import DEFAULT_INSTRUCTION, Pipeline, Progress
from .tokenize import Cut, TextTooLong, Tokenizer

PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def format_pair(instruction: str, query: str, document: str) -> str:
    """The text between the prompt's prefix and suffix."""
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"


class Reranker(Pipeline):
    KIND = "reranker"

    def __init__(self, model: Qwen3Model, tokenizer: Tokenizer, no_yes: torch.Tensor):
        super().__init__(model, tokenizer)
        self.no_yes = no_yes  # [2, hidden]: the output projection's rows for "no" and "yes"
        self.prefix = tokenizer.ids(PREFIX)
        self.suffix = tokenizer.ids(SUFFIX)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "Qwen/Qwen3-Reranker-0.6B",
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        check_kind: bool = True,
    ) -> Reranker:
        """Load a local folder or hub id (default: CUDA in bf16 when available, else CPU in float32); a checkpoint
        whose files say it is an embedding model is an error unless `check_kind` is False."""
        skip = frozenset({"lm_head.weight"})
        folder, model, tokenizer = cls.load(name_or_path, device, dtype, check_kind, skip)
        config, weight = model.config, model.embed_tokens.weight
        rows = [tokenizer.token_id("no"), tokenizer.token_id("yes")]
        shape = (config.vocab_size, config.hidden_size)
        no_yes = checkpoint.read_rows(folder, "lm_head.weight", rows, shape, weight.dtype, weight.device)
        if no_yes is None:
            if not config.tie_word_embeddings:
                raise ValueError(f"{folder} has no lm_head.weight, yet config.json says the embeddings are not tied")
            no_yes = weight[rows].clone()  # tied: the output projection is the embedding table
        return cls(model, tokenizer, no_yes)

    def score(
        self,
        query: str | Iterable[tuple[str, str]],
        documents: Iterable[str] | None = None,
        *,
        instruction: str | None = None,
        max_length: int | None = None,
        truncate: bool = True,
        batch_tokens: int | None = None,
        show_progress: bool = False,
        raw: bool = False,
    ) -> torch.Tensor:
        """Relevance probability of each document for the query: float32 CPU tensor [len(documents)], in order.

        Also takes a list of (query, document) pairs in place of query and documents (either: any iterable, read
        once).
        instruction: the task (default: the card's web-search instruction).
        max_length: tokens per pair, prompt included (default 8192); a longer pair has its document's end cut,
        never the prompt, with a warning, or is an error when `truncate` is False. A query that leaves no room for
        a document is an error (TextTooLong), as the server's 413.
        batch_tokens: tokens per forward pass (default 2048 on CPU, 16384 on CUDA).
        raw: return the logit difference `l_yes - l_no` instead of its sigmoid.
        """
        check_bools(truncate=truncate, show_progress=show_progress, raw=raw)
        both = pairs(query, documents)
        cut = Cut(self.max_length(max_length))

        def tokenize(part: list[tuple[str, str]], first: int) -> list[list[int]]:
            return self.tokenize(part, instruction, max_length, truncate, first=first, cut=cut)

        if not both:
            return torch.empty(0)
        with Progress(len(both), unit="pair", enabled=show_progress) as progress:
            logits = self.run_texts(both, tokenize, self.head, batch_tokens, progress, all_first=not truncate)
        cut.warn(stacklevel=2)
        return logits if raw else torch.sigmoid(logits)

    def rank(
        self,
        query: str,
        documents: Iterable[str],
        *,
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        **score_options,
    ) -> list[dict[str, int | float | str]]:
        """The documents best first (ties in input order), as CrossEncoder.rank gives them: `{"corpus_id", "score"}`
        each, with `"text"` (the document) when `return_documents`; the first `top_k` when given. Takes the options
        of `score`; batch_size is not used (as in `Embedder.encode`), show_progress_bar is show_progress."""
        if top_k is not None:
            check_int("top_k", top_k, 0)
        both = pairs(query, documents)
        scores = self.predict(both, batch_size=batch_size, show_progress_bar=show_progress_bar, convert_to_tensor=True,
                              **score_options).tolist()  # fmt: skip
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        ranked = [{"corpus_id": i, "score": scores[i]} for i in order[:top_k]]
        if return_documents:
            for hit in ranked:
                hit["text"] = both[hit["corpus_id"]][1]
        return ranked

    def predict(
        self,
        inputs: tuple[str, str] | Sequence[tuple[str, str]],
        *,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        activation_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **score_options,
    ) -> np.ndarray | torch.Tensor | np.float32:
        """`score` of (query, document) pairs as CrossEncoder.predict returns it: a float32 numpy array [len(pairs)]
        (a tensor with convert_to_tensor=True, or convert_to_numpy=False), a scalar for one pair. Takes the options
        of `score`; batch_size is not used (as in `Embedder.encode`), show_progress_bar is show_progress;
        activation_fn, as CrossEncoder's, maps the logits `l_yes - l_no` (default: the sigmoid;
        `torch.nn.Identity()`: the logits, as raw=True)."""
        single = isinstance(inputs, (list, tuple)) and len(inputs) > 0 and not isinstance(inputs[0], (list, tuple))
        self.ignore_batch_size(batch_size, score_options.get("batch_tokens"))
        score_options["show_progress"] = score_options.get("show_progress", False) or bool(show_progress_bar)
        if activation_fn is not None:
            score_options["raw"] = True
        scores = self.score([inputs] if single else inputs, **score_options)
        scores = scores if activation_fn is None else activation_fn(scores)
        scores = scores.numpy() if convert_to_numpy and not convert_to_tensor else scores
        return scores[0] if single else scores

    def tokenize(
        self,
        pairs: Sequence[tuple[str, str]],
        instruction: str | None = None,
        max_length: int | None = None,
        truncate: bool = True,
        warn: bool = True,
        first: int = 0,
        cut: Cut | None = None,
    ) -> list[list[int]]:
        """The token ids `score` runs for each pair: prefix, the pair's text (its document's end cut to fit
        max_length), suffix (see `Tokenizer.encode` for `warn`, `first` and `cut`). A query that leaves no room for a
        document is an error (TextTooLong), as in `tokenize_query`."""
        instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
        for query in dict.fromkeys(q for q, _ in pairs):
            self.tokenize_query(query, [], instruction, max_length)  # no documents: the query's check alone
        texts = [format_pair(instruction, q, d) for q, d in pairs]
        return self.tokenizer.encode(texts, self.max_length(max_length), truncate, self.prefix, self.suffix, warn,
                                     first, cut)  # fmt: skip

    def tokenize_query(
        self,
        query: str,
        documents: Sequence[str],
        instruction: str | None = None,
        max_length: int | None = None,
        truncate: bool = True,
        warn: bool = True,
        *,
        name: str = "max_length",
        left: bool = False,
        document_tokens: int | None = None,
    ) -> list[list[int]]:
        """The ids `tokenize` gives for the pairs of `query` with each document, with the query tokenized once;
        `left` cuts a document's start instead of its end, `document_tokens` cuts each document to that many tokens.

        Each pair's text is cut after '<Document>:', before the space that leads the document; Qwen's tokenizer
        (NFC, then a split before every space-led run) never joins tokens across that cut, so the ids are exactly
        those of the whole pair (tests/test_server_limits.py checks it against the real tokenizer). A query that
        leaves no room for a document is an error (TextTooLong; the server's 413) that names the limit as `name`.
        """
        instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
        max_length = self.max_length(max_length)
        head = self.prefix + self.tokenizer.ids(format_pair(instruction, query, "").removesuffix(" "))
        if len(head) + len(self.suffix) >= max_length:
            raise TextTooLong(
                f"the query has {len(self.tokenizer.ids(query))} tokens, {len(head) + len(self.suffix)} with the "
                f"prompt, leaving no room for a document within {name}={max_length}: shorten the query, or use "
                f"{name} of at least {len(head) + len(self.suffix) + 1}"
            )
        documents = [" " + d for d in documents]
        if document_tokens is not None:
            max_length, truncate = min(max_length, len(head) + len(self.suffix) + document_tokens), True
        return self.tokenizer.encode(documents, max_length, truncate, prefix=head, suffix=self.suffix, warn=warn,
                                     left=left)  # fmt: skip

    def head(self, last: torch.Tensor) -> torch.Tensor:
        """l_yes - l_no from the final-normed last-token states [B, hidden]: [B] float32."""
        no, yes = (last @ self.no_yes.to(last).T).float().unbind(-1)  # in the model's dtype, after a .half() too
        return yes - no


def pairs(query: str | Iterable[tuple[str, str]], documents: Iterable[str] | None) -> list[tuple[str, str]]:
    """(query, document) pairs from a query and its documents, or from pairs (any iterable, read once); non-strings
    are named."""
    if isinstance(query, str):
        if documents is None or isinstance(documents, str) or not isinstance(documents, Iterable):
            raise TypeError("pass a query and a list of documents, or a list of (query, document) pairs")
        documents = list(documents)
        for i, d in enumerate(documents):
            if not isinstance(d, str):
                raise TypeError(f"documents[{i}] is {type(d).__name__}, not str")
        return [(query, d) for d in documents]
    if documents is not None:
        raise TypeError("pass either a query with documents, or a list of (query, document) pairs, not both")
    if not isinstance(query, Iterable):
        raise TypeError(f"the query is {type(query).__name__}: pass a str with a list of documents, or a list of "
                        "(query, document) pairs")  # fmt: skip
    result = list(query)
    for i, pair in enumerate(result):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise TypeError(f"pairs[{i}] is not a (query, document) pair of strings")
    return [tuple(p) for p in result]
