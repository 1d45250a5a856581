"""The `qwen3-embed` command: `similarity` prints a score matrix, `encode` embeds a corpus (into a folder of shards,
or one file), `verify` checks such a folder, `rerank` orders documents for a query, `serve` runs the HTTP server."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import __version__, checkpoint, corpus
from .checks import check_int, resolve_device
from .corpus import torchrun
from .corpus.inputs import INPUT_FORMATS
from .corpus.job import model_fingerprint
from .corpus.local import report
from .corpus.shards import VECTOR_DTYPES, VECTOR_FORMATS
from .embedder import Embedder
from .pipeline import DEFAULT_INSTRUCTION
from .reranker import Reranker
from .search import PRECISIONS, Index, Retriever
from .search.quantize import FLOATS
from .tokenize import TextTooLong

CARD_QUERIES = ["What is the capital of China?", "Explain gravity"]
CARD_DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects and is "
    "responsible for the movement of planets around the sun.",
]


def load(args: argparse.Namespace) -> Embedder:
    return Embedder.from_pretrained(args.model, device=args.device, dtype=args.dtype, check_kind=not args.ignore_kind)


def preflight(args: argparse.Namespace, model: str) -> None:
    """What can be checked before the model loads: the device, and --dim and --max-length against the checkpoint's
    config.json (the only file fetched for it)."""
    resolve_device(args.device)
    config = checkpoint.read_config(model)
    if getattr(args, "dim", None) is not None:
        check_int("--dim", args.dim, 1, config.hidden_size, "the model's hidden size")
    if args.max_length is not None:
        check_int("--max-length", args.max_length, 2, config.max_position_embeddings, "the model's maximum")


def token_options(args: argparse.Namespace) -> dict:
    """The options of --max-length, --no-truncate and --batch-tokens, as encode and score take them."""
    return dict(max_length=args.max_length, truncate=not args.no_truncate, batch_tokens=args.batch_tokens)


def similarity(args: argparse.Namespace) -> None:
    queries = args.query or CARD_QUERIES
    documents = args.document or CARD_DOCUMENTS
    preflight(args, args.model)
    embedder = load(args)
    q = embedder.encode(queries, instruction=args.instruction or None, dim=args.dim, **token_options(args))
    d = embedder.encode(documents, dim=args.dim, **token_options(args))
    scores = embedder.similarity(q, d).tolist()
    if args.json:
        print(json.dumps({"queries": queries, "documents": documents, "scores": scores}, ensure_ascii=False))
        return
    print("documents:")
    for j, doc in enumerate(documents):
        print(f"  d{j}: {doc}")
    print("queries:")
    for i, query in enumerate(queries):
        print(f"  q{i}: {query}")
    print("\n     " + "".join(f"{f'd{j}':>9}" for j in range(len(documents))))
    for i, row in enumerate(scores):
        print(f"{f'q{i}':<5}" + "".join(f"{s:9.4f}" for s in row))


FOLDER_ONLY = {"chunk_size": "--chunk-size", "vector_format": "--vector-format", "no_verify": "--no-verify",
               "workers": "--workers", "store_text": "--store-text"}  # fmt: skip


def encode(args: argparse.Namespace) -> None:
    """Check every argument (the input and output paths included) before the model loads, then one library call."""
    to_file = args.output.suffix.lower() in (".npy", ".safetensors")
    options = dict(text_field=args.text_field, id_field=args.id_field, input_format=args.format,
                   skip_bad=args.skip_bad, vector_dtype=args.vector_dtype, instruction=args.instruction,
                   prompt_name=args.prompt_name, dim=args.dim, max_length=args.max_length,
                   truncate=not args.no_truncate, batch_tokens=args.batch_tokens,
                   calibration=read_calibration(args.calibration) if args.calibration else None)  # fmt: skip
    if to_file:
        given = [flag for key, flag in FOLDER_ONLY.items() if getattr(args, key) not in (None, False)]
        if args.engine != "local":
            given.append("--engine")
        if given:
            raise ValueError(
                f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to a folder of shards, but --output "
                f"{args.output} is one file built in memory; drop {'it' if len(given) == 1 else 'them'}, or give a "
                "folder as --output"
            )
        if torchrun.launched():
            raise ValueError("under torchrun, --output must be a folder of shards, not one file")
        result = corpus.encode_file(args.model, args.input, args.output, device=args.device, dtype=args.dtype,
                                    **options)  # fmt: skip
        report(result["skipped"])
        ids = f" and their ids to {result['ids_file']}" if result["ids_file"] else ""
        print(f"wrote {result['rows']} vectors of {result['dim']} dimensions to {args.output}{ids}", file=sys.stderr)
        return
    options.update(chunk_size=args.chunk_size or 10_000, vector_format=args.vector_format or "npy",
                   verify=not args.no_verify, store_text=args.store_text)  # fmt: skip
    if str(args.input) == "-":
        raise ValueError(
            "--input - (standard input) can be encoded only into one file (--output FILE.npy or FILE.safetensors); "
            "a folder of shards is resumable, which needs an input file that can be read again"
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
    print(f"wrote {manifest['rows']} vectors of {manifest['dim']} dimensions in {len(manifest['shards'])} shard(s) "
          f"to {args.output} ({summary.embedded} embedded now{earlier})", file=sys.stderr)  # fmt: skip


def read_calibration(path: Path) -> np.ndarray:
    """The --calibration vectors: a .npy array (never pickled objects)."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        why = f"--calibration {path} is not a .npy array of vectors ({e}); save one with numpy.save"
        raise ValueError(why) from None


