"""Find a checkpoint (local folder or hub id), read its safetensors, and map its keys to the model's parameters.

The model stacks q/k/v and gate/up by rows into one parameter each (`qkv_proj`, `gate_up_proj`); the checkpoint
stores them apart. `layout` says where each checkpoint tensor lives in the model, and the hooks `split_stacked`,
`stack_parts` and `name_missing_parts` (which Qwen3Model registers) let its `state_dict()` and `load_state_dict()`
speak the checkpoint's keys. They read the model's config and change nothing but the state dict in hand."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from .checks import UsageError
from .config import Qwen3Config

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


def resolve(name_or_path: str | os.PathLike, files: list[str] = NEEDED_FILES) -> Path:
    """A local folder as it is, or a hub id downloaded (or found in the local cache) with only the needed `files`."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{name!r} is not a checkpoint folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(name, allow_patterns=files))
    except HFValidationError as e:
        raise ValueError(f"{name!r} is not a valid hub id: {e}") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{name!r} is not a repository on the Hugging Face Hub (or it is private: log in with `hf auth login`)"
        ) from None
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        fix = "unset HF_HUB_OFFLINE to let it download" if offline else "check the network connection"
        raise FileNotFoundError(
            f"{name!r} is not a local folder, and as a hub id it is neither in the local Hugging Face cache nor "
            f"reachable on the hub{' (HF_HUB_OFFLINE is set)' if offline else ''}: {fix}, or pass the path of a "
            "local checkpoint folder"
        ) from None


def read_config(name_or_path: str | os.PathLike) -> Qwen3Config:
    """The config of a local folder or hub id, fetching nothing but config.json (to check options before the
    weights are downloaded or loaded)."""
    return Qwen3Config.from_json(resolve(name_or_path, ["config.json"]) / "config.json")


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


def stacked_parts(config: Qwen3Config) -> dict[str, list[tuple[str, int]]]:
    """Each stacked projection of a decoder layer -> the checkpoint tensors it holds, in row order, with their rows."""
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    inter = config.intermediate_size
    attention = [("self_attn.q_proj.weight", q), ("self_attn.k_proj.weight", kv), ("self_attn.v_proj.weight", kv)]
    mlp = [("mlp.gate_proj.weight", inter), ("mlp.up_proj.weight", inter)]
    return {"self_attn.qkv_proj.weight": attention, "mlp.gate_up_proj.weight": mlp}


def _parts_of(key: str, config: Qwen3Config) -> list[tuple[str, int]] | None:
    """The checkpoint tensors (full keys, rows) of a stacked parameter's key; None for any other key."""
    for stacked, parts in stacked_parts(config).items():
        if key.endswith("." + stacked):
            base = key[: -len(stacked)]
            return [(base + part, rows) for part, rows in parts]
    return None


def layout(params: dict[str, torch.Size], config: Qwen3Config) -> dict[str, tuple[str, int, torch.Size]]:
    """Where each checkpoint tensor lives among the model's `params` (name -> shape): its name -> (parameter, first
    row, shape). A stacked parameter holds several, one after the other."""
    found = {}
    for name, shape in params.items():
        parts = _parts_of(name, config)
        if parts is None:
            found[name] = (name, 0, shape)
            continue
        row = 0
        for part, rows in parts:
            found[part] = (name, row, torch.Size([rows, *shape[1:]]))
            row += rows
    return found


def split_stacked(model, state: dict, prefix: str, local_metadata=None) -> None:
    """state_dict hook: each stacked parameter of `state` replaced by the checkpoint's tensors (views of its rows)."""
    for key in [k for k in state if k.startswith(prefix)]:
        parts = _parts_of(key, model.config)
        if parts is not None:
            stacked, row = state.pop(key), 0
            for part, rows in parts:
                state[part] = stacked[row : row + rows]
                row += rows


