"""InstructPix2Pix data generation (``mmtune.datagen.edits``): edit text, Prompt-to-Prompt, the CLIP filter, resume.

Everything runs on tiny random models: the tiny Stable Diffusion of
``build_tiny_stable_diffusion`` (32 px, a few Euler ancestral steps), a tiny
open_clip model in open_clip's local-dir layout, and a scripted sampler for the
edit text (a random tiny LLM never writes the two labelled lines; the CLI test
runs the real sampler on one). The tests check mechanisms: which denoising
steps used the shared maps, what the thresholds remove, what a resumed run
writes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, write_jsonl
from mmtune.config.schema import DatasetSpec
from mmtune.data.pipeline import SourceReport, conversations_of
from mmtune.data.sources import resolve_source
from mmtune.datagen.edits import EditGenOptions, generate_edits
from mmtune.datagen.edits.clip_filter import ClipScorer, ClipScores, ClipThresholds, select, similarities
from mmtune.datagen.edits.edit_text import (
    CaptionRow,
    edit_text_prompt,
    format_edit_text,
    judge_completion,
    parse_edit_text,
    read_captions,
)
from mmtune.datagen.edits.generate import TripletFolder, open_pipeline, sample_draws
from mmtune.datagen.edits.prompt_to_prompt import (
    AttentionSharing,
    generate_pair,
    prompt_to_prompt,
    shared_step_count,
    token_alignment,
)
from mmtune.datagen.sampler import Completion
from mmtune.errors import ConfigError, DataError


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core CPU: one thread is several times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe(tiny_sd_dir):
    return open_pipeline(str(tiny_sd_dir), device="cpu")


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from mmtune.datagen.edits.tiny import write_tiny_open_clip

    return write_tiny_open_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")


@pytest.fixture(scope="module")
def scorer(tiny_clip_dir):
    return ClipScorer.open(str(tiny_clip_dir))


def _layers(unet) -> dict[str, int]:
    """Attention layers of each kind: ``attn1`` is self-attention, ``attn2`` cross-attention in diffusers' blocks."""
    names = list(unet.attn_processors)
    return {"self": sum(".attn1." in n for n in names), "cross": sum(".attn2." in n for n in names)}


# --------------------------------------------------------------------------- Prompt-to-Prompt


@pytest.mark.parametrize(("p", "steps", "expected"), [
    (0.5, 5, 2),     # positions 0, .25 | .5 is not below .5
    (0.1, 100, 10),  # i / 99 < 0.1 -> i <= 9
    (0.9, 4, 3),     # 0, 1/3, 2/3 < 0.9 < 1
    (1.0, 4, 3),     # the last step (position 1) never shares
    (0.0, 4, 0),
    (0.3, 1, 1),     # a single step shares whenever p > 0
])
def test_shared_step_count_is_the_schedule_position_below_p(p, steps, expected):
    assert shared_step_count(p, steps) == expected


def test_token_alignment_maps_shared_words_and_leaves_new_ones(pipe):
    tok = pipe.tokenizer
    source, target = "a photo of a cat", "a photo of a black cat"
    a, b = tok(source).input_ids, tok(target).input_ids
    black = tok("black", add_special_tokens=False).input_ids
    assert b == a[:5] + black + a[5:]  # CLIP's BPE splits word by word: start, a, photo, of, a | black | cat, end
    mapping = token_alignment(tok, source, target).tolist()
    n = len(b)
    assert mapping[:n] == list(range(5)) + [-1] * len(black) + list(range(5, len(a)))
    # padding: the k-th pad position after each caption's end token is matched to the other's
    assert mapping[n:] == [j - n + len(a) for j in range(n, tok.model_max_length)]


