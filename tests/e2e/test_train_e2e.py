"""End to end on a tiny random Llama: learning, accumulation, resume, crash safety, export."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import mmtune
from mmtune.errors import TrainingError
from mmtune.training import loop as recipe_module


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss (the last record wins when a resumed run logged a step again)."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def test_loss_falls_and_run_directory_is_complete(tiny_recipe):
    recipe = tiny_recipe(method={"name": "full"}, data={"val_fraction": 0.1},
                         train={"max_steps": 30, "lr": 1e-2, "warmup_steps": 2, "eval_every": 10})
    result = mmtune.train(recipe)
    seen = losses(result.run_dir)
    evals = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval_loss"] for r in evals if "eval_loss" in r}
    assert sorted(evals) == [10, 20, 30] and evals[30] < evals[10]
    assert sorted(seen) == list(range(1, 31))
    first, last = seen[1], sum(seen[s] for s in range(26, 31)) / 5
    assert last < first - 2.5, (first, last)  # from ~ln(vocab) = 10.8 nats; no learning stays there
    run = Path(result.run_dir)
    assert (run / "config.yaml").is_file() and (run / "final" / "model.safetensors").is_file()
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= set(record)
    assert record["tokens_per_s"] > 0 and record["grad_norm"] > 0
    resolved = mmtune.load_recipe(run / "config.yaml")
    assert resolved.train.max_steps == 30 and resolved.method.name == "full"


def test_accumulation_weighs_every_token_equally(tiny_recipe, tmp_path):
    """1 row x 4 micro-batches == 4 rows x 1 micro-batch, with rows of different lengths (unpacked)."""
    common = dict(method={"name": "full"}, data={"packing": False, "shuffle": False})
    a = tiny_recipe(output_dir=str(tmp_path / "a"), train={"max_steps": 3, "micro_batch_size": 1, "grad_accum_steps": 4}, **common)
    b = tiny_recipe(output_dir=str(tmp_path / "b"), train={"max_steps": 3, "micro_batch_size": 4, "grad_accum_steps": 1}, **common)
    la, lb = losses(mmtune.train(a).run_dir), losses(mmtune.train(b).run_dir)
    for step in (1, 2, 3):
        assert la[step] == pytest.approx(lb[step], abs=1e-5)


def _resume_recipe(tiny_recipe, out: Path):
    return tiny_recipe(
        output_dir=str(out),
        method={"name": "lora", "lora": {"rank": 4, "dropout": 0.1}},  # dropout: RNG must be restored
        train={"max_steps": 8, "grad_accum_steps": 2, "save_every": 3, "keep_checkpoints": None, "lr": 3e-3},
    )


def _stop_at(monkeypatch, step: int, exc: type[BaseException]):
    original = recipe_module.MetricsLogger.log

    def log(self, record):
        original(self, record)
        if record.get("step") == step and "loss" in record:
            raise exc()

    monkeypatch.setattr(recipe_module.MetricsLogger, "log", log)


def resumed_losses(recipe: dict, monkeypatch, step: int, exc: type[BaseException]) -> dict[int, float]:
    """Train ``recipe``, stopped by ``exc`` after ``step``, then again with ``resume: auto``: the losses logged."""
    with monkeypatch.context() as m:
        _stop_at(m, step, exc)
        with pytest.raises(exc):
            mmtune.train(recipe)
    recipe["train"]["resume"] = "auto"
    return losses(mmtune.train(recipe).run_dir)


def test_resume_after_interrupt_matches_uninterrupted_run(tiny_recipe, tmp_path, monkeypatch):
    reference = losses(mmtune.train(_resume_recipe(tiny_recipe, tmp_path / "ref")).run_dir)

    recipe = _resume_recipe(tiny_recipe, tmp_path / "cut")
    with monkeypatch.context() as m:
        _stop_at(m, 5, KeyboardInterrupt)  # Ctrl-C after step 5: a checkpoint of step 5 is written
        with pytest.raises(KeyboardInterrupt):
            mmtune.train(recipe)
    assert (tmp_path / "cut" / "checkpoints" / "step-5").is_dir()
    recipe["train"]["resume"] = "auto"
    resumed = losses(mmtune.train(recipe).run_dir)
    for step in range(6, 9):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6), step


def test_resume_from_periodic_checkpoint_after_crash(tiny_recipe, tmp_path, monkeypatch):
    reference = losses(mmtune.train(_resume_recipe(tiny_recipe, tmp_path / "ref")).run_dir)
    recipe = _resume_recipe(tiny_recipe, tmp_path / "crash")
    with monkeypatch.context() as m:
        _stop_at(m, 5, RuntimeError)  # a crash: no save, the step-3 checkpoint is the latest
        with pytest.raises(RuntimeError):
            mmtune.train(recipe)
    recipe["train"]["resume"] = "auto"
    resumed = losses(mmtune.train(recipe).run_dir)
    for step in range(4, 9):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6), step


KILL_DURING_SAVE = textwrap.dedent("""
    import json, os, signal, sys
    import mmtune
    from mmtune.training import checkpoint

    calls = {"n": 0}
    real_save = checkpoint.save_file

    def save_then_die(tensors, path, *a, **k):
        calls["n"] += 1
        real_save(tensors, path, *a, **k)
        if calls["n"] == 2:  # inside the second checkpoint, after its weights were written
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.save_file = save_then_die
    mmtune.train(json.loads(sys.argv[1]))
