"""HINT's parts without training: generated shapes, per-token insertion, sni task files, the recipe, the family."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmtune.config.schema import HintConfig, HintRecipe
from mmtune.data.formats import Mapping
from mmtune.data.hint_batches import HintCollate
from mmtune.data.packing import Collator
from mmtune.data.sni import instruction_text, read_task, sni_conversations, task_instructions
from mmtune.errors import ConfigError, DataError, ModelError
from mmtune.models.hint.hypernetwork import Hypernetwork

SNI = Mapping.for_format("sni", {}, {})


@pytest.fixture()
def tiny_llm(tiny_llama_dir, one_torch_thread):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()


def hypernetwork(llm, **hint) -> Hypernetwork:
    """A hypernetwork whose B heads are random (they start at zero), so generated adapters change outputs."""
    torch.manual_seed(0)
    net = Hypernetwork(llm, HintConfig(hidden_size=32, heads=2, blocks=1, rank=4, **hint)).eval()
    for head in net.generator.head_B.values():
        torch.nn.init.normal_(head.weight, std=2.0)
    return net


def test_generated_weights_have_the_shapes_of_the_llms_modules(tiny_llm):
    net = hypernetwork(tiny_llm, target_modules=["q_proj", "v_proj", "down_proj"])
    modules = dict(tiny_llm.named_modules())
    n_layers = tiny_llm.config.num_hidden_layers
    assert len(net.targets) == 3 * n_layers
    assert {t.layer for t in net.targets} == set(range(n_layers))
    ids = torch.randint(0, 100, (3, 7))
    adapters = net(ids, torch.ones_like(ids, dtype=torch.bool))
    for j, target in enumerate(net.targets):
        linear = modules[target.name]
        assert adapters.A[j].shape == (3, 4, linear.in_features)
        assert adapters.B[j].shape == (3, linear.out_features, 4)
    # v_proj is narrower than q_proj in a grouped-query model: the shapes follow each module
    kinds = {t.kind: (t.in_features, t.out_features) for t in net.targets}
    assert kinds["v_proj"][1] == tiny_llm.config.num_key_value_heads * tiny_llm.config.head_dim
    assert kinds["down_proj"] == (tiny_llm.config.intermediate_size, tiny_llm.config.hidden_size)


def test_a_new_generator_changes_nothing_and_an_unknown_module_is_one_line(tiny_llm):
    net = Hypernetwork(tiny_llm, HintConfig(hidden_size=32, heads=2, blocks=1, rank=4))
    ids = torch.randint(0, 100, (1, 9))
    with torch.no_grad():
        plain = tiny_llm(input_ids=ids).logits
        with net.slots.inserted(net(ids, torch.ones_like(ids, dtype=torch.bool))):
            inserted = tiny_llm(input_ids=ids).logits
    assert torch.equal(plain, inserted)  # B starts at zero, as LoRA's does
    with pytest.raises(ConfigError, match=r"hint.target_modules: no Linear layer named \['qkv'\]"):
        Hypernetwork(tiny_llm, HintConfig(hidden_size=32, heads=2, target_modules=["q_proj", "qkv"]))


def test_instructions_that_differ_give_different_adapters_and_outputs(tiny_llm):
    net = hypernetwork(tiny_llm)
    ids = torch.randint(0, 100, (2, 6))
    adapters = net(ids, torch.ones_like(ids, dtype=torch.bool))
    x = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        outs = []
        for k in range(2):
            with net.slots.inserted(adapters.select(k)):
                outs.append(tiny_llm(input_ids=x).logits)
    assert (outs[0] - outs[1]).abs().max() > 1e-3


def _packed_two_task_batch(tokenizer, net_pad: int):
    """Samples of tasks 0 and 1 packed into rows (a row holds both), and the per-task instructions."""

    class Samples:
        def __init__(self):
            texts = [("red green blue", 0), ("one two", 1), ("gold teal", 0), ("five six seven", 1)]
            self.items = [(np.array(tokenizer(t)["input_ids"]), np.ones(len(tokenizer(t)["input_ids"]), bool), k)
                          for t, k in texts]

        def __getitem__(self, i):
            return self.items[i][:2]

        def task(self, i):
            return self.items[i][2]

    samples = Samples()
    instructions = [np.array(tokenizer("Answer with the first word.")["input_ids"]),
                    np.array(tokenizer("Sort the words backwards, then shout them.")["input_ids"])]
    collate = HintCollate(Collator(samples, pad_id=0, num_tasks=2), instructions, net_pad)
    return samples, collate


def test_two_tasks_in_one_packed_row_each_get_their_own_adapter(tiny_llm, tokenizer):
    """A packed row mixing two tasks gives each sample exactly the logits of that sample run alone with its task's
    adapter: no cross-talk between tasks or samples."""
    net = hypernetwork(tiny_llm)
    samples, collate = _packed_two_task_batch(tokenizer, 0)
    batch = collate([[0, 1], [2, 3]])
    assert batch.tasks.tolist() == [0, 1] and batch.instruction_ids.shape[0] == 2
    assert set(batch.token_slot[0].tolist()) == {-1, 0, 1}  # one row, both tasks (and padding)
    with torch.no_grad():
        adapters = net(batch.instruction_ids, batch.instruction_mask)
        with net.slots.inserted(adapters, batch.token_slot):
            packed = tiny_llm(input_ids=batch.lm.input_ids, attention_mask=batch.lm.attention_mask,
                              position_ids=batch.lm.position_ids).logits
        for row, members in enumerate([[0, 1], [2, 3]]):
            start = 0
            for i in members:
                ids, _ = samples[i]
                with net.slots.inserted(adapters.select(samples.task(i))):
                    alone = tiny_llm(input_ids=torch.as_tensor(ids)[None]).logits[0]
                got = packed[row, start : start + len(ids)]
                assert torch.allclose(got, alone, atol=1e-5), (row, i, (got - alone).abs().max())
                start += len(ids)
        with net.slots.inserted(adapters.select(1)):  # the other task's adapter really differs
            wrong = tiny_llm(input_ids=torch.as_tensor(samples[0][0])[None]).logits[0]
    assert (wrong - packed[0, : len(samples[0][0])]).abs().max() > 1e-3


def test_bottleneck_adapters_apply_relu_between_a_and_b(tiny_llm):
    net = hypernetwork(tiny_llm, adapter="bottleneck")
    ids = torch.randint(0, 100, (1, 5))
    adapters = net(ids, torch.ones_like(ids, dtype=torch.bool))
    module = dict(tiny_llm.named_modules())[net.targets[0].name]
    x = torch.randn(1, 6, module.in_features)
    with torch.no_grad():
        plain = module(x)
        with net.slots.inserted(adapters):
            out = module(x)
        A, B = adapters.A[0][0], adapters.B[0][0]
        expected = plain + torch.relu(x @ A.T) @ B.T * (net.cfg.alpha / net.cfg.rank)
        linear = plain + (x @ A.T) @ B.T * (net.cfg.alpha / net.cfg.rank)
    assert torch.allclose(out, expected, atol=1e-4)
    assert (out - linear).abs().max() > 1e-2  # the ReLU matters: not LoRA


# ----------------------------------------------------------------------------------- sni task files


def _task_file(folder: Path, name: str, definition, instances, examples=()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"Definition": definition,
                                "Positive Examples": [{"input": i, "output": o, "explanation": ""} for i, o in examples],
                                "Instances": instances}))
    return path


def test_sni_task_files_become_tagged_conversations(tmp_path):
    folder = tmp_path / "tasks"
    _task_file(folder, "first", ["Answer with the first word."],
               [{"id": "a", "input": "red green", "output": ["red", "RED"]}], [("x y", "x")])
    _task_file(folder, "second", "Answer with the second word.", [{"id": "b", "input": "red green", "output": "green"}])
    task = read_task(folder / "first.json", SNI)
    assert instruction_text(task) == "Definition: Answer with the first word."
    assert instruction_text(task, 1) == ("Definition: Answer with the first word.\n\nPositive Example 1 -\n"
                                         "Input: x y\nOutput: x")

    def bad(*args):
        raise AssertionError(args)

    plain = list(sni_conversations(folder, SNI, in_prompt=False, examples=0, bad=bad))
    prompted = list(sni_conversations(folder, SNI, in_prompt=True, examples=1, bad=bad))
    assert [c[0]["content"] for _, c in plain] == ["Input: red green", "Input: red green"]
    assert prompted[0][1][0]["content"].startswith("Definition: Answer with the first word.\n\nPositive Example 1")
    assert prompted[0][1][0]["content"].endswith("\n\nInput: red green")
    assert plain[0][1][1] == {"role": "assistant", "content": "red", "references": ["red", "RED"]}


def test_sni_problems_are_one_line_naming_the_file_and_instance(tmp_path):
    folder = tmp_path / "tasks"
    broken = folder / "broken.json"
    folder.mkdir()
    broken.write_text('{"Definition": ["x"], "Instances": [')
    with pytest.raises(DataError, match=r"broken\.json:1: malformed JSON"):
        read_task(broken, SNI)
    _task_file(folder, "nodef", [], [])
    with pytest.raises(DataError, match=r"nodef\.json: field 'Definition' must be a non-empty string"):
        read_task(folder / "nodef.json", SNI)
    path = _task_file(tmp_path / "ok", "t", "Copy.", [{"input": "a", "output": ["a"]}, {"input": "b", "output": []}])
    skipped = []
    got = list(sni_conversations(path, SNI, in_prompt=True, examples=0, bad=lambda *a: skipped.append(a)))
    assert len(got) == 1
    assert skipped == [(f"{path}: instance 2", "missing field", "field 'output': the instance needs a non-empty output")]
    with pytest.raises(DataError, match="sni dataset folder with no task file"):
        list(sni_conversations(tmp_path / "ok" / "..", SNI, in_prompt=True, examples=0, bad=None))


def test_task_instructions_read_each_task_and_refuse_other_formats(tmp_path):
    from mmtune.config.schema import DatasetSpec

    folder = tmp_path / "tasks"
    _task_file(folder, "first", "Answer with the first word.", [{"input": "a b", "output": ["a"]}], [("x y", "x")])
    _task_file(folder, "second", "Answer with the second word.", [{"input": "a b", "output": ["b"]}])
    got = task_instructions([DatasetSpec(path=str(folder), format="sni", instruction_examples=1)])
    assert got == {"first": "Definition: Answer with the first word.\n\nPositive Example 1 -\nInput: x y\nOutput: x",
                   "second": "Definition: Answer with the second word."}
    other = tmp_path / "rows.jsonl"
    other.write_text('{"instruction": "hi", "output": "ho"}\n')
    with pytest.raises(DataError, match="has format 'alpaca'; task hint reads each task's instruction"):
        task_instructions([DatasetSpec(path=str(other), format="alpaca")])


def test_a_folder_shares_its_weight_among_its_task_files_and_a_hub_sni_set_is_one_line(tmp_path):
    from mmtune.config.schema import DatasetSpec
    from mmtune.data.sni import task_sources
    from mmtune.data.sources import resolve_source

    parts = task_sources(resolve_source(DatasetSpec(card="mmtune-hint-tasks", weight=3.0)))
    assert len(parts) == 30 and sum(p.weight for p in parts) == pytest.approx(3.0)
    assert {p.name.split("/")[-1] for p in parts} >= {"reverse_words", "count_vowels"}
    with pytest.raises(ConfigError, match="format sni reads local task files"):
        task_sources(resolve_source(DatasetSpec(hub="org/sni", format="sni")))


def test_the_shipped_demo_cards_read_as_30_and_10_tasks():
    from mmtune.config.schema import DatasetSpec

    train = task_instructions([DatasetSpec(card="mmtune-hint-tasks")])
    assert len(train) == 30 and train["reverse_words"] == "Definition: Reverse the order of the words."
    from mmtune.data.sources import resolve_source

    held = resolve_source(DatasetSpec(card="mmtune-hint-tasks-heldout"))
    assert held.settings.held_out and held.format == "sni"


# ----------------------------------------------------------------------------------- recipe and family


def test_generated_prefixes_follow_the_llms_dtype_and_encoding_keeps_the_adapters_in_place(tiny_llm, tokenizer):
    """bf16 weights: the float32 generator's prefix is cast (else attention fails on mixed dtypes). Generating
    adapters (the LLM's own pass) inside a block that has adapters set leaves them set."""
    from mmtune.models.hint.prefix import GeneratedPrefix
    from mmtune.models.virtual_tokens import VirtualTokenLM

    net = hypernetwork(tiny_llm, prefix_tokens=2)
    tiny_llm.to(torch.bfloat16)
    samples, collate = _packed_two_task_batch(tokenizer, 0)
    batch = collate([[0, 1], [2, 3]])
    with torch.no_grad():
        adapters = net(batch.instruction_ids, batch.instruction_mask)
        net.slots.set(adapters, batch.token_slot)
        inputs = net.place_prefix({"input_ids": batch.lm.input_ids, "attention_mask": batch.lm.attention_mask,
                                   "position_ids": batch.lm.position_ids})
        assert tiny_llm(**inputs).logits.dtype == torch.bfloat16
        net(batch.instruction_ids, batch.instruction_mask)  # an own pass while adapters are set
        assert net.slots._weights is adapters and net.slots._token_task is batch.token_slot
        net.slots.clear()
        one = adapters.select(0)
        with net.slots.inserted(one):
            out = VirtualTokenLM(GeneratedPrefix(tiny_llm, one.prefix))(input_ids=batch.lm.input_ids[:1, :4])
    assert out.logits.dtype == torch.bfloat16


def test_hint_recipe_refuses_what_it_cannot_train():
    assert HintRecipe(task="hint").hint.target_modules == ["q_proj", "v_proj", "down_proj"]
    with pytest.raises(ValueError, match="task hint trains the LLM frozen, full or lora, not 'qlora'"):
        HintRecipe(task="hint", method={"name": "qlora"})
    with pytest.raises(ValueError, match="hint.heads: 3 does not divide hint.hidden_size 32"):
        HintRecipe(task="hint", hint={"hidden_size": 32, "heads": 3})
    with pytest.raises(ValueError, match="data.replay: not with task hint"):
        HintRecipe(task="hint", data={"replay": [{"card": "mmtune-hint-tasks"}], "replay_fraction": 0.1})
    with pytest.raises(ValueError, match="transformers drops under train.gradient_checkpointing"):
        HintRecipe(task="hint", hint={"prefix_tokens": 4}, train={"gradient_checkpointing": True})
    with pytest.raises(ValueError, match="model.media: task hint tunes a text LLM"):
        HintRecipe(task="hint", model={"media": {"image": {"encoder": {"kind": "hf", "name": "x"}}}})


def test_fusion_sets_the_instruction_placement_and_a_contradiction_is_refused():
    from mmtune.data.sni import with_instruction_placement

    recipe = HintRecipe(task="hint", hint={"fusion": True}, data={"datasets": [{"card": "mmtune-hint-tasks"}]})
    assert with_instruction_placement(recipe.data, recipe.hint.fusion).datasets[0].instruction_in_prompt is True
    recipe = HintRecipe(task="hint", data={"datasets": [{"card": "mmtune-hint-tasks", "instruction_in_prompt": True}]})
    with pytest.raises(ConfigError, match=r"data.datasets\[0\].instruction_in_prompt: True contradicts hint.fusion: False"):
        with_instruction_placement(recipe.data, recipe.hint.fusion)


def test_a_hint_model_is_not_opened_as_a_chat_model(tmp_path):
    from mmtune.models.run_outputs import load_for_inference

    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    (final / "mmtune.json").write_text(json.dumps({"family": "hint", "base_model": {"name": "x"}, "method": "frozen"}))
    with pytest.raises(ModelError, match=r"mmtune hint adapt .* --instruction"):
        load_for_inference(str(tmp_path / "run"))


def test_generated_prefixes_are_per_task_in_packed_rows_and_decode_as_peft_places_them(tiny_llm, tokenizer):
    """Prefix + LoRA: each packed sample computes what it computes alone through VirtualTokenLM (peft's
    placement of one sequence's prefix), with its own task's prefix and adapters."""
    from mmtune.models.hint.prefix import GeneratedPrefix
    from mmtune.models.virtual_tokens import VirtualTokenLM

    net = hypernetwork(tiny_llm, prefix_tokens=3)
    cfg = tiny_llm.config
    samples, collate = _packed_two_task_batch(tokenizer, 0)
    batch = collate([[0, 1], [2, 3]])
    with torch.no_grad():
        adapters = net(batch.instruction_ids, batch.instruction_mask)
        assert adapters.prefix.shape == (2, cfg.num_hidden_layers, 2, cfg.num_key_value_heads, 3, cfg.head_dim)
        net.slots.set(adapters, batch.token_slot)
        inputs = net.place_prefix({"input_ids": batch.lm.input_ids, "attention_mask": batch.lm.attention_mask,
                                   "position_ids": batch.lm.position_ids})
        packed = tiny_llm(**inputs).logits
        net.slots.clear()
        for row, members in enumerate([[0, 1], [2, 3]]):
            start = 0
            for i in members:
                ids, _ = samples[i]
                own = adapters.select(samples.task(i))
                with net.slots.inserted(own):
                    alone = VirtualTokenLM(GeneratedPrefix(tiny_llm, own.prefix))(input_ids=torch.as_tensor(ids)[None])
                got = packed[row, start : start + len(ids)]
                assert torch.allclose(got, alone.logits[0], atol=1e-5), (row, i, (got - alone.logits[0]).abs().max())
                start += len(ids)
        with net.slots.inserted(adapters.select(0)):
            plain = tiny_llm(input_ids=torch.as_tensor(samples[0][0])[None]).logits[0]
    assert (plain - packed[0, : len(samples[0][0])]).abs().max() > 1e-4  # the prefix changes the outputs


def test_adapt_reads_examples_and_says_what_it_cannot_do_in_one_line(tmp_path, capsys):
    from mmtune.cli import main
    from mmtune.models.hint.adapt import instruction_of, read_examples

    jsonl = tmp_path / "examples.jsonl"
    jsonl.write_text('{"input": "3 1 2", "output": "3 2 1"}\n{"input": "5 9", "output": ["9 5"]}\n')
    assert read_examples(jsonl) == (("3 1 2", "3 2 1"), ("5 9", "9 5"))
    task_file = _task_file(tmp_path / "t", "sort", "Sort.", [], [("b a", "a b")])
    assert read_examples(task_file) == (("b a", "a b"),)
    assert instruction_of(" Sort. ", (("b a", "a b"),)) == "Definition: Sort.\n\nPositive Example 1 -\nInput: b a\nOutput: a b"
    bad = tmp_path / "bad.json"
    bad.write_text('[{"input": "x"}]')
    with pytest.raises(ConfigError, match=r"--examples: .*bad.json: example 1 needs string 'input' and 'output'"):
        read_examples(bad)
    plain_run = tmp_path / "run" / "final"
    plain_run.mkdir(parents=True)
    (plain_run / "mmtune.json").write_text(json.dumps({"family": "causal_lm", "base_model": {"name": "x"}, "method": "lora"}))
    assert main(["hint", "adapt", str(tmp_path / "run"), "--instruction", "Sort.", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a hint run's model (no hint/hint.json)" in err[0]


def test_data_inspect_shows_a_hint_recipes_prompts_without_the_instruction(tiny_llama_dir, tmp_path):
    from mmtune.config.loader import validate_recipe
    from mmtune.data.inspect import inspect_data

    def shown(fusion: bool) -> str:
        return inspect_data(validate_recipe({"task": "hint", "model": {"name": str(tiny_llama_dir)}, "hint": {"fusion": fusion},
                                             "data": {"datasets": [{"card": "mmtune-hint-tasks"}],
                                                      "cache_dir": str(tmp_path)}}), samples=2)

    plain, fused = shown(False), shown(True)
    assert "== 30 tasks; each instruction is read by the hypernetwork, not in the prompt" in plain
    assert "Input: " in plain and "Definition: " not in plain
    assert "in the prompt too (hint.fusion)" in fused and "Definition: " in fused
