"""Tools every speed benchmark measures with: timings interleaved in rounds whose order rotates,
device synchronisation, a process's own peak memory, a description of the machine, and random
images of a given shape where a benchmark's data is missing (speed does not depend on content)."""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from finetune_gym.device import describe_machine

_SYNTHETIC: dict[int, str] = {}


def synthetic_folder(batch_size: int) -> str:
    """Random 32x32 images in 10 classes, written once per process and size: enough training
    images for 40 batches an epoch (so a full run's epochs are not a handful of steps) and a test
    split a quarter as large."""
    per_class = max(40, 40 * batch_size // 9)  # 10% goes to validation
    if per_class in _SYNTHETIC:
        return _SYNTHETIC[per_class]
    from PIL import Image

    root = Path(tempfile.mkdtemp(prefix="finetune_gym_bench_"))
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 4)):
        for c in range(10):
            (root / split / str(c)).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    root / split / str(c) / f"{i}.png"
                )
    _SYNTHETIC[per_class] = str(root)
    return str(root)


def rotated(names: list[str], round_index: int) -> list[str]:
    """``names`` starting one later each round, so that no mode always runs first (after another
    mode's allocations, or on a CPU that has just warmed up or throttled)."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(fn, steps: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return time.perf_counter() - start


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's ``VmHWM`` belongs to the process's own address
    space; ``ru_maxrss`` would not do in a spawned child: Linux carries the parent's peak at fork
    over the exec, so every mode would read the benchmark process's memory (as the results before
    this fix did)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # bytes on macOS


def machine(device: str) -> str:
    """What a timing records of its machine: the runs' own description (the CPU's model, the
    instruction set PyTorch dispatches to and the threads; the GPU's name) and torch's version."""
    return f"{describe_machine(torch.device(device))}, torch {torch.__version__}"
