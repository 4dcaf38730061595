"""Benchmark judges for image models: VQA accuracy, multiple-choice accuracy, CIDEr-D.

Plain functions on strings (no torch, no model), importable on their own and
used by :func:`mmtune.evaluation.evaluate` for ``--metric vqa / choice / cider``.

**VQA accuracy** follows the VQAv2 rule of the official evaluation script
(``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of GT-Vision-Lab/VQA,
which LAVIS copies): an answer's accuracy is the mean, over the 10 subsets of
9 of the 10 human answers, of ``min(#humans in the subset who gave it / 3, 1)``,
after the script's answer normalisation (``normalize_vqa_answer``). Written
anew from the script's logic, with two documented choices:

- *Fewer (or more) than 10 answers*: the subsets are the leave-one-out subsets
  of the ``n`` answers, and an answer counts fully when ``min(3, n - 1)``
  humans of a subset gave it; for ``n >= 4`` that is the official rule (its
  threshold of 3 stays), for 2 or 3 answers the threshold is all the subset
  (so two unanimous answers give 1.0, not 1/3); a single answer, which leaves
  no subset, is an exact match of the normalised answers.
- *Normalisation is always applied*, to the prediction and to every human
  answer. The official script normalises only when the human answers
  disagree, because the VQA annotation files hold answers that are already
  normalised; on such data both give the same figure, and on raw answers
  (``"Two"`` against unanimous ``"2"``) ours still compares like with like.

**Multiple choice** (ScienceQA-style rows with ``choices``): a prediction is
matched to a choice by its letter (``A``, ``(A)``, ``A.``, ``A) text``,
``The answer is A``) or by the choice's text (normalised as for VQA: equal,
else the only choice whose words appear in the prediction); the gold answer
is matched the same way, so it may be a letter or the choice's text.

**CIDEr-D** as coco-caption computes it (``pycocoevalcap``'s ``CiderScorer``:
1- to 4-grams, tf-idf with document frequencies over the evaluated set's
references, clipped, Gaussian length penalty with sigma 6, x10). coco-caption
tokenises with Stanford's PTBTokenizer (Java); :func:`caption_tokens` is a
small Python stand-in (lower case, clitics split, punctuation dropped), so a
score can differ slightly from coco-caption's on text with unusual
punctuation. The idf comes from the evaluated set, as in coco-caption: one
image alone scores 0, and scores compare across runs on the same set only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mmtune.errors import ConfigError

# --------------------------------------------------------------------------- VQA answer normalisation

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
"""Apostrophe-less spellings -> the contraction, as in the official script. It looks words up after lower-casing,
so its four capitalised keys (``Im``, ``Ive``, ``Id've``, ``I'dve``) never matched; they are left out."""
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!")
"""The characters the script removes or turns into spaces (not ``.``, ``'`` or ``:``)."""
_COMMA_IN_NUMBER = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")
"""A period not followed by a digit goes. (The script's pattern ``(?!<=\\d)(\\.)(?!\\d)`` reads as a lookbehind
but its first group is a lookahead that always holds: ``5.`` loses its period, ``3.5`` keeps it.)"""


def _process_punctuation(text: str) -> str:
    """The script's ``processPunctuation``.

    A punctuation mark next to a space (``"red, white"``), or any mark in a text
    holding a comma between digits (``"1,000"``), is deleted; otherwise it
    becomes a space (``"red/white"`` -> ``"red white"``). The conditions read the
    text as given, not as rewritten so far. Then periods not before a digit go.
    """
    out = text
    number_comma = _COMMA_IN_NUMBER.search(text) is not None
    for mark in _PUNCTUATION:
        if number_comma or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out)


