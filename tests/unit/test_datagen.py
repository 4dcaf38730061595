"""Self-Instruct and Evol-Instruct generation: ROUGE-L, filters, prompts, resume, end to end.

Unit tests check the mechanisms against hand-worked values. The resume tests
compare an interrupted-and-resumed run with an uninterrupted one; the
Self-Instruct one uses a scripted sampler (a random tiny model never writes a
parseable task, so nothing would be accepted), the Evol-Instruct one and the
end-to-end tests use the tiny random Llama.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from conftest import write_jsonl
from mmtune.config.schema import DatasetSpec
from mmtune.data.pipeline import SourceReport, conversations_of
from mmtune.data.sources import resolve_source
from mmtune.datagen import filters, prompts
from mmtune.datagen.evol_instruct import EvolInstructOptions, evol_instruct, read_instructions
from mmtune.datagen.rouge import RougePool, lcs_length, rouge_l
from mmtune.datagen.sampler import Completion, HFSampler, cut_at_stop
from mmtune.datagen.self_instruct import (
    DEFAULT_SEEDS, SelfInstructOptions, _filter_instructions, balanced_demos, clean_instances,
    in_context_instructions, load_seed_tasks, self_instruct,
)
from mmtune.errors import ConfigError, DataError



@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny-model generation is latency-bound; on a shared 2-core box one thread is ~10x faster than two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- ROUGE-L


@pytest.mark.parametrize(("cand", "ref", "expected"), [
    ("the cat sat on the mat", "the cat sat on the mat", 1.0),
    ("the cat sat on the mat", "the cat lay on the mat", 5 / 6),      # LCS "the cat on the mat"
    ("a b c d", "d c b a", 0.25),                                      # LCS 1 of 4 and 4
    ("the quick brown fox", "the brown dog", 4 / 7),                  # LCS 2: P 2/4, R 2/3
    ("Hello, World!", "hello world", 1.0),                            # case and punctuation ignored
    ("", "anything", 0.0),
    ("x y z", "a b c", 0.0),
])
def test_rouge_l_hand_checked(cand, ref, expected):
    assert rouge_l(cand, ref) == pytest.approx(expected)
    assert rouge_l(ref, cand) == pytest.approx(expected)  # F1 is symmetric


def test_lcs_classic_example():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert lcs_length([], list("abc")) == 0


def test_rouge_pool_pruning_never_changes_the_maximum():
    rng = random.Random(1)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(150)]
    pool = RougePool(texts[:100])
    for cand in texts[100:]:
        assert pool.max_score(cand) == pytest.approx(max(rouge_l(cand, t) for t in texts[:100]))
    # stop_at returns early with a score that already reaches the threshold
    assert pool.max_score(texts[5], stop_at=0.7) >= 0.7


# --------------------------------------------------------------------------- Self-Instruct filters


@pytest.mark.parametrize(("inst", "reason"), [
    ("Write a short poem about the sea.", None),
    ("", "empty"),
    ("Summarize this text.", "too short"),                      # 3 words
    ("Describe " + "very " * 150 + "much.", "too long"),
    ("Describe the image in one sentence.", "unsuitable keyword"),
    ("Plot the function y = x squared.", "unsuitable keyword"),
    ("Tell me how to go to the station.", "unsuitable keyword"),
    ("Write a program that adds two numbers.", "write a program"),
    ("- List three colors of the rainbow.", "starts with punctuation"),
    ("Ünderline the verbs in the sentence please.", "non-English start"),
])
def test_instruction_heuristics(inst, reason):
    assert filters.instruction_rejection(inst) == reason


def test_keywords_match_whole_words_only():
    assert filters.instruction_rejection("Explain what a roadmap for a project contains.") is None
    assert filters.instruction_rejection("Name three files in a typical home folder.") == "unsuitable keyword"


@pytest.mark.parametrize(("inp", "out", "reason"), [
    ("2 + 2", "4", None),
    ("", "A haiku about rain.", None),
    ("abc", "", "empty output"),
    ("same", "same", "input equals output"),
    ("List:", "1, 2", "ends with colon"),
    ("x", "The answer is:", "ends with colon"),
])
def test_instance_filter(inp, out, reason):
    assert filters.instance_rejection(inp, out) == reason


def test_clean_instances_counts_every_dropped_instance():
    c = Counter()
    pairs = [("a", "1"), ("a", "1"), ("b", ""), ("c", "3"), ("d", "4"), ("e", "5")]
    kept = clean_instances(pairs, truncated=True, counters=c, limit=2)
    assert kept == [("a", "1"), ("c", "3")]  # "e" dropped as unfinished, duplicate "a", empty "b", limit 2
    assert c["instance: unfinished (length)"] == 1 and c["instance: empty output"] == 1
    assert c["instance: duplicate"] == 1 and c["instance: over max_instances"] == 1
    rejected = sum(v for k, v in c.items() if k not in ("instance: candidates", "instance: accepted"))
    assert c["instance: candidates"] == 6 == rejected + c["instance: accepted"]
    conflict = Counter()
    assert clean_instances([("q", "yes"), ("q", "no")], truncated=False, counters=conflict, limit=5) == []
    assert conflict["instance: same input, different outputs"] == 2


def test_dedup_and_rouge_filter_against_pool_and_batch():
    seeds = ["Give three tips for staying healthy."]
    text = ("Give three tips for staying healthy.\n"          # exact duplicate of a seed
            "10. give  three tips for staying HEALTHY\n"      # duplicate after normalisation
            "11. Give three tips for staying healthy at work.\n"   # ROUGE-L 0.857 vs the seed
            "12. Name the largest planet in the solar system.\n"
            "13. Name the largest planet in the solar system today.\n"  # too close to 12 (same batch)
            "14. Translate the phrase good morning into Spanish.")
    c = Counter()
    kept = _filter_instructions([Completion(text, truncated=False)], RougePool(seeds),
                                {filters.normalize(s) for s in seeds}, SelfInstructOptions(), c)
    assert kept == ["Name the largest planet in the solar system.", "Translate the phrase good morning into Spanish."]
    assert c["instruction: duplicate"] == 2 and c["instruction: ROUGE-L too similar"] == 2
    assert c["instruction: candidates"] == 6 == c["instruction: passed"] + 4


def test_truncated_list_drops_its_unfinished_last_item():
    c = Counter()
    kept = _filter_instructions([Completion("Name a color of the sky.\n10. Explain why the", truncated=True)],
                                RougePool(), set(), SelfInstructOptions(), c)
    assert kept == ["Name a color of the sky."]
    assert c["instruction: unfinished (length)"] == 1 and c["instruction: candidates"] == 2


# --------------------------------------------------------------------------- Self-Instruct prompts


def test_shipped_seed_file_has_both_task_types():
    tasks = load_seed_tasks(DEFAULT_SEEDS)
    assert len(tasks) >= 20
    assert 5 <= sum(t.is_classification for t in tasks) < len(tasks) - 5
    assert all(filters.instruction_rejection(t.instruction) is None for t in tasks)


def test_bad_seed_row_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "seeds.jsonl", [
        {"instruction": "Name a fruit please now.", "instances": [{"input": "", "output": "Apple"}], "is_classification": False},
        {"instruction": "Name a fruit please now.", "instances": [{"input": ""}], "is_classification": False},
    ])
    with pytest.raises(DataError, match=r"seeds\.jsonl:2: field 'instances'"):
        load_seed_tasks(path)


def test_in_context_prompt_has_eight_instructions_six_seeds_two_generated():
    seeds = [f"Seed task number {i} here." for i in range(20)]
    machine = [f"Machine task number {i} here." for i in range(5)]
    opts = SelfInstructOptions()
    chosen = in_context_instructions(random.Random(0), seeds, machine, opts)
    assert len(chosen) == 8 == len(set(chosen))
    assert sum(c in machine for c in chosen) == 2 and sum(c in seeds for c in chosen) == 6
    # before anything was generated: all eight from the seeds; with one generated: 1 + 7
    assert all(c in seeds for c in in_context_instructions(random.Random(0), seeds, [], opts))
    assert sum(c in machine for c in in_context_instructions(random.Random(0), seeds, machine[:1], opts)) == 1
    prompt = prompts.instruction_prompt(chosen)
    lines = prompt.splitlines()
    assert lines[0] == "Come up with a series of tasks:" and lines[-1] == "9."
    assert [ln.split(". ", 1)[1] for ln in lines[1:9]] == chosen


def test_parse_instructions_splits_numbered_continuation():
    assert prompts.parse_instructions(" find the odd one out.\n10. Name a river.\n11 . add two numbers", False) == [
        "Find the odd one out.", "Name a river.", "Add two numbers"]
    assert prompts.parse_instructions(" Name a river.\n10. Add two", True) == ["Name a river."]


def test_classification_prompt_uses_seed_labels_and_balanced_demos():
    tasks = load_seed_tasks(DEFAULT_SEEDS)
    demos = balanced_demos(random.Random(0), tasks, 12)
    assert sum(d.is_classification for d in demos) == 6 == sum(not d.is_classification for d in demos)
    text = prompts.classification_prompt(demos, "Tell me if the word is a noun.")
    for d in demos:
        assert f"Task: {d.instruction}\nIs it classification? {'Yes' if d.is_classification else 'No'}" in text
    assert text.endswith("Task: Tell me if the word is a noun.\nIs it classification?")
    assert prompts.parse_yes_no(" Yes.") is True and prompts.parse_yes_no(" no") is False
    assert prompts.parse_yes_no(" maybe") is None and prompts.parse_yes_no("") is None


def test_instances_input_first_for_generation_output_first_for_classification():
    tasks = load_seed_tasks(DEFAULT_SEEDS)
    clf = next(t for t in tasks if t.is_classification)
    gen = next(t for t in tasks if not t.is_classification and t.instances[0][0])
    p_clf = prompts.instance_prompt([clf], "Decide if the review is positive.", True)
    inp, label = clf.instances[0]
    assert f"Class label: {label}\nInput: {inp}" in p_clf and p_clf.endswith("Decide if the review is positive.\nClass label:")
    p_gen = prompts.instance_prompt([gen], "Reverse the word.", False)
    inp, out = gen.instances[0]
    assert f"Input: {inp}\nOutput: {out}" in p_gen and p_gen.endswith("Task: Reverse the word.\n")
    assert prompts.parse_classification_instances(" Positive\nInput: Great film.\nClass label: Negative\nInput: Dull.") == [
        ("Great film.", "Positive"), ("Dull.", "Negative")]
    assert prompts.parse_generation_instances("Input: abc\nOutput: cba\nInput: no\nOutput: on") == [
        ("abc", "cba"), ("no", "on")]
    assert prompts.parse_generation_instances("Output: A poem.") == [("", "A poem.")]
    assert prompts.parse_generation_instances("Output: sunrise\n\nOutput: sunrise again") == [("", "sunrise")]
    assert prompts.parse_generation_instances("just rambling text") == []


# --------------------------------------------------------------------------- Evol-Instruct


@pytest.mark.parametrize(("original", "evolved", "reason"), [
    ("Name a fruit.", "Name a red fruit that grows on trees in Europe.", None),
    ("Name a fruit.", "", "empty evolution"),
    ("Name a fruit.", "name a   FRUIT.", "no information gain"),
    ("Name a fruit that is red.", "Name a red fruit.", "no information gain"),      # no new content word
    ("Name a fruit.", "Rewritten Prompt: name a fruit grown in Spain.", "copies evolving prompt"),
    ("Name a fruit.", "#The Given Prompt# asks for a fruit from Spain.", "copies evolving prompt"),
    ("Name a fruit.", "Following the given prompt, name a Spanish fruit.", "copies evolving prompt"),
])
def test_evolution_elimination_instruction_side(original, evolved, reason):
    assert filters.evolution_rejection(original, evolved) == reason


@pytest.mark.parametrize(("response", "reason"), [
    ("Apples, pears and cherries grow well in Spain.", None),
    ("I'm sorry, but I cannot help with that.", "response is an apology"),
    ("Sorry " + "word " * 90, None),  # long answers that mention "sorry" are kept
    ("... !!! ?", "response only punctuation or stop words"),
    ("It is what it is.", "response only punctuation or stop words"),
])
def test_evolution_elimination_response_side(response, reason):
    assert filters.response_rejection(response) == reason


def test_evolution_prompts_name_their_method_and_the_instruction():
    for method in prompts.EVOLUTIONS:
        text = prompts.evolution_prompt(method, "Name a fruit.")
        assert "Name a fruit." in text
        assert text.rstrip().endswith("#Created Prompt#:" if method == "breadth" else "#Rewritten Prompt#:")
    assert "one more constraints" in prompts.evolution_prompt("add constraints", "x")
    assert "multiple-step reasoning" in prompts.evolution_prompt("increase reasoning", "x")


def test_evol_reads_any_mmtune_format(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}])
    assert read_instructions(path, "alpaca") == ["Add the numbers.\n\n2 and 3"]
    assert read_instructions(DEFAULT_SEEDS, "self-instruct-seeds")[0] == load_seed_tasks(DEFAULT_SEEDS)[0].instruction


# --------------------------------------------------------------------------- resume (scripted sampler)


class ScriptedSampler:
    """Deterministic in its seed, like a real sampler: new tasks, yes/no, and instances in the prompt's format."""

    WORDS = ("river cloud number story recipe planet letter garden poem market "
             "question engine winter colour song animal city bridge").split()

    def __init__(self):
        self.calls = 0

    def settings(self):
        return {"model": "scripted"}

    def complete(self, prompts_, *, chat, seed, max_new_tokens, stop=(), greedy=False):
        self.calls += 1
        out = []
        for i, p in enumerate(prompts_):
            rng = random.Random(seed * 1000 + i)
            words = lambda k: " ".join(rng.sample(self.WORDS, k))  # noqa: E731
            if p.startswith("Come up with a series"):
                out.append(Completion(" Describe the " + words(4) + ".\n10. Explain a " + words(5) + ".", False))
            elif p.startswith("Can the following"):
                out.append(Completion(rng.choice([" Yes", " No"]), False))
            elif p.endswith("Class label:"):
                out.append(Completion(f" {words(1)}\nInput: {words(3)}\nClass label: {words(1)}\nInput: {words(3)}", False))
            else:
                out.append(Completion(f"Input: {words(3)}\nOutput: {words(4)}", False))
        return out


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]


