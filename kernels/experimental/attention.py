"""Speed variants of the varlen attention kernel for the GPU run to time against the default
(`qwen3_embed.kernels.attention`), each a setting of the default kernel's switches:

- `diag32`: 32-key tiles on the diagonal (less masked work where a block holds fewer tokens than BLOCK_N).
- `tma`: K/V tiles below the diagonal through tensor descriptors (TMA; Triton 3.4 and newer).

They run where the GPU run times them, sm_90 (H100/H200) in bf16 at Qwen3's head dim, 128, and anywhere under
Triton's interpreter, which checks their results.
"""

from __future__ import annotations

import torch

from .. import attention

try:  # Triton 3.4 and newer: host-side tensor descriptors
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton
    TensorDescriptor = None


def _set_descriptor_blocks(nargs: dict) -> None:
    """A TMA config's pre-hook: the descriptors' tile is the config's BLOCK_N keys x the head dim."""
    for name in ("K_DESC", "V_DESC"):
        nargs[name].block_shape = [nargs["BLOCK_N"], nargs["HEAD_DIM"]]


VARIANTS = {
    "diag32": attention.Variant("diag32", diag_n=32),
    "tma": attention.Variant("tma", tma=True, pre_hook=_set_descriptor_blocks),
}


def variants(capability: tuple[int, int] | None, head_dim: int, dtype: torch.dtype) -> list[str]:
    """The variants that run on a GPU of `capability` (None: Triton's interpreter) at this head dim and dtype."""
    if capability is not None and (capability[0] != 9 or head_dim != 128 or dtype != torch.bfloat16):
        return []
    return [name for name in VARIANTS if name != "tma" or TensorDescriptor is not None]


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    variant: str,
    work: torch.Tensor | None = None,
) -> torch.Tensor:
    """`qwen3_embed.kernels.attention.varlen_attention` run as a variant (one of VARIANTS, where `variants` says it
    runs)."""
    attention.check_inputs(q, k, v)
    t, hq, d = q.shape
    hkv = k.shape[1]
    if variant not in VARIANTS:
        raise ValueError(f"attention variant {variant!r} is not one of {', '.join(VARIANTS)}")
    capability = attention.capability_of(q.device)
    runs = variants(capability, d, q.dtype)
    if variant not in runs:
        raise ValueError(f"attention variant {variant!r} does not run here; {runs or 'none'} do")
    work = attention.work_for(q, k, cu_seqlens, work)
    descriptors = (None, None)
    if VARIANTS[variant].tma:  # [T, Hkv * D] views; the pre-hook sets the tile to the chosen BLOCK_N
        if any(x.stride(1) != d or (x.stride(0) * x.element_size()) % 16 or x.data_ptr() % 16 for x in (k, v)):
            raise ValueError("the tma variant needs k and v with contiguous heads and 16-byte aligned rows")
        block_n = attention.configs(d, hq // hkv, q.dtype, capability)[0]["BLOCK_N"]
        descriptors = tuple(TensorDescriptor(x, [t, hkv * d], [x.stride(0), 1], [block_n, d]) for x in (k, v))
    return attention.launch(q, k, v, work, scale, VARIANTS[variant], descriptors)
