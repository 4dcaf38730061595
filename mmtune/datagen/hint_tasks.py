"""The synthetic task family of mmtune's HINT demonstration, written in the Super-NaturalInstructions layout.

WHY: HINT (Ivison et al.) reads a task's instruction once, turns it into adapters, and then runs every instance
without the instruction in context. Showing that it works needs tasks that are told apart *only* by their
instruction, with exact answers (exact match is the metric), small enough for SmolLM2-135M on two CPU cores,
and made by the project (nothing is downloaded). So every task here is

- a definition (one or two plain sentences, SNI's "Definition"),
- an input kind shared by many tasks (``words``: 3-6 distinct short lowercase words; ``numbers``: 3-6 distinct
  numbers from 1 to 99; ``mixed``: 4-6 tokens, short words and single digits, at least one of each), so the
  input alone does not say which task it is: a model without the instruction can at best guess among the
  tasks of that kind,
- and an answer function of the input's tokens: one canonical, deterministic answer of a few tokens.

Thirty tasks train; the ten in ``HELD_OUT`` are for zero-shot evaluation. Each held-out task is a sibling or a
composition of training operations (``HELD_OUT_BECAUSE`` says which), so it is solvable from its instruction
alone, but none is a copy of a training task.

    from mmtune.datagen.hint_tasks import write_task_collection
    write_task_collection(Path("hint"), seed=0, train_instances=64, heldout_instances=24)
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

VOWELS = frozenset("aeiou")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Short, common, lowercase words without "y" (whose vowel status would be debatable), each with a vowel and a
# consonant, so vowel counts, vowel removal and consonant counts have one answer.
WORDS = (
    "cat", "dog", "sun", "map", "red", "box", "cup", "hat", "pen", "egg", "fish", "bird", "tree", "lamp",
    "rain", "milk", "door", "ship", "frog", "king", "moon", "star", "rock", "leaf", "wolf", "bell", "coin",
    "nest", "kite", "rose", "salt", "corn", "desk", "gold", "iron", "jam", "owl", "ant", "bee", "fox",
    "apple", "bread", "chair", "cloud", "grape", "house", "lemon", "mouse", "ocean", "piano", "queen",
    "river", "snake", "table", "tiger", "water", "zebra", "horse", "plant", "stone", "train", "glass",
    "onion", "sugar",
)


def word_list(rng: random.Random) -> list[str]:
    """3 to 6 distinct words: the input of every ``words`` task."""
    return rng.sample(WORDS, rng.randint(3, 6))


def number_list(rng: random.Random) -> list[str]:
    """3 to 6 distinct numbers from 1 to 99: the input of every ``numbers`` task."""
    return [str(n) for n in rng.sample(range(1, 100), rng.randint(3, 6))]


def mixed_list(rng: random.Random) -> list[str]:
    """4 to 6 tokens, distinct words and single digits, at least one of each: the input of every ``mixed`` task."""
    size = rng.randint(4, 6)
    digits = rng.randint(1, size - 1)
    tokens = rng.sample(WORDS, size - digits) + [str(rng.randint(0, 9)) for _ in range(digits)]
    rng.shuffle(tokens)
    return tokens


INPUT_KINDS: dict[str, Callable[[random.Random], list[str]]] = {
    "words": word_list, "numbers": number_list, "mixed": mixed_list}


@dataclass(frozen=True)
class HintTask:
    """One task, defined only by its instruction: the answer is ``answer`` of the input's tokens."""

    name: str
    definition: str
    category: str
    inputs: str  # a key of INPUT_KINDS
    answer: Callable[[list[str]], str]
    explanation: str  # what the answer is, for the positive examples ("The words in reverse order.")

    def build(self, rng: random.Random) -> tuple[str, str]:
        """One seeded instance: (input, output)."""
        tokens = INPUT_KINDS[self.inputs](rng)
        return " ".join(tokens), self.answer(tokens)


