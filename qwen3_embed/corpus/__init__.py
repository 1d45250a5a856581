"""Embedding a corpus of any size into a folder of shards that a crash cannot corrupt, on one process, the ranks of
a torchrun launch, or a Ray cluster.

- inputs.py: the files an input names, their formats, their index, and their records.
- options.py: what a run asks for (Options for one file, ShardOptions for a folder of shards), checked in one place
  before any weights load.
- job.py: what every engine shares: the input and output checks, the plan of shards, and the tokenizing, embedding
  and writing of one shard.
- local.py: the engine of this process (alone, or as a torchrun rank), and the single-file output.
- torchrun.py: the ranks of a torchrun launch. ray_data.py: the Ray Data engine (the `ray` extra).
"""

from ..store.shards import load_corpus, read_manifest, read_shard, verify_corpus
from .inputs import read_documents, resolve_inputs
from .job import Interrupted
from .local import Summary, encode_corpus, encode_file
from .options import Options, ShardOptions

__all__ = [
    "Interrupted",
    "Options",
    "ShardOptions",
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