def test_self_instruct_resume_equals_uninterrupted_run(tmp_path):
    whole = self_instruct(tmp_path / "whole", ScriptedSampler(), SelfInstructOptions(count=1000, max_batches=4),
                          progress=False)
    part = self_instruct(tmp_path / "part", ScriptedSampler(), SelfInstructOptions(count=1000, max_batches=2),
                         progress=False)
    assert part.batches == 2 and 0 < part.rows < whole.rows
    # a crash after rows were appended but before the state was saved leaves rows the state does not count
    with open(tmp_path / "part" / "data.jsonl", "a") as fh:
        fh.write(json.dumps({"instruction": "half-written batch", "input": "", "output": "x"}) + "\n")
    resumed = self_instruct(tmp_path / "part", ScriptedSampler(), SelfInstructOptions(count=1000, max_batches=4),
                            progress=False)
    assert _rows(tmp_path / "part") == _rows(tmp_path / "whole")
    assert resumed.counters == whole.counters and resumed.batches == 4 and resumed.rows == whole.rows
    assert resumed.counters["instruction: candidates"] > part.counters["instruction: candidates"]  # counters continue
    tasks = {}
    for r in _rows(tmp_path / "part"):
        tasks.setdefault(r["task"], set()).add(r["instruction"])
    assert all(len(v) == 1 for v in tasks.values())
    assert len({next(iter(v)) for v in tasks.values()}) == len(tasks) == resumed.accepted  # no duplicate task
    report = json.loads((tmp_path / "part" / "report.json").read_text())
    assert report["counters"] == resumed.counters


