"""Proxy tuning and the batched decoding loop, on tiny random Llamas (the real SmolLM2: tests/real).

The tiny variants are untied with a large init range, so next-token choices
vary and are well separated: greedy comparisons then test the arithmetic, not
floating-point ties.
"""

from __future__ import annotations

import json
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import hf_greedy, write_jsonl
from mmtune.generation.options import GenerationOptions
from mmtune.cli import main
from mmtune.errors import ModelError
from mmtune.generation.decoding import (
    SingleModel, decode_batch, generate_texts, pad_id_of, prompt_ids, source_stop_ids,
)
from mmtune.generation.proxy import ProxyTuned, check_proxy_compatible, load_proxy, proxy_logits
from mmtune.models.tiny import build_tiny_llama

PROMPTS = [
    [{"role": "user", "content": "Name a prime number."}],
    [{"role": "user", "content": "Write one sentence about the sea, please, in a calm and friendly tone."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
]
STEPS = 10


@pytest.fixture(scope="module")
def trio(varied_llama_dirs, one_torch_thread):
    """(dirs, models): base, expert, anti-expert as three differently seeded tiny Llamas."""
    dirs = varied_llama_dirs
    return dirs, [AutoModelForCausalLM.from_pretrained(d).eval() for d in dirs]


def decode(source, tokenizer, convs, opts=GenerationOptions(max_new_tokens=STEPS), **kw):
    return decode_batch(source, [prompt_ids(tokenizer, c) for c in convs], opts,
                        stop_ids=source_stop_ids(source, tokenizer), pad_id=pad_id_of(tokenizer), **kw)


def test_formula_on_tensors_and_tail_truncation():
    g = torch.Generator().manual_seed(0)
    b, e, a = (torch.randn(2, 7, generator=g) for _ in range(3))
    e_long, a_long = torch.cat([e, torch.randn(2, 3, generator=g)], -1), torch.cat([a, torch.randn(2, 5, generator=g)], -1)
    assert torch.equal(proxy_logits(b, e, a, alpha=0.5), b + 0.5 * (e - a))
    assert torch.equal(proxy_logits(b, e_long, a_long, alpha=0.5), b + 0.5 * (e - a))
    with pytest.raises(ModelError, match="fewer than the base"):
        proxy_logits(b, e[:, :6], a, alpha=1.0)


def test_decoding_loop_matches_transformers_generate(trio, smol_tokenizer):
    _, (base, _, _) = trio
    ours = decode(SingleModel(base), smol_tokenizer, PROMPTS)
    assert ours == [hf_greedy(base, smol_tokenizer, c) for c in PROMPTS]
    assert len({tuple(t) for t in ours}) == len(PROMPTS) and all(len(t) > 3 for t in ours)


def test_antiexpert_equal_to_base_gives_the_experts_greedy_output(trio, smol_tokenizer):
    _, (base, expert, _) = trio
    proxied = decode(ProxyTuned(base, expert, base, alpha=1.0), smol_tokenizer, PROMPTS)
    assert proxied == [hf_greedy(expert, smol_tokenizer, c) for c in PROMPTS]
    assert proxied != [hf_greedy(base, smol_tokenizer, c) for c in PROMPTS]


def test_alpha_zero_gives_the_bases_greedy_output(trio, smol_tokenizer):
    _, (base, expert, anti) = trio
    assert decode(ProxyTuned(base, expert, anti, alpha=0.0), smol_tokenizer, PROMPTS) == [
        hf_greedy(base, smol_tokenizer, c) for c in PROMPTS]


class Recording(ProxyTuned):
    """Keeps the three models' logits and the combined logits of every step."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.inputs: list[list[torch.Tensor]] = []
        self.steps: list[torch.Tensor] = []

    def combine(self, logits):
        out = super().combine(logits)
        self.inputs.append([t.clone() for t in logits])
        self.steps.append(out.clone())
        return out


def test_logits_at_every_step_equal_the_formula(trio, smol_tokenizer):
    """Each step's logits are exactly the formula of the three models' logits, and those equal fresh
    full forwards of each model on the prefix (so the three caches stayed in lockstep, padding included)."""
    _, (base, expert, anti) = trio
    rec = Recording(base, expert, anti, alpha=0.7)
    tokens = decode(rec, smol_tokenizer, PROMPTS, GenerationOptions(max_new_tokens=6, temperature=1.0, seed=3),
                    generator=torch.Generator().manual_seed(3))
    assert len(rec.steps) == 6
    for (b, e, a), combined in zip(rec.inputs, rec.steps):
        assert torch.equal(combined, b + 0.7 * (e - a))
    for row, conv in enumerate(PROMPTS):
        ids = prompt_ids(smol_tokenizer, conv) + tokens[row]
        with torch.no_grad():
            full = [m(torch.tensor([ids])).logits[0].float() for m in (base, expert, anti)]
        n = len(prompt_ids(smol_tokenizer, conv))
        for step in range(len(tokens[row])):
            for k in range(3):  # float rounding of cached vs full attention only
                torch.testing.assert_close(rec.inputs[step][k][row], full[k][n - 1 + step], atol=1e-4, rtol=1e-4)


def test_batched_equals_unbatched_per_prompt(trio, smol_tokenizer):
    _, (base, expert, anti) = trio
    source = ProxyTuned(base, expert, anti, alpha=1.5)
    batched = decode(source, smol_tokenizer, PROMPTS)
    assert batched == [decode(source, smol_tokenizer, [c])[0] for c in PROMPTS]


def test_sampling_is_seeded_and_top_p_near_zero_is_greedy(trio, smol_tokenizer):
    _, (base, expert, anti) = trio
    source = ProxyTuned(base, expert, anti, alpha=1.0)
    sample = GenerationOptions(max_new_tokens=STEPS, temperature=1.5, seed=7)
    first = generate_texts(source, smol_tokenizer, PROMPTS, sample, progress=False)
    assert first == generate_texts(source, smol_tokenizer, PROMPTS, sample, progress=False)
    greedy = generate_texts(source, smol_tokenizer, PROMPTS, GenerationOptions(max_new_tokens=STEPS), progress=False)
    assert first != greedy
    nucleus = GenerationOptions(max_new_tokens=STEPS, temperature=1.5, top_p=1e-6, seed=7)
    assert generate_texts(source, smol_tokenizer, PROMPTS, nucleus, progress=False) == greedy


def test_vocabulary_checks(tmp_path, trio, smol_tokenizer):
    dirs, (base, expert, anti) = trio
    long_dir = build_tiny_llama(tmp_path / "long", smol_tokenizer, seed=2, extra_vocab=64, tie_word_embeddings=False,
                                initializer_range=0.3)
    long_expert = AutoModelForCausalLM.from_pretrained(long_dir).eval()
    check_proxy_compatible(base, long_expert, anti, [smol_tokenizer] * 3)  # a longer tail is fine
    out = decode(ProxyTuned(base, long_expert, anti), smol_tokenizer, PROMPTS[:1])
    assert all(t < len(smol_tokenizer) for t in out[0])
    with pytest.raises(ModelError, match=f"expert outputs {len(smol_tokenizer)} logits but the base model outputs "
                                         f"{len(smol_tokenizer) + 64}"):
        check_proxy_compatible(long_expert, expert, anti, [smol_tokenizer] * 3)
    other = smol_tokenizer.__class__.from_pretrained(dirs[1])
    other.add_tokens(["<mmtune-extra-token>"])
    with pytest.raises(ModelError, match="expert's tokenizer differs"):
        check_proxy_compatible(base, expert, anti, [smol_tokenizer, other, smol_tokenizer])


def test_load_proxy_and_generate_command(tmp_path, capsys, trio, smol_tokenizer):
    dirs, _ = trio
    source, tok = load_proxy(str(dirs[0]), str(dirs[1]), str(dirs[0]), alpha=1.0)
    assert source.antiexpert is source.base  # named twice, loaded once
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Name a prime number."},
                                                  {"messages": [{"role": "user", "content": "Hi"}]},
                                                  {"instruction": "Add", "input": "2 and 3"}])
    out = tmp_path / "out.jsonl"
    args = ["generate", "--model", str(dirs[0]), "--prompts", str(prompts), "--out", str(out),
            "--max-new-tokens", "8", "--batch-size", "2", "--proxy-expert", str(dirs[1])]
    assert main(args + ["--proxy-antiexpert", str(dirs[0])]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("id") for r in rows] == ["a", None, None]
    assert rows[1]["prompt"] == [{"role": "user", "content": "Hi"}] and rows[2]["prompt"] == "Add\n\n2 and 3"
    expert = AutoModelForCausalLM.from_pretrained(dirs[1]).eval()
    convs = [[{"role": "user", "content": t}] for t in ("Name a prime number.", "Hi", "Add\n\n2 and 3")]
    want = generate_texts(expert, tok, convs, GenerationOptions(max_new_tokens=8), progress=False)
    assert [r["output"] for r in rows] == want
    capsys.readouterr()
    assert main(["chat", "--model", str(dirs[0]), "--proxy-expert", str(dirs[1]), "--proxy-antiexpert", str(dirs[0]),
                 "--max-new-tokens", "8", "Name a prime number."]) == 0
    assert capsys.readouterr().out.strip() == want[0]

    assert main(args) == 2
    assert "needs both --proxy-expert and --proxy-antiexpert" in capsys.readouterr().err


def test_chat_one_shot_with_proxy(trio, smol_tokenizer):
    from mmtune.generation.chat import generate_reply

    _, (base, expert, _) = trio
    pieces: list[str] = []
    reply = generate_reply(ProxyTuned(base, expert, base), smol_tokenizer, PROMPTS[0],
                           GenerationOptions(max_new_tokens=STEPS), stream=pieces.append)
    assert reply == smol_tokenizer.decode(hf_greedy(expert, smol_tokenizer, PROMPTS[0]), skip_special_tokens=True).strip()
    assert "".join(pieces).strip() == reply and len(pieces) > 1


def test_the_generation_configs_suppressed_tokens_are_never_generated(trio, smol_tokenizer):
    """An exported Llava suppresses its added <image> token this way; the decoding loop must honour it."""
    import copy

    _, (base, _, _) = trio
    model = copy.deepcopy(base)
    free = decode(SingleModel(model), smol_tokenizer, PROMPTS[:1])[0]
    model.generation_config.suppress_tokens = [free[0], free[1]]
    held = decode(SingleModel(model), smol_tokenizer, PROMPTS[:1])[0]
    assert free[0] not in held and free[1] not in held and held
    model.generation_config.suppress_tokens = None
    model.generation_config.begin_suppress_tokens = [free[0]]
    first_only = decode(SingleModel(model), smol_tokenizer, PROMPTS[:1])[0]
    assert first_only[0] != free[0]