def _process_digit_article(text: str) -> str:
    """The script's ``processDigitArticle``: lower case, number words 0-10 to digits, no articles, contractions."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_vqa_answer(text: str) -> str:
    """An answer as the VQA evaluation compares it: ``"Two dogs."`` -> ``"2 dogs"``, ``"the dog."`` -> ``"dog"``."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def vqa_accuracy(prediction: str, references: Sequence[str]) -> float:
    """VQA accuracy of ``prediction`` against the human answers ``references`` (repeats kept), in [0, 1].

    10 answers: mean over the 10 leave-one-out subsets of ``min(matches in the
    subset / 3, 1)``; e.g. 2 matching answers: the 2 subsets that drop a match
    hold 1 (1/3 each), the 8 others hold 2 (2/3 each): (2/3 + 16/3) / 10 = 0.6.
    Other counts: see the module's docstring.
    """
    if not references:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    answer = normalize_vqa_answer(prediction)
    humans = [normalize_vqa_answer(r) for r in references]
    n = len(humans)
    if n == 1:
        return float(answer == humans[0])
    need = min(3, n - 1)
    matches = sum(h == answer for h in humans)
    # leaving out a matching answer leaves matches - 1 in the subset, leaving out another leaves matches
    return sum(min(1.0, (matches - (h == answer)) / need) for h in humans) / n


# --------------------------------------------------------------------------- multiple choice

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LETTER_ONLY = re.compile(r"^\(?([A-Z])\)?[.:)]?$")
_LETTER_FIRST = re.compile(r"^(?:\(([A-Za-z])\)|([A-Z])[.:)])(?:\s|$)")
_ANSWER_IS = re.compile(r"\b(?i:answer(?: is|:))\s*\(?([A-Z])\)?(?=[\s.:)]|$)")


def choice_letter(index: int) -> str:
    return LETTERS[index]


def match_choice(text: str, choices: Sequence[str]) -> int | None:
    """The index of the choice ``text`` names, or None.

    In order: a letter alone or leading (``B``, ``(B)``, ``B.``, ``(b) cat``,
    ``B) cat``), a letter after ``answer is`` / ``answer:``; then the choice
    whose normalised text equals the normalised ``text``; then the only
    choice whose normalised text appears, on word boundaries, in it. A letter
    beyond the choices, or a text that names several choices, matches none.
    """
    stripped = text.strip()
    for found in (_LETTER_ONLY.match(stripped), _LETTER_FIRST.match(stripped), _ANSWER_IS.search(stripped)):
        if found:
            letter = next(g for g in found.groups() if g).upper()
            index = LETTERS.index(letter)
            if index < len(choices):
                return index
    said = normalize_vqa_answer(stripped)
    options = [normalize_vqa_answer(c) for c in choices]
    if said in options:
        return options.index(said)
    inside = [i for i, o in enumerate(options) if o and re.search(rf"(?<!\S){re.escape(o)}(?!\S)", said)]
    return inside[0] if len(inside) == 1 else None


# --------------------------------------------------------------------------- CIDEr-D

_NEGATION = re.compile(r"(\w)n't\b")
_TOKEN = re.compile(r"n't|'[a-z]+|[^\W_]+(?:-[^\W_]+|[.,]\d+)*")


def caption_tokens(text: str) -> list[str]:
    """A caption's tokens for CIDEr: lower case; ``'s``, ``'re``... and ``n't`` split off as PTB does; hyphenated
    words and numbers (``3.5``, ``1,000``) kept whole; every other punctuation mark dropped (coco-caption drops
    PTB's punctuation tokens)."""
    text = _NEGATION.sub(r"\1 n't", text.lower().replace("\u2019", "'"))
    return _TOKEN.findall(text)


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """CIDEr-D of each prediction against its references, and their mean (coco-caption's corpus figure).

    Document frequencies come from all ``references`` together, so the figure
    belongs to this set (a set of one image scores 0).
    """
    if len(predictions) != len(references):
        raise ValueError("cider_d: one list of references per prediction")
    if not predictions:
        return float("nan"), []
    if any(not refs for refs in references):
        raise ValueError("cider_d: every prediction needs at least one reference")
    try:
        from pycocoevalcap.cider.cider_scorer import CiderScorer
    except ImportError:
        raise ConfigError("the cider metric needs pycocoevalcap (pip install pycocoevalcap)") from None
    scorer = CiderScorer(n=4, sigma=6.0)
    for pred, refs in zip(predictions, references):
        scorer += (" ".join(caption_tokens(pred)), [" ".join(caption_tokens(r)) for r in refs])
    mean, scores = scorer.compute_score()
    return float(mean), [float(s) for s in scores]
