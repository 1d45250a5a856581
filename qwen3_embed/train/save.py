"""Saving: the trained model in its checkpoint's own layout, and the training state a killed run resumes from.
Both are written into a temporary folder beside their destination and renamed into place, so a crash never leaves
a half-written one.

The model folder holds model.safetensors (the checkpoint's keys, LoRA merged), config.json (its dtype updated)
and every other file of the source checkpoint (tokenizer, sentence-transformers' modules): sentence-transformers,
transformers and this project load it as they load the source.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..checkpoint import SafetensorsFile, weight_files
from ..pipeline import Pipeline

WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json", "*.bin", "*.pt")


@contextmanager
def written_atomically(destination: Path):
    """A fresh temporary folder beside `destination`, renamed to it once the block succeeds (removed if not)."""
    partial = destination.with_name(f".{destination.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a crash
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(destination)


def save_model(pipeline: Pipeline, source: Path, output: Path, reranker: bool = False) -> None:
    """The pipeline's model into the new folder `output` in the layout of its `source` checkpoint: the embedding
    repos' keys, or the reranker repos' (`model.` prefix, and `lm_head.weight` with the trained "no"/"yes" rows when
    the checkpoint does not tie it to the embeddings)."""
    if output.exists():
        raise FileExistsError(f"{output} already exists: choose another --output, or remove it")
    state = {key: tensor.detach().cpu().clone() for key, tensor in pipeline.model.state_dict().items()}
    dtype = next(iter(state.values())).dtype
    if reranker:
        state = {f"model.{key}": tensor for key, tensor in state.items()}
        if not pipeline.config.tie_word_embeddings:
            state["lm_head.weight"] = output_projection(source, pipeline, dtype)
    with written_atomically(output) as folder:
        shutil.copytree(source, folder, ignore=shutil.ignore_patterns(*WEIGHT_FILES), dirs_exist_ok=True)
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        config = json.loads((source / "config.json").read_text(encoding="utf-8"))
        config.update({key: str(dtype).removeprefix("torch.") for key in ("dtype", "torch_dtype") if key in config})
        (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def output_projection(source: Path, reranker, dtype: torch.dtype) -> torch.Tensor:
    """The source's lm_head.weight with the reranker's trained "no" and "yes" rows written in."""
    for file in map(SafetensorsFile, weight_files(source)):
        if "lm_head.weight" in file.entries:
            weight = file.read("lm_head.weight").to(dtype)
            weight[reranker.rows] = reranker.no_yes.detach().to(dtype).cpu()
            return weight
    raise ValueError(f"{source} has no lm_head.weight, yet config.json says the embeddings are not tied")
