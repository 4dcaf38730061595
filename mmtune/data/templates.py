"""Chat templates and the split of a rendered conversation into trained / untrained text.

Training and inference must format conversations identically, so mmtune has a
single renderer: ``tokenizer.apply_chat_template``. Built-in templates (for base
models without one) are Jinja chat templates installed on the tokenizer, so the
saved tokenizer carries the exact template the model was trained with.

Built-in templates end every answer with the end-of-turn text and put
separators at the start of the next prompt, so a turn boundary never falls
inside what a tokenizer would merge into one token.

Loss masking works on the rendered text: for every assistant turn ``i``,
``render(messages[:i], add_generation_prompt=True)`` must be a prefix of
``render(messages[:i+1])``; the difference is the trained answer, including the
template's end-of-turn / eos text (trailing whitespace after it is left to the
next prompt, since generation stops at the end-of-turn token). A template without that prefix property
cannot be trained on faithfully and is rejected with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmtune.data.formats import Conversation
from mmtune.errors import ConfigError, DataError

_LOOP_START = (
    "{%- if messages and messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set system = DEFAULT_SYSTEM %}"
    "{%- set loop_messages = messages %}{%- endif %}"
)


def _template(default_system: str, body: str) -> str:
    return "{%- set DEFAULT_SYSTEM = " + repr(default_system) + " %}" + _LOOP_START + body


BUILTIN_TEMPLATES: dict[str, str] = {
    # Stanford Alpaca's prompt; multi-turn repeats the instruction/response block.
    "alpaca": _template(
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
        "{%- if system %}{{ system + '\\n\\n' }}{%- endif %}"
        "{%- for m in loop_messages %}"
        "{%- if m['role'] == 'user' %}{{ ('' if loop.first else '\\n\\n') + '### Instruction:\\n' + m['content'] + '\\n\\n### Response:\\n' }}"
        "{%- else %}{{ m['content'] + eos_token }}{%- endif %}"
        "{%- endfor %}",
    ),
    # LLaVA / FastChat vicuna_v1: sep " ", sep2 eos ("</s>" for Llama tokenizers).
    "vicuna_v1": _template(
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        "{%- if system %}{{ system + ' ' }}{%- endif %}"
        "{%- for m in loop_messages %}"
        "{%- if m['role'] == 'user' %}{{ 'USER: ' + m['content'] + ' ' }}"
        "{%- else %}{{ 'ASSISTANT: ' + m['content'] + eos_token }}{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{ 'ASSISTANT:' }}{%- endif %}",
    ),
    "chatml": _template(
        "",
        "{%- if system %}{{ '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}{%- endif %}"
        "{%- for m in loop_messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}",
    ),
    # Llama-2-chat: the system prompt lives inside the first [INST] block.
    "llama2": _template(
        "",
        "{%- for m in loop_messages %}"
        "{%- if m['role'] == 'user' %}"
        "{%- set content = ('<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + m['content']) if (loop.first and system) else m['content'] %}"
        "{{ bos_token + '[INST] ' + content + ' [/INST]' }}"
        "{%- else %}{{ ' ' + m['content'] + ' ' + eos_token }}{%- endif %}"
        "{%- endfor %}",
    ),
    # No formatting at all: user text then answer. LLaVA stage 1 ("plain"): a user turn with
    # images renders as its image tags only (the caption instruction is dropped), so the
    # model learns image -> caption.
    "plain": _template(
        "",
        "{%- for m in loop_messages %}"
        "{%- if m['role'] == 'user' %}"
        "{%- set n = m['content'].count('<image>') %}{{ '<image>' * n if n else m['content'] }}"
        "{%- else %}{{ m['content'] + eos_token }}{%- endif %}"
        "{%- endfor %}",
    ),
    # InstructBLIP / BLIP-2 (LAVIS): the image first (its query tokens come before everything, BOS included),
    # then the prompt as the LLM's tokenizer encodes it alone (with BOS when that tokenizer adds one, as LAVIS
    # and transformers' InstructBlipProcessor call it), then answer + eos. System messages are not rendered.
    # InstructBLIP-Video (transformers' InstructBlipVideoProcessor) puts a video's query tokens first the same way.
    "instructblip": _template(
        "",
        "{%- for m in loop_messages %}"
        "{%- if m['role'] == 'user' %}"
        "{%- for tag in ['<image>', '<video>', '<audio>'] %}{{ tag * m['content'].count(tag) }}{%- endfor %}"
        "{{ bos_token if (tokenizer_adds_bos and loop.first) else '' }}"
        "{{ m['content'].replace('<image>', '').replace('<video>', '').replace('<audio>', '') | trim }}"
        "{%- else %}{{ m['content'] + eos_token }}{%- endif %}"
        "{%- endfor %}",
    ),
}

END_OF_TURN: dict[str, str] = {"chatml": "<|im_end|>"}
"""End-of-turn text of built-ins that do not end an answer with ``eos_token``."""


def install_template(tokenizer, name: str | None) -> None:
    """Make ``tokenizer`` render with template ``name`` (``auto`` or None: its own)."""
    if name in (None, "auto"):
        if not tokenizer.chat_template:
            raise ConfigError(
                "data.template: the tokenizer has no chat template and no template is named; "
                f"name one of {', '.join(BUILTIN_TEMPLATES)} (data.template in a recipe, --template for chat)"
            )
        return
    if name not in BUILTIN_TEMPLATES:
        raise ConfigError(f"template '{name}': not auto and not a built-in ({', '.join(BUILTIN_TEMPLATES)})")
    tokenizer.chat_template = BUILTIN_TEMPLATES[name]


def render(tokenizer, messages: Conversation, *, add_generation_prompt: bool) -> str:
    """The conversation as text; templates may read ``tokenizer_adds_bos`` (does ``tokenizer(text)`` start
    with BOS?) to write BOS where a model's own preprocessing would have it."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         tokenizer_adds_bos=tokenizer_adds_bos(tokenizer))


