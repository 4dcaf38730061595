"""task: hint end to end on a tiny random Llama: learning, per-task losses, packing, exact resume, the adapter that
``mmtune hint adapt`` writes (equal to the hypernetwork's outputs), a named instruction encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mmtune
from mmtune.cli import main
from tests.e2e.test_train_e2e import losses, resumed_losses

WORDS = "red green blue cyan pink gold gray teal".split()
TASKS = {"first": ("Answer with the first word.", lambda a, b: a),
         "second": ("Answer with the second word.", lambda a, b: b),
         "both": ("Repeat both words in reverse order.", lambda a, b: f"{b} {a}")}


def sni_folder(root: Path) -> Path:
    folder = root / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    pairs = [(a, b) for a in WORDS for b in WORDS if a != b][:24]
    for name, (definition, answer) in TASKS.items():
        instances = [{"id": f"{name}-{i}", "input": f"{a} {b}", "output": [answer(a, b)]} for i, (a, b) in enumerate(pairs)]
        (folder / f"{name}.json").write_text(json.dumps({"Definition": [definition], "Positive Examples": [],
                                                         "Instances": instances}))
    return folder


@pytest.fixture()
def hint_recipe(tiny_recipe, tmp_path, one_torch_thread):
    folder = sni_folder(tmp_path)

    def make(**sections):
        recipe = tiny_recipe(folder, fmt="sni", **sections)
        recipe["task"] = "hint"
        recipe["data"].update(num_workers=0, max_length=128)
        recipe.setdefault("hint", {}).update(hidden_size=32, heads=2, blocks=1, rank=4)
        return recipe

    return make


def adapt_and_compare(run: Path, out: Path, instruction: str) -> dict:
    """``mmtune hint adapt``, the adapter loaded by peft alone on its base: its logits equal the hypernetwork's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mmtune.models.hint.adapt import instructed, instruction_of, open_hint_run

    assert main(["hint", "adapt", str(run), "--instruction", instruction, "--out", str(out)]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    exported = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"]),
                                         str(out)).eval()
    opened = open_hint_run(run)
    ids = opened.tokenizer("Input: gold teal", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        with instructed(opened, instruction_of(instruction)) as model:
            hyper = model(input_ids=ids).logits
        plain = opened.llm(input_ids=ids).logits
        peft_logits = exported(input_ids=ids).logits
    assert torch.allclose(peft_logits, hyper, atol=1e-5), (peft_logits - hyper).abs().max()
    assert (hyper - plain).abs().max() > 1e-3  # the generated adapter is in there
    from mmtune.models.run_outputs import load_for_inference

    chat_model, _ = load_for_inference(str(out))  # what mmtune chat / eval / serve --model ADAPTER_DIR open
    with torch.no_grad():
        assert torch.allclose(chat_model(input_ids=ids).logits, hyper, atol=1e-5)
    return config


def test_hint_learns_logs_each_task_and_its_adapter_equals_the_hypernetwork(hint_recipe, tmp_path, monkeypatch):
    recipe = hint_recipe(method={"name": "full"}, train={"max_steps": 24, "micro_batch_size": 4, "lr": 1e-2,
                                                         "warmup_steps": 2})
    run = mmtune.train(recipe).run_dir
    seen = losses(run)
    first, last = seen[1], sum(seen[s] for s in range(20, 25)) / 5
    assert last < first - 2.0, (first, last)
    logged = {key for line in (run / "metrics.jsonl").read_text().splitlines() for key in json.loads(line)}
    assert {"task_loss/first", "task_loss/second", "task_loss/both"} <= logged
    final = run / "final"
    assert (final / "hint" / "hypernetwork.safetensors").is_file() and (final / "model.safetensors").is_file()
    assert json.loads((final / "mmtune.json").read_text())["family"] == "hint"
    monkeypatch.chdir(tmp_path)  # run and adapter given relative to here: the adapter still names its base absolutely
    config = adapt_and_compare(Path(run.name), Path("adapter"), "Answer with the second word.")
    assert config["base_model_name_or_path"] == str(final.resolve())  # fully tuned: its base is final/ itself
    assert config["r"] == 4 and not config["rank_pattern"]


def test_an_llm_lora_and_the_generated_lora_are_written_as_one_adapter(hint_recipe, tmp_path, tiny_llama_dir):
    recipe = hint_recipe(method={"name": "lora", "lora": {"rank": 4, "dropout": 0.0}},
                         train={"max_steps": 3, "lr": 1e-2})
    run = mmtune.train(recipe).run_dir
    config = adapt_and_compare(run, tmp_path / "adapter", "Repeat both words in reverse order.")
    assert config["peft_type"] == "LORA" and Path(config["base_model_name_or_path"]) == tiny_llama_dir
    # rank 4 (the LLM's, every Linear) + rank 4 (generated, q/v/down_proj) where both are: one LoRA of rank 8
    assert config["r"] == 8 and set(config["rank_pattern"].values()) == {4}


def test_a_generated_prefix_trains_and_is_written_as_a_peft_prefix_adapter(hint_recipe, tmp_path):
    recipe = hint_recipe(method={"name": "lora", "lora": {"rank": 4, "dropout": 0.0}}, hint={"prefix_tokens": 3},
                         train={"max_steps": 3, "lr": 1e-2})
    run = mmtune.train(recipe).run_dir
    assert all(loss == loss for loss in losses(run).values())
    config = adapt_and_compare(run, tmp_path / "adapter", "Answer with the first word.")
    # every LoRA (the LLM's and the generated) merged into a base of its own, the prefix as peft prefix tuning
    assert config["peft_type"] == "PREFIX_TUNING" and config["num_virtual_tokens"] == 3
    assert Path(config["base_model_name_or_path"]) == tmp_path / "adapter" / "base"


def test_packed_rows_mixing_tasks_give_the_unpacked_loss(hint_recipe, tmp_path):
    """Every sample in one batch, twice: step 2 runs the adapters generated after one update, so equal losses
    there mean equal gradients at step 1 and exact per-token adapters in rows that mix tasks."""
    def run(packing: bool) -> dict:
        recipe = hint_recipe(output_dir=str(tmp_path / str(packing)), method={"name": "frozen"},
                             train={"max_steps": 2, "micro_batch_size": 128, "lr": 1e-2, "warmup_steps": 0})
        recipe["data"].update(packing=packing, shuffle=False)
        return json.loads((mmtune.train(recipe).run_dir / "metrics.jsonl").read_text().splitlines()[1])

    packed, unpacked = run(True), run(False)
    assert packed["step"] == 2
    for key in ("loss", "task_loss/first", "task_loss/second", "task_loss/both"):
        assert packed[key] == pytest.approx(unpacked[key], rel=1e-5), key


def test_hint_resumes_exactly(hint_recipe, tmp_path, monkeypatch):
    def recipe(out):
        return hint_recipe(output_dir=str(out), method={"name": "lora", "lora": {"rank": 4, "dropout": 0.1}},
                           train={"max_steps": 8, "save_every": 3, "keep_checkpoints": None, "lr": 3e-3})

    reference = losses(mmtune.train(recipe(tmp_path / "ref")).run_dir)
    resumed = resumed_losses(recipe(tmp_path / "cut"), monkeypatch, 5, KeyboardInterrupt)
    for step in range(6, 9):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6), step