def test_sharing_edit_copies_each_pairs_first_maps_into_its_second():
    heads, queries, keys = 2, 3, 6
    sharing = AttentionSharing("both")
    token_map = torch.tensor([0, 1, -1, 2, 3, 4])  # target token 2 is new; 3.. follow the source shifted by one
    sharing.begin(shared_steps=1, token_map=token_map)
    probs = torch.rand(4 * heads, queries, keys)  # (uncond in, uncond out, cond in, cond out) x heads
    grouped = probs.view(2, 2, heads, queries, keys)

    self_out = sharing.edit(probs, "self", heads).view(2, 2, heads, queries, keys)
    assert torch.equal(self_out[:, 0], grouped[:, 0])           # the input captions' maps are untouched
    assert torch.equal(self_out[:, 1], grouped[:, 0])           # the edited captions' maps are theirs

    cross = sharing.edit(probs, "cross", heads).view(2, 2, heads, queries, keys)
    assert torch.equal(cross[:, 0], grouped[:, 0])
    assert torch.equal(cross[0, 1], grouped[0, 0])               # unconditional: the same empty prompt twice
    for j, i in enumerate(token_map.tolist()):                   # conditional: per aligned token, else its own
        expected = grouped[1, 0, ..., i] if i >= 0 else grouped[1, 1, ..., j]
        assert torch.equal(cross[1, 1, ..., j], expected)
    assert not torch.equal(cross[1, 1], grouped[1, 0])
    assert sharing.record == {(0, "self"): 1, (0, "cross"): 1}


@pytest.mark.parametrize("share", ["both", "self", "cross"])
def test_attention_is_shared_for_exactly_the_first_p_steps(pipe, share):
    steps = 6
    layers = _layers(pipe.unet)
    sharing = AttentionSharing(share)
    calls = []
    original = pipe.unet.forward

    def counting_forward(*args, **kwargs):  # which step each UNet call belongs to
        calls.append(sharing.step)
        return original(*args, **kwargs)

    pipe.unet.forward = counting_forward
    try:
        with prompt_to_prompt(pipe.unet, sharing):
            for p in (0.0, 0.15, 0.5, 0.85, 1.0):
                calls.clear()
                generate_pair(pipe, sharing, "a red barn in a field", "a red barn in a snowy field", p=p,
                              guidance_scale=9.0, seed=3, steps=steps, resolution=32)
                assert calls == list(range(steps))  # one UNet call per step, the counter advancing with them
                expected = {i for i in range(steps) if i / (steps - 1) < p}
                kinds = ("self", "cross") if share == "both" else (share,)
                assert sharing.record == {(i, kind): layers[kind] for i in expected for kind in kinds}
    finally:
        del pipe.unet.forward
    assert not any(type(proc).__name__ == "SharedAttentionProcessor" for proc in pipe.unet.attn_processors.values())


def test_shared_maps_change_only_the_edited_image(pipe):
    """The input caption's image is a plain generation of it (same seed); sharing moves only the edited image."""
    source, target, seed = "a stone castle on a hill", "an ice castle on a hill", 11
    plain = pipe(source, height=32, width=32, num_inference_steps=4, guidance_scale=8.0,
                 generator=[torch.Generator().manual_seed(seed)], output_type="np").images[0]
    sharing = AttentionSharing("both")
    with prompt_to_prompt(pipe.unet, sharing):
        pairs = {p: generate_pair(pipe, sharing, source, target, p=p, guidance_scale=8.0, seed=seed, steps=4,
                                  resolution=32, output_type="np") for p in (0.0, 0.9)}
    for before, _ in pairs.values():
        np.testing.assert_allclose(before, plain, atol=1e-4)
    unshared, shared = pairs[0.0][1], pairs[0.9][1]
    assert np.abs(shared - unshared).max() > 1e-3
    # sharing pulls the edited image towards the input one
    assert np.abs(shared - pairs[0.9][0]).mean() < np.abs(unshared - pairs[0.0][0]).mean()


def test_sample_draws_are_seeded_per_caption_and_within_their_ranges():
    opts = EditGenOptions(samples=50, p2p_range=(0.2, 0.4), guidance_range=(5.0, 6.0), seed=3)
    draws = sample_draws(opts, 7)
    assert draws == sample_draws(opts, 7) and draws != sample_draws(opts, 8)
    assert len({d.seed for d in draws}) == 50 and all(0 <= d.seed < 2**32 for d in draws)
    assert all(0.2 <= d.p <= 0.4 and 5.0 <= d.guidance_scale <= 6.0 for d in draws)


