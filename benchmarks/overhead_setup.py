"""What the step-overhead benchmark measures: the configurations (model, image size, batch size,
optimizer) per device, the environment each one runs in, and the names of the measured modes. The
protocol is in ``step_overhead.py``'s docstring."""

from __future__ import annotations

from typing import Any

from benchmarks import timing
from finetune_gym import presets

SHARED = presets.data_root()
DATA = "data pipeline alone (part of plain)"

CPU_CONFIGS = [
    {"name": "cifar_resnet20-32px-b32", "model": "cifar_resnet20", "image_size": 32, "batch_size": 32},
    # No full run here: its test evaluation (12,630 images through ResNet-50) alone takes minutes on 2 cores.
    {"name": "resnet50-64px-b16", "model": "resnet50", "image_size": 64, "batch_size": 16, "full_run": False},
    # The CPU's fast settings where it has bf16 units (AMX, AVX512-BF16): about twice the fp32 speed
    # for ResNet-20 on this machine's CPU. Not the CPU default (fp32), so its own configuration.
    {
        "name": "cifar_resnet20-32px-b32-bf16-cl",
        "model": "cifar_resnet20",
        "image_size": 32,
        "batch_size": 32,
        "precision": "bf16",
        "channels_last": True,
    },
]
# The base optimizers (issue 13): each against its own plain step, plus the observation extras.
OPTIMIZER_CONFIGS = [
    {
        "name": f"cifar_resnet20-32px-b32-{optimizer}",
        "model": "cifar_resnet20",
        "image_size": 32,
        "batch_size": 32,
        "optimizer": optimizer,
        "extras": True,
        "full_run": False,
        "memory": False,
        "agent": False,
    }
    for optimizer in (
        "adam",
        "adamw",
        "sgd",
        "schedulefree_adamw",
        "prodigy",
        "prodigy_layerwise",
        "ldog",
        "mechanic_adamw",
    )
]
GPU_CONFIGS = [
    {"name": "resnet50-224px-b64", "model": "resnet50", "image_size": 224, "batch_size": 64},
    {"name": "resnet50-224px-b128", "model": "resnet50", "image_size": 224, "batch_size": 128},
]


def env_kwargs(config: dict[str, Any], device: str, reward: str, epochs: int = 1000) -> dict[str, Any]:
    """The benchmark's environment: GTSRB (upscaled for larger images) from ../shared/data, random
    initial weights (speed does not depend on them), a long episode so no reset falls in a timing."""
    kwargs = {
        "model": config["model"],
        "weights": None,
        "image_size": config["image_size"],
        "batch_size": config["batch_size"],
        "device": device,
        "reward": reward,
        "epochs_per_episode": epochs,
        "val_fraction": 0.1,
        "seed": 0,
        "precision": config.get("precision", "auto"),
        "channels_last": config.get("channels_last"),
        "optimizer": config.get("optimizer", "adam"),
    }
    if (SHARED / "gtsrb").is_dir():
        kwargs.update(presets.gtsrb(SHARED))
    else:  # synthetic stand-in with the same shapes
        # dataset_kwargs replaces the registered GTSRB options in the full run's environment.
        kwargs.update(
            dataset="imagefolder", data_root=timing.synthetic_folder(config["batch_size"]), dataset_kwargs={}
        )
    return kwargs


EXTRAS = "env.step reward=next_batch +obs extras"
EXTRAS_ALONE = "observation extras alone (part of +obs extras)"
GRADIENT_EXTRAS = "env.step reward=next_batch +gradient extras"
GRADIENT_ALONE = "gradient extras alone (part of +gradient extras)"
