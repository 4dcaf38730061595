"""ROUGE-L (LCS-based F-measure on tokens) and a pool that answers "is anything too similar?" fast.

Self-Instruct keeps a generated instruction only when its ROUGE-L against every
instruction already in the pool is below a threshold (0.7). The pool grows with
every accepted instruction, so the check runs against thousands of entries;
two cheap upper bounds (length ratio, then bag-of-tokens overlap) rule out most
pairs before the quadratic LCS is computed. Tokenization follows the
``rouge-score`` package's default: lower-cased runs of ``[a-z0-9]``, no stemming.
"""

from __future__ import annotations

import re
from collections import Counter

_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence (two-row dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _f_measure(lcs: int, n_cand: int, n_ref: int) -> float:
    if lcs == 0:
        return 0.0
    precision, recall = lcs / n_cand, lcs / n_ref
    return 2 * precision * recall / (precision + recall)


def rouge_l(candidate: str | list[str], reference: str | list[str]) -> float:
    """ROUGE-L F1 of two texts (or token lists); 0.0 when either is empty."""
    c = rouge_tokens(candidate) if isinstance(candidate, str) else candidate
    r = rouge_tokens(reference) if isinstance(reference, str) else reference
    return _f_measure(lcs_length(c, r), len(c), len(r))


class RougePool:
    """Texts accepted so far; ``max_score`` is the highest ROUGE-L of a candidate against them."""

    def __init__(self, texts: list[str] = ()) -> None:
        self._entries: list[tuple[list[str], Counter]] = []
        for t in texts:
            self.add(t)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, text: str) -> None:
        toks = rouge_tokens(text)
        self._entries.append((toks, Counter(toks)))

    def max_score(self, text: str, *, stop_at: float | None = None) -> float:
        """Highest ROUGE-L against the pool; returns as soon as a score reaches ``stop_at``.

        Both bounds are exact upper bounds of F1 (LCS <= min length, LCS <=
        multiset overlap), so pruning never changes the answer.
        """
        cand = rouge_tokens(text)
        counts = Counter(cand)
        n = len(cand)
        best = 0.0
        for toks, tok_counts in self._entries:
            m = len(toks)
            if n == 0 or m == 0 or 2 * min(n, m) / (n + m) <= best:
                continue
            overlap = sum((counts & tok_counts).values())
            if 2 * overlap / (n + m) <= best:
                continue
            best = max(best, _f_measure(lcs_length(cand, toks), n, m))
            if stop_at is not None and best >= stop_at:
                return best
        return best
