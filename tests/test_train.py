"""Training: gradients through the packed model against transformers' padded model, the losses against
sentence-transformers' and the model card's, gradient caching against one pass."""

from __future__ import annotations

import pytest
import torch

from checkpoints import TINY_SHAPES, make_reranker_checkpoint, texts_of_lengths
from qwen3_embed import checkpoint, ops
from qwen3_embed.backends import cpu
from qwen3_embed.pipeline import DEFAULT_INSTRUCTION
from qwen3_embed.reranker import PREFIX, SUFFIX, format_pair
from qwen3_embed.tokenize import pack
from qwen3_embed.train.data import Example
from qwen3_embed.train.losses import reranker_loss
from qwen3_embed.train.model import load_embedder, load_reranker
from qwen3_embed.train.step import ContrastiveStep, reranker_logits

CARD_QUERY_PROMPT = f"Instruct: {DEFAULT_INSTRUCTION}\nQuery:"


def examples(n: int, negatives: int = 0, seed: int = 0) -> list[Example]:
    texts = texts_of_lengths(n * (2 + negatives), seed=seed, max_words=30)
    return [
        Example(texts[i], texts[n + i], tuple(texts[2 * n + i * negatives : 2 * n + (i + 1) * negatives]))
        for i in range(n)
    ]


def checkpoint_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's gradients under the checkpoint's keys (q/k/v and gate/up apart)."""
    grads = {name: p.grad for name, p in model.named_parameters()}
    checkpoint.split_stacked(model, grads, "")
    return grads


def assert_grads_close(ours: dict, reference: dict, rtol: float) -> None:
    """Every gradient of `reference` within `rtol` of its largest value in `ours`; none of them zero."""
    assert set(ours) == set(reference)
    for name, ref in reference.items():
        assert ref.abs().max() > 0, name
        error = (ours[name] - ref).abs().max() / ref.abs().max()
        assert error <= rtol, f"{name}: relative error {error:.2e}"


def test_varlen_attention_is_differentiable():
    q = torch.randn(9, 4, 8, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(9, 2, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    for bounds in ([0, 1, 5, 9], [0, 0, 4, 4, 9]):  # length 1, empty sequences
        attention = lambda q, k, v, bounds=bounds: ops.varlen_attention(q, k, v, bounds, 8**-0.5)  # noqa: E731
        assert torch.autograd.gradcheck(attention, (q, k, v))


def test_training_loads_plain_weights(tiny):
    _, embedder = load_embedder(tiny[0], device="cpu")
    model = embedder.model
    assert model.training and all(p.requires_grad and not p.is_mkldnn for p in model.parameters())
    assert not any(isinstance(m, cpu.PackedLinear) for m in model.modules())


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_gradients_equal_transformers_padded(tiny, checkpointing):
    """Gradients of a weighted sum of every token's final hidden state, through our packed model and transformers'
    model on the same sequences left-padded: every parameter within 1e-4 of its largest gradient, in float32."""
    import transformers

    folder, _ = tiny
    _, embedder = load_embedder(folder, device="cpu", checkpointing=checkpointing)
    hf = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32).train()
    ids = embedder.tokenize(texts_of_lengths(5, seed=1, max_words=40) + ["x"])
    weights = [torch.randn(len(seq), embedder.config.hidden_size) for seq in ids]
    batch = pack(ids, list(range(len(ids))))
    _, states = embedder.model(batch.input_ids, batch.cu_seqlens, batch.position_ids, output_hidden_states=True)
    (states[-1] * torch.cat(weights)).sum().backward()

    width = max(map(len, ids))
    input_ids = torch.tensor([[0] * (width - len(s)) + s for s in ids])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in ids])
    hidden = hf(input_ids=input_ids, attention_mask=mask).last_hidden_state
    (hidden[mask.bool()] * torch.cat(weights)).sum().backward()
    assert_grads_close(checkpoint_grads(embedder.model), {n: p.grad for n, p in hf.named_parameters()}, 1e-4)


def sentence_transformers_step(folder, batch: list[Example], same_kind: bool, cached: bool):
    """sentence-transformers' loss and gradients (under the checkpoint's keys) on the batch: queries with the
    card's prompt, then positives, then one column per negative."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses

    st = SentenceTransformer(str(folder), device="cpu")
    st.train()
    directions = ("query_to_doc", "query_to_query", "doc_to_doc") if same_kind else ("query_to_doc",)
    if cached:
        loss_fn = losses.CachedMultipleNegativesRankingLoss(st, scale=20.0, mini_batch_size=2, directions=directions)
    else:
        loss_fn = losses.MultipleNegativesRankingLoss(st, scale=20.0, directions=directions)
    columns = [[CARD_QUERY_PROMPT + e.query for e in batch], [e.positive for e in batch]]
    columns += [[e.negatives[j] for e in batch] for j in range(len(batch[0].negatives))]
    loss = loss_fn([st.tokenize(texts) for texts in columns], None)
    loss.backward()
    prefix = "0.model."
    return loss.detach(), {n.removeprefix(prefix): p.grad for n, p in st.named_parameters()}


