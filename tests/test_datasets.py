import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GTSRB_ROOT, make_image_folder, needs_shared
from PIL import Image

from finetune_gym.datasets import DatasetNotFoundError, load_dataset, sample_per_class, split_validation

GTSRB = needs_shared(GTSRB_ROOT / "gtsrb")


@GTSRB
def test_gtsrb_lists_the_official_splits_with_tracks_as_groups():
    data = load_dataset("gtsrb", GTSRB_ROOT)
    assert len(data.classes) == 43
    assert len(data.train) == 39209 and len(data.test) == 12630
    assert data.train.groups is not None and data.allow_flip is False
    # Every group holds one class only, and tracks are ~30 frames long.
    n_groups = len(np.unique(data.train.groups))
    assert 1000 < n_groups < 1500
    for g in np.unique(data.train.groups)[:50]:
        assert len(np.unique(data.train.labels[data.train.groups == g])) == 1


@GTSRB
def test_gtsrb_one_frame_per_track_pool_and_track_aware_split():
    full = load_dataset("gtsrb", GTSRB_ROOT)
    pool = load_dataset("gtsrb", GTSRB_ROOT, one_frame_per_track=True)
    assert len(pool.train) == len(np.unique(full.train.groups))
    assert len(np.unique(pool.train.groups)) == len(pool.train)
    # On the full set, a track never lands on both sides of the validation split.
    rng = np.random.default_rng(0)
    kept = sample_per_class(full.train.labels, full.train.groups, 0.3, rng)
    train, val = split_validation(kept, full.train.labels, full.train.groups, 0.2, rng)
    assert set(full.train.groups[train]).isdisjoint(full.train.groups[val])
    assert len(val) > 0


@GTSRB
def test_gtsrb_decodes_real_32px_images():
    pool = load_dataset("gtsrb", GTSRB_ROOT, one_frame_per_track=True)
    images = pool.train.decoder.decode(np.arange(5), 32)
    assert images.shape == (5, 3, 32, 32) and images.dtype.is_floating_point is False
    assert images.float().std() > 10  # real pictures, not blank


def test_digits_is_offline_and_split_fixed():
    data = load_dataset("digits")
    again = load_dataset("digits")
    assert data.classes == ["5", "6", "7", "8", "9"] and data.channels == 1
    np.testing.assert_array_equal(data.test.labels, again.test.labels)
    assert 0.2 < len(data.test) / (len(data.train) + len(data.test)) < 0.3
    source = load_dataset("digits", digit_classes=(0, 1, 2, 3, 4))
    assert len(source.train) > 600
    with pytest.raises(ValueError, match="digit_classes"):
        load_dataset("digits", digit_classes=(1, 1))


def test_imagefolder_decodes_to_the_requested_size(tmp_path):
    root = make_image_folder(tmp_path / "f", size=40)
    data = load_dataset("imagefolder", root)
    assert data.classes == ["class_0", "class_1", "class_2"]
    images = data.train.decoder.decode(np.arange(len(data.train)), 16)
    assert images.shape == (len(data.train), 3, 16, 16)


def test_file_decoder_decodes_inside_a_daemonic_process(tmp_path):
    """A large selection decodes in DataLoader worker processes, which a daemonic process may not
    start: SB3's SubprocVecEnv runs each environment in one (controller PPO's training died on it),
    as multiprocessing.Pool runs its workers. There it decodes in-process, to the same pixels."""
    root = make_image_folder(tmp_path / "f", per_class=200, size=8, test_per_class=1)
    train = load_dataset("imagefolder", root).train
    indices = np.arange(len(train))
    assert len(indices) > 512  # where the decoder turns to worker processes
    here = train.decoder.decode(indices, 8)
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # its worker is daemonic
        there = pool.apply(train.decoder.decode, (indices, 8))
    assert here.shape == (len(indices), 3, 8, 8) and torch.equal(here, there)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"train/<class>/<image>"):
        load_dataset("imagefolder", tmp_path)
    root = make_image_folder(tmp_path / "f")
    (root / "train" / "class_9").mkdir()
    with pytest.raises(ValueError, match="class_9"):
        load_dataset("imagefolder", root)