""")


def test_process_killed_during_save_leaves_previous_checkpoint_loadable(tiny_recipe, tmp_path):
    recipe = tiny_recipe(output_dir=str(tmp_path / "run"), train={"max_steps": 6, "save_every": 2, "keep_checkpoints": None})
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, json.dumps(recipe)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "step-2" / "state.json").is_file()
    assert not (ckpts / "step-4").exists()  # the interrupted save never appears half-written
    assert (ckpts / ".tmp-step-4").exists()
    recipe["train"]["resume"] = "auto"
    result = mmtune.train(recipe)
    assert result.steps == 6
    assert sorted(losses(result.run_dir))[0] == 1
    assert not (ckpts / ".tmp-step-4").exists()
    log = (tmp_path / "run" / "train.log").read_text()
    assert "resumed from" in log and "step-2" in log


def test_non_finite_loss_stops_with_clear_message_and_keeps_checkpoint(tiny_recipe, tmp_path, monkeypatch):
    recipe = tiny_recipe(output_dir=str(tmp_path / "run"), train={"max_steps": 6, "save_every": 2})
    from mmtune.training.objective import CausalLMObjective

    real_forward = CausalLMObjective.forward
    calls = {"n": 0}

    def forward(self, batch):
        calls["n"] += 1
        loss, n = real_forward(self, batch)
        return (loss * float("nan") if calls["n"] == 3 else loss), n

    monkeypatch.setattr(CausalLMObjective, "forward", forward)
    with pytest.raises(TrainingError, match=r"loss is nan at step 3.*step-2"):
        mmtune.train(recipe)
    assert (tmp_path / "run" / "checkpoints" / "step-2" / "state.json").is_file()
    assert not (tmp_path / "run" / "final").exists()


def test_freeze_trains_only_matching_parameters(tiny_recipe, tiny_llama_dir):
    from safetensors.torch import load_file

    recipe = tiny_recipe(method={"name": "freeze", "trainable": [r"layers\.1\.mlp"]}, train={"max_steps": 2, "lr": 1e-2})
    result = mmtune.train(recipe)
    before = load_file(str(tiny_llama_dir / "model.safetensors"))
    after = load_file(str(result.final_dir / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("layers.1.mlp" in k for k in changed)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_export_loads_in_transformers_with_same_logits(tiny_recipe, tmp_path, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmtune.interop.hf_causal_lm import export_hf
    from mmtune.models.run_outputs import load_for_inference

    recipe = tiny_recipe(method={"name": method, "lora": {"rank": 4, "dropout": 0.0}}, train={"max_steps": 3, "lr": 1e-2})
    run = mmtune.train(recipe).run_dir
    out = export_hf(*load_for_inference(str(run), merge=True), tmp_path / "export")
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    ours, _ = load_for_inference(str(run))
    ids = torch.randint(0, 1000, (2, 17))
    with torch.no_grad():
        assert torch.allclose(exported(ids).logits, ours(ids).logits, atol=1e-4)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    if method == "lora":  # the adapter really changed the model
        base = AutoModelForCausalLM.from_pretrained(recipe["model"]["name"]).eval()
        with torch.no_grad():
            assert not torch.allclose(base(ids).logits, exported(ids).logits, atol=1e-4)


def test_one_epoch_with_accumulation_trains_every_sample_once(tiny_recipe, tmp_path):
    def run(name, accum):
        recipe = tiny_recipe(output_dir=str(tmp_path / name),
                             data={"datasets": [{"card": "mmtune-instruct", "max_samples": 7}], "packing": False},
                             train={"max_steps": None, "epochs": 1, "micro_batch_size": 1, "grad_accum_steps": accum})
        result = mmtune.train(recipe)
        return result.steps, json.loads((result.run_dir / "summary.json").read_text())["targets_seen"]

    steps_1, seen_1 = run("a", 1)
    steps_3, seen_3 = run("b", 3)
    assert (steps_1, steps_3) == (7, 3)  # 7 samples: windows of 3, 3 and a last one of 1
    assert seen_3 == seen_1  # the same trained tokens, none dropped, none repeated


def test_bf16_mixed_precision_autocasts_the_forward(tiny_recipe, monkeypatch):
    from mmtune.training.objective import CausalLMObjective

    seen = []
    real_forward = CausalLMObjective.forward

    def forward(self, batch):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real_forward(self, batch)

    monkeypatch.setattr(CausalLMObjective, "forward", forward)
    result = mmtune.train(tiny_recipe(train={"max_steps": 2, "mixed_precision": "bf16"}))
    assert seen and all(enabled and dtype == torch.bfloat16 for enabled, dtype in seen)
    assert all(math.isfinite(v) for v in losses(result.run_dir).values())


def test_only_the_newest_checkpoints_are_kept(tiny_recipe, tmp_path):
    recipe = tiny_recipe(output_dir=str(tmp_path / "run"), train={"max_steps": 5, "save_every": 1, "keep_checkpoints": 2})
    mmtune.train(recipe)
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["step-3", "step-4"]  # the last step is the final model, not a periodic checkpoint
