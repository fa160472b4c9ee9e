import pytest
import torch

from finetune_gym.augment import BatchAugment, resolve_augment


def _images(b=16, c=3, s=32):
    return torch.arange(b * c * s * s, dtype=torch.int64).remainder(251).to(torch.uint8).view(b, c, s, s)


def test_auto_choice_by_image_size():
    assert resolve_augment("auto", 32) == "pad_crop"
    assert resolve_augment("auto", 224) == "resized_crop"
    with pytest.raises(ValueError, match="unknown augment"):
        resolve_augment("cutmix", 32)


def test_pad_crop_is_a_per_image_shifted_window():
    images = _images()
    aug = BatchAugment(
        "pad_crop", 32, (0.0, 0.0, 0.0), (1 / 255,) * 3, flip=False, device=torch.device("cpu")
    )
    out = aug.train(images, torch.Generator().manual_seed(0))
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4)).float()
    offsets = []
    for i in range(16):
        # Each output is exactly one 32x32 window of the zero-padded image.
        matches = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(padded[i, :, dy : dy + 32, dx : dx + 32], out[i])
        ]
        assert matches, f"image {i} is not a window of its padded source"
        offsets.append(matches[0])
    assert len(set(offsets)) > 4, "offsets must be drawn per image"


def test_flip_only_when_allowed_and_per_image():
    images = _images(b=64)
    cpu = torch.device("cpu")
    no_flip = BatchAugment("none", 32, (0.0,) * 3, (1 / 255,) * 3, flip=False, device=cpu)
    assert torch.equal(no_flip.train(images, torch.Generator().manual_seed(0)), images.float())
    flip = BatchAugment("none", 32, (0.0,) * 3, (1 / 255,) * 3, flip=True, device=cpu)
    out = flip.train(images, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], images[i].float().flip(-1)) for i in range(64)]
    kept = [torch.equal(out[i], images[i].float()) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54


def test_resized_crop_and_centre_crop_eval():
    images = _images(b=8, s=40)
    aug = BatchAugment(
        "resized_crop", 35, (0.5,) * 3, (0.25,) * 3, flip=True, device=torch.device("cpu"), channels_last=True
    )
    out = aug.train(images, torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 35, 35) and torch.isfinite(out).all()
    assert out.is_contiguous(memory_format=torch.channels_last)
    centre = aug.eval(images)
    expected = (images[:, :, 2:37, 2:37].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(centre, expected)
