"""Filters that decide which generated text is kept; each returns the reason it rejects, or None.

The reason strings are the keys of the per-filter counters in a run's report,
so every dropped item is accounted for.

Self-Instruct heuristics (Wang et al. 2022, ``post_process_gpt3_response`` and
``filter_invalid_instances`` of yizhongw/self-instruct): instructions of <= 3 or
> 150 words, with words a text-only LM cannot act on (image, graph, file, map,
draw, plot, go to ...), starting with "Write a program", with punctuation or a
non-ASCII character; instances whose output is empty, equals the input, or
ends in a colon (an unfinished generation).

Evol-Instruct elimination (Xu et al. 2023, section 3.3): an evolution fails
when it brings no information gain over the original, when the response is an
apology ("sorry" in fewer than 80 words), when the response is only
punctuation and stop words, or when the evolved instruction copies words of
the evolving prompt ("#Rewritten Prompt#", "given prompt" ...).
"""

from __future__ import annotations

import re
import string

UNSUITABLE_KEYWORDS = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
    "map", "maps", "draw", "plot", "go to",
)
_UNSUITABLE = re.compile(r"\b(" + "|".join(re.escape(w) for w in UNSUITABLE_KEYWORDS) + r")\b", re.IGNORECASE)

STOPWORDS = frozenset(
    "a an the and or but if then else of to in on at by for with from as is are was were be been being "
    "it its this that these those i you he she we they me him her us them my your his our their "
    "do does did have has had not no yes so than too very can could will would shall should may might "
    "must just also there here what which who whom whose when where why how all any some such only own "
    "same other into over under about again further once up down out off more most each few both "
    "ok okay well oh".split()
)

PROMPT_LEAK = re.compile(
    r"#\s*(the\s+)?(given|rewritten|created)\s+prompt\s*#|\b(given|rewritten|created)\s+prompt\b", re.IGNORECASE
)

MIN_INSTRUCTION_WORDS = 4
MAX_INSTRUCTION_WORDS = 150
SORRY_MAX_WORDS = 80


def normalize(text: str) -> str:
    """Whitespace collapsed, case folded, final full stop / ! / ? dropped: the key for exact-duplicate checks."""
    return re.sub(r"[\s.!?]+$", "", re.sub(r"\s+", " ", text).strip()).casefold()


def instruction_rejection(inst: str) -> str | None:
    """Self-Instruct's heuristic filter for one generated instruction."""
    if not inst.strip():
        return "empty"
    words = inst.split()
    if len(words) < MIN_INSTRUCTION_WORDS:
        return "too short"
    if len(words) > MAX_INSTRUCTION_WORDS:
        return "too long"
    if _UNSUITABLE.search(inst):
        return "unsuitable keyword"
    if inst.startswith("Write a program"):
        return "write a program"
    if inst[0] in string.punctuation:
        return "starts with punctuation"
    if not inst[0].isascii():
        return "non-English start"
    return None


def instance_rejection(inp: str, out: str) -> str | None:
    """Self-Instruct's filter for one generated (input, output) instance."""
    if not out.strip():
        return "empty output"
    if inp.strip() == out.strip():
        return "input equals output"
    if inp.strip().endswith(":") or out.strip().endswith(":"):
        return "ends with colon"
    return None


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS}


def evolution_rejection(original: str, evolved: str) -> str | None:
    """The instruction-side part of the elimination filter (checked before a response is generated)."""
    if not evolved.strip():
        return "empty evolution"
    if PROMPT_LEAK.search(evolved):
        return "copies evolving prompt"
    if normalize(evolved) == normalize(original) or not (content_words(evolved) - content_words(original)):
        return "no information gain"
    return None


def response_rejection(response: str) -> str | None:
    """The response-side part of the elimination filter."""
    words = response.split()
    if "sorry" in response.lower() and len(words) < SORRY_MAX_WORDS:
        return "response is an apology"
    if not content_words(response):
        return "response only punctuation or stop words"
    return None