def _numbers(tokens: list[str]) -> list[int]:
    return [int(t) for t in tokens]


def _joined(values) -> str:
    return " ".join(str(v) for v in values)


def _or_none(values: list) -> str:
    return _joined(values) if values else "none"


def _vowels(text: str) -> int:
    return sum(c in VOWELS for c in text)


def _longest(tokens: list[str]) -> str:
    return max(tokens, key=len)  # max keeps the first of equally long words


def _shown_digit(token: str) -> str:
    return DIGIT_WORDS[int(token)] if token.isdigit() else token


_TASKS = (
    # --- words: 3-6 distinct lowercase words ---
    HintTask("reverse_words", "Reverse the order of the words.", "Word Manipulation", "words",
             lambda t: _joined(t[::-1]), "The same words in reverse order."),
    HintTask("uppercase_words", "Write every word in uppercase letters.", "Word Manipulation", "words",
             lambda t: _joined(w.upper() for w in t), "Every word in uppercase, in the same order."),
    HintTask("capitalize_words", "Capitalize every word: make its first letter uppercase and keep the rest lowercase.",
             "Word Manipulation", "words", lambda t: _joined(w.capitalize() for w in t),
             "Each word with its first letter in uppercase."),
    HintTask("first_letters", "Write the first letter of each word, separated by spaces.", "Word Manipulation",
             "words", lambda t: _joined(w[0] for w in t), "The first letter of every word, in order."),
    HintTask("first_word", "Answer with the first word.", "Word Manipulation", "words",
             lambda t: t[0], "The word that comes first."),
    HintTask("last_word", "Answer with the last word.", "Word Manipulation", "words",
             lambda t: t[-1], "The word that comes last."),
    HintTask("drop_first_word", "Remove the first word and keep the other words in order.", "Word Manipulation",
             "words", lambda t: _joined(t[1:]), "All words but the first."),
    HintTask("duplicate_words", "Write every word twice in a row.", "Word Manipulation", "words",
             lambda t: _joined(w for w in t for _ in range(2)), "Each word followed by a copy of itself."),
    HintTask("join_words_with_hyphens", "Join the words with hyphens instead of spaces.", "Word Manipulation",
             "words", lambda t: "-".join(t), "The words joined by hyphens."),
    HintTask("sort_words_alphabetically", "Sort the words in alphabetical order.", "Sorting", "words",
             lambda t: _joined(sorted(t)), "The words from a to z."),
    HintTask("reverse_first_word", "Reverse the letters of the first word and answer with that word only.",
             "Word Manipulation", "words", lambda t: t[0][::-1], "The first word spelled backwards."),
    HintTask("longest_word", "Answer with the longest word. If several words are equally long, answer with the "
             "first of them.", "Word Manipulation", "words", _longest,
             "The word with the most letters (the first one on a tie)."),
    HintTask("word_lengths", "Replace every word by its number of letters.", "Counting", "words",
             lambda t: _joined(len(w) for w in t), "The number of letters of each word."),
    HintTask("remove_vowels", "Remove every vowel (a, e, i, o, u) from the words.", "Word Manipulation", "words",
             lambda t: _joined("".join(c for c in w if c not in VOWELS) for w in t),
             "The words without their vowels."),
    HintTask("count_vowels", "Answer with the number of vowels (a, e, i, o, u) in the text.", "Counting", "words",
             lambda t: str(sum(_vowels(w) for w in t)), "How many vowels the words hold in total."),
    HintTask("count_words", "Answer with the number of words.", "Counting", "words",
             lambda t: str(len(t)), "How many words there are."),
    # --- numbers: 3-6 distinct numbers from 1 to 99 ---
    HintTask("sort_numbers_ascending", "Sort the numbers from smallest to largest.", "Sorting", "numbers",
             lambda t: _joined(sorted(_numbers(t))), "The numbers in ascending order."),
    HintTask("largest_number", "Answer with the largest number.", "Arithmetic", "numbers",
             lambda t: str(max(_numbers(t))), "The greatest of the numbers."),
    HintTask("last_number", "Answer with the last number.", "Arithmetic", "numbers",
             lambda t: t[-1], "The number that comes last."),
    HintTask("sum_numbers", "Answer with the sum of the numbers.", "Arithmetic", "numbers",
             lambda t: str(sum(_numbers(t))), "All numbers added together."),
    HintTask("double_numbers", "Multiply every number by two.", "Arithmetic", "numbers",
             lambda t: _joined(2 * n for n in _numbers(t)), "Each number doubled, in order."),
    HintTask("add_one", "Add one to every number.", "Arithmetic", "numbers",
             lambda t: _joined(n + 1 for n in _numbers(t)), "Each number plus one, in order."),
    HintTask("keep_even_numbers", "Keep only the even numbers, in their order. Answer none if there is none.",
             "Arithmetic", "numbers", lambda t: _or_none([n for n in _numbers(t) if n % 2 == 0]),
             "The numbers divisible by two."),
    HintTask("keep_numbers_above_50", "Keep only the numbers greater than 50, in their order. Answer none if "
             "there is none.", "Arithmetic", "numbers", lambda t: _or_none([n for n in _numbers(t) if n > 50]),
             "The numbers over 50."),
    HintTask("count_even_numbers", "Answer with how many of the numbers are even.", "Counting", "numbers",
             lambda t: str(sum(n % 2 == 0 for n in _numbers(t))), "How many numbers are divisible by two."),
    # --- mixed: short words and single digits ---
    HintTask("digits_to_words", "Replace every digit by its English word and keep the other words.",
             "Word Manipulation", "mixed", lambda t: _joined(_shown_digit(w) for w in t),
             "The text with each digit spelled out."),
    HintTask("remove_digits", "Remove the digits and keep the words in order.", "Word Manipulation", "mixed",
             lambda t: _joined(w for w in t if not w.isdigit()), "Only the words."),
    HintTask("count_digits", "Answer with the number of digits in the text.", "Counting", "mixed",
             lambda t: str(sum(w.isdigit() for w in t)), "How many digits appear."),
    HintTask("sum_digits", "Answer with the sum of the digits in the text.", "Arithmetic", "mixed",
             lambda t: str(sum(int(w) for w in t if w.isdigit())), "The digits added together."),
    HintTask("last_digit", "Answer with the last digit in the text.", "Word Manipulation", "mixed",
             lambda t: [w for w in t if w.isdigit()][-1], "The digit that comes last."),
    # --- held out (see HELD_OUT_BECAUSE) ---
    HintTask("reverse_and_uppercase", "Reverse the order of the words and write every word in uppercase letters.",
             "Word Manipulation", "words", lambda t: _joined(w.upper() for w in t[::-1]),
             "The words in reverse order, in uppercase."),
    HintTask("sort_words_reverse_alphabetically", "Sort the words in reverse alphabetical order, from z to a.",
             "Sorting", "words", lambda t: _joined(sorted(t, reverse=True)), "The words from z to a."),
    HintTask("last_letters", "Write the last letter of each word, separated by spaces.", "Word Manipulation",
             "words", lambda t: _joined(w[-1] for w in t), "The last letter of every word, in order."),
    HintTask("uppercase_first_letters", "Write the first letter of each word in uppercase, separated by spaces.",
             "Word Manipulation", "words", lambda t: _joined(w[0].upper() for w in t),
             "The first letter of every word, in uppercase."),
    HintTask("reverse_each_word", "Reverse the letters of every word and keep the words in order.",
             "Word Manipulation", "words", lambda t: _joined(w[::-1] for w in t), "Each word spelled backwards."),
    HintTask("count_consonants", "Answer with the number of letters in the text that are not vowels (a, e, i, o, "
             "u).", "Counting", "words", lambda t: str(sum(len(w) - _vowels(w) for w in t)),
             "How many consonants the words hold in total."),
    HintTask("sort_numbers_descending", "Sort the numbers from largest to smallest.", "Sorting", "numbers",
             lambda t: _joined(sorted(_numbers(t), reverse=True)), "The numbers in descending order."),
    HintTask("smallest_number", "Answer with the smallest number.", "Arithmetic", "numbers",
             lambda t: str(min(_numbers(t))), "The least of the numbers."),
    HintTask("count_numbers", "Answer with how many numbers there are.", "Counting", "numbers",
             lambda t: str(len(t)), "How many numbers there are."),
    HintTask("remove_words", "Remove the words and keep the digits in order.", "Word Manipulation", "mixed",
             lambda t: _joined(w for w in t if w.isdigit()), "Only the digits."),
)

