"""Several processes on one CPU machine (torchrun, gloo): the same losses as one process, and one report.

Two processes with one micro-batch each per step see exactly the rows one process sees with two
accumulated micro-batches, and the loss is divided by the targets of the whole window on all processes,
so the losses agree. Measured: identical to the last bit over 6 steps (max |diff| 0.0), so the tolerance
is 1e-6. The data is laid out so that no window crosses an epoch boundary (24 unpacked samples, 12
micro-batches): at an epoch's end one process runs a shorter last window while several processes
continue into the next epoch (a process without a batch would stall the others).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
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
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "mmtune.cli", "train", str(path), f"output_dir={tmp_path / 'two'}",
                "train.grad_accum_steps=1"], tmp_path)
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
