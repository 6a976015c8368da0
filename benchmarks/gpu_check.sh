#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (and this project installed with a CUDA build of torch): every device-dependent
# path on CPU and CUDA, then the many-seeds timings on the GPU, in under 8 minutes. Writes
# benchmarks/results/gpu/{devices.txt,agent_seeds.{csv,md},estimator_seeds.{csv,md}}.
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results/gpu
mkdir -p "$out"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this check needs a GPU')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/devices.txt"
# the device tests: CPU and CUDA (a CUDA case that skips here is a failure of the check)
timeout 240 python -m pytest -q -p no:cacheprovider -rs tests/test_devices.py | tee -a "$out/devices.txt"
if grep -q "SKIPPED" "$out/devices.txt"; then echo "a CUDA test was skipped on a GPU machine" >&2; exit 1; fi
# one seed at a time on the GPU against S seeds stacked on it (MISA's official settings among them)
timeout 240 python benchmarks/agent_seeds.py --device cuda --algos td3bc iql misa --seeds 3 10 --out "$out/agent_seeds"
timeout 120 python benchmarks/estimator_seeds.py --device cuda --threads 1 --seeds 8 32 --out "$out/estimator_seeds"
echo "tables: $out/agent_seeds.md $out/estimator_seeds.md"