def test_imagefolder_lists_each_image_once_through_a_symlink_loop(tmp_path):
    """A link back to its own folder made torchvision's walk list the images at every depth;
    the copies then fell into both training and validation (val 0.98, test 0.33)."""
    root = make_image_folder(tmp_path / "f")
    plain = len(load_dataset("imagefolder", root).train)
    (root / "train" / "class_0" / "again").symlink_to("..", target_is_directory=True)
    (root / "train" / "class_1" / "elsewhere.png").symlink_to(root / "test" / "class_1" / "0.png")
    with pytest.warns(UserWarning, match="already listed"):
        data = load_dataset("imagefolder", root)
    assert len(data.train) == plain + 1  # the loop adds nothing; a link to another file counts once


def test_imagefolder_skips_a_fifo_named_like_an_image(tmp_path):
    """PIL blocked forever reading a FIFO called ``*.png``."""
    root = make_image_folder(tmp_path / "f")
    plain = len(load_dataset("imagefolder", root).train)
    os.mkfifo(root / "train" / "class_2" / "pipe.png")
    with pytest.warns(UserWarning, match="not regular files"):
        data = load_dataset("imagefolder", root)
    assert len(data.train) == plain
    data.train.decoder.decode(np.arange(len(data.train)), 8)  # returns: no path is the FIFO


def test_16bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    """``convert("L")`` clipped 16-bit values at 255: 99.6% of this ramp decoded white."""
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    root = make_image_folder(tmp_path / "f")
    for split in ("train", "test"):
        Image.fromarray(ramp).save(root / split / "class_0" / "0.png")
    assert Image.open(root / "train" / "class_0" / "0.png").mode == "I;16"
    data = load_dataset("imagefolder", root, channels=1)
    index = next(i for i, p in enumerate(data.train.decoder.paths) if p.endswith("class_0/0.png"))
    decoded = data.train.decoder.decode(np.array([index]), 32)[0, 0].numpy()
    expected = np.rint(ramp / 257.0)
    assert np.abs(decoded.astype(float) - expected).max() <= 1
    assert (decoded == 255).mean() < 0.01


def _fake_cub(root: Path, n_classes=3, per_class=4):
    base = root / "CUB_200_2011"
    (base / "images").mkdir(parents=True)
    lines = {"images.txt": [], "train_test_split.txt": [], "image_class_labels.txt": [], "classes.txt": []}
    k = 0
    for c in range(n_classes):
        name = f"{c + 1:03d}.Bird_{c}"
        lines["classes.txt"].append(f"{c + 1} {name}")
        (base / "images" / name).mkdir()
        for i in range(per_class):
            k += 1
            rel = f"{name}/img_{i}.jpg"
            Image.fromarray(np.full((30, 40, 3), 40 * c, dtype=np.uint8)).save(base / "images" / rel)
            lines["images.txt"].append(f"{k} {rel}")
            lines["train_test_split.txt"].append(f"{k} {1 if i < per_class - 1 else 0}")
            lines["image_class_labels.txt"].append(f"{k} {c + 1}")
    for file, rows in lines.items():
        (base / file).write_text("\n".join(rows) + "\n")


def test_cub_reads_the_official_layout(tmp_path):
    _fake_cub(tmp_path)
    data = load_dataset("cub", tmp_path)
    assert data.classes == ["001.Bird_0", "002.Bird_1", "003.Bird_2"]
    assert len(data.train) == 9 and len(data.test) == 3
    np.testing.assert_array_equal(data.test.labels, [0, 1, 2])
    images = data.train.decoder.decode(np.array([0, 8]), 20)
    assert images.shape == (2, 3, 20, 20)
    assert images[1].float().mean() > images[0].float().mean()


def test_missing_data_errors_say_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="images.txt.*download=True"):
        load_dataset("cub", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="cars_test_annos_withlabels.mat"):
        load_dataset("cars", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="GT-final_test.csv"):
        load_dataset("gtsrb", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="download=True"):
        load_dataset("aircraft", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset("aircraft", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="needs data_root"):
        load_dataset("gtsrb", None)


def test_unknown_dataset_and_option():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*aircraft"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="does not take option"):
        load_dataset("digits", colour=True)
