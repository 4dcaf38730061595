"""``benchmarks/gpu_check.py --tiny`` runs on the CPU: the packing section finds packed equal to unpacked, and the
sections that need CUDA skip with their reason rather than fail. (The throughput and LLaVA sections at toy sizes
take minutes on 2 cores: run ``python benchmarks/gpu_check.py --tiny`` for them.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_gpu_check_tiny_runs_packing_and_names_why_cuda_sections_skip(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCHMARKS))
    out = tmp_path / "gpu.json"
    code = gpu_check.main(["--tiny", "--sections", "packing", "qlora", "liger", "distributed",
                           "--work", str(tmp_path / "work"), "--out", str(out)])
    figures = json.loads(out.read_text())
    assert code == 0 and figures["status"]["packing"] == "ok"
    packing = figures["results"]["packing"]
    assert packing["samples"] > packing["rows"] >= 2  # several samples share a row
    assert packing["equal"] and packing["abs_diff_per_target"] < 1e-4, packing
    assert "CUDA" in figures["status"]["qlora"] and figures["status"]["qlora"].startswith("skipped")
    assert figures["status"]["liger"].startswith("skipped: train.kernels: 'liger'")
    assert figures["status"]["distributed"].startswith("skipped")
