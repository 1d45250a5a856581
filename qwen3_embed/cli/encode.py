"""`qwen3-embed encode`: a corpus into a folder of shards (resumable; this process, torchrun ranks or a Ray cluster)
or into one file built in memory. Every argument, the input and output paths included, is checked before the model
loads; then one library call."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from .. import corpus
from ..corpus import torchrun
from ..corpus.local import report
from ..store.shards import VECTOR_DTYPES, VECTOR_FORMATS
from .common import (
    DEVICE,
    DIM,
    EMBEDDING_MODEL,
    TOKENS,
    add_command,
    add_fields,
    add_format,
    add_model,
    check_text_flags,
)

FILE_SUFFIXES = tuple(f".{format}" for format in VECTOR_FORMATS)  # --output FILE.npy, FILE.safetensors: one file
# The flags of a folder of shards (ShardOptions' own fields, and the Ray engine's), refused with a one-file output.
FOLDER_ONLY = {
    "chunk_size": "--chunk-size",
    "vector_format": "--vector-format",
    "no_verify": "--no-verify",
    "workers": "--workers",
    "store_text": "--store-text",
}


def add_parser(commands) -> None:
    help = "embed a corpus into a folder of shards (resumable; torchrun or Ray) or into one file"
    p = add_command(commands, "encode", help, (DEVICE, DIM, TOKENS))
    add_model(p, EMBEDDING_MODEL)
    p.add_argument(
        "--input",
        required=True,
        help="a file, a folder (every file under it), a glob pattern, or - for standard input; text lines, JSON lines "
        "or Parquet, text and JSON lines optionally .gz or .zst",
    )
    add_format(p)
    p.add_argument(
        "--output",
        required=True,
        help="a folder for shards and manifest.json (streamed, resumable, torchrun or Ray); or FILE.npy or "
        "FILE.safetensors for one array built in memory (ids beside it in FILE.ids.json unless they are the positions "
        "0..n-1)",
    )
    add_fields(p, "field of the id (default: the position in the input; name:line for a folder)")
    p.add_argument(
        "--precision",
        "--vector-dtype",
        dest="vector_dtype",
        choices=VECTOR_DTYPES,
        default="float32",
        help="the stored vectors: float, or quantized as sentence-transformers' quantize_embeddings does (int8 and "
        "uint8 need --calibration; binary packs 8 dimensions per byte)",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        help="a .npy of float vectors [n, dim] (a representative sample embedded alike) whose per-dimension ranges "
        "int8 and uint8 quantize with; kept in the manifest",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip bad records (bad JSON or UTF-8, no text field, text the tokenizer refuses) and report them, "
        "instead of stopping at the first",
    )
    p.add_argument(
        "--unique-ids",
        action="store_true",
        help="refuse ids that more than one record has (--id-field values; by default a warning names them)",
    )
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--instruction", help="task instruction applied to every text (for queries)")
    prompt.add_argument("--prompt-name", help="a prompt of the checkpoint's config_sentence_transformers.json")
    add_folder_options(p)
    p.set_defaults(run=run)


def add_folder_options(p: argparse.ArgumentParser) -> None:
    """The flags of a folder of shards (FOLDER_ONLY, and --engine)."""
    p.add_argument("--chunk-size", type=int, help="records per shard (default: 10000); shards never span files")
    p.add_argument("--vector-format", choices=VECTOR_FORMATS, help="the shards' vector files (default: npy)")
    p.add_argument(
        "--store-text",
        action="store_true",
        help="keep each shard's texts beside its vectors, for `qwen3-embed search --reranker`",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="on a rerun, check the shards already written by size and count only, not by checksum",
    )
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process, or each rank under torchrun; ray: a Ray Data pipeline on the Ray cluster "
        "(RAY_ADDRESS, else one started here), with the ray extra",
    )
    p.add_argument("--workers", type=int, help="Ray actors that embed (default: one per GPU of the cluster, else 1)")


def run(args: argparse.Namespace) -> None:
    check_text_flags(args, "instruction")
    args.output = output_path(args.output)
    options = dict(
        text_field=args.text_field,
        id_field=args.id_field,
        input_format=args.format,
        skip_bad=args.skip_bad,
        unique_ids=args.unique_ids,
        check_kind=not args.ignore_kind,
        vector_dtype=args.vector_dtype,
        instruction=args.instruction,
        prompt_name=args.prompt_name,
        dim=args.dim,
        max_length=args.max_length,
        truncate=not args.no_truncate,
        batch_tokens=args.batch_tokens,
        calibration=read_calibration(args.calibration) if args.calibration else None,
    )
    if args.output.suffix.lower() in FILE_SUFFIXES:
        to_file(args, options)
    else:
        to_folder(args, options)


def output_path(given: str) -> Path:
    """--output as a path: FILE.npy or FILE.safetensors, else a folder of shards. A name with another suffix is
    refused (out.csv is no folder the user meant), unless it ends in / or exists (what is there is checked later)."""
    path = Path(given)
    if path.suffix and path.suffix.lower() not in FILE_SUFFIXES and not given.endswith(("/", os.sep)):
        if not path.exists():
            raise ValueError(
                f"--output {given}: encode writes no {path.suffix} files; give FILE.npy or FILE.safetensors for one "
                f"array, or a folder for shards (end it with / when its name has a dot: {given}/)"
            )
    return path


def to_file(args: argparse.Namespace, options: dict) -> None:
    given = [flag for key, flag in FOLDER_ONLY.items() if getattr(args, key) not in (None, False)]
    if args.engine != "local":
        given.append("--engine")
    if given:
        raise ValueError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to a folder of shards, but --output "
            f"{args.output} is one file built in memory; drop {'it' if len(given) == 1 else 'them'}, or give a folder "
            "as --output"
        )
    if torchrun.launched():
        raise ValueError("under torchrun, --output must be a folder of shards, not one file")
    result = corpus.encode_file(args.model, args.input, args.output, device=args.device, dtype=args.dtype, **options)
    report(result["skipped"])
    ids = f" and their ids to {result['ids_file']}" if result["ids_file"] else ""
    print(f"wrote {result['rows']} vectors of {result['dim']} dimensions to {args.output}{ids}", file=sys.stderr)


def to_folder(args: argparse.Namespace, options: dict) -> None:
    options.update(
        chunk_size=10_000 if args.chunk_size is None else args.chunk_size,
        vector_format=args.vector_format or "npy",
        verify=not args.no_verify,
        store_text=args.store_text,
    )
    if args.workers is not None and args.engine != "ray":
        raise ValueError("--workers sets the number of Ray actors; it applies only with --engine ray")
    try:
        summary = run_engine(args, options)
    except corpus.Interrupted as e:
        if args.debug:
            raise
        print(f"qwen3-embed: {e}", file=sys.stderr)
        sys.exit(130)
    if summary is None:
        return  # a torchrun rank other than 0
    manifest = summary.manifest
    report(manifest["skipped"])
    earlier = f"; {summary.verified} verified from an earlier run" if summary.verified else ""
    print(
        f"wrote {manifest['rows']} vectors of {manifest['dim']} dimensions in {len(manifest['shards'])} shard(s) to "
        f"{args.output} ({summary.embedded} embedded now{earlier})",
        file=sys.stderr,
    )


def read_calibration(path: Path) -> np.ndarray:
    """The --calibration vectors: a .npy array (never pickled objects)."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        why = f"--calibration {path} is not a .npy array of vectors ({e}); save one with numpy.save"
        raise ValueError(why) from None


def run_engine(args: argparse.Namespace, options: dict) -> corpus.Summary | None:
    """The engine's run: Ray's, this process's, or this torchrun rank's."""
    if args.engine == "ray":
        if torchrun.launched():
            raise ValueError(
                "--engine ray runs on a Ray cluster: start it plainly or by `ray job submit`, not torchrun"
            )
        from ..corpus.ray_data import encode_corpus_ray

        if args.device not in (None, "cpu", "cuda"):
            raise ValueError(f"--device {args.device}: Ray places its actors on GPUs itself; give cpu or cuda")
        gpus = None if args.device is None else int(args.device == "cuda")  # None: GPUs when the cluster has them
        return encode_corpus_ray(
            args.model, args.input, args.output, workers=args.workers, gpus_per_worker=gpus, dtype=args.dtype, **options
        )
    if not torchrun.launched():
        return corpus.encode_corpus(
            args.model, args.input, args.output, device=args.device, dtype=args.dtype, **options
        )
    group = torchrun.Group(args.device)
    try:
        return corpus.encode_corpus(
            args.model, args.input, args.output, device=group.device, dtype=args.dtype, group=group, **options
        )
    finally:
        group.close()
