"""The built-in source network: a small CIFAR-style ResNet pretrained on digits 0-4.

The offline default environment needs a real pretrained source without a
download, so the package trains one on first use (a few seconds on a CPU),
seeded, and caches it atomically; later uses load the cached file.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets.digits import SOURCE_DIGITS, load_digits
from ..storage import atomic_torch_save, cache_dir
from .cifar_resnet import CifarResNet, cifar_resnet
from .weights import read_state_dict

VERSION = 1
DEPTH, WIDTHS = 8, (16, 32, 64)
EPOCHS, BATCH, LR = 30, 64, 3e-3
MEAN, STD = (0.5,), (0.5,)


def digits_resnet(num_classes: int = len(SOURCE_DIGITS)) -> CifarResNet:
    """ResNet-8 (one block per stage) for 1-channel 8x8 images."""
    return cifar_resnet(DEPTH, num_classes=num_classes, in_channels=1, widths=WIDTHS)


def digits_source_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of :func:`digits_resnet` trained on digits 0-4, from the cache or trained now."""
    path = cache_dir() / "weights" / f"digits_resnet8_source-v{VERSION}-seed{seed}.pt"
    if path.is_file():
        return read_state_dict(path)
    state, accuracy = _pretrain(seed)
    atomic_torch_save({"state_dict": state, "test_accuracy": accuracy, "digits": list(SOURCE_DIGITS)}, path)
    return state


def _tensors(split) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as normalised float images and labels (digits are tiny: no batching needed)."""
    images = split.decoder.decode(np.arange(len(split)), 8).float().div_(255)
    return images.sub_(MEAN[0]).div_(STD[0]), torch.from_numpy(split.labels)


def _pretrain(seed: int) -> tuple[dict[str, torch.Tensor], float]:
    data = load_digits(digit_classes=SOURCE_DIGITS)
    x, y = _tensors(data.train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = digits_resnet()
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        for _ in range(EPOCHS):
            model.train()
            for idx in torch.randperm(len(y)).split(BATCH):
                loss = F.cross_entropy(model(x[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    xt, yt = _tensors(data.test)
    model.eval()
    with torch.inference_mode():
        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, float(accuracy)