def test_a_named_encoder_reads_the_instruction_with_its_own_tokenizer(hint_recipe, tmp_path, tokenizer):
    """Any transformers encoder (here a tiny random BERT) can read the instructions; trained with LoRA, it is
    merged into final/ and adapt reads the instruction through it."""
    from transformers import BertConfig, BertModel

    encoder_dir = tmp_path / "tiny-bert"
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, pad_token_id=tokenizer.pad_token_id)).save_pretrained(encoder_dir)
    tokenizer.save_pretrained(encoder_dir)
    recipe = hint_recipe(method={"name": "frozen"}, train={"max_steps": 3, "lr": 1e-2},
                         hint={"encoder": {"name": str(encoder_dir), "trainable": "lora"}})
    run = mmtune.train(recipe).run_dir
    summary = json.loads((run / "summary.json").read_text())
    trained = {row["component"]: row for row in summary["trainable"]} if isinstance(summary["trainable"], list) \
        else summary["trainable"]
    assert "hint.encoder" in json.dumps(trained)
    meta = json.loads((run / "final" / "hint" / "hint.json").read_text())
    assert meta["encoder_saved"] and meta["hint"]["encoder"]["name"] == str(encoder_dir)
    out = tmp_path / "adapter"
    assert main(["hint", "adapt", str(run), "--instruction", "Answer with the first word.", "--out", str(out)]) == 0
    assert (out / "adapter_model.safetensors").is_file()


def test_the_report_answers_each_validation_sample_with_its_tasks_adapters(hint_recipe, tmp_path):
    from mmtune.reporting import ReportOptions, write_report
    from mmtune.reporting.samples import validation_samples

    recipe = hint_recipe(method={"name": "frozen"}, train={"max_steps": 2, "lr": 1e-2})
    recipe["data"]["val_fraction"] = 0.25
    run = mmtune.train(recipe).run_dir
    section = validation_samples(run, ReportOptions(samples=3, max_new_tokens=3))
    assert len(section.samples) == 3 and not section.note
    assert {s.where.split(",")[0].rsplit("/", 1)[-1] for s in section.samples} == set(TASKS)  # every task shows
    assert all("Input: " in s.prompt and "Answer with" not in s.prompt for s in section.samples)  # not in context
    page = write_report(run, options=ReportOptions(samples=3, max_new_tokens=3)).read_text()
    assert all(s.where in page for s in section.samples)


def test_bottleneck_adapters_train_and_adapt_says_in_one_line_that_peft_cannot_hold_them(hint_recipe, tmp_path, capsys):
    run = mmtune.train(hint_recipe(method={"name": "frozen"}, hint={"adapter": "bottleneck"},
                                   train={"max_steps": 2, "lr": 1e-2})).run_dir
    assert all(loss == loss for loss in losses(run).values())
    capsys.readouterr()  # the training log
    assert main(["hint", "adapt", str(run), "--instruction", "Answer with the first word.",
                 "--out", str(tmp_path / "adapter")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "generates bottleneck adapters, which no peft method holds" in err[0]


def test_activation_checkpointing_recomputes_with_the_same_adapters(hint_recipe, tmp_path):
    """The generated adapters stay set after the forward, so the recomputation inside backward sees them: the
    same losses with and without checkpointing (step 2 depends on step 1's gradients)."""
    def run(checkpointing: bool) -> dict[int, float]:
        recipe = hint_recipe(output_dir=str(tmp_path / str(checkpointing)), method={"name": "lora", "lora": {"dropout": 0.0}},
                             train={"max_steps": 3, "lr": 1e-2, "gradient_checkpointing": checkpointing})
        recipe["data"]["shuffle"] = False
        return losses(mmtune.train(recipe).run_dir)

    plain, checkpointed = run(False), run(True)
    for step in (1, 2, 3):
        assert checkpointed[step] == pytest.approx(plain[step], rel=1e-5), step
