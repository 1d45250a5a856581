"""The training losses: the embedder's InfoNCE over in-batch negatives, and the reranker's cross-entropy over its
"yes"/"no" logits. Both take what the model computed (vectors, logit differences) and return a scalar."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_TEMPERATURE = 0.05  # sentence-transformers' MultipleNegativesRankingLoss: scale 20


def info_nce(
    queries: torch.Tensor,
    documents: torch.Tensor,
    owners: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    same_kind: bool = False,
) -> torch.Tensor:
    """InfoNCE of B queries [B, dim] against documents [N, dim] (cosine similarity / temperature), mean over queries.

    Document i < B is query i's positive; every document is a negative of every other query (its own hard negatives
    and the batch's other documents). `owners` [N] says which query each document belongs to (`owners[:B]` is
    0..B-1). With `same_kind`, query i's softmax also runs over the other queries and over the documents of other
    queries as seen from its positive, as in the Qwen3-Embedding paper (sentence-transformers'
    MultipleNegativesRankingLoss with directions query_to_doc, query_to_query and doc_to_doc, joint; the paper's
    false-negative mask is not applied).
    """
    b = queries.shape[0]
    q, d = F.normalize(queries, dim=-1), F.normalize(documents, dim=-1)
    scores = [q @ d.T]  # [B, N]
    if same_kind:
        rows = torch.arange(b, device=q.device)
        scores.append((q @ q.T).masked_fill(rows[:, None] == rows[None, :], -torch.inf))  # not itself
        scores.append((d[:b] @ d.T).masked_fill(owners[None, :] == rows[:, None], -torch.inf))  # not its own docs
    logits = torch.cat(scores, dim=1) / temperature
    return (torch.logsumexp(logits, dim=1) - logits[:, :b].diagonal()).mean()


def reranker_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the two-way softmax over the "no" and "yes" logits, whose difference `l_yes - l_no` per pair
    is `logits` [P] (what Reranker.head computes); `labels` [P] is 1 for a relevant pair, 0 for an irrelevant one.
    Mean over pairs."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
