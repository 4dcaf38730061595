"""ROUGE-L (LCS-based F-measure on tokens) and a pool that answers "is anything too similar?" fast.

Self-Instruct keeps a generated instruction only when its ROUGE-L against every
instruction already in the pool is below a threshold (0.7). The pool grows with
every accepted instruction, so the check runs against thousands of entries; an
upper bound from bag-of-tokens overlap rules out most pairs before the
quadratic LCS is computed. Tokenization follows the
``rouge-score`` package's default: lower-cased runs of ``[a-z0-9]``, no stemming.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

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
    """Texts accepted so far; ``max_score`` is the highest ROUGE-L of a candidate against them.

    An inverted index (token -> entries and counts) gives, in a few vectorised
    steps, every entry's bag-of-tokens overlap with the candidate; since LCS <=
    overlap, ``2 * overlap / (n + m)`` bounds the F1 from above. Entries are
    visited in decreasing bound order and the scan stops once the bound cannot
    beat the best score found, so only a handful of LCS computations run even
    against tens of thousands of entries. Pruning never changes the answer.
    """

    def __init__(self, texts: list[str] = ()) -> None:
        self._tokens: list[list[str]] = []
        self._lengths: list[int] = []
        self._postings: dict[str, tuple[list[int], list[int]]] = {}
        for t in texts:
            self.add(t)

    def __len__(self) -> int:
        return len(self._tokens)

    def add(self, text: str) -> None:
        toks = rouge_tokens(text)
        idx = len(self._tokens)
        self._tokens.append(toks)
        self._lengths.append(len(toks))
        for tok, count in Counter(toks).items():
            entries, counts = self._postings.setdefault(tok, ([], []))
            entries.append(idx)
            counts.append(count)

    def max_score(self, text: str, *, stop_at: float | None = None) -> float:
        """Highest ROUGE-L against the pool; returns as soon as a score reaches ``stop_at``."""
        cand = rouge_tokens(text)
        n = len(cand)
        if n == 0 or not self._tokens:
            return 0.0
        overlap = np.zeros(len(self._tokens), dtype=np.int32)
        for tok, count in Counter(cand).items():
            if tok in self._postings:
                entries, counts = self._postings[tok]
                overlap[np.asarray(entries)] += np.minimum(np.asarray(counts), count)
        hit = np.flatnonzero(overlap)
        bound = 2 * overlap[hit] / (n + np.asarray(self._lengths)[hit])
        best = 0.0
        for k in np.argsort(-bound, kind="stable"):
            if bound[k] <= best:
                break
            toks = self._tokens[hit[k]]
            best = max(best, _f_measure(lcs_length(cand, toks), n, len(toks)))
            if stop_at is not None and best >= stop_at:
                break
        return best
