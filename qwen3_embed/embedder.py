"""Embedder: texts -> L2-normalized Qwen3-Embedding vectors."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checks import check_bools, check_dim
from .config import read_json_object
from .model import Qwen3Model
from .pipeline import DEFAULT_INSTRUCTION, Pipeline, Progress
from .store.quantize import check_precision, quantize
from .tokenize import Cut, Tokenizer


def format_instruction(instruction: str, text: str) -> str:
    """The model card's query format (no space after 'Query:')."""
    return f"Instruct: {instruction}\nQuery:{text}"


class Embedder(Pipeline):
    KIND = "embedding"
    folder: Path | None = None  # the checkpoint folder from_pretrained loaded it from (which a corpus records)

    def __init__(
        self,
        model: Qwen3Model,
        tokenizer: Tokenizer,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
    ):
        super().__init__(model, tokenizer)
        self.prompts = prompts or {}
        self.default_prompt_name = default_prompt_name

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "Qwen/Qwen3-Embedding-0.6B",
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        check_kind: bool = True,
    ) -> Embedder:
        """Load a local folder or hub id (default: CUDA in bf16 when available, else CPU in float32); a checkpoint
        whose files say it is a reranker is an error unless `check_kind` is False."""
        folder, model, tokenizer = cls.load(name_or_path, device, dtype, check_kind)
        embedder = cls(model, tokenizer, *read_prompts(folder))
        embedder.folder = folder
        return embedder

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        instruction: str | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        dim: int | None = None,
        truncate_dim: int | None = None,
        normalize: bool = True,
        normalize_embeddings: bool = False,
        max_length: int | None = None,
        truncate: bool = True,
        batch_tokens: int | None = None,
        batch_size: int | None = None,
        show_progress: bool = False,
        show_progress_bar: bool | None = None,
        precision: str = "float32",
        ranges: np.ndarray | None = None,
        calibration_embeddings: torch.Tensor | np.ndarray | None = None,
        convert_to_numpy: bool = False,
        convert_to_tensor: bool | None = None,
    ) -> torch.Tensor | np.ndarray:
        """Embed texts: float32 CPU tensor [len(texts), dim] in the input's order ([dim] for a single string).

        instruction: formats each text as `Instruct: {instruction}\nQuery:{text}` (for queries).
        prompt_name: prepends a prompt of the checkpoint's config_sentence_transformers.json (e.g. 'query').
        prompt: prepends this text as it is (what instruction and prompt_name prepend); one of the three at most.
        dim (or truncate_dim): keep the first `dim` values (Matryoshka), normalized afterwards; default: hidden size.
        normalize: L2-normalize the vectors (normalize_embeddings=True too).
        max_length: tokens per text with EOS (default 8192); longer: cut with a warning, or an error if not `truncate`.
        batch_tokens: tokens per forward pass (default 2048 on CPU, 16384 on CUDA); a longer text runs alone.
        batch_size: not used (packed by tokens; it warns). show_progress (or show_progress_bar): a progress bar.
        precision: int8, uint8, binary or ubinary vectors as sentence-transformers' quantize_embeddings makes them
        (int8/uint8 by `ranges` [2, dim], or those of `calibration_embeddings` or of the vectors), or float16.
        convert_to_numpy (or convert_to_tensor=False): numpy, not a tensor (convert_to_tensor=True: a tensor)."""
        check_bools(normalize=normalize, truncate=truncate, show_progress=show_progress,
                    convert_to_numpy=convert_to_numpy)  # fmt: skip
        single = isinstance(texts, str)
        dim = self.check_dim(one_of_aliases(dim=dim, truncate_dim=truncate_dim))
        check_quantization(precision, ranges, calibration_embeddings)
        self.ignore_batch_size(batch_size, batch_tokens)
        check_texts(texts := [texts] if single else list(texts))
        self.prefix(instruction, prompt_name, prompt)  # its errors, before any work
        cut = Cut(self.max_length(max_length))

        def tokenize(part: list[str], first: int) -> list[list[int]]:
            return self.tokenize(part, instruction, prompt_name, max_length, truncate, first=first, cut=cut,
                                 prompt=prompt)  # fmt: skip

        if texts:
            head = lambda last: last[:, :dim].float()  # noqa: E731
            with Progress(len(texts), enabled=show_progress or bool(show_progress_bar)) as progress:
                vectors = self.run_texts(texts, tokenize, head, batch_tokens, progress, all_first=not truncate)
            cut.warn(stacklevel=2)
            vectors = self.finish(vectors, normalize or normalize_embeddings)
        else:
            vectors = torch.empty(0, dim)
        return self.deliver(vectors, single, precision, ranges, calibration_embeddings,
                            (convert_to_numpy or convert_to_tensor is False) and not convert_to_tensor)  # fmt: skip

    @staticmethod
    def deliver(
        vectors: torch.Tensor,
        single: bool,
        precision: str,
        ranges: np.ndarray | None,
        calibration: torch.Tensor | np.ndarray | None,
        to_numpy: bool,
    ) -> torch.Tensor | np.ndarray:
        """`encode`'s answer from its float vectors: quantized to `precision`, a row for a single text, numpy or not."""
        if precision != "float32":
            vectors = torch.from_numpy(quantize(vectors, precision, ranges=ranges, calibration=calibration))
        vectors = vectors[0] if single else vectors
        return vectors.numpy() if to_numpy else vectors

    def encode_query(self, texts: str | Sequence[str], **options) -> torch.Tensor | np.ndarray:
        """`encode` for queries: with the given instruction, prompt_name or prompt, else the checkpoint's "query"
        prompt, else the model card's web-search instruction (the same text)."""
        if not has_prompt(options):
            options["prompt"] = self.query_prompt()
        return self.encode(texts, **options)

    def query_prompt(self) -> str:
        """What `encode_query` puts before a query by default: the checkpoint's "query" prompt, else the model card's
        web-search instruction (the same text)."""
        return self.prompts["query"] if "query" in self.prompts else format_instruction(DEFAULT_INSTRUCTION, "")

    def encode_document(self, texts: str | Sequence[str], **options) -> torch.Tensor | np.ndarray:
        """`encode` for documents: the checkpoint's "document" prompt when it has one (empty for the released
        models), else no prompt."""
        if not has_prompt(options) and "document" in self.prompts:
            options["prompt_name"] = "document"
        return self.encode(texts, **options)

    def tokenize(
        self,
        texts: Sequence[str],
        instruction: str | None = None,
        prompt_name: str | None = None,
        max_length: int | None = None,
        truncate: bool = True,
        warn: bool = True,
        first: int = 0,
        cut: Cut | None = None,
        prompt: str | None = None,
        left: bool = False,
    ) -> list[list[int]]:
        """The token ids `encode` runs for each text: prompt applied, one final EOS, cut to max_length (see
        `Tokenizer.encode` for `warn`, `first`, `cut` and `left`, which cuts the start, the prompt's tokens first)."""
        texts = list(texts)
        check_texts(texts, first)
        prefix = self.prefix(instruction, prompt_name, prompt)
        max_length = self.max_length(max_length)
        if prefix and first == 0:
            self.check_room(len(self.tokenizer.ids(prefix)), max_length, warn or cut is not None)
        texts = [prefix + t for t in texts] if prefix else texts
        return self.tokenizer.encode(texts, max_length, truncate, warn=warn, first=first, cut=cut, left=left)

    @staticmethod
    def check_room(prompt: int, max_length: int, warn: bool) -> None:
        """A prompt of `prompt` tokens must leave a text a token within max_length (with the EOS), and is warned
        about when it leaves less than itself: every text cut to a few tokens gets nearly the same vector."""
        room = max_length - prompt - 1
        if room < 1:
            raise ValueError(
                f"the prompt takes {prompt} tokens, leaving no room for a text within max_length={max_length}: use "
                f"max_length of at least {prompt + 2}"
            )
        if room < prompt and warn:
            warnings.warn(
                f"the prompt takes {prompt} of max_length={max_length} tokens, leaving {room} for each text with its "
                "EOS; raise max_length",
                stacklevel=4,
            )

    def check_dim(self, dim: int | None) -> int:
        """The output dimensions: an integer in 1..hidden, default hidden."""
        return check_dim(dim, self.config.hidden_size)

    def finish(self, vectors: torch.Tensor, normalize: bool) -> torch.Tensor:
        """Pooled vectors [n, dim] -> L2-normalized (when asked); non-finite rows are an error naming them."""
        bad = (~torch.isfinite(vectors).all(dim=1)).nonzero().flatten().tolist()
        if bad:
            weights = "the checkpoint's weights may hold NaN or infinite values: download it again"
            advice = {
                torch.float16: "float16 overflows on some inputs: use dtype='bfloat16' or 'float32'",
                torch.bfloat16: f"try dtype='float32'; if it gives them too, {weights}",
            }.get(self.dtype, weights)
            raise FloatingPointError(
                f"the model produced non-finite values (inf or NaN) in {self.dtype} for the texts at indices {bad}; "
                f"{advice}"
            )
        return F.normalize(vectors, dim=-1) if normalize else vectors

    @staticmethod
    def similarity(a: torch.Tensor | np.ndarray | Sequence, b: torch.Tensor | np.ndarray | Sequence) -> torch.Tensor:
        """Cosine similarity of every row of `a` with every row of `b`: [n, m] (a 1-D input counts as one row).
        Tensors, numpy arrays and (nested) lists of numbers are accepted; an empty one is no vectors."""
        a, b = (torch.as_tensor(x).float() for x in (a, b))
        a, b = (x.reshape(0, 0) if x.shape == (0,) else torch.atleast_2d(x) for x in (a, b))
        if a.dim() != 2 or b.dim() != 2:
            raise ValueError(f"similarity takes vectors or matrices of vectors, not {a.dim()}-D and {b.dim()}-D inputs")
        if not (a.shape[0] and b.shape[0]):
            return torch.zeros(a.shape[0], b.shape[0])
        if a.shape[-1] != b.shape[-1]:
            raise ValueError(f"cannot compare vectors of {a.shape[-1]} and {b.shape[-1]} dimensions")
        return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T

    def prefix(self, instruction: str | None, prompt_name: str | None, prompt: str | None) -> str:
        """The text put before each text: the instruction's, the named prompt's, the prompt itself, else the
        checkpoint's default prompt's (if any); more than one of the three is an error."""
        given = [name for name, value in [("instruction", instruction), ("prompt_name", prompt_name),
                                          ("prompt", prompt)] if value is not None]  # fmt: skip
        if len(given) > 1:
            raise ValueError(f"pass one of instruction, prompt_name and prompt, not {' and '.join(given)}")
        if instruction is not None:
            return format_instruction(instruction, "")
        if prompt is not None:
            return prompt
        prompt_name = prompt_name or self.default_prompt_name
        if prompt_name is None:
            return ""
        if prompt_name not in self.prompts:
            raise ValueError(
                f"prompt_name={prompt_name!r} is not among the checkpoint's prompts {sorted(self.prompts)} "
                "(config_sentence_transformers.json)"
            )
        return self.prompts[prompt_name]

    def get_embedding_dimension(self) -> int:
        """The dimensions of `encode`'s vectors by default (the hidden size), as sentence-transformers names it."""
        return self.config.hidden_size

    get_sentence_embedding_dimension = get_embedding_dimension  # its name before sentence-transformers 6

    @property
    def similarity_fn_name(self) -> str:
        """What `similarity` computes, as sentence-transformers names it: always "cosine"."""
        return "cosine"


