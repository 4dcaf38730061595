#!/usr/bin/env bash
# mmtune's GPU check: one H100 / H200, under 10 minutes, nothing downloaded (random models of real sizes,
# synthetic data, the shipped photos). Prints figures per section and RESULT lines; see benchmarks/README.md.
# No section starts after 570 s (--budget-s); the timeout below is only a backstop.
#
#   bash benchmarks/gpu_check.sh                          # every section, figures to gpu_check.json
#   bash benchmarks/gpu_check.sh --sections packing liger  # some of them
#   bash benchmarks/gpu_check.sh --tiny                    # toy sizes on the CPU: proves the script runs
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout "${GPU_CHECK_TIMEOUT:-720}" "$PYTHON" benchmarks/gpu_check.py --out "${GPU_CHECK_OUT:-gpu_check.json}" "$@"