def stack_parts(model, state: dict, prefix: str, *_) -> None:
    """load_state_dict pre-hook: the checkpoint's tensors of each stacked parameter, checked for shape and stacked
    when all are there; else they stay apart (unexpected, and the stacked parameter missing: `name_missing_parts`).
    Every layer the model holds, whatever its config says (a reader may add or drop layers)."""
    config = model.config
    for layer in range(len(model.layers)):
        for stacked in stacked_parts(config):
            key = f"{prefix}layers.{layer}.{stacked}"
            parts = _parts_of(key, config)
            for part, rows in parts:
                if part in state and tuple(state[part].shape) != (rows, config.hidden_size):
                    shape = tuple(state[part].shape)
                    raise ValueError(f"{part} has shape {shape}; this model takes {(rows, config.hidden_size)}")
            if key not in state and all(part in state for part, _ in parts):  # given both ways: the parts unexpected
                state[key] = torch.cat([state.pop(part) for part, _ in parts])


def name_missing_parts(model, result) -> None:
    """load_state_dict post-hook: a missing stacked parameter reported as the checkpoint tensors that were absent."""
    named = []
    for key in result.missing_keys:
        parts = _parts_of(key, model.config)
        named += [key] if parts is None else [part for part, _ in parts if part not in result.unexpected_keys]
    result.missing_keys[:] = named


def checkpoint_key(key: str) -> str:
    """The model's name for a checkpoint key: embedding repos have no `model.` prefix, reranker repos do."""
    return key.removeprefix("model.")


def kind(folder: Path) -> str | None:
    """What a checkpoint's files say it is: "embedding" (sentence-transformers files and keys without the `model.`
    prefix, as the Qwen3-Embedding repos ship), "reranker" (neither, as the Qwen3-Reranker repos ship), or None
    where the two signs disagree."""
    sentence_transformers = any((folder / f).exists() for f in ("modules.json", "config_sentence_transformers.json"))
    prefixed = any(key.startswith("model.") for key in SafetensorsFile(weight_files(folder)[0]).entries)
    if sentence_transformers == prefixed:
        return None
    return "embedding" if sentence_transformers else "reranker"


KINDS = {  # kind -> (what the repos are called, the class that loads them, the flags of the commands that take them)
    "embedding": ("Qwen3-Embedding", "Embedder", "the --model of similarity, encode, search or serve"),
    "reranker": ("Qwen3-Reranker", "Reranker", "the --model of rerank, or the --reranker of search or serve"),
}


def check_kind(folder: Path, expected: str) -> None:
    """A checkpoint whose files say it is of the other kind is an error that says how to load it."""
    found = kind(folder)
    if found is None or found == expected:
        return
    name, loader, flags = KINDS[found]
    signs = "has sentence-transformers files" if found == "embedding" else "has no sentence-transformers files"
    signs += " and keys " + ("without" if found == "embedding" else "with") + " the 'model.' prefix"
    found_it = f"{folder} looks like a {name} checkpoint (it {signs}), not a {KINDS[expected][0]} one"
    raise UsageError(
        f"{found_it}: load it with {loader}.from_pretrained, or pass check_kind=False to load it anyway",
        f"{found_it}: give it as {flags}, or pass --ignore-kind to load it anyway",
    )


# safetensors' dtype names for the tensors a Qwen3 checkpoint holds
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


class SafetensorsFile:
    """The header of a .safetensors file, and its tensors read with plain file reads into fresh CPU tensors: no
    memory map, so no mapped file pages stay resident beside the weights while a model fills up."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if length > size - 8:
                self._fail(f"its header claims {length} bytes, more than the file holds")
            try:
                header = json.loads(f.read(length))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                self._fail(f"its header is not JSON: {e}")
        header.pop("__metadata__", None)
        self.data_start = 8 + length
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int]] = {}  # key -> dtype, shape, offset
        for key, entry in header.items():
            dtype = SAFETENSORS_DTYPES.get(entry.get("dtype"))
            if dtype is None:
                self._fail(f"{key!r} has the dtype {entry.get('dtype')!r}, not one of {sorted(SAFETENSORS_DTYPES)}")
            shape, (begin, end) = tuple(entry["shape"]), entry["data_offsets"]
            if end - begin != math.prod(shape) * dtype.itemsize:
                self._fail(
                    f"{key!r} spans {end - begin} bytes, not the {math.prod(shape) * dtype.itemsize} of its shape"
                )
            if self.data_start + end > size:
                self._fail(f"{key!r} ends at byte {self.data_start + end}, past the end of the file ({size})")
            self.entries[key] = dtype, shape, self.data_start + begin

    def shape(self, key: str) -> tuple[int, ...]:
        return self.entries[key][1]

    def nbytes(self, key: str) -> int:
        dtype, shape, _ = self.entries[key]
        return math.prod(shape) * dtype.itemsize

    def read(self, key: str, rows: list[int] | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor (only the given rows of its first dimension, when given), in the file's dtype, on the CPU:
        in fresh memory, or in `out` (a contiguous CPU tensor of that dtype and shape)."""
        dtype, shape, offset = self.entries[key]
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        spans = [(offset, math.prod(shape) * dtype.itemsize)] if rows is None else [
            (offset + row * row_bytes, row_bytes) for row in rows]  # fmt: skip
        shape = shape if rows is None else (len(rows), *shape[1:])
        out = torch.empty(shape, dtype=dtype) if out is None else out
        buffer = out.view(-1).view(torch.uint8).numpy()
        with open(self.path, "rb") as f:
            done = 0
            for start, length in spans:
                f.seek(start)
                f.readinto(buffer[done : done + length])
                done += length
        return out

    def _fail(self, why: str):
        raise OSError(f"{self.path} is truncated or corrupt ({why}); delete it and download or copy it again")


