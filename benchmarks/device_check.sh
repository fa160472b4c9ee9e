#!/usr/bin/env bash
# One prepared run for a session that is lent a GPU (see /work/.library/device/README.md):
# the CUDA tests, the residual controller's overhead, then the step-overhead benchmark's GPU
# configurations. Results land in $OUT
# (or benchmarks/results when OUT is unset), each configuration as it completes.
#
# The device machine has PyTorch but not gymnasium or Stable-Baselines3, and cannot fetch them.
# Prepare their wheels here once (pure Python, under 1 MB; .device_wheels/ is git-ignored):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .device_wheels \
#       gymnasium==1.4.0 farama-notifications stable-baselines3==2.9.2 sb3-contrib==2.9.2 \
#       schedulefree==1.4.1 prodigyopt==1.1.2
# then carry them:
#   device.run(command="bash benchmarks/device_check.sh", carry=[".device_wheels"], timeout_s=580)
# The package itself is not installed there: the tests and benchmarks import it from the checkout
# (its torch pin would make pip look for a torch it cannot fetch). The machine does not get
# ../shared either: the benchmark writes synthetic images of the same shapes instead (speed does
# not depend on the pixels). Budget: tests <= 90 s, controller overhead <= 270 s, b128 <= 120 s.
set -uo pipefail
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=python3
if ! $py -c "import gymnasium, stable_baselines3, sb3_contrib, schedulefree, prodigyopt" 2>/dev/null; then
    $py -m pip install -q --no-index --no-deps --find-links .device_wheels \
        gymnasium stable-baselines3 sb3-contrib schedulefree prodigyopt 2>&1 | tail -3
fi
# finetune_gym.agents is the agents/ folder (pyproject's package-dir mapping, applied by an install):
# without one, a link puts it where the import looks.
[ -e finetune_gym/agents ] || ln -s ../agents finetune_gym/agents
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import torch, gymnasium, stable_baselines3 as s; print(torch.__version__, gymnasium.__version__, s.__version__)" \
    | tee -a "$out/gpu.txt"
timeout 90 $py -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log"
# Issue 28's cost target on the GPU: a deployed residual controller against its base's run
# (Prodigy), and the environment's gradient check (its read-back) against the base without it;
# ResNet-50 224 px batch 64, and the grid's ResNet-20 32 px batch 32, where a step is shortest.
timeout 180 $py benchmarks/controller_overhead.py --device cuda --config resnet50-224px-b64 --steps 20 \
    --rounds 5 --out "$out/controller_overhead_gpu.md" 2>&1 | tee "$out/controller_overhead_gpu.log"
timeout 90 $py benchmarks/controller_overhead.py --device cuda --steps 40 --rounds 5 \
    --out "$out/controller_overhead_gpu.md" 2>&1 | tee -a "$out/controller_overhead_gpu.log"
# Issue 14's (measured 2026-11-28, transfer_overhead_gpu.md; TRANSFER=1 to rerun): a run deployed
# with the shipped policy against Schedule-Free AdamW's run of the same epochs. Three rounds: with
# one, the first run of the process (the plain one) pays CUDA's warm-up.
if [ "${TRANSFER:-0}" = 1 ]; then
timeout 200 $py benchmarks/transfer.py overhead --device cuda --model resnet50 --image-size 224 \
    --batch-size 64 --epochs 2 --rounds 3 --out "$out/transfer_overhead_gpu.md" 2>&1 | tee "$out/transfer_overhead_gpu.log"
timeout 120 $py benchmarks/transfer.py overhead --device cuda --epochs 3 --rounds 3 \
    --out "$out/transfer_overhead_gpu.md" 2>&1 | tee -a "$out/transfer_overhead_gpu.log"
fi
# Each GPU configuration has its own budget, so one that runs long cannot take the other's time
# (2026-11-27 on an H200: the b64 configuration whole took most of 420 s). b64 whole: full runs of
# 8 epochs (2 episodes x 4; 40 steps an epoch), one round (a dedicated GPU does not drift like the
# shared CPU the rounds are for); b128: step timings and the agent only.
# (b64 measured on 2026-11-27, benchmarks/results/step_overhead_gpu.md; set FULL=1 to rerun it.)
if [ "${FULL:-0}" = 1 ]; then
timeout 360 $py benchmarks/step_overhead.py --configs resnet50-224px-b64 --episodes 2 --epochs 4 \
    --full-rounds 1 --out "$out/step_overhead_gpu.md" 2>&1 | tee "$out/step_overhead_gpu.log"
fi
timeout 120 $py benchmarks/step_overhead.py --configs resnet50-224px-b128 --rounds 3 --no-full-run \
    --no-memory --out "$out/step_overhead_gpu.md" 2>&1 | tee -a "$out/step_overhead_gpu.log"
