"""A model's identity by content, as a manifest records it (`settings.model`): what encode checks a resumed run
against and search checks the query model against."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .. import checkpoint


def model_fingerprint(folder: Path) -> str:
    """A hash of what decides a checkpoint's vectors: its config, tokenizer and prompts, and each weight file's
    size, header and 16 blocks sampled across its data (so a fine-tune of the same shapes differs)."""
    digest = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "config_sentence_transformers.json"):
        path = folder / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    for path in checkpoint.weight_files(folder):
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            digest.update(f.read(min(length, size)))
            for i in range(16):
                f.seek(size * i // 16)
                digest.update(f.read(1 << 16))
    return digest.hexdigest()
