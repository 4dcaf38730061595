"""Several processes on one CPU machine (torchrun, gloo): the same losses as one process, and one report.

Two processes with one micro-batch each per step see exactly the rows one process sees with two
accumulated micro-batches, and the loss is divided by the targets of the whole window on all processes,
so the losses agree. Measured: identical to the last bit over 6 steps (max |diff| 0.0), so the tolerance
is 1e-6. The data is laid out so that no window crosses an epoch boundary (24 unpacked samples, 12
micro-batches): at an epoch's end one process runs a shorter last window while several processes
continue into the next epoch (a process without a batch would stall the others).

FSDP (``train.distributed: fsdp``, FSDP2 through accelerate) runs here on CPU over gloo: sharded
checkpoints, an exact resume, ``final/`` gathered to full weights. DeepSpeed needs CUDA, so ZeRO-2 / ZeRO-3
are covered by the GPU check (``benchmarks/gpu_check.sh``, with ``configs/accelerate/zero{2,3}.yaml``);
here only its one-line refusal is tested (``tests/unit/test_distributed.py``).

The subprocesses import mmtune from this checkout (``PYTHONPATH``), not from wherever the venv points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml


REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path, *, fails: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert (proc.returncode != 0) == fails, proc.stderr[-3000:]
    return proc


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_cpu_processes_train_like_one_with_the_same_accumulation(tiny_recipe, tmp_path):
    recipe = tiny_recipe(method={"name": "full"},
                         data={"datasets": [{"card": "mmtune-instruct", "max_samples": 24}], "packing": False,
                               "num_workers": 0},
                         train={"max_steps": 6, "micro_batch_size": 2, "lr": 1e-3, "warmup_steps": 0,
                                "scheduler": "constant"})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    two = _run([sys.executable, "-m", "mmtune.cli", "train", "--nproc", "2", str(path),  # torchrun underneath
                f"output_dir={tmp_path / 'two'}", "train.grad_accum_steps=1"], tmp_path)
    one = _run([sys.executable, "-m", "mmtune.cli", "train", str(path), f"output_dir={tmp_path / 'one'}",
                "train.grad_accum_steps=2"], tmp_path)
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), abs=1e-6)
    assert "2 process(es)" in two.stderr and "1 process(es)" in one.stderr
    # One report, not one per process: the closing line, the run log, transformers' progress bars.
    assert two.stdout.count("trained 6 steps") == 1
    assert two.stderr.count("run directory:") == 1 and two.stderr.count("Loading weights: 100%") == 1


def test_accelerate_launch_without_a_gpu_says_it_started_one_process(tiny_recipe, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(train={"max_steps": 1})))
    proc = _run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "-m", "mmtune.cli",
                 "train", str(path)], tmp_path)
    assert "accelerate launch started 1 process" in proc.stderr and "torchrun --nproc_per_node N" in proc.stderr


def test_skips_met_by_any_process_are_counted_once_in_the_summary(tiny_recipe, photos, tmp_path):
    import numpy as np
    from media_helpers import llava_rows, open_clip_image_branch, write_json
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        photos / "full.jpg", quality=95)
    raw = (photos / "full.jpg").read_bytes()
    (photos / "broken.jpg").write_bytes(raw[: len(raw) // 2])
    rows = llava_rows()
    rows[1]["image"] = "broken.jpg"
    data = write_json(tmp_path / "d.json", rows)
    recipe = tiny_recipe(data={"datasets": [{"path": str(data), "format": "llava", "media_folder": str(photos)}],
                               "on_bad_sample": "skip", "packing": False, "num_workers": 0},
                         train={"max_steps": 4, "micro_batch_size": 1})  # 2 epochs of 8 samples over 2 processes
    recipe["model"]["media"] = {"image": open_clip_image_branch().model_dump(mode="json")}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "-m", "mmtune.cli", "train", str(path), f"output_dir={tmp_path / 'run'}"], tmp_path)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_while_batching"] == {"unreadable image": 1}
    assert proc.stderr.count("sample(s) skipped while building batches") == 1


def test_fsdp_on_cpu_checkpoints_sharded_resumes_exactly_and_writes_full_weights(tiny_recipe, tiny_llama_dir,
                                                                                  tmp_path):
    from safetensors.torch import load_file

    recipe = tiny_recipe(method={"name": "full"},
                         data={"datasets": [{"card": "mmtune-instruct", "max_samples": 24}], "packing": False,
                               "num_workers": 0},
                         train={"max_steps": 4, "micro_batch_size": 2, "lr": 1e-3, "warmup_steps": 0,
                                "scheduler": "constant", "save_every": 2, "distributed": "fsdp",
                                "progress": True, "tensorboard": True})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    whole, logs = tmp_path / "whole", tmp_path / "logs"
    # torchrun directly, each process's output in its own files: the other process must print nothing.
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          "--log-dir", str(logs), "--redirects", "3", "-m", "mmtune.cli", "train", str(path),
          f"output_dir={whole}"], tmp_path)
    (rank0,), (rank1,) = logs.glob("*/attempt_0/0"), logs.glob("*/attempt_0/1")
    assert "trained 4 steps" in (rank0 / "stdout.log").read_text()
    assert "run directory:" in (rank0 / "stderr.log").read_text()
    assert (rank1 / "stdout.log").read_text() == "" and (rank1 / "stderr.log").read_text() == ""
    assert [json.loads(line)["step"] for line in (whole / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    # TensorBoard files (event files name their writer's pid: ...tfevents.TIME.HOST.PID.N) come from one process.
    events = list((whole / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and len({e.name.rsplit(".", 2)[1] for e in events}) == 1
    assert (whole / "train.log").read_text().count("run directory:") == 1
    assert json.loads((whole / "summary.json").read_text())["steps"] == 4

    # The checkpoint holds each process's shards (accelerate's save_state), not rank 0's half of the weights.
    step2 = whole / "checkpoints" / "step-2"
    assert len(list((step2 / "sharded" / "pytorch_model_fsdp_0").glob("*.distcp"))) == 2
    assert {"rng-0.pt", "rng-1.pt", "state.json"} <= {p.name for p in step2.iterdir()}

    # final/ holds the gathered weights: every tensor at its full shape, all of them trained.
    base = load_file(str(tiny_llama_dir / "model.safetensors"))
    final = load_file(str(whole / "final" / "model.safetensors"))
    assert {k: v.shape for k, v in final.items()} == {k: v.shape for k, v in base.items()}
    assert all(not torch.equal(final[k], base[k]) for k in base)

    # Resumed from step 2 (with mmtune train --nproc): steps 3-4 as in the uninterrupted run, the same final/.
    # Measured: identical losses and weights (max |diff| 0.0); the tolerances leave a margin.
    resumed = tmp_path / "resumed"
    _run([sys.executable, "-m", "mmtune.cli", "train", "--nproc", "2", str(path), f"output_dir={resumed}",
          f"train.resume={step2}"], tmp_path)
    assert _losses(resumed) == pytest.approx(_losses(whole)[2:], abs=1e-6)
    again = load_file(str(resumed / "final" / "model.safetensors"))
    assert max(float((again[k] - final[k]).abs().max()) for k in final) < 1e-6

    # A changed recipe (LoRA now) does not fit the shards: one line naming the checkpoint, from every process.
    changed = _run([sys.executable, "-m", "mmtune.cli", "train", "--nproc", "2", str(path),
                    f"output_dir={tmp_path / 'changed'}", f"train.resume={step2}", "method.name=lora"], tmp_path,
                   fails=True)
    assert f"mmtune: error: {step2}: its sharded state does not fit this model (Missing key" in changed.stderr