def tokenizer_adds_bos(tokenizer) -> bool:
    """True when encoding text with special tokens puts BOS first (Llama), False otherwise (GPT-2, SmolLM2).

    Asked of the tokenizer each time (one tiny encode): its settings can change after loading."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


def _answer_segments(answer: str, msg: dict, turn: int) -> list[Segment]:
    """A rendered answer as one trained segment, or split by the message's PAM ``parts``.

    Parts (``{"text", "trained"}``, joining to the message's content) let one
    answer be partly trained (partial answer masking, see self_correction.py).
    Template text before the content takes the first part's flag; the
    end-of-turn text after it is always trained, so the model learns to stop.
    """
    parts = msg.get("parts")
    if not parts:
        return [Segment(answer, True)]
    content = msg["content"]
    if "".join(p["text"] for p in parts) != content:
        raise DataError(f"assistant turn {turn}: its parts do not join to its content", reason="bad answer parts")
    start = answer.find(content)
    if start < 0:
        raise DataError(
            f"the chat template changes the text of assistant turn {turn}, so its partly trained answer "
            "cannot be located for loss masking; name a built-in data.template",
            reason="template alters answer",
        )
    return [
        Segment(answer[:start], bool(parts[0]["trained"])),
        *(Segment(p["text"], bool(p["trained"])) for p in parts),
        Segment(answer[start + len(content):], True),
    ]


def split_segments(tokenizer, messages: Conversation) -> list[Segment]:
    """Rendered conversation as consecutive segments; assistant answers are ``trained``."""
    segments: list[Segment] = []
    done = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        full = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise DataError(
                f"the chat template does not render turn {i} as a continuation of the earlier turns, "
                "so the answer cannot be located for loss masking; name a built-in data.template",
                reason="template not prefix-consistent",
            )
        answer = full[len(prompt):]
        kept = answer.rstrip()  # whitespace after the end-of-turn token belongs to the next prompt
        segments.append(Segment(prompt[len(done):], False))
        segments += _answer_segments(kept, msg, i)
        done = prompt + kept
    tail = render(tokenizer, messages, add_generation_prompt=False)[len(done):]
    if tail:
        segments.append(Segment(tail, False))
    return [s for s in segments if s.text]
