"""How well the server tells Qwen3 token ids from another tokenizer's (qwen3_embed/server/token_ids.py).

False refusals: the real Qwen3 ids of a few thousand varied texts (prose and code from this repository, and texts
composed of snippets in many scripts: CJK, Arabic, Devanagari, emoji sequences, decomposed accents, long numbers,
special tokens typed in, runs of spaces), whole and cut into windows as clients cut long texts (every window of a
fixed size, and windows between random cuts, many of them inside a UTF-8 character): each list must come back.
Detection: the same texts' OpenAI cl100k ids (what LangChain's OpenAIEmbeddings sends by default) sent as Qwen3 ids:
the share of lists that do not come back, by length, and of requests refused (a quarter of their lists or more).

cl100k needs its .tiktoken file, which tiktoken downloads: where there is no network, `pip install bpe-openai` (its
package holds a copy, checked here against tiktoken's sha256) or `--cl100k FILE`. Without one, detection is skipped.

    python benchmarks/foreign_ids.py [--texts 3000] [--cl100k FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import time
import unicodedata
from pathlib import Path

from tokenizers import Tokenizer

from clients import cl100k_from_a_copy
from common import RESULTS, ROOT, SHARED_TOKENIZER, machine
from qwen3_embed.server.token_ids import FOREIGN_SHARE, RoundTrip

WINDOWS = (7, 16, 64, 256)  # fixed window sizes, as a client cuts a long text's ids
BATCH = 16  # texts per request in the detection's requests
LENGTHS = [(4, "1-4"), (8, "5-8"), (16, "9-16"), (32, "17-32"), (64, "33-64"), (float("inf"), "over 64")]
SNIPPETS = [
    "北京是中华人民共和国的首都，也是全国的政治、文化中心。",
    "東京都は日本の首都であり、世界最大級の都市圏を形成している。",
    "한국어는 한글로 적으며, 서울은 대한민국의 수도이다.",
    "القاهرة هي عاصمة مصر وأكبر مدنها.",
    "नई दिल्ली भारत की राजधानी है।",
    "Москва — столица России, крупнейший город страны.",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
    "Ngày mai trời sẽ nắng đẹp ở Hà Nội.",
    "👩‍👩‍👧‍👦 family 🇫🇷🇯🇵 flags 👍🏽 thumbs ✨🚀 done",
    "cafe\u0301 nai\u0308ve re\u0301sume\u0301 (decomposed accents)",
    "Ǆ ﬁ Å ℃ ① ｶﾀｶﾅ (compatibility characters)",
    "3.14159265358979323846264338327950288419716939937510",
    "Invoice #000123456789, total 1,234,567.89 USD, IBAN DE89370400440532013000",
    "def embed(texts: list[str]) -> np.ndarray:\n    return model.encode(texts, batch_size=32)\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot product",
    "SELECT id, text FROM docs WHERE score > 0.75 ORDER BY score DESC LIMIT 10;",
    '{"input": ["What is Deep Learning?"], "model": "Qwen/Qwen3-Embedding-0.6B"}',
    "https://example.com/path/to/page?query=qwen3&lang=en#section-2",
    "<|im_start|>user\nWhat's the capital of China?<|im_end|>\n<|im_start|>assistant\n",
    "It's what they'd've said: don't, won't, y'all, 'tis, rock 'n' roll.",
    "Tabs\tand  double  spaces,\n\n\nblank lines,   and trailing spaces   ",
    "¿Qué tal? Ça va! Grüße aus Köln. Þetta er íslenska. Zażółć gęślą jaźń.",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝒔𝒄𝒓𝒊𝒑𝒕 and 𠀀𠀁𠀂 (supplementary planes)",
    "ℵ₀ < 2^ℵ₀; ∀x∈ℝ: x² ≥ 0; ∑ᵢ aᵢbᵢ = ⟨a, b⟩",
]


def varied_texts(count: int, seed: int = 0) -> list[str]:
    """Paragraphs of this repository's README and source, and texts composed of the snippets above; `count` in
    all, drawn at random."""
    rng = random.Random(seed)
    pieces = []
    for path in sorted([ROOT / "README.md", *(ROOT / "qwen3_embed").rglob("*.py"), *(ROOT / "tests").glob("*.py")]):
        pieces += [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 20]
    composed = []
    for _ in range(count):
        parts = rng.choices(SNIPPETS, k=rng.randint(1, 6))
        composed.append(rng.choice(["", " ", "\n", " — ", "  "]).join(parts))
    texts = rng.sample(pieces, min(len(pieces), count // 2)) + composed
    return rng.sample(texts, count)


def windows(ids: list[int], rng: random.Random) -> list[list[int]]:
    """Every window of each fixed size, and windows between random cuts."""
    cut = [ids[i : i + size] for size in WINDOWS if len(ids) > size for i in range(0, len(ids), size)]
    for _ in range(4):
        a = rng.randrange(len(ids))
        cut.append(ids[a : rng.randrange(a, len(ids)) + 1])
    return cut


def inside_a_character(trip: RoundTrip, ids: list[int]) -> bool:
    """Whether the list starts or ends inside a UTF-8 character."""
    data = b"".join(trip.bytes[i] for i in ids)
    try:
        data.decode()
        return False
    except UnicodeDecodeError:
        return True


def cl100k(path: str | None):
    """tiktoken's cl100k_base Encoding: from `path` or bpe-openai's copy (clients.cl100k_from_a_copy), else from
    tiktoken's cache or download; None when none can be had."""
    import tiktoken

    source = cl100k_from_a_copy(path)
    try:
        return tiktoken.get_encoding("cl100k_base"), f"{source}, sha256 checked" if source else "tiktoken"
    except Exception:
        return None, "not available (no network; pip install bpe-openai, or --cl100k FILE)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--cl100k", help="a local copy of cl100k_base.tiktoken (or .gz)")
    parser.add_argument("--output", type=Path, default=RESULTS / "foreign-ids.json")
    args = parser.parse_args()
    tokenizer = Tokenizer.from_file(str(SHARED_TOKENIZER / "tokenizer.json"))
    trip = RoundTrip(tokenizer)
    texts = varied_texts(args.texts)
    rng = random.Random(1)
    own = [tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    cut = [w for ids in own if ids for w in windows(ids, rng)]
    start = time.perf_counter()
    refused_whole = trip.foreign(own)
    refused_windows = trip.foreign(cut)
    seconds = time.perf_counter() - start
    tokens = sum(map(len, own)) + sum(map(len, cut))
    result = {
        "machine": machine(),
        "tokenizer": str(SHARED_TOKENIZER),
        "foreign_share": FOREIGN_SHARE,
        "qwen3_ids": {
            "texts": len(texts),
            "with_cjk": sum(any(unicodedata.east_asian_width(c) == "W" for c in t) for t in texts),
            "tokens": sum(map(len, own)),
            "windows": len(cut),
            "windows_cut_inside_a_character": sum(inside_a_character(trip, w) for w in cut),
            "refused_texts": len(refused_whole),
            "refused_windows": len(refused_windows),
            "microseconds_per_token": round(1e6 * seconds / tokens, 2),
        },
    }
    encoding, source = cl100k(args.cl100k)
    result["cl100k"] = {"source": source}
    if encoding is not None:
        foreign = [encoding.encode_ordinary(t) for t in texts]
        failing = set(trip.foreign(foreign))
        buckets = {label: [0, 0] for _, label in LENGTHS}
        for i, ids in enumerate(foreign):
            label = next(label for most, label in LENGTHS if len(ids) <= most)
            buckets[label][0] += i in failing
            buckets[label][1] += 1
        order = list(range(len(texts)))
        rng.shuffle(order)
        requests = [order[i : i + BATCH] for i in range(0, len(order) - BATCH + 1, BATCH)]
        refused = sum(sum(i in failing for i in r) >= FOREIGN_SHARE * len(r) for r in requests)
        same = sum(tokenizer.decode(ids) == t for ids, t in zip(foreign, texts))
        result["cl100k"] |= {
            "lists": len(foreign),
            "lists_refused": len(failing),
            "lists_meaning_the_same_text_in_qwen3": same,
            "refused_by_length": {k: {"refused": v[0], "of": v[1]} for k, v in buckets.items()},
            f"requests_of_{BATCH}_lists": len(requests),
            "requests_refused": refused,
        }
    args.output.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    args.output.with_suffix(".md").write_text(report(result))
    print(report(result))


def report(result: dict) -> str:
    own, foreign = result["qwen3_ids"], result["cl100k"]
    lines = [
        "# Telling Qwen3 token ids from another tokenizer's (benchmarks/foreign_ids.py)",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores. Tokenizer: the real Qwen3 one.",
        "",
        f"Qwen3's own ids of {own['texts']} varied texts ({own['with_cjk']} with CJK; {own['tokens']} tokens) and "
        f"{own['windows']} windows of them ({own['windows_cut_inside_a_character']} cut inside a UTF-8 character): "
        f"**{own['refused_texts']} texts and {own['refused_windows']} windows refused**; the check took "
        f"{own['microseconds_per_token']} µs per token.",
        "",
    ]
    if "lists" not in foreign:
        return "\n".join([*lines, f"cl100k ids: {foreign['source']}.", ""])
    lines += [
        f"The same texts' cl100k ids (from {foreign['source']}) sent as Qwen3 ids: {foreign['lists_refused']} of "
        f"{foreign['lists']} lists do not come back ({foreign['lists_meaning_the_same_text_in_qwen3']} mean the same "
        f"text in Qwen3's vocabulary); {foreign['requests_refused']} of {foreign[f'requests_of_{BATCH}_lists']} "
        f"requests of {BATCH} lists refused (a share of {result['foreign_share']} or more).",
        "",
        "| cl100k tokens | lists refused |",
        "|---|---|",
        *(f"| {k} | {v['refused']} of {v['of']} |" for k, v in foreign["refused_by_length"].items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
