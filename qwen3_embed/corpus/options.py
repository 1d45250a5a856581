"""What a run asks for besides the model, the input and the output, checked in one place before any weights load:
what needs no model when the options are made, what needs the checkpoint's config by `check_model`, and what needs
its tokenizer and prompts by `settle`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..checks import check_dim, check_int, check_max_length
from ..config import Qwen3Config
from ..embedder import Embedder
from ..store.quantize import quantization_ranges
from ..store.shards import VECTOR_DTYPES, VECTOR_FORMATS

CALIBRATED = ("int8", "uint8")  # the vector dtypes whose ranges come from calibration vectors


class Settled(NamedTuple):
    """The options as a checkpoint settles them: its dim and max_length, and the int8/uint8 ranges [2, dim]."""

    dim: int
    max_length: int
    ranges: np.ndarray | None


def flag(name: str) -> str:
    """An option's name as the command line spells it: max_length -> --max-length."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Options:
    """How records are read and embedded: what one file built in memory (`encode_file`) is asked for."""

    text_field: str | None = None  # default 'text'; only for JSON lines and Parquet
    id_field: str | None = None
    input_format: str | None = None  # default: detected per file
    vector_dtype: str = "float32"
    instruction: str | None = None
    prompt_name: str | None = None
    dim: int | None = None
    max_length: int | None = None
    truncate: bool = True
    batch_tokens: int | None = None
    skip_bad: bool = False
    unique_ids: bool = False  # refuse ids that more than one record has (else a warning names them)
    calibration: np.ndarray | None = None  # vectors [n, dim] whose ranges int8 and uint8 quantize with
    check_kind: bool = True  # False: load a checkpoint whose files say it is a reranker (not a setting)

    def __post_init__(self) -> None:
        if self.batch_tokens is not None:
            check_int("batch_tokens", self.batch_tokens, 1)
        if self.unique_ids and self.id_field is None:
            raise ValueError(
                "unique_ids (--unique-ids) checks the ids of an id field (--id-field); without one, ids are positions "
                "(or name:line), unique as they are: drop it"
            )
        if self.vector_dtype not in VECTOR_DTYPES:
            raise ValueError(f"vector_dtype={self.vector_dtype!r} is not one of {', '.join(VECTOR_DTYPES)}")
        if self.vector_dtype not in CALIBRATED and self.calibration is not None:
            raise ValueError(f"calibration vectors set the ranges of int8 and uint8, not of {self.vector_dtype}")
        if self.vector_dtype in CALIBRATED and self.calibration is None:
            raise ValueError(
                f"{self.vector_dtype} vectors need calibration vectors (each dimension's range over them is cut into "
                "256 steps): embed a representative sample of the corpus, a thousand texts or more, into one file "
                "(`qwen3-embed encode --input sample.txt --output calibration.npy`) and pass it with --calibration "
                "calibration.npy (calibration= in Python)"
            )

    def check_model(self, config: Qwen3Config, flags: bool = False) -> tuple[int, int]:
        """(dim, max_length) for a checkpoint of this config, defaults filled in: dim at most its hidden size,
        max_length at most its positions. `flags`: errors name the options as the command line does (--dim)."""
        name = flag if flags else str
        dim = check_dim(self.dim, config.hidden_size, name("dim"))
        return dim, check_max_length(self.max_length, config.max_position_embeddings, name("max_length"))

    def settle(self, model: Embedder) -> Settled:
        """`check_model` with the checkpoint's tokenizer and prompts (a weightless model will do): the instruction
        or prompt_name applied to a text, and the calibration vectors against dim."""
        dim, max_length = self.check_model(model.config)
        model.tokenize([""], self.instruction, self.prompt_name, max_length)  # a bad prompt fails now
        if self.calibration is None:
            return Settled(dim, max_length, None)
        calibration = np.asarray(self.calibration)
        if calibration.ndim != 2 or calibration.shape[1] != dim or calibration.dtype.kind != "f":
            raise ValueError(
                f"calibration vectors must be float [n, {dim}] (this run's dim), not {calibration.dtype} "
                f"{list(calibration.shape)}: embed them with the same model and dim"
            )
        return Settled(dim, max_length, quantization_ranges(calibration))


@dataclass(frozen=True)
class ShardOptions(Options):
    """What a folder of shards (`encode_corpus`, `encode_corpus_ray`) is asked for: the Options, and how the
    shards are cut, written and checked on a rerun."""

    chunk_size: int = 10_000
    vector_format: str = "npy"
    verify: bool = True  # check the sha256 of the shards a rerun skips (their sizes and counts always)
    store_text: bool = False  # keep each shard's texts beside its vectors (for reranking search results)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("chunk_size", self.chunk_size, 1)
        if self.vector_format not in VECTOR_FORMATS:
            raise ValueError(f"vector_format={self.vector_format!r} is not one of {', '.join(VECTOR_FORMATS)}")