def test_self_instruct_counts_add_up_and_stop_at_count(tmp_path):
    rep = self_instruct(tmp_path / "o", ScriptedSampler(), SelfInstructOptions(count=5, batch_size=2), progress=False)
    c = rep.counters
    assert rep.accepted >= 5 and rep.batches < 10
    rejected = sum(v for k, v in c.items() if k.startswith("instruction: ") and k not in
                   ("instruction: candidates", "instruction: passed"))
    assert c["instruction: candidates"] == rejected + c["instruction: passed"]
    assert c["instruction: passed"] == c["task: candidates"] == c["task: accepted"] + c.get("task: no valid instance", 0)
    assert rep.rows == c["instance: accepted"] == len(_rows(tmp_path / "o"))
    # classification tasks were prompted output-first (one-word label, then a 3-word input), the others
    # input-first (3-word input, 4-word output): the scripted sampler answers in the format it is prompted with
    rows = _rows(tmp_path / "o")
    assert {r["is_classification"] for r in rows} == {True, False}
    for r in rows:
        assert (len(r["input"].split()), len(r["output"].split())) == ((3, 1) if r["is_classification"] else (3, 4))


def test_resume_with_other_settings_is_refused(tmp_path):
    self_instruct(tmp_path / "o", ScriptedSampler(), SelfInstructOptions(count=2, max_batches=1), progress=False)
    with pytest.raises(ConfigError, match="different settings.*seed"):
        self_instruct(tmp_path / "o", ScriptedSampler(), SelfInstructOptions(count=2, seed=1), progress=False)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(DEFAULT_SEEDS.read_text())
    self_instruct(tmp_path / "s", ScriptedSampler(), SelfInstructOptions(seeds=seeds, count=2, max_batches=1),
                  progress=False)
    seeds.write_text(DEFAULT_SEEDS.read_text().replace("staying healthy", "staying well"))
    with pytest.raises(ConfigError, match="seeds_sha256"):  # same path, other content
        self_instruct(tmp_path / "s", ScriptedSampler(), SelfInstructOptions(seeds=seeds, count=2), progress=False)
    with pytest.raises(ConfigError, match="self-instruct run"):
        evol_instruct(tmp_path / "o", ScriptedSampler(), EvolInstructOptions(limit=2), progress=False)