TASKS: dict[str, HintTask] = {task.name: task for task in _TASKS}

# Which training operations each held-out task combines or mirrors: why it is solvable from its instruction.
HELD_OUT_BECAUSE: dict[str, str] = {
    "reverse_and_uppercase": "reverse_words then uppercase_words",
    "sort_words_reverse_alphabetically": "sort_words_alphabetically then reverse_words",
    "last_letters": "first_letters, taking the last letter as last_word takes the last word",
    "uppercase_first_letters": "first_letters then uppercase_words",
    "reverse_each_word": "reverse_first_word applied to every word",
    "count_consonants": "counts the letters remove_vowels keeps, as count_vowels counts the others",
    "sort_numbers_descending": "sort_numbers_ascending then reversed, as reverse_words reverses",
    "smallest_number": "the sibling of largest_number",
    "count_numbers": "count_words on numbers",
    "remove_words": "the sibling of remove_digits",
}
HELD_OUT: tuple[str, ...] = tuple(HELD_OUT_BECAUSE)
TRAIN: tuple[str, ...] = tuple(name for name in TASKS if name not in HELD_OUT_BECAUSE)


def definition_of(name: str) -> str:
    """The instruction (SNI "Definition") of the task ``name``."""
    return TASKS[name].definition


def draw_distinct(task: HintTask, rng: random.Random, count: int) -> list[tuple[str, str]]:
    """``count`` instances with pairwise different inputs (so no instance repeats a positive example)."""
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    while len(pairs) < count:
        text, answer = task.build(rng)
        if text not in seen:
            seen.add(text)
            pairs.append((text, answer))
    return pairs


