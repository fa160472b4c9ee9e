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
