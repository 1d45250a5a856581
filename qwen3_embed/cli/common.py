"""What the commands share: the options that several take, each declared once (parent parsers, and helpers for
the two whose default or help differs by command), the help's format, and the checks made before a model loads."""

from __future__ import annotations

import argparse

from .. import checkpoint
from ..checks import check_str, resolve_device
from ..corpus import Options
from ..corpus.inputs import INPUT_FORMATS

EMBEDDING_MODEL = "Qwen/Qwen3-Embedding-0.6B"
RERANKER_MODEL = "Qwen/Qwen3-Reranker-0.6B"


class HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in action.help:
            return action.help
        return f"{action.help} (default: %(default)s)"


def add_command(commands, name: str, help: str, parents: tuple[argparse.ArgumentParser, ...] = ()):
    """A command's parser, with the shared options of `parents` and the help's format."""
    return commands.add_parser(name, parents=list(parents), formatter_class=HelpFormatter, help=help)


DEBUG = argparse.ArgumentParser(add_help=False)
DEBUG.add_argument("--debug", action="store_true", help="show the full traceback of an error")

DEVICE = argparse.ArgumentParser(add_help=False, parents=[DEBUG])
DEVICE.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when torch sees a GPU, else cpu)")
DEVICE.add_argument(
    "--dtype",
    choices=["float32", "bfloat16", "float16", "auto"],
    help="weights' dtype; auto: bfloat16 on cuda and on CPUs that multiply bfloat16 natively (AMX, AVX512-BF16), "
    "else float32 (default: bfloat16 on cuda, float32 on cpu)",
)
DEVICE.add_argument(
    "--ignore-kind",
    action="store_true",
    help="load a checkpoint whose files say it is of the other kind (an embedding model as a reranker, or back)",
)

TOKENS = argparse.ArgumentParser(add_help=False)
TOKENS.add_argument("--max-length", type=int, help="tokens per text, EOS or prompt included (default: 8192)")
TOKENS.add_argument(
    "--no-truncate", action="store_true", help="fail on a text over --max-length instead of cutting it with a warning"
)
TOKENS.add_argument("--batch-tokens", type=int, help="tokens per forward pass (default: 2048 on cpu, 16384 on cuda)")

DIM = argparse.ArgumentParser(add_help=False)
DIM.add_argument("--dim", type=int, help="output dimensions (Matryoshka), default: the hidden size")


def add_model(parser: argparse.ArgumentParser, default: str | None, help: str = "hub id or local folder") -> None:
    """--model, whose default and help differ by command."""
    parser.add_argument("--model", default=default, help=help)


def add_fields(parser: argparse.ArgumentParser, id_help: str) -> None:
    """--text-field and --id-field, for JSON lines and Parquet inputs; what an id is differs by command."""
    parser.add_argument("--text-field", help="field of the text in JSON lines or Parquet (default: text)")
    parser.add_argument("--id-field", help=id_help)


def add_format(parser: argparse.ArgumentParser) -> None:
    """--format, for the commands that read --input."""
    help = "the input's format (default: detected per file, by its suffix or its content)"
    parser.add_argument("--format", choices=INPUT_FORMATS, help=help)


def check_text_flags(args: argparse.Namespace, *names: str) -> None:
    """The text options `names` hold valid Unicode: a value that does not (bytes that are not UTF-8, which Python
    reads as lone surrogates) is named by its flag, with the place in what was typed; a repeated one with its value."""
    for name in names:
        value, flag = getattr(args, name), "--" + name.replace("_", "-")
        if isinstance(value, list):  # a flag given repeatedly
            for text in value:
                check_str(f"{flag} {text!r}", text)
        elif value is not None:
            check_str(flag, value)


def loading(args: argparse.Namespace) -> dict:
    """How --device, --dtype and --ignore-kind load a model."""
    return dict(device=args.device, dtype=args.dtype, check_kind=not args.ignore_kind)


def checked_options(args: argparse.Namespace) -> Options:
    """The run's --dim, --max-length, --no-truncate and --batch-tokens, checked before the model loads: on their own,
    then against the checkpoint's config.json (the only file fetched for it), with the device."""
    options = Options(
        dim=getattr(args, "dim", None),
        max_length=args.max_length,
        truncate=not args.no_truncate,
        batch_tokens=args.batch_tokens,
    )
    resolve_device(args.device)
    options.check_model(checkpoint.read_config(args.model), flags=True)
    return options


def token_options(options: Options) -> dict:
    """max_length, truncate and batch_tokens, as encode and score take them."""
    return dict(max_length=options.max_length, truncate=options.truncate, batch_tokens=options.batch_tokens)
