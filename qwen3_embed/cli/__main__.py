"""`python -m qwen3_embed.cli` (as torchrun launches it: `torchrun ... -m qwen3_embed.cli encode ...`)."""

from . import main

main()
