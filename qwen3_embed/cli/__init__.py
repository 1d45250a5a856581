"""The `qwen3-embed` command: `similarity` prints a score matrix, `encode` embeds a corpus (into a folder of shards,
or one file), `verify` checks such a folder, `search` finds its documents nearest to queries, `rerank` orders
documents for a query, `serve` runs the HTTP server, `train` fine-tunes a model."""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Iterable

from .. import __version__
from ..checks import UsageError
from . import encode, rerank, search, serve, similarity, train, verify
from .common import HelpFormatter

COMMANDS = (similarity, encode, verify, rerank, search, serve, train)  # each module: add_parser(commands), run(args)
WORD = r"(?<![\w/.-]){}(?![\w/-]|\.\w)"  # a word of a message, not part of a path or a file name


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qwen3-embed", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return p


def main(argv: list[str] | None = None) -> None:
    """Run the command; an error or Ctrl-C ends it with one line on stderr (the traceback only with --debug). Errors
    and warnings name the command's options by their flags."""
    args = parser().parse_args(argv)
    options = [name for name in vars(args) if name not in ("command", "run")]
    if not args.debug:
        warnings.showwarning = lambda message, *_: print(
            f"qwen3-embed: warning: {in_flags(str(message), options)}", file=sys.stderr
        )
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
        sys.exit(f"qwen3-embed: error: {in_flags(describe(e), options)}")


def in_flags(message: str, options: Iterable[str]) -> str:
    """A library's message in the command line's terms: each of the command's options that it names as Python does
    (max_length, top_k=10, truncate=False) named by its flag instead (--max-length, --top-k=10, --no-truncate)."""
    for name in options:
        flag = "--" + name.replace("_", "-")
        if name.startswith("no_"):  # a switch that turns an option off: --no-truncate is truncate=False
            message = re.sub(WORD.format(rf"(pass )?{name[3:]}=True"), f"leave out {flag}", message)
            message = re.sub(WORD.format(rf"{name[3:]}=False"), flag, message)
        else:  # a name without an underscore (dim, candidates) only as name=value: alone, it may be a plain word
            message = re.sub(WORD.format(name if "_" in name else rf"{name}(?==)"), flag, message)
    return re.sub(r"(--[\w-]+) \(\1\)", r"\1", message)  # what was named both ways, named once


def describe(error: Exception) -> str:
    """The message of an error the user can act on (a UsageError's for the command line); the type too, and where to
    look, for anything unexpected."""
    if isinstance(error, UsageError):
        return error.command_line
    if isinstance(error, (OSError, ValueError, TypeError, ImportError, FloatingPointError)):
        return str(error)
    return f"{type(error).__name__}: {error} (this looks like a bug: rerun with --debug and report the traceback)"
