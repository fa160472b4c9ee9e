"""Device choice and the precision settings that go with it."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform

import torch

from .arguments import check_choice

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA when present; an unavailable CUDA device is an error, not a fallback."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type != "cpu":
        raise ValueError(f"device {device!r} is not supported: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. ``auto``: bf16 on CUDA, fp32 on the CPU."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def resolve_channels_last(channels_last: bool | None, device: torch.device) -> bool:
    """``None``: channels-last on CUDA (faster there with bf16 convolutions), contiguous on the CPU."""
    return device.type == "cuda" if channels_last is None else bool(channels_last)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def place_cache(images: torch.Tensor, device: torch.device, share_of_free: float = 0.25) -> torch.Tensor:
    """Keep a uint8 image cache on the GPU when it takes at most ``share_of_free`` of free memory.

    Otherwise it stays in pinned host memory and each batch is copied asynchronously.
    """
    if device.type != "cuda":
        return images
    free, _total = torch.cuda.mem_get_info(device)
    if images.numel() * images.element_size() <= share_of_free * free:
        return images.to(device)
    return images.pin_memory()


class HostCopy:
    """One device-to-host copy of a packed tensor, started early and waited for late.

    On CUDA the copy goes without blocking into a reused pinned buffer, so the host can queue
    more device work (the backward) before it waits; on the CPU the tensor is the host copy.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffer: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    def start(self, packed: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return packed
        if self._buffer is None or self._buffer.shape != packed.shape:
            self._buffer = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            self._copied = torch.cuda.Event()
        self._buffer.copy_(packed, non_blocking=True)
        self._copied.record()
        return self._buffer

    def wait(self, staged: torch.Tensor) -> torch.Tensor:
        """The host tensor of :meth:`start`, once its copy has landed."""
        if self._copied is not None and staged is self._buffer:
            self._copied.synchronize()
        return staged


@functools.cache
def _cpu_info() -> tuple[str, str]:
    """The CPU's model name and a short fingerprint of its feature flags (Linux's /proc/cpuinfo;
    elsewhere platform's name and no fingerprint). Read once a process: every run records it."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    fingerprint = hashlib.sha1(flags.encode()).hexdigest()[:8] if flags else "unknown"
    return model or platform.processor() or platform.machine(), fingerprint


def describe_machine(device: torch.device) -> str:
    """What a result records of the machine that made it. On the CPU this names the model, the
    instruction set PyTorch dispatches to and a fingerprint of the CPU's flags, because results
    are bit-reproducible only on the same CPU: oneDNN and ATen pick kernels by instruction set, and
    a chaotic fine-tuning run turns a last-bit difference into points (two 15-epoch Prodigy runs
    of the same instance, code and seed ended 5 points apart on two machines, issue 28)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model, fingerprint = _cpu_info()
    return (
        f"CPU {model} {platform.machine()} x{os.cpu_count()}, {torch.backends.cpu.get_cpu_capability()}, "
        f"flags {fingerprint} (torch threads {torch.get_num_threads()})"
    )
