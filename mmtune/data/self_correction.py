"""The self-correction sample layout: one assistant turn with marked segments.

Intrinsic self-correction (ISC, arXiv 2401.07301) trains a model to check its
own answer and revise it. One sample is a question and a single assistant turn::

    <initial answer>

    Verification: Is the answer correct? No. <optional reason>

    Revised answer: <revised answer>

(or ``... Yes. <optional reason>`` and nothing after it). The marker strings
live here and nowhere else: the format converter renders with them, and the
builder and the evaluation parse model output with them.

Partial answer masking (PAM): the initial answer is the model's own (possibly
wrong) output, so it carries no loss; the verification, the revision and the
end-of-turn token do. The assistant message therefore carries ``parts``
(``{"text", "trained"}``) whose texts join to its ``content``; the templates
module splits the answer by them. The blank line before ``Verification:``
belongs to the trained part, because that is where the tokenizer starts a new
token (a trailing space on the initial answer would not be; it is stripped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

VERIFICATION = "Verification: Is the answer correct?"
YES = "Yes."
NO = "No."
REVISED = "Revised answer:"
SEPARATOR = "\n\n"
"""Between the initial answer, the verification and the revision."""


def self_correction_parts(initial: str, correct: bool, reason: str | None, revised: str | None) -> list[dict]:
    """The assistant turn as PAM parts: untrained initial answer, trained verification (+ revision)."""
    verdict = f"{VERIFICATION} {YES if correct else NO}"
    if reason:
        verdict += f" {reason.strip()}"
    checked = SEPARATOR + verdict
    if not correct:
        checked += f"{SEPARATOR}{REVISED} {revised.strip()}"
    return [{"text": initial.strip(), "trained": False}, {"text": checked, "trained": True}]


@dataclass
class Attempt:
    """A model's self-correcting answer, parsed back into its segments."""

    initial: str
    verdict: bool | None
    """True (``Yes``), False (``No``) or None when no verification was given or it was unreadable."""
    revised: str | None

    @property
    def final(self) -> str:
        """The answer the model stands by: the revision after a ``No`` (when given), else the initial one."""
        return self.revised if self.verdict is False and self.revised else self.initial


_VERDICT = re.compile(r"\s*(yes|no)\b", re.IGNORECASE)


def parse_attempt(text: str) -> Attempt:
    """Split generated text at the markers (tolerant of whitespace and case in the verdict word)."""
    initial, found, rest = text.partition(VERIFICATION)
    if not found:
        return Attempt(text.strip(), None, None)
    match = _VERDICT.match(rest)
    verdict = None if match is None else match.group(1).lower() == "yes"
    _, has_revision, revised = rest.partition(REVISED)
    return Attempt(initial.strip(), verdict, revised.strip() if has_revision else None)
