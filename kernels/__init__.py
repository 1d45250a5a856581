"""Triton kernels for the hot ops, imported as `qwen3_embed.kernels`; `qwen3_embed.ops` dispatches to them."""
