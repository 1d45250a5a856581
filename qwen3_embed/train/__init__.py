"""Fine-tuning the embedder (contrastive, InfoNCE with in-batch negatives) and the reranker (cross-entropy over its
"yes"/"no" logits), padding-free: every batch is packed end to end as at inference.

- `data`: examples from JSON lines, checked line by line; the batches of each epoch under a token budget.
- `losses`: the losses themselves, on vectors and logits.
- `step`: one batch's forward and backward (with gradient caching as an option).
- `model`: a checkpoint loaded for training (plain weights that take gradients).
- `lora`: low-rank adapters on the projections, merged on save.
- `save`: the final model in its checkpoint's layout, and crash-safe writes.
- `trainer`: the loop (`TrainOptions`, `train`), which `qwen3-embed train` runs.
"""

from .trainer import TrainOptions, train

__all__ = ["TrainOptions", "train"]
