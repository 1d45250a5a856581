"""The `qwen3-embed` command: `similarity` prints a score matrix, `encode` embeds a corpus (into a folder of shards,
or one file), `verify` checks such a folder, `search` finds its documents nearest to queries, `rerank` orders
documents for a query, `serve` runs the HTTP server, `train` fine-tunes a model."""

from __future__ import annotations

import argparse
import sys
import warnings

from .. import __version__
from . import encode, rerank, search, serve, similarity, train, verify
from .common import HelpFormatter

COMMANDS = (similarity, encode, verify, rerank, search, serve, train)  # each module: add_parser(commands), run(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qwen3-embed", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
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
