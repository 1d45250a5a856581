"""MTEB evaluation of an Embedder (the `mteb` extra): `mteb.evaluate(MTEBEncoder(embedder), tasks)`.

Texts are formatted as mteb's own Qwen3-Embedding loader formats them, so that the scores compare with the
leaderboard's: `Instruct: {task}\\nQuery:{text}` with the task's instruction (its metadata's `prompt`), else mteb's
default for the task's type (its abstract task's `abstask_prompt`, such as "Classify user passages." or "Retrieve
semantically similar text."); retrieval documents get none, and the texts of other tasks all get it.
"""

from __future__ import annotations

import numpy as np

try:
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction
    from mteb.types import PromptType
except ImportError as e:
    raise ImportError(f"MTEB evaluation needs the mteb extra ({e}): pip install 'qwen3-embed-triton[mteb]'") from None

from .embedder import Embedder


class MTEBEncoder(AbsEncoder):
    """An Embedder as MTEB's EncoderProtocol. name: how results are filed (an "org/model" name); dim: Matryoshka
    dimensions (default: the hidden size); encode_options: passed to `Embedder.encode` (max_length, batch_tokens)."""

    def __init__(self, embedder: Embedder, name: str = "qwen3-embed/model", dim: int | None = None, **encode_options):
        self.embedder, self.dim, self.encode_options = embedder, embedder.check_dim(dim), encode_options
        self.mteb_model_meta = ModelMeta.create_empty(
            {"name": name, "embed_dim": self.dim, "similarity_fn_name": ScoringFunction.COSINE,
             "use_instructions": True, "framework": ["PyTorch"],
             "max_tokens": embedder.max_length(encode_options.get("max_length"))}
        )  # fmt: skip

    def instruction(self, task_metadata, prompt_type: PromptType | None) -> str | None:
        """The instruction of a task's texts of `prompt_type` (None for retrieval documents, or where there is none)."""
        if prompt_type == PromptType.document:
            return None
        instruction = self.get_instruction(task_metadata, prompt_type)  # mteb's choice: the task's, else its type's
        if isinstance(instruction, dict):  # a prompt per prompt type, for texts of none: the first, as mteb's loader
            instruction = next(iter(instruction.values()))
        return instruction or None

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        instruction = self.instruction(task_metadata, prompt_type)
        show_progress = kwargs.get("show_progress_bar", False)
        return self.embedder.encode(texts, instruction=instruction, dim=self.dim, show_progress=show_progress,
                                    **self.encode_options).numpy()  # fmt: skip
