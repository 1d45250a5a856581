"""Qwen3-Embedding and Qwen3-Reranker from scratch in PyTorch: padding-free, exact, with Triton kernels."""

from .config import Qwen3Config
from .embedder import Embedder
from .model import Qwen3Model
from .reranker import Reranker

__version__ = "0.1.0"
__all__ = ["Embedder", "Qwen3Config", "Qwen3Model", "Reranker"]