@pytest.mark.parametrize("same_kind", [False, True], ids=["in-batch", "same-kind"])
@pytest.mark.parametrize("negatives", [0, 2])
def test_step_equals_sentence_transformers(tiny, same_kind, negatives):
    """One step's loss to 1e-5 and every parameter's gradient to 1e-4 (relative to its largest) in float32, against
    MultipleNegativesRankingLoss on the same batch, padded."""
    folder, _ = tiny
    batch = examples(6, negatives, seed=2)
    ref_loss, ref_grads = sentence_transformers_step(folder, batch, same_kind, cached=False)
    _, embedder = load_embedder(folder, device="cpu")
    step = ContrastiveStep(embedder, temperature=0.05, same_kind=same_kind)
    loss = step.backward(step.tokenize(batch))
    assert loss > 0.1 and abs(loss - ref_loss) <= 1e-5
    assert_grads_close(checkpoint_grads(embedder.model), ref_grads, 1e-4)


@pytest.mark.parametrize("same_kind", [False, True], ids=["in-batch", "same-kind"])
def test_cached_step_equals_one_pass_and_sentence_transformers_cached(tiny, same_kind):
    """Gradient caching over chunks of a few sequences gives one pass's loss and gradients, and those of
    CachedMultipleNegativesRankingLoss."""
    folder, _ = tiny
    batch = examples(6, 1, seed=3)
    results = []
    for cache_tokens in (None, 40):
        _, embedder = load_embedder(folder, device="cpu")
        step = ContrastiveStep(embedder, same_kind=same_kind, cache_tokens=cache_tokens)
        tokenized = step.tokenize(batch)
        assert sum(e.tokens for e in tokenized) > 4 * 40  # several chunks
        results.append((step.backward(tokenized), checkpoint_grads(embedder.model)))
    (loss, grads), (cached_loss, cached_grads) = results
    assert abs(cached_loss - loss) <= 1e-6
    assert_grads_close(cached_grads, grads, 1e-5)
    ref_loss, ref_grads = sentence_transformers_step(folder, batch, same_kind, cached=True)
    assert abs(cached_loss - ref_loss) <= 1e-5
    assert_grads_close(cached_grads, ref_grads, 1e-4)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_reranker_loss_equals_causal_lm_on_the_card_prompt(tmp_path, tied):
    """Cross-entropy over the "no"/"yes" logits of the last token, against transformers' Qwen3ForCausalLM on the
    card's prompt, left-padded: loss to 1e-5, every gradient to 1e-4 (the output projection's two rows too)."""
    from transformers import AutoTokenizer

    hf = make_reranker_checkpoint(tmp_path, TINY_SHAPES["gqa2"], tied=tied).train()
    texts = texts_of_lengths(10, seed=4, max_words=25)
    pairs, labels = list(zip(texts[:5], texts[5:])), torch.tensor([1, 0, 1, 1, 0])

    tokenizer = AutoTokenizer.from_pretrained(tmp_path, padding_side="left")
    no, yes = tokenizer.convert_tokens_to_ids("no"), tokenizer.convert_tokens_to_ids("yes")
    prompts = [PREFIX + format_pair(DEFAULT_INSTRUCTION, q, d) + SUFFIX for q, d in pairs]
    inputs = tokenizer(prompts, padding=True, return_tensors="pt", add_special_tokens=False)
    logits = hf(**inputs).logits[:, -1, [no, yes]]
    ref_loss = torch.nn.functional.cross_entropy(logits, labels)
    ref_loss.backward()
    ref_grads = {n.removeprefix("model."): p.grad for n, p in hf.named_parameters() if n != "lm_head.weight"}

    _, reranker = load_reranker(tmp_path, device="cpu")
    loss = reranker_loss(reranker_logits(reranker, reranker.tokenize(pairs)), labels)
    loss.backward()
    assert abs(loss.item() - ref_loss.item()) <= 1e-5
    assert_grads_close(checkpoint_grads(reranker.model), ref_grads, 1e-4)
    if not tied:
        assert_grads_close({"rows": reranker.no_yes.grad}, {"rows": hf.lm_head.weight.grad[[no, yes]]}, 1e-4)
