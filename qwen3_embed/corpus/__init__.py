"""Embedding a corpus of any size into a folder of shards that a crash cannot corrupt, on one process, the ranks of
a torchrun launch, or a Ray cluster.

- inputs.py: the files an input names, their formats, their index, and their records.
- shards.py: the output format (shards, their records, the manifest), and reading and verifying it.
- job.py: what every engine shares: the checks made before a model loads, the plan of shards, and the tokenizing,
  embedding and writing of one shard.
- local.py: the engine of this process (alone, or as a torchrun rank), and the single-file output.
- torchrun.py: the ranks of a torchrun launch. ray_data.py: the Ray Data engine (the `ray` extra).
"""

from .inputs import read_documents, resolve_inputs
from .job import Interrupted, Options
from .local import Summary, encode_corpus, encode_file
from .shards import load_corpus, read_manifest, read_shard, verify_corpus

__all__ = [
    "Interrupted",
    "Options",
    "Summary",
    "encode_corpus",
    "encode_file",
    "load_corpus",
    "read_documents",
    "read_manifest",
    "read_shard",
    "resolve_inputs",
    "verify_corpus",
]
