"""Judges: is a model's answer right, given the gold answer?

A judge is any ``(answer, gold) -> bool`` function. ``exact`` compares
normalised text; ``numeric`` compares the last number in the answer with the
gold number, because small models wrap the number in prose ("so she has 12
apples left"). The CLI takes a name from :data:`JUDGES` or ``module:function``
for a judge of your own.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable

from mmtune.errors import ConfigError

Judge = Callable[[str, str], bool]
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def normalise(text: str) -> str:
    """Case-folded, whitespace collapsed, outer punctuation and quotes stripped."""
    return " ".join(text.casefold().split()).strip(" .!?,;:\"'")


def exact_match(answer: str, gold: str) -> bool:
    return normalise(answer) == normalise(gold)


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (thousands separators ignored), or None."""
    found = _NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3}\b)", "", text))
    return float(found[-1]) if found else None


def numeric_match(answer: str, gold: str) -> bool:
    want, got = last_number(gold), last_number(answer)
    if want is None:
        raise ValueError(f"gold answer {gold!r} contains no number (numeric judge)")
    return got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)


JUDGES: dict[str, Judge] = {"exact": exact_match, "numeric": numeric_match}


def resolve_judge(name: str) -> Judge:
    """A built-in judge by name, or ``package.module:function``."""
    if name in JUDGES:
        return JUDGES[name]
    module, sep, attr = name.partition(":")
    if not sep:
        raise ConfigError(f"judge '{name}': not one of {', '.join(JUDGES)} and not 'module:function'")
    try:
        judge = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"judge '{name}': cannot import it ({exc})") from None
    if not callable(judge):
        raise ConfigError(f"judge '{name}' is not a function")
    return judge