# --------------------------------------------------------------------------- CLIP filter


def test_similarities_hand_worked():
    e = torch.eye(3)
    image_0, image_1 = torch.stack([e[0], e[0]]), torch.stack([e[1], 2 * e[0] + e[1]])
    s = similarities(image_0, image_1, 5 * e[0], e[1])  # embeddings are normalised first
    assert torch.allclose(s.sim_0, torch.tensor([1.0, 1.0]))
    assert torch.allclose(s.sim_1, torch.tensor([1.0, 1 / 5 ** 0.5]))
    assert torch.allclose(s.sim_image, torch.tensor([0.0, 2 / 5 ** 0.5]))
    # direction: image change vs caption change (e1 - e0); second pair: (2e0+e1)/sqrt5 - e0
    d = torch.tensor([2 / 5 ** 0.5 - 1, 1 / 5 ** 0.5, 0.0])
    second = float(d @ torch.tensor([-1.0, 1.0, 0.0]) / (d.norm() * 2 ** 0.5))
    assert torch.allclose(s.sim_dir, torch.tensor([1.0, second]))


def test_filters_remove_exactly_what_their_thresholds_say():
    rng = np.random.default_rng(0)
    n = 400
    values = {k: rng.uniform(-0.2, 1.0, n) for k in ("sim_0", "sim_1", "sim_dir", "sim_image")}
    values["sim_dir"][:3] = 0.25                      # exactly at a threshold passes it (>=)
    values["sim_image"][:3] = 0.6
    values["sim_0"][:3] = values["sim_1"][:3] = 0.3
    values["sim_0"][3] = float("nan")                 # a NaN similarity fails its test
    scores = ClipScores(**{k: torch.tensor(v) for k, v in values.items()})
    t = ClipThresholds(caption=0.3, direction=0.25, image=0.6, keep=7)
    kept, removed = select(scores, t)

    caption_ok = (values["sim_0"] >= t.caption) & (values["sim_1"] >= t.caption)
    direction_ok = values["sim_dir"] >= t.direction
    image_ok = values["sim_image"] >= t.image
    passing = np.flatnonzero(caption_ok & direction_ok & image_ok)
    caption, direction, image, beyond = t.reasons()
    assert removed[caption] == (~caption_ok).sum()
    assert removed[direction] == (caption_ok & ~direction_ok).sum()
    assert removed[image] == (caption_ok & direction_ok & ~image_ok).sum()
    assert removed[beyond] == len(passing) - t.keep
    assert sum(removed.values()) + len(kept) == n
    best = sorted(passing, key=lambda i: -values["sim_dir"][i])[: t.keep]
    assert kept == best and {0, 1, 2} <= set(passing)

    few, counts = select(scores, ClipThresholds(caption=0.3, direction=0.25, image=0.6, keep=10_000))
    assert sorted(few) == list(passing) and beyond not in counts and "beyond the best 10000" not in counts


def test_clip_scorer_on_a_tiny_open_clip(scorer, pipe):
    from PIL import Image

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    same = scorer.score(images, images, "a cat", "a cat")
    assert torch.allclose(same.sim_image, torch.ones(3), atol=1e-5)
    assert torch.allclose(same.sim_0, same.sim_1) and torch.all(same.sim_dir == 0)  # no change, no direction
    swapped = scorer.score(images, images[::-1], "a cat", "a dog")
    assert torch.allclose(swapped.sim_image[0], swapped.sim_image[2]) and swapped.sim_image[1] > 1 - 1e-5
    # the features are the open_clip model's own (normalised inside)
    pixels = torch.stack([scorer.preprocess(im) for im in images])
    with torch.no_grad():
        direct = scorer.model.encode_image(pixels)
    assert torch.allclose(scorer.embed_images(images), direct)


# --------------------------------------------------------------------------- edit text