def run_engine(args: argparse.Namespace, options: dict) -> corpus.Summary | None:
    if args.engine == "ray":
        if torchrun.launched():
            raise ValueError(
                "--engine ray runs on a Ray cluster: start it plainly or by `ray job submit`, not torchrun"
            )
        from .corpus.ray_data import encode_corpus_ray

        if args.device not in (None, "cpu", "cuda"):
            raise ValueError(f"--device {args.device}: Ray places its actors on GPUs itself; give cpu or cuda")
        gpus = None if args.device is None else int(args.device == "cuda")  # None: GPUs when the cluster has them
        return encode_corpus_ray(args.model, args.input, args.output, workers=args.workers, gpus_per_worker=gpus,
                                 dtype=args.dtype, **options)  # fmt: skip
    if not torchrun.launched():
        return corpus.encode_corpus(args.model, args.input, args.output, device=args.device, dtype=args.dtype,
                                    **options)  # fmt: skip
    group = torchrun.Group(args.device)
    try:
        return corpus.encode_corpus(args.model, args.input, args.output, device=group.device, dtype=args.dtype,
                                    group=group, **options)  # fmt: skip
    finally:
        group.close()


def verify(args: argparse.Namespace) -> None:
    """Check a finished output folder against its manifest, without a model."""
    manifest = corpus.read_manifest(args.folder)
    with tqdm(total=manifest["rows"], unit="row", desc="verifying", dynamic_ncols=True) as bar:
        problems = corpus.verify_corpus(args.folder, not args.quick, bar.update)
    what = "sizes, counts, dtypes and shapes" + ("" if args.quick else ", sha256 checksums")
    if problems:
        listed = "\n  ".join(problems)
        sys.exit(f"qwen3-embed: {args.folder}: {len(problems)} problem(s):\n  {listed}\nrerun the encode command that "
                 "wrote it to embed the damaged shards again")  # fmt: skip
    print(f"{args.folder}: {len(manifest['shards'])} shard(s), {manifest['rows']} vectors of {manifest['dim']} "
          f"dimensions: sound ({what} checked)", file=sys.stderr)  # fmt: skip


def rerank(args: argparse.Namespace) -> None:
    if not args.document and args.input is None:
        raise ValueError("no documents: give them with --document TEXT (repeat it) or --input FILE")
    if args.document and args.input is not None:
        raise ValueError("give the documents with --document or with --input FILE, not both")
    if args.input is None and (args.text_field or args.id_field):
        raise ValueError("--text-field and --id-field read fields of an --input file; --document takes plain text")
    if args.top_k is not None:
        check_int("--top-k", args.top_k, 1)
    preflight(args, args.model)
    if args.input is None:
        ids, documents = list(range(len(args.document))), args.document
    else:
        ids, documents = corpus.read_documents(args.input, args.text_field, args.id_field)
    reranker = Reranker.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, check_kind=not args.ignore_kind
    )
    ranked = reranker.rank(
        args.query, documents, top_k=args.top_k, instruction=args.instruction, raw=args.raw,
        show_progress=args.input is not None, **token_options(args),
    )  # fmt: skip
    for rank, (index, score) in enumerate(ranked, start=1):
        if args.json:
            line = {"rank": rank, "index": index, "id": ids[index], "score": score, "document": documents[index]}
            print(json.dumps(line, ensure_ascii=False))
        else:
            print(f"{score:.4f}  {ids[index] if args.id_field else f'd{index}'}  {documents[index]}")


