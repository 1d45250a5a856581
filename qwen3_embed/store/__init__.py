"""The vector store below both corpus (which writes it) and search (which reads it): the shard format, the vector
dtypes and their quantization.

- files.py: files written so that a crash cannot corrupt them; vector arrays as .npy or .safetensors.
- shards.py: the folder of shards (records, manifest), written, checked, verified and read (`load_corpus`).
- quantize.py: int8, uint8, binary and ubinary vectors, bit for bit as sentence-transformers' quantize_embeddings,
  and back to float.
- vectors.py: Vectors, the stored vectors a search reads, from an array or a shard folder (memory-mapped).
- fingerprint.py: a model's identity by content, as a manifest records it.
"""

from .quantize import PRECISIONS, quantization_ranges, quantize
from .shards import DamagedShard, load_corpus, read_manifest, read_shard, verify_corpus
from .vectors import Vectors

__all__ = [
    "PRECISIONS",
    "DamagedShard",
    "Vectors",
    "load_corpus",
    "quantization_ranges",
    "quantize",
    "read_manifest",
    "read_shard",
    "verify_corpus",
]
