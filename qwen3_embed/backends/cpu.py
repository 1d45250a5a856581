"""The CPU backend: each projection's weight packed once into oneDNN's blocked layout, and its rows padded to a few
sizes.

`pack(model)` swaps every `nn.Linear` of a model for a `PackedLinear` (at load, for a CPU model); `unpack(model)`
swaps them back. A packed weight runs oneDNN's kernel without a reorder per call: in float32 about twice PyTorch's
default `F.linear` (MKL, which leaves AVX-512 unused on AMD CPUs) on the benchmarks' CPU, the same vectors within
float32 rounding. oneDNN builds and keeps a kernel per row count, so rows are padded to one of 8 steps per power
of two (at most 1/8 more): without it, 400 batch sizes grew a 4-layer model's memory by 7 GB.

A packed layer is still an nn.Module: `.to(dtype)`, `.half()`, `.double()`, `.to(device)` unpack, convert and
pack again where oneDNN takes the result; `state_dict()` gives a plain copy of the weight (editing it in place
changes nothing until `load_state_dict()`); `parameters()` counts it (`packed_weight`, an opaque oneDNN tensor).
What a packed tensor cannot do is refused with the fix: reading `.weight` (use `state_dict()`, or `unpack(model)`),
and gradients (packing is for inference; `unpack(model)` to train).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def padded_rows(rows: int) -> int:
    """`rows` rounded up to one of 8 steps per power of two (multiples of 8 at least): at most 1/8 more rows, and
    about 8 row counts per doubling of the batch."""
    step = max(8, 1 << max(0, rows.bit_length() - 4))
    return -(-rows // step) * step


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """A CPU weight [out, in] in oneDNN's blocked layout (float32, or bfloat16 where this CPU multiplies it); any
    other weight, or where this torch lacks oneDNN, as it is."""
    if weight.is_mkldnn or weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return weight
    bf16 = weight.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if weight.dtype != torch.float32 and not bf16:
        return weight
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


def unpack_weight(weight: torch.Tensor) -> torch.Tensor:
    """A weight packed by `pack_weight` back in the plain layout (others as they are)."""
    return weight.to_dense() if weight.is_mkldnn else weight


class PackedLinear(nn.Module):
    """A bias-free linear layer for CPU inference, its weight (`packed_weight`) in oneDNN's blocked layout where
    oneDNN takes its dtype, and its input's rows padded to `padded_rows` wherever oneDNN runs it."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed_weight = nn.Parameter(pack_weight(weight.detach()), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.packed_weight
        if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
            raise RuntimeError(
                "gradients do not flow through weights packed for oneDNN (CPU inference): call "
                "qwen3_embed.backends.cpu.unpack(model) first to differentiate through the model (and "
                "model.requires_grad_(True) to train its weights: a loaded model's parameters are frozen)"
            )
        if not (w.is_mkldnn or (x.device.type == "cpu" and x.dtype == torch.bfloat16)):
            return F.linear(x, w)
        rows = x.reshape(-1, self.in_features)
        n, padded = rows.shape[0], padded_rows(rows.shape[0])
        if padded != n:  # F.pad copies even when it adds nothing
            rows = F.pad(rows, (0, 0, 0, padded - n))
        if w.is_mkldnn:
            out = torch.ops.mkldnn._linear_pointwise(rows, w, None, "none", [], "")
        else:
            out = F.linear(rows, w)
        return out[:n].view(*x.shape[:-1], self.out_features)

    def __getattr__(self, name: str):
        if name == "weight":
            raise AttributeError(
                "this layer's weight is packed in oneDNN's layout for CPU inference (qwen3_embed.backends.cpu): "
                "model.state_dict() gives plain copies (load_state_dict() writes edited ones back), or call "
                "qwen3_embed.backends.cpu.unpack(model) to get nn.Linear layers whose weights you can read and change"
            )
        return super().__getattr__(name)

    def _apply(self, fn, recurse: bool = True):
        """.to(), .half(), .double(), .cuda(), ...: on the plain weight, packed again where oneDNN takes it."""
        weight = fn(unpack_weight(self.packed_weight.data))
        self.packed_weight = nn.Parameter(pack_weight(weight), requires_grad=False)
        return self

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = unpack_weight(self.packed_weight.data)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        key = prefix + "weight"
        unexpected += [k for k in state_dict if k.startswith(prefix) and k != key]  # a bias, say: this layer has none
        if key not in state_dict:
            missing.append(key)
        elif state_dict[key].shape != (self.out_features, self.in_features):
            errors.append(
                f"size mismatch for {key}: copying a param with shape {tuple(state_dict[key].shape)}, the shape "
                f"in the current model is {(self.out_features, self.in_features)}"
            )
        else:
            weight = state_dict[key].to(self.packed_weight.device, self.packed_weight.dtype)
            self.packed_weight = nn.Parameter(pack_weight(weight), requires_grad=False)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_parameters"] = {"packed_weight": nn.Parameter(unpack_weight(self.packed_weight.data), False)}
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.packed_weight = nn.Parameter(pack_weight(self.packed_weight.data), requires_grad=False)

    def extra_repr(self) -> str:
        layout = "oneDNN-packed" if self.packed_weight.is_mkldnn else "plain"
        return f"in_features={self.in_features}, out_features={self.out_features}, {layout}"


def pack(model: nn.Module) -> nn.Module:
    """Every bias-free nn.Linear of `model` swapped for a PackedLinear, in place, each plain weight freed as its
    packed copy is made (when nothing else holds it: nothing here keeps the replaced layers)."""
    for parent, name in _children(model, lambda child: type(child) is nn.Linear and child.bias is None):
        setattr(parent, name, PackedLinear(getattr(parent, name).weight))
    return model


def _children(model: nn.Module, wanted) -> list[tuple[nn.Module, str]]:
    """(parent, name) of each `wanted` submodule, without a reference to the submodules themselves."""
    return [(parent, name) for parent in model.modules() for name, child in parent.named_children() if wanted(child)]


def unpack(model: nn.Module) -> nn.Module:
    """Every PackedLinear of `model` swapped back for a plain nn.Linear, in place: for training, torch.compile, or
    reading and changing the weights."""
    for parent, name in _children(model, lambda child: isinstance(child, PackedLinear)):
        packed = getattr(parent, name)
        with torch.device("meta"):
            linear = nn.Linear(packed.in_features, packed.out_features, bias=False)
        linear.weight = nn.Parameter(unpack_weight(packed.packed_weight.data), requires_grad=False)
        setattr(parent, name, linear)
    return model