@pytest.mark.parametrize(("text", "parsed"), [
    ("Edit: make it winter\nEdited caption: a barn in snow", ("make it winter", "a barn in snow")),
    ("  edit :  add a dog \n\n EDITED CAPTION: a park with a dog.  ", ("add a dog", "a park with a dog.")),
    ("Edit: make it winter", None),                                         # no caption line
    ("Edited caption: a barn\nEdit: make it winter", None),                 # wrong order
    ("Edit: \nEdited caption: a barn in snow", None),                       # empty edit
    ("Edit: x\nEdited caption: y\nEdit: z", None),                          # more than the two lines
    ("Sure! Here is an edit: make it red", None),
    ("", None),
])
def test_parse_edit_text(text, parsed):
    assert parse_edit_text(text) == parsed


@pytest.mark.parametrize(("answer", "truncated", "reason"), [
    ("Edit: make it night\nEdited caption: a street at night", False, None),
    ("Edit: make it night\nEdited caption: a street at night", True, "unfinished (length)"),
    ("Edit: make it night", False, "malformed"),
    ("Edit: do nothing\nEdited caption: A street at noon.", False, "unchanged caption"),  # case, final stop
    ("Edit: do nothing\nEdited caption: a  street at noon!", False, "unchanged caption"),
])
def test_edit_text_filters(answer, truncated, reason):
    text, why = judge_completion(CaptionRow(0, "a street at noon"), Completion(answer, truncated))
    assert why == reason and (text is None) == (reason is not None)
    if text is not None:
        assert (text.edit, text.output, text.source) == (*parse_edit_text(answer), "llm")


def test_shipped_examples_train_what_generation_asks(smol_tokenizer):
    """The card's conversations are the generator's prompt and answer format, and every example passes the filters."""
    from mmtune.config.loader import load_recipe

    recipe = load_recipe(REPO / "configs" / "edit_text_smollm2.yaml")
    assert recipe.model.name == "smollm2-135m-instruct"
    assert [d.card for d in recipe.data.datasets] == ["edit-text-examples"]
    src = resolve_source(recipe.data.datasets[0])
    rows = [json.loads(line) for line in (REPO / "datasets" / "edit-text-examples.jsonl").read_text().splitlines()]
    convs = [conv for _, conv in conversations_of(src, SourceReport(src.name), "error")]
    assert len(convs) == len(rows) >= 60 and len({r["input"] for r in rows}) == len(rows)
    for row, conv in zip(rows, convs):
        user, answer = conv[-2]["content"], conv[-1]["content"]
        assert user == edit_text_prompt(row["input"])
        parsed = parse_edit_text(answer)
        assert parsed is not None and format_edit_text(*parsed) == answer
        _, reason = judge_completion(CaptionRow(0, row["input"]), Completion(answer, False))
        assert reason is None, (row["id"], reason)
        rendered = smol_tokenizer.apply_chat_template(conv, tokenize=True)
        ids = rendered["input_ids"] if isinstance(rendered, dict) or hasattr(rendered, "keys") else rendered
        assert len(ids) <= recipe.data.max_length  # nothing is cut at training time


