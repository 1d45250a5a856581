"""Search over embedded corpora: exact inner-product top-k over vectors in memory or over a folder of shards
(memory-mapped, streamed in blocks), vectors quantized exactly as sentence-transformers quantizes them and searched
with rescoring, and retrieve-then-rerank with Qwen3-Reranker.

- quantize.py: int8, uint8, binary and ubinary vectors, bit for bit as sentence-transformers' quantize_embeddings.
- index.py: Index, over arrays or shard folders, exact or quantized with rescoring.
- retriever.py: Retriever: embed the queries, search, rerank.
"""

from .index import Hits, Index
from .quantize import PRECISIONS, quantization_ranges, quantize
from .retriever import Hit, Retriever

__all__ = ["PRECISIONS", "Hit", "Hits", "Index", "Retriever", "quantization_ranges", "quantize"]