def search(args: argparse.Namespace) -> None:
    """Open (and verify) the index and check every option before any model loads, then one Retriever call."""
    resolve_device(args.device)
    index = Index.open(args.index, precision=args.precision, verify=not args.no_verify, device=args.device)
    embedded_by = index.manifest["model_name"]
    model = args.model or embedded_by
    check_int("--top-k", args.top_k, 1, len(index), f"the {len(index)} vectors of the index")
    rescoring = {}
    if args.rescore_multiplier is not None:
        if index.precision in FLOATS:
            raise ValueError(f"--rescore-multiplier applies to a quantized search, and {args.index} is searched in "
                             f"{index.precision}; drop it, or give --precision int8 or binary")  # fmt: skip
        rescoring["rescore_multiplier"] = args.rescore_multiplier
    if args.reranker is not None:
        check_int("--candidates", args.candidates, args.top_k, None)
        if index.texts is None:
            raise ValueError(f"--reranker reads the documents' texts, and {args.index} keeps none: encode the corpus "
                             "again with --store-text")  # fmt: skip
    folder = checkpoint.resolve(model)
    config = checkpoint.read_config(folder)
    if index.dim > config.hidden_size:
        raise ValueError(f"{args.index} holds {index.dim}-dimensional vectors, more than {model} makes "
                         f"({config.hidden_size}): search it with {embedded_by}, which embedded it")  # fmt: skip
    if model_fingerprint(folder) != index.manifest["settings"]["model"]:
        warnings.warn(f"{model} is not the model that embedded {args.index} ({embedded_by}, by content): its scores "
                      "against these vectors mean little", stacklevel=2)  # fmt: skip
    embedder = Embedder.from_pretrained(folder, device=args.device, dtype=args.dtype, check_kind=not args.ignore_kind)
    reranker = None
    if args.reranker is not None:
        reranker = Reranker.from_pretrained(args.reranker, device=args.device, dtype=args.dtype,
                                            check_kind=not args.ignore_kind)  # fmt: skip
    retriever = Retriever(embedder, index, reranker)
    found = retriever.search(args.query, args.top_k, candidates=args.candidates, instruction=args.instruction,
                             **rescoring)  # fmt: skip
    for query, hits in zip(args.query, found):
        if not args.json and len(args.query) > 1:
            print(f"query: {query}")
        for rank, hit in enumerate(hits, start=1):
            if args.json:
                line = {"query": query, "rank": rank, "id": hit.id, "score": hit.score, "text": hit.text}
                print(json.dumps(line, ensure_ascii=False))
            else:
                print(f"{rank:>3}  {hit.score:.4f}  {hit.id}" + (f"  {hit.text}" if hit.text is not None else ""))


def serve(args: argparse.Namespace) -> None:
    try:
        from . import server
    except ImportError as e:
        raise SystemExit(f"the server needs its extra ({e}): pip install 'qwen3-embed-triton[server]'") from None
    # Everything that can be checked is checked before a model loads.
    limits = server.Limits(
        max_input_length=args.max_input_length, max_batch_tokens=args.max_batch_tokens,
        max_client_batch_size=args.max_client_batch_size, payload_limit=args.payload_limit,
        max_concurrent_requests=args.max_concurrent_requests, max_queue_tokens=args.max_queue_tokens,
        health_stall_s=args.health_stall_s,
    )  # fmt: skip
    connections = server.ConnectionLimits(
        keep_alive_s=args.keep_alive_s, read_timeout_s=args.read_timeout_s, max_connections=args.max_connections,
        graceful_shutdown_s=args.graceful_shutdown_s,
    )  # fmt: skip
    if not (math.isfinite(args.max_wait_ms) and args.max_wait_ms >= 0):
        raise ValueError(f"--max-wait-ms {args.max_wait_ms:g} must be a finite number of at least 0")
    api_key = args.api_key if args.api_key is not None else os.environ.get("QWEN3_EMBED_API_KEY") or None
    server.check_api_key(api_key)
    server.check_port(args.host, args.port)
    server.reserve_files(args.max_connections)
    resolve_device(args.device)
    for model in filter(None, (args.model, args.reranker)):
        limit = checkpoint.read_config(model).max_position_embeddings
        if args.max_input_length is not None:
            check_int("--max-input-length", args.max_input_length, 2, limit, "the model's maximum")
    loading = dict(device=args.device, dtype=args.dtype, check_kind=not args.ignore_kind)
    embedder = Embedder.from_pretrained(args.model, **loading)
    reranker = Reranker.from_pretrained(args.reranker, **loading) if args.reranker else None
    if reranker is not None and args.max_input_length is not None:
        try:
            reranker.tokenize_query("", [""], max_length=args.max_input_length)
        except TextTooLong:
            raise ValueError(f"--max-input-length {args.max_input_length} leaves no room for a document in the "
                             "reranker's prompt, even with an empty query; raise it") from None  # fmt: skip
    names = {"served_model_name": args.served_model_name or server.served_name(args.model)}
    if reranker is not None:
        names["served_reranker_name"] = args.served_reranker_name or server.served_name(args.reranker)
    app = server.create_app(embedder, reranker, limits=limits, api_key=api_key, max_wait_ms=args.max_wait_ms,
                            batching=not args.no_batching, **names)  # fmt: skip
    server.run(app, args.host, args.port, connections)


class HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in action.help:
            return action.help
        return f"{action.help} (default: %(default)s)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qwen3-embed", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when torch sees a GPU, else cpu)")
    device.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16", "auto"], help="weights' dtype; auto: bfloat16 on cuda "
        "and on CPUs that multiply bfloat16 natively (AMX, AVX512-BF16), else float32 (default: bfloat16 on cuda, "
        "float32 on cpu)"
    )  # fmt: skip
    device.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    device.add_argument(
        "--ignore-kind", action="store_true", help="load a checkpoint whose files say it is of the other kind "
        "(an embedding model as a reranker, or back)"
    )  # fmt: skip
    tokens = argparse.ArgumentParser(add_help=False)
    tokens.add_argument("--max-length", type=int, help="tokens per text, EOS or prompt included (default: 8192)")
    tokens.add_argument("--no-truncate", action="store_true", help="fail on a text over --max-length instead of "
                        "cutting it with a warning")  # fmt: skip
    tokens.add_argument(
        "--batch-tokens", type=int, help="tokens per forward pass (default: 2048 on cpu, 16384 on cuda)"
    )
    common = argparse.ArgumentParser(add_help=False, parents=[device])
    common.add_argument("--model", default="Qwen/Qwen3-Embedding-0.6B", help="hub id or local folder")
    common.add_argument("--dim", type=int, help="output dimensions (Matryoshka), default: the hidden size")

    s = commands.add_parser(
        "similarity", parents=[common, tokens], formatter_class=HelpFormatter, help="print query x document cosine "
        "scores"
    )  # fmt: skip
    s.add_argument("--query", action="append", help="a query (repeat for several); default: the model card's")
    s.add_argument("--document", action="append", help="a document (repeat for several); default: the card's")
    s.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="task for the queries ('' for none)")
    s.add_argument("--json", action="store_true", help="print {queries, documents, scores} as JSON")
    s.set_defaults(run=similarity)

    e = commands.add_parser(
        "encode",
        parents=[common],
        formatter_class=HelpFormatter,
        help="embed a corpus into a folder of shards (resumable; torchrun or Ray) or into one file",
    )
    e.add_argument("--input", required=True,
                   help="a file, a folder (every file under it), a glob pattern, or - for standard input; text lines, "
                   "JSON lines or Parquet, text and JSON lines optionally .gz or .zst")  # fmt: skip
    e.add_argument("--format", choices=INPUT_FORMATS,
                   help="the input's format (default: detected per file, by its suffix or its content)")  # fmt: skip
    e.add_argument("--output", type=Path, required=True,
                   help="a folder for shards and manifest.json (streamed, resumable, torchrun or Ray); or FILE.npy or "
                   "FILE.safetensors for one array built in memory (ids beside it in FILE.ids.json unless they are "
                   "the positions 0..n-1)")  # fmt: skip
    e.add_argument("--text-field", help="field of the text in JSON lines or Parquet (default: text)")
    e.add_argument("--id-field", help="field of the id (default: the position in the input; name:line for a folder)")
    e.add_argument("--chunk-size", type=int, help="records per shard (default: 10000); shards never span files")
    e.add_argument("--vector-format", choices=VECTOR_FORMATS, help="the shards' vector files (default: npy)")
    e.add_argument("--precision", "--vector-dtype", dest="vector_dtype", choices=VECTOR_DTYPES, default="float32",
                   help="the stored vectors: float, or quantized as sentence-transformers' quantize_embeddings does "
                   "(int8 and uint8 need --calibration; binary packs 8 dimensions per byte)")  # fmt: skip
    e.add_argument("--calibration", type=Path, help="a .npy of float vectors [n, dim] (a representative sample "
                   "embedded alike) whose per-dimension ranges int8 and uint8 quantize with; kept in the "
                   "manifest")  # fmt: skip
    e.add_argument("--store-text", action="store_true", help="keep each shard's texts beside its vectors, for "
                   "`qwen3-embed search --reranker`")  # fmt: skip
    e.add_argument("--skip-bad", action="store_true",
                   help="skip bad records (bad JSON or UTF-8, no text field, text the tokenizer refuses) and report "
                   "them, instead of stopping at the first")  # fmt: skip
    e.add_argument(
        "--no-verify",
        action="store_true",
        help="on a rerun, check the shards already written by size and count only, not by checksum",
    )
    e.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process, or each rank under torchrun; ray: a Ray Data pipeline on the Ray "
                   "cluster (RAY_ADDRESS, else one started here), with the ray extra")  # fmt: skip
    e.add_argument("--workers", type=int, help="Ray actors that embed (default: one per GPU of the cluster, else 1)")
    prompt = e.add_mutually_exclusive_group()
    prompt.add_argument("--instruction", help="task instruction applied to every text (for queries)")
    prompt.add_argument("--prompt-name", help="a prompt of the checkpoint's config_sentence_transformers.json")
    e.add_argument("--max-length", type=int, help="tokens per text (default 8192)")
    e.add_argument("--no-truncate", action="store_true", help="fail on a text over --max-length instead of cutting it")
    e.add_argument("--batch-tokens", type=int, help="tokens per forward pass")
    e.set_defaults(run=encode)

    c = commands.add_parser(
        "verify", formatter_class=HelpFormatter, help="check a folder written by encode against its manifest"
    )
    c.add_argument("folder", type=Path, help="the output folder of `qwen3-embed encode`")
    c.add_argument("--quick", action="store_true", help="check sizes, counts, dtypes and shapes, not checksums")
    c.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    c.set_defaults(run=verify)

    r = commands.add_parser(
        "rerank", parents=[device, tokens], formatter_class=HelpFormatter, help="score documents for a query, best "
        "first"
    )  # fmt: skip
    r.add_argument("--model", default="Qwen/Qwen3-Reranker-0.6B", help="hub id or local folder")
    r.add_argument("--query", required=True, help="the query to rank the documents for")
    r.add_argument("--document", action="append", help="a document (repeat for several)")
    r.add_argument("--input", type=Path, help="documents from a file: text lines, JSON lines or Parquet")
    r.add_argument("--text-field", help="field of the text in JSON lines or Parquet (default: text)")
    r.add_argument("--id-field", help="field of each document's id, printed with it (default: its position)")
    r.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="the task")
    r.add_argument("--top-k", type=int, help="print only the best k")
    r.add_argument("--raw", action="store_true", help="print the logit difference l_yes - l_no, not the probability")
    r.add_argument("--json", action="store_true", help="print one JSON object per document: rank, index, id, score, "
                   "document")  # fmt: skip
    r.set_defaults(run=rerank)

    q = commands.add_parser(
        "search", parents=[device], formatter_class=HelpFormatter, help="find the documents of an encoded corpus "
        "nearest to queries, optionally reranked"
    )  # fmt: skip
    q.add_argument("--index", type=Path, required=True, help="a folder written by `qwen3-embed encode --output DIR`")
    q.add_argument("--query", action="append", required=True, help="a query (repeat for several)")
    q.add_argument("--model", help="embedding model (default: the one that embedded the corpus, from its manifest)")
    q.add_argument("--instruction", help="task for the queries (default: the checkpoint's query prompt, the card's)")
    q.add_argument("--top-k", type=int, default=10, help="documents to print per query")
    q.add_argument("--reranker", help="rerank the candidates with this reranker (hub id or local folder); needs the "
                   "texts kept by encode --store-text")  # fmt: skip
    q.add_argument("--candidates", type=int, default=100, help="nearest documents the reranker scores")
    q.add_argument("--precision", choices=PRECISIONS, help="search at a coarser precision than the stored vectors' "
                   "(a quantized copy in memory), then rescore (default: the stored precision)")  # fmt: skip
    q.add_argument("--rescore-multiplier", type=int, help="a quantized search rescores this many times --top-k "
                   "candidates (default: 4)")  # fmt: skip
    q.add_argument("--no-verify", action="store_true", help="check the shards by size and count, not by checksum")
    q.add_argument("--json", action="store_true", help="print one JSON object per result: query, rank, id, score, text")
    q.set_defaults(run=search)

    v = commands.add_parser(
        "serve", parents=[device], formatter_class=HelpFormatter,
        help="serve TEI, OpenAI and Cohere/Jina compatible HTTP endpoints",
    )  # fmt: skip
    v.add_argument("--model", default="Qwen/Qwen3-Embedding-0.6B", help="embedding model: hub id or local folder")
    v.add_argument("--reranker", help="reranker model to serve on /rerank and /v1/rerank: hub id or local folder")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface")
    v.add_argument("--port", type=int, default=8080, help="port to listen on")
    v.add_argument("--served-model-name", help="the embedding model's name in /info, /v1/models and responses "
                   "(default: its hub id, or its folder's name; never a local path)")  # fmt: skip
    v.add_argument("--served-reranker-name", help="the reranker's name there (default: as for the model)")
    v.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health (default: "
                   "$QWEN3_EMBED_API_KEY, else no key)")  # fmt: skip
    v.add_argument("--max-input-length", type=int, help="tokens per input (default 8192, at most the model's)")
    v.add_argument("--max-batch-tokens", type=int, default=16384, help="tokens per request, and per queue drain")
    v.add_argument("--max-client-batch-size", type=int, default=32, help="inputs per request")
    v.add_argument("--payload-limit", type=int, default=2_000_000,
                   help="bytes per request body; a larger body is refused (413) before it is parsed")  # fmt: skip
    v.add_argument("--max-concurrent-requests", type=int, default=512,
                   help="requests in flight; past it a request is refused with 429 and Retry-After")  # fmt: skip
    v.add_argument("--max-queue-tokens", type=int, default=131072,
                   help="tokens waiting for each model; past it a request is refused with 429")  # fmt: skip
    v.add_argument("--max-wait-ms", type=float, default=2.0, help="how long an idle worker waits to fill a batch")
    v.add_argument("--no-batching", action="store_true", help="run each request alone (for comparison)")
    v.add_argument("--health-stall-s", type=float, default=60.0,
                   help="/health answers 503 when a model has had work but no progress for this long")  # fmt: skip
    v.add_argument("--keep-alive-s", type=float, default=5.0, help="close a connection idle this long between "
                   "requests")  # fmt: skip
    v.add_argument("--read-timeout-s", type=float, default=30.0, help="close a connection whose request (head and "
                   "body; a new connection's first) has not fully arrived this long after it began, or whose client "
                   "has stopped taking its answer for this long")  # fmt: skip
    v.add_argument("--max-connections", type=int, default=1024,
                   help="open connections; past it the longest-idle one is closed")  # fmt: skip
    v.add_argument("--graceful-shutdown-s", type=float, default=20.0, help="on SIGTERM or Ctrl-C: queued requests get "
                   "503 at once; running ones may finish for this long")  # fmt: skip
    v.set_defaults(run=serve)
    return p


def main(argv: list[str] | None = None) -> None:
    """Run the command; an error or Ctrl-C ends it with one line on stderr (the traceback only with --debug)."""
    args = parser().parse_args(argv)
    if not args.debug:
        warnings.showwarning = lambda message, *_: print(f"qwen3-embed: warning: {message}", file=sys.stderr)
    try:
        args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("qwen3-embed: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if args.debug:
            raise
        sys.exit(f"qwen3-embed: error: {describe(e)}")


def describe(error: Exception) -> str:
    """The message of an error the user can act on; the type too, and where to look, for anything unexpected."""
    if isinstance(error, (OSError, ValueError, TypeError, ImportError, FloatingPointError)):
        return str(error)
    return f"{type(error).__name__}: {error} (this looks like a bug: rerun with --debug and report the traceback)"


if __name__ == "__main__":
    main()