# --------------------------------------------------------------------------- end to end, tiny random Llama


@pytest.fixture(scope="module")
def tiny_sampler(tiny_llama_dir):
    """The tiny Llama, forced to end its text at max_new_tokens so that its garbage is not all 'unfinished'."""
    from mmtune.datagen import load_sampler

    sampler = load_sampler(str(tiny_llama_dir))
    sampler.model.generation_config.forced_eos_token_id = sampler.tokenizer.eos_token_id
    return sampler


def _alpaca_conversations(path: Path):
    src = resolve_source(DatasetSpec(path=str(path), format="alpaca"))
    return [conv for _, conv in conversations_of(src, SourceReport(src.name), "error")]


def test_cut_at_stop():
    assert cut_at_stop("a b\n\nc", ("\n\n", "c")) == ("a b", True)
    assert cut_at_stop("abc", ("x",)) == ("abc", False)


def test_hf_sampler_is_seeded_and_batched(tiny_sampler):
    first = tiny_sampler.complete(["Tell me a story.", "Name a fruit."], chat=True, seed=3, max_new_tokens=8)
    again = tiny_sampler.complete(["Tell me a story.", "Name a fruit."], chat=True, seed=3, max_new_tokens=8)
    other = tiny_sampler.complete(["Tell me a story.", "Name a fruit."], chat=True, seed=4, max_new_tokens=8)
    assert first == again and first != other and len(first) == 2
    assert isinstance(tiny_sampler, HFSampler)


