#!/usr/bin/env bash
# One prepared run for a session that is lent a GPU (see /work/.library/device/README.md):
# the CUDA tests, then the step-overhead benchmark's GPU configurations. Results land in $OUT
# (or benchmarks/results when OUT is unset). About 6-8 minutes on an H100/H200; run it as
#   device.run(command="bash benchmarks/device_check.sh", timeout_s=540)
# The device machine does not get ../shared: the benchmark falls back to synthetic images of the
# same shapes (speed does not depend on the pixels).
set -uo pipefail
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python -c "import stable_baselines3, sb3_contrib" 2>/dev/null || pip install -q -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log"
timeout 330 python benchmarks/step_overhead.py --episodes 1 --epochs 2 \
    --out "$out/step_overhead_gpu.md" 2>&1 | tee "$out/step_overhead_gpu.log"
