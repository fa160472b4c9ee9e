#!/usr/bin/env bash
# One prepared run for a session that is lent a GPU (see /work/.library/device/README.md):
# the CUDA tests, then the step-overhead benchmark's GPU configurations. Results land in $OUT
# (or benchmarks/results when OUT is unset), each configuration as it completes.
#
# The device machine has PyTorch but not gymnasium or Stable-Baselines3, and cannot fetch them.
# Prepare their wheels here once (pure Python, under 1 MB; .device_wheels/ is git-ignored):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .device_wheels \
#       gymnasium==1.4.0 farama-notifications stable-baselines3==2.9.2 sb3-contrib==2.9.2
# then carry them:
#   device.run(command="bash benchmarks/device_check.sh", carry=[".device_wheels"], timeout_s=580)
# The package itself is not installed there: the tests and benchmarks import it from the checkout
# (its torch pin would make pip look for a torch it cannot fetch). The machine does not get
# ../shared either: the benchmark writes synthetic images of the same shapes instead (speed does
# not depend on the pixels). Budget: tests <= 150 s, benchmark <= 420 s.
set -uo pipefail
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=python3
if ! $py -c "import gymnasium, stable_baselines3, sb3_contrib" 2>/dev/null; then
    $py -m pip install -q --no-index --find-links .device_wheels \
        gymnasium stable-baselines3 sb3-contrib 2>&1 | tail -3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import torch, gymnasium, stable_baselines3 as s; print(torch.__version__, gymnasium.__version__, s.__version__)" \
    | tee -a "$out/gpu.txt"
timeout 150 $py -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log"
# Full runs of 8 epochs (2 episodes x 4; 40 steps an epoch): shorter runs measure mostly the fixed
# costs (setup, the agent's first update, the outputs). One round each: a dedicated GPU does not
# drift like the shared CPU the rounds are for; that keeps the benchmark near 5 minutes.
timeout 420 $py benchmarks/step_overhead.py --episodes 2 --epochs 4 --full-rounds 1 \
    --out "$out/step_overhead_gpu.md" 2>&1 | tee "$out/step_overhead_gpu.log"