def test_evol_instruct_end_to_end_and_resume_after_interrupt(tmp_path, tiny_sampler):
    opts = EvolInstructOptions(limit=4, batch_size=2, rounds=2, max_new_tokens=12, response_max_new_tokens=12)
    whole = evol_instruct(tmp_path / "whole", tiny_sampler, opts, progress=False)
    c = whole.counters
    assert whole.batches == 4 and c["evolution: candidates"] == 8
    assert c["evolution: candidates"] == sum(v for k, v in c.items() if k.startswith("evolution: ")
                                             and k != "evolution: candidates")
    assert sum(v for k, v in c.items() if k.startswith("operation: ")) == 8
    rows = _rows(tmp_path / "whole")
    assert len(rows) == whole.rows == c["evolution: accepted"] > 0
    convs = _alpaca_conversations(tmp_path / "whole" / "data.jsonl")
    assert [(cv[0]["content"], cv[1]["content"]) for cv in convs] == [(r["instruction"], r["output"]) for r in rows]
    # round-2 rows evolve what round 1 produced for that slot (or the original when round 1 failed)
    first_round = {r["slot"]: r["instruction"] for r in rows if r["round"] == 1}
    originals = read_instructions(DEFAULT_SEEDS, "self-instruct-seeds")
    for r in rows:
        if r["round"] == 2:
            assert r["parent"] == first_round.get(r["slot"], originals[r["slot"]])

    class StopAfter:
        """Interrupts the run on its third model call, as Ctrl-C would."""

        def __init__(self, inner, calls):
            self.inner, self.left = inner, calls

        def settings(self):
            return self.inner.settings()

        def complete(self, *a, **kw):
            self.left -= 1
            if self.left < 0:
                raise KeyboardInterrupt
            return self.inner.complete(*a, **kw)

    with pytest.raises(KeyboardInterrupt):
        evol_instruct(tmp_path / "part", StopAfter(tiny_sampler, 3), opts, progress=False)
    state = json.loads((tmp_path / "part" / "state.json").read_text())
    assert state["batches_done"] == 1
    resumed = evol_instruct(tmp_path / "part", tiny_sampler, opts, progress=False)
    assert _rows(tmp_path / "part") == rows and resumed.counters == whole.counters


