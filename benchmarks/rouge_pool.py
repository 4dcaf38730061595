"""How long the Self-Instruct ROUGE-L check takes as the pool grows: pruned pool vs computing every LCS.

Instructions are synthetic (random 6-20 word sentences over a 2,000-word
vocabulary with Zipf-like frequencies, roughly the shape of real task text).
Prints milliseconds per candidate for each pool size and checks both give the
same maximum.

    python benchmarks/rouge_pool.py
"""

from __future__ import annotations

import random
import time

from mmtune.datagen.rouge import RougePool, rouge_l, rouge_tokens


def sentences(rng: random.Random, n: int) -> list[str]:
    vocab = [f"w{i}" for i in range(2000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    return [" ".join(rng.choices(vocab, weights, k=rng.randint(6, 20))) for _ in range(n)]


def main() -> None:
    rng = random.Random(0)
    candidates = sentences(rng, 50)
    print(f"{'pool':>6} {'pruned ms/cand':>15} {'all-LCS ms/cand':>16}")
    for size in (1000, 5000, 20000):
        texts = sentences(rng, size)
        pool = RougePool(texts)
        toks = [rouge_tokens(t) for t in texts]
        t0 = time.perf_counter()
        pruned = [pool.max_score(c, stop_at=0.7) for c in candidates]
        t1 = time.perf_counter()
        brute = [max(rouge_l(rouge_tokens(c), t) for t in toks) for c in candidates[:10]]
        t2 = time.perf_counter()
        assert all((p >= 0.7) == (b >= 0.7) for p, b in zip(pruned, brute))
        print(f"{size:>6} {1000 * (t1 - t0) / len(candidates):>15.2f} {1000 * (t2 - t1) / 10:>16.2f}")


if __name__ == "__main__":
    main()
