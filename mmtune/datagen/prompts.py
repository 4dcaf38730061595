"""Prompt text for Self-Instruct and Evol-Instruct, and the parsers of what the model writes back.

Self-Instruct (Wang et al. 2022) prompts a model with a numbered list of 8
task instructions (6 human-written seeds + 2 already generated) and lets it
continue the list. Whether a new task is a classification task is asked
few-shot; its instances are then generated input-first for generation tasks
and output-first (class label, then an input for it) for classification
tasks, which avoids inputs biased towards one label. The few-shot
demonstrations are the seed tasks themselves, so a new seed file changes the
style of the whole run.

Evol-Instruct (Xu et al. 2023, WizardLM) rewrites an instruction with one of
four in-depth operations or one in-breadth operation; the prompt wording
follows the paper's appendix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# --------------------------------------------------------------------------- seed tasks


@dataclass(frozen=True)
class SeedTask:
    instruction: str
    instances: tuple[tuple[str, str], ...]
    """(input, output) pairs; input may be empty."""
    is_classification: bool


# --------------------------------------------------------------------------- Self-Instruct: new instructions

INSTRUCTION_LIST_HEADER = "Come up with a series of tasks:\n"
INSTRUCTION_STOP = ("\n\n", "\n16", "16.", "16 .")


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def instruction_prompt(instructions: list[str]) -> str:
    """A numbered task list ending in the next number, for the model to continue."""
    lines = [f"{i}. {one_line(inst).rstrip(':')}" for i, inst in enumerate(instructions, 1)]
    return INSTRUCTION_LIST_HEADER + "\n".join(lines) + f"\n{len(instructions) + 1}."


def parse_instructions(continuation: str, truncated: bool) -> list[str]:
    """Split the continued list at "\\nN. "; a truncated last item is unfinished and dropped."""
    items = [one_line(s) for s in re.split(r"\n\d+\s?\.\s*", continuation)]
    if truncated and items:
        items = items[:-1]
    return [s[:1].upper() + s[1:] for s in items if s]


# --------------------------------------------------------------------------- Self-Instruct: task type

CLASSIFICATION_QUESTION = "Can the following task be regarded as a classification task with finite output labels?"


def classification_prompt(demos: list[SeedTask], instruction: str) -> str:
    blocks = [f"Task: {one_line(d.instruction)}\nIs it classification? {'Yes' if d.is_classification else 'No'}"
              for d in demos]
    return CLASSIFICATION_QUESTION + "\n\n" + "\n\n".join(blocks) + f"\n\nTask: {one_line(instruction)}\nIs it classification?"


def parse_yes_no(answer: str) -> bool | None:
    word = re.match(r"\s*([A-Za-z]+)", answer)
    if word is None:
        return None
    return {"yes": True, "no": False}.get(word.group(1).lower())


# --------------------------------------------------------------------------- Self-Instruct: instances

GENERATION_HEADER = (
    "Come up with examples for the following tasks. Try to generate multiple examples when possible. "
    "If the task doesn't require additional input, you can generate the output directly.\n\n"
)
CLASSIFICATION_HEADER = (
    "Given the classification task definition and the class labels, generate an input that corresponds to "
    "each of the class labels. If the task doesn't require input, just generate possible class labels.\n\n"
)
INSTANCE_STOP = ("\nTask:", "\n\n\n")


def _generation_block(inp: str, out: str) -> str:
    return f"Input: {inp}\nOutput: {out}" if inp.strip() else f"Output: {out}"


def instance_prompt(demos: list[SeedTask], instruction: str, is_classification: bool) -> str:
    """Input-first demonstrations for generation tasks, output-first for classification tasks."""
    blocks = []
    for d in demos:
        if is_classification:
            body = "\n".join(f"Class label: {out}\nInput: {inp}" if inp.strip() else f"Class label: {out}"
                             for inp, out in d.instances)
        else:
            body = "\n".join(_generation_block(inp, out) for inp, out in d.instances)
        blocks.append(f"Task: {one_line(d.instruction)}\n{body}")
    header = CLASSIFICATION_HEADER if is_classification else GENERATION_HEADER
    opener = "Class label:" if is_classification else ""
    return header + "\n\n".join(blocks) + f"\n\nTask: {one_line(instruction)}\n{opener}"


def parse_generation_instances(text: str) -> list[tuple[str, str]]:
    """(input, output) pairs from "Input: ...\\nOutput: ..." blocks; a bare "Output:" has no input."""
    pairs = []
    for block in re.split(r"\n(?=Input:)", "\n" + text.strip()):
        block = block.strip()
        if not block:
            continue
        m = re.match(r"(?:Input:\s*(?P<inp>.*?)\s*\n)?\s*Output:\s*(?P<out>.*)", block, re.DOTALL)
        if m is None:
            continue
        out = re.split(r"\n\s*(?:Input|Output)\s*\d*\s*:", m.group("out"))[0]  # one output per block
        pairs.append(((m.group("inp") or "").strip(), out.strip()))
    return pairs


def parse_classification_instances(text: str) -> list[tuple[str, str]]:
    """(input, label) pairs from output-first text that starts right after the first "Class label:"."""
    pairs = []
    for block in ("Class label:" + text).split("Class label:")[1:]:
        label, _, rest = block.strip().partition("\n")
        inp = re.sub(r"^\s*Input:\s*", "", rest.strip())
        pairs.append((inp.strip(), label.strip()))
    return pairs


# --------------------------------------------------------------------------- Evol-Instruct

_DEPTH_BASE = (
    "I want you to act as a Prompt Rewriter.\n"
    "Your objective is to rewrite a given prompt into a more complex version to make those famous AI systems "
    "(e.g., chatgpt and GPT4) a bit harder to handle.\n"
    "But the rewritten prompt must be reasonable and must be understood and responded by humans.\n"
    "Your rewriting cannot omit the non-text parts such as the table and code in #The Given Prompt#:. "
    "Also, please do not omit the input in #The Given Prompt#.\n"
    "You SHOULD complicate the given prompt using the following method:\n{method}\n"
    "You should try your best not to make the #Rewritten Prompt# become verbose, #Rewritten Prompt# can only "
    "add 10 to 20 words into #The Given Prompt#.\n"
    "'#The Given Prompt#', '#Rewritten Prompt#', 'given prompt' and 'rewritten prompt' are not allowed to "
    "appear in #Rewritten Prompt#\n"
    "#The Given Prompt#:\n{instruction}\n#Rewritten Prompt#:\n"
)
_BREADTH = (
    "I want you to act as a Prompt Creator.\n"
    "Your goal is to draw inspiration from the #Given Prompt# to create a brand new prompt.\n"
    "This new prompt should belong to the same domain as the #Given Prompt# but be even more rare.\n"
    "The LENGTH and complexity of the #Created Prompt# should be similar to that of the #Given Prompt#.\n"
    "The #Created Prompt# must be reasonable and must be understood and responded by humans.\n"
    "'#Given Prompt#', '#Created Prompt#', 'given prompt' and 'created prompt' are not allowed to appear in "
    "#Created Prompt#\n"
    "#Given Prompt#:\n{instruction}\n#Created Prompt#:\n"
)
DEPTH_METHODS = {
    "add constraints": "Please add one more constraints/requirements into #The Given Prompt#",
    "deepen": "If #The Given Prompt# contains inquiries about certain issues, the depth and breadth of the "
              "inquiry can be increased.",
    "concretize": "Please replace general concepts with more specific concepts.",
    "increase reasoning": "If #The Given Prompt# can be solved with just a few simple thinking processes, you "
                          "can rewrite it to explicitly request multiple-step reasoning.",
}
EVOLUTIONS = (*DEPTH_METHODS, "breadth")


def evolution_prompt(method: str, instruction: str) -> str:
    if method == "breadth":
        return _BREADTH.format(instruction=instruction.strip())
    return _DEPTH_BASE.format(method=DEPTH_METHODS[method], instruction=instruction.strip())
