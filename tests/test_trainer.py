"""The trainer end to end: bad data, a tiny model that learns, kill -9 and resume, the saved folder in
sentence-transformers and here, LoRA merged on save."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from checkpoints import CORPUS, TINY_SHAPES, make_checkpoint, make_reranker_checkpoint
from qwen3_embed import Embedder
from qwen3_embed.train.data import Example, read_examples
from qwen3_embed.train.lora import LoRALinear, add_lora
from qwen3_embed.train.save import written_atomically
from qwen3_embed.train.trainer import TrainOptions, train

WORDS = sorted({w for w in " ".join(CORPUS).lower().replace(".", " ").replace(",", " ").split() if w.isalpha()})
TOPICS, FILLERS = WORDS[:40], WORDS[40:]


def retrieval_task(seed: int, n: int) -> tuple[list[dict], list[dict]]:
    """A query is a topic word; its positive, the topic followed by three filler words. Held out: one example per
    topic, with fresh fillers (chance recall@1: 1/40)."""
    rng = random.Random(seed)

    def example(topic: str) -> dict:
        return {"query": topic, "positive": " ".join([topic, *rng.sample(FILLERS, 3)])}

    return [example(rng.choice(TOPICS)) for _ in range(n)], [example(topic) for topic in TOPICS]


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def qwen3_embed(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    return subprocess.Popen([sys.executable, "-m", "qwen3_embed", *args], env=env, text=True, **kwargs)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    make_checkpoint(folder, TINY_SHAPES["gqa1"])
    return folder


@pytest.mark.parametrize(
    "line, error",
    [
        ('{"query": "a"}', "line.jsonl:2: the field 'positive' is missing"),
        ('{"query": "a", "positive": "  "}', "line.jsonl:2: positive is empty"),
        ('{"query": "a", "positive": "b", "negatives": ["c", ""]}', r"line.jsonl:2: negatives\[1\] is empty"),
        ('{"query": 3, "positive": "b"}', "line.jsonl:2: query must be a string, not int"),
        ('["a", "b"]', "line.jsonl:2: a line must be a JSON object"),
        ('{"query": "a", "positive": "b"', "line.jsonl:2: not valid JSON"),
        ('{"query": "a", "positive": "b", "negatives": "c"}', "line.jsonl:2: negatives must be a list"),
    ],
)
def test_bad_data_names_file_and_line(tmp_path, line, error):
    path = tmp_path / "line.jsonl"
    path.write_text('{"query": "q", "positive": "p"}\n' + line + "\n")
    with pytest.raises(ValueError, match=error):
        read_examples(path)


@pytest.mark.parametrize(
    "data, error",
    [
        (b'{"query": "q", "positive": "p"}\n{"query": "q\xff", "positive": "p"}\n', "line.jsonl:2: not UTF-8 text"),
        (b'{"query": "q", "positive": "p"', "line.jsonl:1: not valid JSON .* at column 31"),
        (b'{"query": "q", "positive": "p"\r\n', "line.jsonl:1: not valid JSON .* at column 31"),
    ],
)
def test_undecodable_or_cut_lines_name_file_line_and_column(tmp_path, data, error):
    path = tmp_path / "line.jsonl"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=error):
        read_examples(path)


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"query": "q", "positive": "p"}\r\n')
    assert read_examples(path) == [Example("q", "p")]


def test_a_negative_equal_to_its_positive_is_warned_and_dropped(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('\n{"query": "q", "positive": "p", "negatives": ["p", "n"]}\n')
    with pytest.warns(UserWarning, match=r"data.jsonl:2: a negative equals the positive"):
        assert read_examples(path) == [Example("q", "p", ("n",))]


def test_bad_data_in_the_command_is_one_line_naming_the_flag_or_line(tmp_path, small):
    data = tmp_path / "data.jsonl"
    data.write_text('{"query": "q"}\n')
    run = qwen3_embed("train", "--model", str(small), "--data", str(data), "--output", str(tmp_path / "out"),
                      stderr=subprocess.PIPE)  # fmt: skip
    assert run.wait() == 1 and run.stderr.read().strip() == (
        f"qwen3-embed: error: {data}:1: the field 'positive' is missing (each line needs query and positive)"
    )
    run = qwen3_embed("train", "--model", str(small), "--data", str(data), "--output", str(tmp_path / "out"),
                      "--batch-tokens", "0", stderr=subprocess.PIPE)  # fmt: skip
    assert run.wait() == 1 and "--batch-tokens must be a positive integer" in run.stderr.read()
    assert not (tmp_path / "out").exists()


def test_nothing_half_written_on_a_crash(tmp_path):
    with pytest.raises(RuntimeError), written_atomically(tmp_path / "model") as partial:
        (partial / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_tiny_model_learns_a_retrieval_task(tmp_path, small):
    """recall@1 on held-out pairs from chance (1/40) to above 0.9, within a CPU minute (one thread)."""
    examples, held_out = retrieval_task(0, 200)
    args = ["train", "--model", str(small), "--data", write_jsonl(tmp_path / "train.jsonl", examples),
            "--eval", write_jsonl(tmp_path / "eval.jsonl", held_out), "--output", str(tmp_path / "out"),
            "--epochs", "16", "--lr", "5e-3", "--batch-tokens", "400", "--max-length", "64", "--instruction", "q",
            "--no-progress"]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = qwen3_embed(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = run.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert run.returncode == 0, err
    first = float(err.split("before training: recall@1 ")[1].split(",")[0])
    assert first <= 0.1 and json.loads(out)["recall@1"] > 0.9, err
    cpu_seconds = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert cpu_seconds < 60, err


def train_args(small, tmp_path, *extra: str) -> list[str]:
    examples, _ = retrieval_task(1, 120)
    return ["train", "--model", str(small), "--data", write_jsonl(tmp_path / "train.jsonl", examples),
            "--epochs", "3", "--lr", "1e-3", "--batch-tokens", "200", "--max-length", "64", "--instruction", "q",
            "--no-progress",
            *extra]  # fmt: skip


@pytest.mark.slow
def test_kill_9_and_resume_gives_the_uninterrupted_weights_bit_for_bit(tmp_path, small):
    whole = qwen3_embed(*train_args(small, tmp_path, "--output", str(tmp_path / "whole"), "--save-every", "5"),
                        stdout=subprocess.DEVNULL)  # fmt: skip
    assert whole.wait() == 0
    output = tmp_path / "killed"
    args = train_args(small, tmp_path, "--output", str(output), "--save-every", "5")
    killed = qwen3_embed(*args, stdout=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed.checkpoints"
    while not (checkpoints / "step-10").exists():
        assert killed.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    complete = sorted(p.name for p in checkpoints.glob("step-*"))  # a .step-N.partial may be there too
    assert not output.exists() and complete in (["step-10"], ["step-10", "step-5"])
    resumed = qwen3_embed(*args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert resumed.wait() == 0
    assert "resuming from" in resumed.stderr.read()
    ours, reference = load_file(output / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)
    assert not checkpoints.exists()
    source = load_file(small / "model.safetensors")
    assert not torch.equal(ours["layers.0.mlp.up_proj.weight"], source["layers.0.mlp.up_proj.weight"])  # trained


def test_resuming_with_other_options_is_refused(tmp_path, small):
    args = train_args(small, tmp_path, "--output", str(tmp_path / "out"), "--save-every", "2")
    options = dict(model=str(small), data=args[4], output=str(tmp_path / "out"), lr=1e-3, batch_tokens=1000,
                   max_length=64, instruction="q", save_every=2, show_progress=False)  # fmt: skip
    from qwen3_embed.train import trainer

    with pytest.MonkeyPatch.context() as patch:  # stop right after the first checkpoint
        patch.setattr(trainer, "save_model", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            train(TrainOptions(**options))
    with pytest.raises(ValueError, match=r"other options \(--lr\)"):
        train(TrainOptions(**{**options, "lr": 2e-3}))


def test_the_progress_bar_shows_each_steps_own_loss(tmp_path, small):
    import functools
    import io

    from qwen3_embed.train import trainer

    screen = io.StringIO()
    examples, _ = retrieval_task(3, 12)
    with pytest.MonkeyPatch.context() as patch:  # every frame drawn, into `screen`
        patch.setattr(trainer, "tqdm", functools.partial(trainer.tqdm, file=screen, mininterval=0, miniters=1))
        train(TrainOptions(model=str(small), data=write_jsonl(tmp_path / "train.jsonl", examples),
                           output=str(tmp_path / "out"), lr=1e-3, batch_tokens=100, max_length=64,
                           instruction="q"))  # fmt: skip
    frames = [frame for frame in screen.getvalue().split("\r") if "step" in frame]
    steps = [frame for frame in frames if not frame.lstrip().startswith("0%")]
    assert len(steps) >= 3 and all("loss" in frame for frame in steps), frames


def test_batches_of_one_example_without_negatives_are_warned_about(tmp_path, small):
    examples, _ = retrieval_task(4, 3)
    with pytest.warns(UserWarning, match=r"3 of 3 batches hold one example and no negative.*--batch-tokens \(now 20\)"):
        data = write_jsonl(tmp_path / "train.jsonl", examples)
        train(TrainOptions(model=str(small), data=data, output=str(tmp_path / "out"), batch_tokens=20, max_length=64,
                           instruction="q"))  # fmt: skip


def test_the_saved_folder_loads_in_sentence_transformers_transformers_and_here(tmp_path, small):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    examples, _ = retrieval_task(2, 40)
    output = tmp_path / "out"
    train(TrainOptions(model=str(small), data=write_jsonl(tmp_path / "train.jsonl", examples), output=str(output),
                       lr=1e-3, batch_tokens=600, max_length=128, show_progress=False))  # fmt: skip
    texts = ["capital", "gravity gives weight", "the sun and the planets"]
    ours = Embedder.from_pretrained(output, device="cpu")
    st = SentenceTransformer(str(output), device="cpu")
    torch.testing.assert_close(ours.encode(texts), st.encode(texts, convert_to_tensor=True), rtol=0, atol=1e-5)
    queries = st.encode(texts, prompt_name="query", convert_to_tensor=True)
    torch.testing.assert_close(ours.encode_query(texts), queries, rtol=0, atol=1e-5)
    before = Embedder.from_pretrained(small, device="cpu").encode(texts)
    assert (ours.encode(texts) - before).abs().max() > 1e-3  # the trained weights, not the source's
    hf, info = AutoModel.from_pretrained(output, output_loading_info=True)
    assert not any(info.values())  # no missing, unexpected or mismatched keys
    assert all(p.dtype == torch.float32 for p in hf.parameters())


def test_lora_merges_w_plus_scaled_ba(small):
    _, embedder = __import__("qwen3_embed.train.model", fromlist=["load_embedder"]).load_embedder(small, device="cpu")
    model = embedder.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, rank=3, alpha=5.0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_a", "lora_b")) for n in trainable)
    layer = model.layers[1].mlp.down_proj
    assert isinstance(layer, LoRALinear)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    x = torch.randn(5, layer.base.in_features)
    expected_out = layer(x)
    expected = before["layers.1.mlp.down_proj.weight"] + 5.0 / 3 * layer.lora_b @ layer.lora_a
    from qwen3_embed.train.lora import merge_lora

    merge_lora(model)
    after = model.state_dict()
    torch.testing.assert_close(after["layers.1.mlp.down_proj.weight"], expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(model.layers[1].mlp.down_proj(x), expected_out, rtol=1e-5, atol=1e-5)
    assert torch.equal(after["embed_tokens.weight"], before["embed_tokens.weight"])


def test_a_lora_run_saves_merged_weights(tmp_path, small):
    """Each projection's saved weight is the source's plus an update of rank at most --lora-rank; every other
    tensor is the source's."""
    examples, _ = retrieval_task(3, 40)
    output = tmp_path / "out"
    train(TrainOptions(model=str(small), data=write_jsonl(tmp_path / "train.jsonl", examples), output=str(output),
                       lr=1e-2, batch_tokens=300, max_length=64, instruction="q", lora_rank=2,
                       show_progress=False))  # fmt: skip
    saved, source = load_file(output / "model.safetensors"), load_file(small / "model.safetensors")
    assert saved.keys() == source.keys()
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for key in saved:
        if key.split(".")[-2] in projections:
            rank = torch.linalg.matrix_rank((saved[key] - source[key]).double(), atol=1e-6).item()
            assert 1 <= rank <= 2, key
        else:
            assert torch.equal(saved[key], source[key]), key


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_a_reranker_run_saves_a_reranker_that_scores_as_transformers(tmp_path, tied):
    """--reranker trains on each example's positive (yes) and negatives (no); the saved folder has the reranker
    repos' layout, loads as a Reranker, and its scores equal transformers' Qwen3ForCausalLM on the card's prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwen3_embed import Reranker
    from qwen3_embed.reranker import DEFAULT_INSTRUCTION, PREFIX, SUFFIX, format_pair

    source = tmp_path / "source"
    make_reranker_checkpoint(source, TINY_SHAPES["gqa1"], tied=tied)
    examples, _ = retrieval_task(4, 30)
    data = [{**e, "negatives": [examples[(i + 1) % len(examples)]["positive"]]} for i, e in enumerate(examples)]
    output = tmp_path / "out"
    train(TrainOptions(model=str(source), data=write_jsonl(tmp_path / "train.jsonl", data), output=str(output),
                       lr=1e-3, batch_tokens=2000, max_length=256, reranker=True, show_progress=False))  # fmt: skip
    saved, original = load_file(output / "model.safetensors"), load_file(source / "model.safetensors")
    assert saved.keys() == original.keys()
    changed = "lm_head.weight" if not tied else "model.embed_tokens.weight"
    no_yes = [AutoTokenizer.from_pretrained(source).convert_tokens_to_ids(t) for t in ("no", "yes")]
    assert not torch.equal(saved[changed][no_yes], original[changed][no_yes])  # the yes/no rows trained

    pairs = [(e["query"], d) for e in data[:4] for d in (e["positive"], *e["negatives"])]
    ours = Reranker.from_pretrained(output, device="cpu").score(pairs, raw=True)
    hf = AutoModelForCausalLM.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output, padding_side="left")
    prompts = [PREFIX + format_pair(DEFAULT_INSTRUCTION, q, d) + SUFFIX for q, d in pairs]
    with torch.no_grad():
        logits = hf(**tokenizer(prompts, padding=True, return_tensors="pt", add_special_tokens=False)).logits[:, -1]
    torch.testing.assert_close(ours, logits[:, no_yes[1]] - logits[:, no_yes[0]], rtol=0, atol=1e-4)


def test_bf16_autocast_trains_close_to_float32(tmp_path, small):
    from qwen3_embed.train.model import load_embedder
    from qwen3_embed.train.step import ContrastiveStep

    examples = [Example(**e) for e in retrieval_task(5, 8)[0]]
    losses = []
    for autocast in (False, True):
        _, embedder = load_embedder(small, device="cpu")
        step = ContrastiveStep(embedder, autocast=autocast, instruction="q")
        losses.append(step.backward(step.tokenize(examples)).item())
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in embedder.model.parameters())
    assert losses[0] > 0.1 and 0 < abs(losses[1] - losses[0]) < 0.05 * losses[0]  # bfloat16 rounding, no more


@pytest.mark.slow
def test_two_torchrun_ranks_over_gloo_take_the_averaged_step(tmp_path, small):
    """Two CPU ranks (torchrun, gloo): each trains on every other example of each batch, and the saved weights are
    those of one process that averages the two shares' gradients before each step, bit for bit."""
    from qwen3_embed.train.data import epoch_batches
    from qwen3_embed.train.model import load_embedder
    from qwen3_embed.train.step import ContrastiveStep
    from qwen3_embed.train.trainer import trainable, warmup_then_decay

    examples, _ = retrieval_task(6, 40)
    data = write_jsonl(tmp_path / "train.jsonl", examples)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "qwen3_embed", "train",
               "--model", str(small), "--data", data, "--output", str(tmp_path / "out"), "--lr", "1e-3",
               "--batch-tokens", "300", "--max-length", "64", "--instruction", "q", "--no-progress"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    saved = load_file(tmp_path / "out" / "model.safetensors")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank
    try:
        _, embedder = load_embedder(small, device="cpu")
        step = ContrastiveStep(embedder, instruction="q", max_length=64)
        tokenized = step.tokenize([Example(**e) for e in examples])
        schedule = epoch_batches([e.tokens for e in tokenized], 300, 0, 0)
        assert any(len(batch) > 2 for batch in schedule)
        parameters = trainable(embedder)
        optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.01)
        scheduler = warmup_then_decay(optimizer, len(schedule), round(0.05 * len(schedule)))
        for batch in schedule:
            optimizer.zero_grad(set_to_none=True)
            for rank in (0, 1):
                step.backward([tokenized[i] for i in batch[rank::2]])  # the second share's gradients added
            for p in parameters:
                p.grad /= 2
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
    finally:
        torch.set_num_threads(threads)
    reference = embedder.model.state_dict()
    assert saved.keys() == reference.keys()
    assert all(torch.equal(saved[key], reference[key]) for key in saved)
