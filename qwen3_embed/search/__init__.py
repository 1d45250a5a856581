"""Search over embedded corpora: exact inner-product top-k over vectors in memory or over a folder of shards
(memory-mapped, streamed in blocks), vectors quantized exactly as sentence-transformers quantizes them and searched
with rescoring, and retrieve-then-rerank with Qwen3-Reranker.

- index.py: Index, over arrays or shard folders (store.Vectors), exact or quantized with rescoring.
- scorers.py: the first stage's scorer of each precision (float, int8/uint8, binary/ubinary).
- retriever.py: Retriever: embed the queries, search, rerank.
"""

from ..store.quantize import PRECISIONS, quantization_ranges, quantize
from .index import Hits, Index
from .retriever import Hit, Retriever

__all__ = ["PRECISIONS", "Hit", "Hits", "Index", "Retriever", "quantization_ranges", "quantize"]