def read_state_dict(
    folder: Path,
    layout: dict[str, tuple[str, int, torch.Size]],
    params: dict[str, torch.Size],
    dtype: torch.dtype,
    device: torch.device,
    skip: frozenset[str] = frozenset(),
) -> dict[str, torch.Tensor]:
    """Every parameter of `params` on `device` in `dtype`, filled with the checkpoint tensors that `layout` places
    in it (a tensor's name -> (parameter, first row, shape)), read one at a time.

    A tensor stored in `dtype`, for the CPU, is read straight into its rows of the parameter; any other is read into
    one reused buffer (pinned for a GPU) and converted or copied from there, so the most memory beyond the model is
    one tensor as stored. Strict: a missing, unexpected (and not in `skip`), duplicated or wrongly shaped tensor is
    an error naming it.
    """
    files = [SafetensorsFile(path) for path in weight_files(folder)]
    largest = max((f.nbytes(key) for f in files for key in f.entries), default=0)
    scratch = None
    state: dict[str, torch.Tensor] = {}
    seen: set[str] = set()
    for file in files:
        for key in file.entries:
            name = checkpoint_key(key)
            if name in skip:
                continue
            if name not in layout:
                raise ValueError(
                    f"{file.path.name} has the unexpected key {key!r}: is this a Qwen3 embedding checkpoint?"
                )
            if name in seen:
                raise ValueError(f"{file.path.name} holds {name!r} twice (with and without the 'model.' prefix)")
            param, row, shape = layout[name]
            if file.shape(key) != tuple(shape):
                raise ValueError(
                    f"{key!r} in {file.path.name} has shape {list(file.shape(key))}, but config.json implies "
                    f"{list(shape)}"
                )
            if param not in state:
                state[param] = torch.empty(params[param], dtype=dtype, device=device)
            rows = state[param][row : row + shape[0]]
            stored = file.entries[key][0]
            if stored == dtype and device.type == "cpu":
                file.read(key, out=rows)
            else:
                if scratch is None:
                    scratch = torch.empty(largest, dtype=torch.uint8, pin_memory=device.type == "cuda")
                rows.copy_(file.read(key, out=scratch[: file.nbytes(key)].view(stored).view(shape)))
            seen.add(name)
    missing = [name for name in layout if name not in seen]
    if missing:
        raise ValueError(f"the checkpoint in {folder} lacks {len(missing)} tensors the model needs: {missing[:5]}")
    return state


def read_rows(
    folder: Path, key: str, rows: list[int], shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """Only the given rows of a checkpoint tensor of `shape`, read from disk (None when there is no such key)."""
    for file in map(SafetensorsFile, weight_files(folder)):
        if key in file.entries:
            if file.shape(key) != tuple(shape):
                found = list(file.shape(key))
                raise ValueError(
                    f"{key!r} in {file.path.name} has shape {found}, but config.json implies {list(shape)}"
                )
            return file.read(key, rows).to(device=device, dtype=dtype)
    return None