def sni_task(task: HintTask, *, seed: int, instances: int, examples: int) -> dict:
    """One task file's content in the Super-NaturalInstructions layout (keys in SNI's order)."""
    # A string seed is hashed the same way in every process, so each task's draw does not depend on the others.
    pairs = draw_distinct(task, random.Random(f"{seed}:{task.name}"), examples + instances)
    return {
        "Contributors": ["mmtune"],
        "Source": ["mmtune synthetic"],
        "Categories": [task.category],
        "Definition": [task.definition],
        "Positive Examples": [{"input": text, "output": answer, "explanation": task.explanation}
                              for text, answer in pairs[:examples]],
        "Negative Examples": [],
        "Instances": [{"id": f"{task.name}-{n}", "input": text, "output": [answer]}
                      for n, (text, answer) in enumerate(pairs[examples:])],
    }


def write_task_collection(root: Path, *, seed: int, train_instances: int, heldout_instances: int,
                          examples: int = 2) -> list[Path]:
    """Write ``root/train/<task>.json`` and ``root/heldout/<task>.json``; the same seed writes the same bytes."""
    root = Path(root)
    written = []
    for split, names, count in (("train", TRAIN, train_instances), ("heldout", HELD_OUT, heldout_instances)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            path = root / split / f"{name}.json"
            content = sni_task(TASKS[name], seed=seed, instances=count, examples=examples)
            path.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            written.append(path)
    return written
