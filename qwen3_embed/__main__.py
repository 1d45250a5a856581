"""`python -m qwen3_embed`: the qwen3-embed command."""

from .cli import main

main()