def test_self_instruct_end_to_end_on_tiny_model(tmp_path, tiny_sampler):
    opts = SelfInstructOptions(count=4, batch_size=4, max_batches=2, max_new_tokens=24, instance_max_new_tokens=24)
    rep = self_instruct(tmp_path / "o", tiny_sampler, opts, progress=False)
    c = rep.counters
    assert rep.batches == 2 and c["instruction: candidates"] >= 8  # at least one candidate per prompt
    rejected = sum(v for k, v in c.items() if k.startswith("instruction: ") and k not in
                   ("instruction: candidates", "instruction: passed"))
    assert c["instruction: candidates"] == rejected + c.get("instruction: passed", 0)
    assert c.get("instruction: passed", 0) == c.get("task: candidates", 0) == (
        c.get("task: accepted", 0) + c.get("task: no valid instance", 0))
    assert len(_alpaca_conversations(tmp_path / "o" / "data.jsonl")) == rep.rows == c.get("instance: accepted", 0)
    assert json.loads((tmp_path / "o" / "report.json").read_text())["counters"] == c


def test_cli_generate(tmp_path, tiny_llama_dir, capsys):
    from mmtune.cli import main

    out = tmp_path / "cli"
    rc = main(["data", "generate", "evol-instruct", str(out), "--model", str(tiny_llama_dir), "--limit", "2",
               "--batch-size", "2", "--seed", "1", "--max-new-tokens", "16", "--output-max-new-tokens", "16"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "evol-instruct:" in printed and "evolution: 2 candidates" in printed
    assert json.loads((out / "state.json").read_text())["settings"]["seed"] == 1
    rc = main(["data", "generate", "self-instruct", str(out), "--model", str(tiny_llama_dir), "--count", "1",
               "--max-new-tokens", "16"])
    assert rc == 2 and "evol-instruct run" in capsys.readouterr().err
