"""Find a checkpoint (local folder or hub id), read its safetensors, and load a model straight into place."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .config import Qwen3Config
from .model import Qwen3Model

# What a Qwen3-Embedding / Qwen3-Reranker repo needs to run here; nothing else is downloaded.
NEEDED_FILES = [
    "config.json",
    "tokenizer.json",
    "config_sentence_transformers.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
]

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from a name such as 'bfloat16' or 'bf16' (or a torch.dtype)."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype {dtype!r} is not supported; use one of float32, bfloat16, float16")


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local folder as it is, or a hub id downloaded (or found in the local cache) with only the needed files."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{name!r} is not a checkpoint folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(name, allow_patterns=NEEDED_FILES))
    except HFValidationError as e:
        raise ValueError(f"{name!r} is not a valid hub id: {e}") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{name!r} is not a repository on the Hugging Face Hub (or it is private: log in with `hf auth login`)"
        ) from None
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"{name!r} is not a local folder, and as a hub id it is neither in the local Hugging Face cache nor "
            f"reachable on the hub "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}). Connect to the internet and unset "
            "HF_HUB_OFFLINE to download it, or pass the path of a local checkpoint folder."
        ) from None


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint: one `model.safetensors`, or the shards its index names."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).exists()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that are not in the folder: {missing}; download them again")
        return [folder / s for s in shards]
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    raise FileNotFoundError(
        f"{folder} has neither model.safetensors nor model.safetensors.index.json "
        "(only safetensors checkpoints are supported)"
    )


def checkpoint_key(key: str) -> str:
    """The model's name for a checkpoint key: embedding repos have no `model.` prefix, reranker repos do."""
    return key.removeprefix("model.")


def read_state_dict(
    folder: Path,
    shapes: dict[str, torch.Size],
    dtype: torch.dtype,
    device: torch.device,
    skip: frozenset[str] = frozenset(),
) -> dict[str, torch.Tensor]:
    """Every tensor of `shapes` from the checkpoint, each read straight onto `device` and cast to `dtype`.

    Strict: a missing, unexpected (and not in `skip`), duplicated or wrongly shaped key is an error naming it.
    """
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(folder):
        try:
            with safe_open(file, framework="pt", device=str(device)) as f:
                for key in f.keys():
                    name = checkpoint_key(key)
                    if name in skip:
                        continue
                    if name not in shapes:
                        raise ValueError(
                            f"{file.name} has the unexpected key {key!r}: is this a Qwen3 embedding checkpoint?"
                        )
                    if name in state:
                        raise ValueError(f"{file.name} holds {name!r} twice (with and without the 'model.' prefix)")
                    shape = tuple(f.get_slice(key).get_shape())
                    if shape != tuple(shapes[name]):
                        raise ValueError(
                            f"{key!r} in {file.name} has shape {list(shape)}, but config.json implies "
                            f"{list(shapes[name])}"
                        )
                    state[name] = f.get_tensor(key).to(dtype)
        except SafetensorError as e:
            raise OSError(f"{file} is truncated or corrupt ({e}); delete it and download or copy it again") from None
    missing = [name for name in shapes if name not in state]
    if missing:
        raise ValueError(f"the checkpoint in {folder} lacks {len(missing)} tensors the model needs: {missing[:5]}")
    return state


def load_model(
    folder: Path, config: Qwen3Config, dtype: torch.dtype, device: torch.device, skip: frozenset[str] = frozenset()
) -> Qwen3Model:
    """A Qwen3Model with the checkpoint's weights (ignoring the keys in `skip`), built without ever allocating
    random weights."""
    with torch.device("meta"):
        model = Qwen3Model(config)
    shapes = {name: t.shape for name, t in model.state_dict().items()}
    model.load_state_dict(read_state_dict(folder, shapes, dtype, device, skip), strict=True, assign=True)
    return model.eval().requires_grad_(False)


def read_rows(
    folder: Path, key: str, rows: list[int], shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """Only the given rows of a checkpoint tensor of `shape`, read from disk (None when there is no such key)."""
    for file in weight_files(folder):
        with safe_open(file, framework="pt", device="cpu") as f:
            if key not in f.keys():
                continue
            tensor = f.get_slice(key)
            if tuple(tensor.get_shape()) != tuple(shape):
                found = list(tensor.get_shape())
                raise ValueError(f"{key!r} in {file.name} has shape {found}, but config.json implies {list(shape)}")
            return torch.cat([tensor[r : r + 1] for r in rows]).to(device=device, dtype=dtype)
    return None
