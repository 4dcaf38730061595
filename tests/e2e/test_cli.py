"""The ``mmtune`` command, run in a subprocess as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def mmtune_cmd() -> list[str]:
    exe = shutil.which("mmtune", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "mmtune.cli"]


def run(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([*mmtune_cmd(), *args], capture_output=True, text=True, cwd=cwd, input=stdin, env=env, timeout=600)


@pytest.fixture()
def trained_run(tiny_recipe, tmp_path):
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(tiny_recipe(train={"max_steps": 100})))
    proc = run("train", str(recipe_path), "train.max_steps=3", "train.save_every=2", f"output_dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / "run", proc


def test_train_writes_the_public_run_layout(trained_run):
    run_dir, proc = trained_run
    assert "trained 3 steps" in proc.stdout
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["max_steps"] == 3  # the override, resolved
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all({"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= set(r) for r in records)
    assert (run_dir / "checkpoints" / "step-2" / "trainable.safetensors").is_file()
    assert (run_dir / "final" / "adapter_model.safetensors").is_file()
    assert (run_dir / "tensorboard").is_dir() is False  # the recipe turned TensorBoard off


def test_export_then_chat_one_shot_and_interactive(trained_run, tmp_path):
    run_dir, _ = trained_run
    proc = run("export", str(run_dir), str(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    one_shot = run("chat", "--model", str(tmp_path / "hf"), "--max-new-tokens", "8", "Hello there")
    assert one_shot.returncode == 0, one_shot.stderr[-3000:]
    # The streamed reply is plain transformers greedy decoding with the saved chat template.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    ids = tok.apply_chat_template([{"role": "user", "content": "Hello there"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    assert one_shot.stdout.strip() == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    interactive = run("chat", "--model", str(run_dir), "--max-new-tokens", "3", stdin="first\nsecond\n")
    assert interactive.returncode == 0, interactive.stderr[-3000:]
    assert interactive.stdout.count("\n") >= 2  # a reply per prompt line


def test_data_inspect_marks_trained_spans_and_prints_statistics(tiny_recipe, tmp_path):
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(tiny_recipe(data={"max_length": 64})))
    failed = run("data", "inspect", str(recipe_path))
    # SmolLM2's default system prompt alone is ~30 tokens: some samples keep no answer token at 64.
    assert failed.returncode == 2 and "no trained token left after truncation to max_length=64" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    proc = run("data", "inspect", str(recipe_path), "data.on_bad_sample=skip", "--samples", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.count("== sample") == 2
    assert "p95" in out and "max_length 64" in out
    truncated = int(out.split("truncated ")[1].split()[0])
    assert truncated > 0  # many shipped samples exceed 64 tokens
    assert "no trained token after truncation" in out  # the skipped ones are counted by reason
    full = run("data", "inspect", str(recipe_path), "data.max_length=512", "--samples", "3")
    assert full.returncode == 0, full.stderr[-3000:]
    # answers and the end-of-turn token closing them are marked as trained; prompts are not
    assert full.stdout.count("<|im_end|>⟧") >= 3
    assert "⟦<|im_start|>" not in full.stdout and "truncated 0" in full.stdout


def test_unknown_command_line_key_is_one_clear_line(tiny_recipe, tmp_path):
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(tiny_recipe()))
    proc = run("train", str(recipe_path), "train.lr_rate=1")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "unknown key 'train.lr_rate'" in proc.stderr and "train.lr" in proc.stderr


def test_the_published_instructblip_recipe_without_weights_names_what_it_tried_to_load(tmp_path):
    """configs/instructblip_vicuna7b.yaml validates, and on a machine without Vicuna stops in one line."""
    recipe = Path(__file__).resolve().parents[2] / "configs" / "instructblip_vicuna7b.yaml"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([*mmtune_cmd(), "train", str(recipe), f"output_dir={tmp_path / 'run'}"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "lmsys/vicuna-7b-v1.1" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("name", ["video_llama_pretrain", "video_llama"])
def test_the_published_video_llama_recipes_without_weights_name_what_they_tried_to_load(name, tmp_path,
                                                                                          tiny_llama_dir):
    """Both stages validate; without Llama-2 they stop naming it, and with an LLM they stop naming the next part
    missing: BLIP-2's directory (stage 1), stage 1's run (stage 2), in one line each."""
    recipe = Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for overrides, named in (([], "meta-llama/Llama-2-7b-chat-hf"),
                             ([f"model.name={tiny_llama_dir}", "model.dtype=float32"],
                              "checkpoints/blip2-flan-t5-xxl" if name == "video_llama_pretrain" else
                              "runs/video-llama-pretrain")):
        proc = subprocess.run([*mmtune_cmd(), "train", str(recipe), f"output_dir={tmp_path / 'run'}", *overrides],
                              capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert named in proc.stderr.strip().splitlines()[-1]