def test_read_captions(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("a cat\n\n  a dog  \n")
    assert [(r.index, r.caption, r.given) for r in read_captions(txt)] == [(0, "a cat", False), (1, "a dog", False)]
    jl = write_jsonl(tmp_path / "c.jsonl", [{"caption": "a cat", "edit": "make it black", "output": "a black cat"},
                                           {"input": "a dog"}, {"caption": "a cow", "edit": "x"}])
    rows = read_captions(jl)
    assert [(r.caption, r.given) for r in rows] == [("a cat", True), ("a dog", False), ("a cow", False)]
    with pytest.raises(DataError, match=r"c2.jsonl:2: field 'caption'"):
        read_captions(write_jsonl(tmp_path / "c2.jsonl", [{"caption": "ok"}, {"caption": ""}]))
    with pytest.raises(DataError, match="captions file not found"):
        read_captions(tmp_path / "missing.txt")


class ScriptedLLM:
    """Answers by what the caption asks for: ``bad`` malformed, ``same`` unchanged, ``long`` cut off; else an edit."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.fail_on_call = fail_on_call

    def settings(self) -> dict:
        return {"model": "scripted"}

    def complete(self, prompts, *, chat, seed, max_new_tokens, stop=(), greedy=False):
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt
        self.calls.append((len(prompts), seed))
        out = []
        for prompt in prompts:
            caption = prompt.rsplit("\n\n", 1)[1]
            rng = random.Random(f"{seed}:{caption}")
            colour = rng.choice(["red", "blue", "green", "golden"])
            if "bad" in caption:
                out.append(Completion(f"Sure, make it {colour}.", False))
            elif "same" in caption:
                out.append(Completion(f"Edit: keep it\nEdited caption: {caption.upper()}.", False))
            else:
                out.append(Completion(f"Edit: make it {colour}\nEdited caption: {colour} {caption}",
                                      "long" in caption))
        return out


def _caption_file(tmp_path: Path, n: int = 11) -> Path:
    kinds = ["", "bad", "same", "long", "given"]
    rows = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        caption = f"a {kind} photo number {i}".replace("  ", " ")
        row = {"caption": caption}
        if kind == "given":
            row |= {"edit": "add snow", "output": f"{caption} in snow"}
        rows.append(row)
    return write_jsonl(tmp_path / "captions.jsonl", rows)


def _text_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "edit-text" / "data.jsonl").read_text().splitlines()]


def test_edit_text_stage_is_batched_filtered_and_resumable(tmp_path, pipe, scorer):
    captions = _caption_file(tmp_path)
    opts = EditGenOptions(batch_size=3, samples=1, steps=1, resolution=32, min_caption_sim=-2,
                          min_direction_sim=-2, min_image_sim=-2)
    llm = ScriptedLLM()
    whole = generate_edits(captions, tmp_path / "whole", opts, sampler=llm, pipe=pipe, scorer=scorer, progress=False)

    rows = read_captions(captions)
    asked = [r for r in rows if not r.given]
    batches = [rows[i:i + 3] for i in range(0, len(rows), 3)]
    assert [n for n, _ in llm.calls] == [sum(not r.given for r in b) for b in batches if any(not r.given for r in b)]
    assert len({seed for _, seed in llm.calls}) == len(llm.calls)  # every batch its own seed
    c = whole.counters
    kinds = [r.caption.split()[1] for r in rows]
    assert c["edit text: candidates"] == len(rows) and c["edit text: generated"] == len(asked)
    assert c["edit text: given"] == kinds.count("given")
    assert c["edit text: malformed"] == kinds.count("bad")
    assert c["edit text: unchanged caption"] == kinds.count("same")
    assert c["edit text: unfinished (length)"] == kinds.count("long")
    accepted = _text_rows(tmp_path / "whole")
    assert [r["index"] for r in accepted] == [r.index for r in rows if r.caption.split()[1] in ("photo", "given")]
    assert c["edit text: accepted"] == len(accepted) == whole.edit_texts == whole.pairs

    with pytest.raises(KeyboardInterrupt):
        generate_edits(captions, tmp_path / "part", opts, sampler=ScriptedLLM(fail_on_call=2), pipe=pipe,
                       scorer=scorer, progress=False)
    assert json.loads((tmp_path / "part" / "edit-text" / "state.json").read_text())["batches_done"] == 2
    resumed = generate_edits(captions, tmp_path / "part", opts, sampler=ScriptedLLM(), pipe=pipe, scorer=scorer,
                             progress=False)
    assert _text_rows(tmp_path / "part") == accepted and resumed.counters == whole.counters
    with pytest.raises(ConfigError, match="different settings.*batch_size"):
        generate_edits(captions, tmp_path / "part", EditGenOptions(batch_size=4), sampler=ScriptedLLM(),
                       progress=False)


# --------------------------------------------------------------------------- the whole run: resume, layout, report


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resumed_run_writes_what_an_uninterrupted_run_writes(tmp_path, tiny_sd_dir, tiny_clip_dir, pipe, scorer,
                                                             monkeypatch):
    captions = write_jsonl(tmp_path / "captions.jsonl", [
        {"caption": "a red barn in a green field", "edit": "make it winter", "output": "a red barn in a snowy field"},
        {"caption": "a photo of a cat", "edit": "make the cat black", "output": "a photo of a black cat"},
        {"caption": "a bowl of strawberries", "edit": "make them blueberries", "output": "a bowl of blueberries"},
        {"caption": "a bird on a branch", "edit": "make it an owl", "output": "an owl on a branch"},
    ])
    # thresholds at which each test removes some of this random model's samples (the filter's own test is above)
    opts = EditGenOptions(sd=str(tiny_sd_dir), clip=str(tiny_clip_dir), steps=3, resolution=32, samples=4, keep=2,
                          min_caption_sim=0.1, min_direction_sim=-0.2, min_image_sim=0.9995, seed=5)
    whole = generate_edits(captions, tmp_path / "whole", opts, pipe=pipe, scorer=scorer, progress=False)

    commits = []
    original = TripletFolder.commit

    def crash_on_third_pair(self, state, rows):
        """The worst moment: images and rows of the pair on disk, the state not yet replaced."""
        commits.append(len(rows))
        if len(commits) == 3:
            with open(self.data, "a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
            raise KeyboardInterrupt
        original(self, state, rows)

    monkeypatch.setattr(TripletFolder, "commit", crash_on_third_pair)
    with pytest.raises(KeyboardInterrupt):
        generate_edits(captions, tmp_path / "part", opts, pipe=pipe, scorer=scorer, progress=False)
    monkeypatch.setattr(TripletFolder, "commit", original)
    assert json.loads((tmp_path / "part" / "state.json").read_text())["batches_done"] == 2
    resumed = generate_edits(captions, tmp_path / "part", opts, pipe=pipe, scorer=scorer, progress=False)

    assert _files(tmp_path / "part") == _files(tmp_path / "whole")
    assert resumed.as_dict() == whole.as_dict()

    # the layout: diffusers' triplets, read back by mmtune's edit_triplets reader through the written card
    from mmtune.data.edit_formats import read_triplets

    meta = [json.loads(line) for line in (tmp_path / "whole" / "metadata.jsonl").read_text().splitlines()]
    read = read_triplets(resolve_source(DatasetSpec(card=str(tmp_path / "whole" / "triplets.yaml"))),
                         on_bad_sample="error")
    assert len(read.triplets) == len(meta) == whole.triplets > 0 and not read.skipped
    assert [t.edit_prompt for t in read.triplets] == [m["edit_prompt"] for m in meta]
    assert [Path(t.edited_image) for t in read.triplets] == [tmp_path / "whole" / m["edited_image"] for m in meta]

    # the report: every drawn sample is kept or removed by one test; kept ones meet every threshold
    c = whole.counters
    assert c["samples: candidates"] == 4 * 4 == sum(v for k, v in c.items()
                                                    if k.startswith("samples: ") and k != "samples: candidates")
    assert c["samples: kept"] == len(meta) and c["pairs: candidates"] == 4
    assert json.loads((tmp_path / "whole" / "report.json").read_text()) == whole.as_dict()
    for m in meta:
        assert min(m["sim_0"], m["sim_1"]) >= 0.1 and m["sim_dir"] >= -0.2 and m["sim_image"] >= 0.9995
        assert 0.1 <= m["p2p"] <= 0.9 and 7.5 <= m["guidance_scale"] <= 15
    by_pair: dict[int, list[dict]] = {}
    for m in meta:
        by_pair.setdefault(m["caption_index"], []).append(m)
    for index, group in by_pair.items():
        assert len(group) <= 2 and [g["sim_dir"] for g in group] == sorted((g["sim_dir"] for g in group), reverse=True)
        seeds = {d.seed: d for d in sample_draws(opts, index)}
        assert all(seeds[g["seed"]].p == g["p2p"] for g in group)  # each row is one of its pair's draws