def has_prompt(options: dict) -> bool:
    """Whether encode options name an instruction, a prompt_name or a prompt."""
    return any(options.get(name) is not None for name in ("instruction", "prompt_name", "prompt"))


def check_quantization(precision: str, ranges, calibration_embeddings) -> None:
    """A precision `quantize` knows; ranges and calibration vectors only for int8 and uint8, which use them."""
    check_precision(precision)
    if (ranges is not None or calibration_embeddings is not None) and precision not in ("int8", "uint8"):
        raise ValueError(f"ranges and calibration_embeddings are for precision='int8' or 'uint8', not {precision!r}")


def check_texts(texts: list, first: int = 0) -> None:
    """Every item a str, else a TypeError naming the first that is not (by its index plus `first`)."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{first + i}] is {type(text).__name__}, not str")


def read_prompts(folder: Path) -> tuple[dict[str, str], str | None]:
    """The named prompts of a sentence-transformers checkpoint, and its default prompt name."""
    path = folder / "config_sentence_transformers.json"
    if not path.exists():
        return {}, None
    st = read_json_object(path)
    return st.get("prompts") or {}, st.get("default_prompt_name")


def one_of_aliases(**given) -> object:
    """The value of an option given under either of its two names (ours first); both, with different values, is an
    error."""
    (ours, value), (alias, other) = given.items()
    if other is None:
        return value
    if value is not None and value != other:
        raise ValueError(f"{ours}={value} and {alias}={other} are the same option; pass one")
    return other
