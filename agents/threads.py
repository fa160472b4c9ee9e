"""CPU threads: all of them for the fine-tuned network, one for the agent.

The agent's networks are tiny (a 64-unit LSTM over a few hundred inputs): extra
intra-op threads only add synchronisation, and on a busy machine OpenMP threads
that spin while another process holds a core make its updates many times slower.
A run therefore keeps the process at one thread and gives the environment
(forward, backward, Adam, augmentation, evaluation) every thread only while it
steps or resets. ``benchmarks/step_overhead.py`` measures the agent with one and
with all threads side by side.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

AGENT_THREADS = 1


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (``None``: leave the setting alone)."""
    previous = torch.get_num_threads()
    if n is None or n == previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def load_warning(threads: int, load: float | None = None, cores: int | None = None) -> str | None:
    """A one-line warning when the machine is already busy: the run's ``threads`` plus the 1-minute
    load average exceed the cores. PyTorch's OpenMP threads spin while another process holds their
    core; on a shared 2-core machine that made each step 5-19x slower (issue 16)."""
    cores = cores or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # not available on this platform
            return None
    if load + threads <= cores + 0.5:
        return None
    free = max(1, int(cores - load + 0.5))
    advice = (
        f"pass --threads {free}, or wait for the other work"
        if threads > free
        else "steps will be slower until the other work ends"
    )
    return (
        f"warning: the machine's 1-minute load is {load:.1f} on {cores} cores and this run uses {threads} "
        f"thread{'s' if threads != 1 else ''}: they compete (OpenMP threads spin; steps can be several times "
        f"slower); {advice}"
    )
