"""Measure intrinsic self-correction: answer accuracy before and after self-verification.

Every model gets the same scaffold, so an untuned model can be compared with a
PAM-tuned one: (1) it answers the question (greedy); a tuned model usually goes
on to verify by itself. (2) If it did not, the verification marker is
prefilled after its answer and it completes ``Yes`` / ``No``. (3) After a
``No`` without a revision, the revision marker is prefilled and it writes one.
The final answer is the revision after a ``No``, else the initial answer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from mmtune.generation.options import GenerationOptions
from mmtune.datagen.judges import Judge
from mmtune.generation.continuation import complete_batch
from mmtune.data.self_correction import NO, REVISED, SEPARATOR, VERIFICATION, Attempt, parse_attempt


@dataclass
class ScoredAttempt:
    id: str
    gold: str
    initial: str
    verdict: bool | None
    revised: str | None
    unprompted: bool
    """The model wrote the verification marker itself (without the prefill)."""
    initial_correct: bool
    final_correct: bool


@dataclass
class SelfCorrectionScores:
    n: int
    initial_accuracy: float
    final_accuracy: float
    verification_accuracy: float
    """Share of answers whose Yes/No verdict matches the judge (no readable verdict counts as wrong)."""
    says_yes_when_right: float
    says_no_when_wrong: float
    unprompted_verification: float
    attempts: list[ScoredAttempt]

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "attempts"}


def _rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def _batched(fn, items: list, batch_size: int, desc: str, progress: bool) -> list:
    out = []
    for i in tqdm(range(0, len(items), batch_size), desc=desc, disable=not progress, leave=False):
        out += fn(items[i:i + batch_size])
    return out


def evaluate_self_correction(
    model, tokenizer, rows: list[dict], judge: Judge, *, system: str | None = None,
    batch_size: int = 16, max_new_tokens: int = 96, verify_tokens: int = 24, revise_tokens: int = 48,
    progress: bool = True,
) -> SelfCorrectionScores:
    """Score ``rows`` (``id``, ``question``, ``answer`` = gold) with the scaffold above; greedy decoding.

    A judge's None (gold not judgeable) counts as a wrong answer.

    ``max_new_tokens`` bounds step 1 (answer, and a tuned model's own verification and revision);
    ``verify_tokens`` and ``revise_tokens`` bound the prefilled steps 2 and 3.
    """
    prefix = [{"role": "system", "content": system}] if system else []
    prompts = [tokenizer.apply_chat_template([*prefix, {"role": "user", "content": r["question"]}],
                                             add_generation_prompt=True, tokenize=False) for r in rows]

    def complete(texts: list[str], tokens: int) -> list[str]:
        opts = GenerationOptions(max_new_tokens=tokens, temperature=0.0)
        return _batched(lambda b: complete_batch(model, tokenizer, b, opts), texts, batch_size, "self-correction eval",
                        progress)

    answers = complete(prompts, max_new_tokens)
    attempts: list[Attempt] = [parse_attempt(a) for a in answers]
    unprompted = [a.verdict is not None for a in attempts]
    ask = [i for i, a in enumerate(attempts) if a.verdict is None]
    heads = {i: attempts[i].initial + SEPARATOR + VERIFICATION for i in ask}
    for i, more in zip(ask, complete([prompts[i] + heads[i] for i in ask], verify_tokens)):
        attempts[i] = parse_attempt(heads[i] + more)
    revise = [i for i, a in enumerate(attempts) if a.verdict is False and not a.revised]
    heads = {i: f"{attempts[i].initial}{SEPARATOR}{VERIFICATION} {NO}{SEPARATOR}{REVISED}" for i in revise}
    for i, more in zip(revise, complete([prompts[i] + heads[i] for i in revise], revise_tokens)):
        attempts[i] = parse_attempt(heads[i] + more)
    scored = []
    for r, a, u in zip(rows, attempts, unprompted):
        scored.append(ScoredAttempt(str(r["id"]), str(r["answer"]), a.initial, a.verdict, a.revised, u,
                                    bool(judge(a.initial, str(r["answer"]))), bool(judge(a.final, str(r["answer"])))))
    right = [s for s in scored if s.initial_correct]
    wrong = [s for s in scored if not s.initial_correct]
    return SelfCorrectionScores(
        n=len(scored),
        initial_accuracy=_rate([s.initial_correct for s in scored]),
        final_accuracy=_rate([s.final_correct for s in scored]),
        verification_accuracy=_rate([s.verdict is not None and s.verdict == s.initial_correct for s in scored]),
        says_yes_when_right=_rate([s.verdict is True for s in right]),
        says_no_when_wrong=_rate([s.verdict is False for s in wrong]),
        unprompted_verification=_rate([s.unprompted for s in scored]),
        attempts=scored,
    )
