"""The built-in source weights: ``digits_resnet8`` pretrained on digits 0-4.

The offline default environment needs a real pretrained source without a
download, so the package trains one on first use (a few seconds on a CPU),
seeded, and caches it atomically; later uses load the cached file. Training it
takes a dataset and a model, so it sits above both and registers itself as the
model's ``"digits"`` weights (the models package knows no datasets).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .datasets.digits import SOURCE_DIGITS, load_digits
from .models import DIGITS_MEAN, DIGITS_STD, register_pretrained
from .models.cifar_resnet import digits_resnet
from .models.weights import read_state_dict
from .storage import atomic_torch_save, cache_dir

VERSION = 1
EPOCHS, BATCH, LR = 30, 64, 3e-3


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
    return images.sub_(DIGITS_MEAN[0]).div_(DIGITS_STD[0]), torch.from_numpy(split.labels)


def _pretrain(seed: int) -> tuple[dict[str, torch.Tensor], float]:
    data = load_digits(digit_classes=SOURCE_DIGITS)
    x, y = _tensors(data.train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = digits_resnet(len(SOURCE_DIGITS))
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


register_pretrained("digits_resnet8", "digits", digits_source_state)
