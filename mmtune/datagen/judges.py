"""Judges for the self-correction builder: is a model's answer right, given the gold answer?

A judge is any ``(answer, gold) -> bool | None`` function; None means the
gold answer cannot be judged that way (e.g. no number in it for ``numeric``),
and such a question is skipped and counted. The built-ins are ``mmtune eval``'s
(:data:`mmtune.evaluation.JUDGES`: ``exact`` after SQuAD normalisation,
``numeric`` on the last number), so data is judged exactly as evaluation
scores it; ``module:function`` names a judge of your own.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from mmtune.errors import ConfigError
from mmtune.evaluation import JUDGES

Judge = Callable[[str, str], "bool | None"]


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
