"""Target datasets listed through ``torchvision.datasets`` (their parsers, our decoding).

torchvision's classes parse each dataset's annotation files; we read their file
lists and labels and decode pixels ourselves (:mod:`.base`) so that only sampled
images are decoded, once, into a uint8 tensor cache. The file lists live in
private attributes (``_samples``, ``_image_files``); :func:`_attr` turns a future
rename into a clear error rather than a silent wrong dataset.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from torchvision import datasets as tvd
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from .base import DatasetNotFoundError, FileDecoder, ImageDataset, Split


def _attr(dataset: object, name: str) -> object:
    try:
        return getattr(dataset, name)
    except AttributeError as error:  # pragma: no cover - only on a torchvision API change
        raise RuntimeError(
            f"torchvision.datasets.{type(dataset).__name__} has no attribute {name!r}; "
            "this finetune-gym release needs torchvision 0.19-0.29"
        ) from error


def _open(cls, root: str | Path, howto: str, **kwargs):
    try:
        return cls(root=str(root), **kwargs)
    except RuntimeError as error:  # torchvision's "Dataset not found" is a RuntimeError
        raise DatasetNotFoundError(
            f"{cls.__name__} data not found under {str(Path(root).resolve())!r} ({error}). {howto}"
        ) from error


def _split_from_samples(
    samples: list[tuple[str, int]], groups: np.ndarray | None = None, channels: int = 3
) -> Split:
    paths = [p for p, _ in samples]
    labels = np.asarray([c for _, c in samples], dtype=np.int64)
    return Split(labels=labels, decoder=FileDecoder(paths, channels), groups=groups)


# --- GTSRB -----------------------------------------------------------------------------------

_TRACK_FILE = re.compile(r"^(\d+)_(\d+)\.ppm$")


def load_gtsrb(root: str | Path, download: bool = False, one_frame_per_track: bool = False) -> ImageDataset:
    """German Traffic Sign Recognition Benchmark, 43 classes, with tracks as groups.

    Training file names are ``<track>_<frame>.ppm``; a track is ~30 frames of one
    physical sign, so the group of an image is (class, track). With
    ``one_frame_per_track`` only the middle frame of each track is kept: the
    low-data pool of our benchmark, with no near-duplicates left to leak.
    """
    howto = (
        "Use download=True, or place the data as torchvision.datasets.GTSRB expects: "
        "<root>/gtsrb/GTSRB/Training/<class>/<track>_<frame>.ppm, "
        "<root>/gtsrb/GTSRB/Final_Test/Images/*.ppm and <root>/gtsrb/GT-final_test.csv"
    )
    train = _open(tvd.GTSRB, root, howto, split="train", download=download)
    test = _open(tvd.GTSRB, root, howto, split="test", download=download)
    samples: list[tuple[str, int]] = list(_attr(train, "_samples"))
    keys = []
    for path, cls in samples:
        match = _TRACK_FILE.match(Path(path).name)
        if match is None:
            raise ValueError(f"GTSRB training file {path!r} is not named <track>_<frame>.ppm")
        keys.append((cls, int(match.group(1)), int(match.group(2))))
    track_ids = {key: i for i, key in enumerate(sorted({(c, t) for c, t, _ in keys}))}
    groups = np.asarray([track_ids[(c, t)] for c, t, _ in keys], dtype=np.int64)
    if one_frame_per_track:
        frames: dict[int, list[tuple[int, int]]] = {}
        for index, (_, _, frame) in enumerate(keys):
            frames.setdefault(int(groups[index]), []).append((frame, index))
        chosen = sorted(sorted(f)[len(f) // 2][1] for f in frames.values())
        samples = [samples[i] for i in chosen]
        groups = groups[chosen]
    return ImageDataset(
        name="gtsrb",
        classes=[f"{i:05d}" for i in range(43)],
        train=_split_from_samples(samples, groups),
        test=_split_from_samples(list(_attr(test, "_samples"))),
        allow_flip=False,  # a mirrored sign can be another class (keep left / keep right)
    )


# --- FGVC Aircraft --------------------------------------------------------------------------


def load_aircraft(root: str | Path, download: bool = False) -> ImageDataset:
    """FGVC-Aircraft, 100 variants, trainval (6,667) / test (3,333) as in the paper."""
    howto = "Use download=True (2.6 GB), or unpack fgvc-aircraft-2013b.tar.gz into <root>/fgvc-aircraft-2013b"
    splits = {}
    for split in ("trainval", "test"):
        ds = _open(tvd.FGVCAircraft, root, howto, split=split, annotation_level="variant", download=download)
        paths = list(_attr(ds, "_image_files"))
        labels = np.asarray(_attr(ds, "_labels"), dtype=np.int64)
        splits[split] = (ds.classes, Split(labels=labels, decoder=FileDecoder(paths)))
    return ImageDataset("aircraft", list(splits["trainval"][0]), splits["trainval"][1], splits["test"][1])


# --- Stanford Cars ---------------------------------------------------------------------------

CARS_LAYOUT = """\
Stanford Cars cannot be downloaded automatically (its original host is gone). Obtain the
files (for example from the Kaggle mirror) and place them as torchvision.datasets.StanfordCars expects:
  <root>/stanford_cars/cars_train/*.jpg
  <root>/stanford_cars/cars_test/*.jpg
  <root>/stanford_cars/cars_test_annos_withlabels.mat
  <root>/stanford_cars/devkit/cars_meta.mat
  <root>/stanford_cars/devkit/cars_train_annos.mat"""


def load_cars(root: str | Path, download: bool = False) -> ImageDataset:
    """Stanford Cars, 196 classes, train (8,144) / test (8,041)."""
    if download and not (Path(root) / "stanford_cars").is_dir():
        raise DatasetNotFoundError(f"download=True is not supported for Stanford Cars.\n{CARS_LAYOUT}")
    splits = [_open(tvd.StanfordCars, root, "\n" + CARS_LAYOUT, split=s) for s in ("train", "test")]
    return ImageDataset(
        "cars",
        list(splits[0].classes),
        _split_from_samples(list(_attr(splits[0], "_samples"))),
        _split_from_samples(list(_attr(splits[1], "_samples"))),
    )


# --- Any image folder ------------------------------------------------------------------------


class _ImageFiles:
    """ImageFolder's file filter: an image extension, a regular file, each file once.

    torchvision's own filter checks the extension only, and its walk follows symbolic links: a
    link that loops lists the same images at every depth (copies that then land in both the
    training and the validation split), and a FIFO named ``*.png`` hangs the decoder. Files are
    kept once by their real path, so links that gather a folder from elsewhere still work.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)
        self.seen: set[str] = set()
        self.repeated = 0
        self.not_files: list[str] = []
        self._looped: dict[str, bool] = {}  # by folder: a walk lists thousands of files in one

    def __call__(self, path: str) -> bool:
        if not has_file_allowed_extension(path, IMG_EXTENSIONS):
            return False
        folder = os.path.dirname(path)
        if folder not in self._looped:
            self._looped[folder] = self._through_a_loop(folder)
        if self._looped[folder]:
            self.repeated += 1
            return False
        if not os.path.isfile(path):  # a FIFO, socket or device named like an image, a broken link
            self.not_files.append(path)
            return False
        real = os.path.realpath(path)
        if real in self.seen:
            self.repeated += 1
            return False
        self.seen.add(real)
        return True

    def _through_a_loop(self, folder: str) -> bool:
        """Whether ``folder``, or one between it and its class folder, leads back to the class folder
        or above it: there, the walk would list other classes' images under this class."""
        parts = Path(os.path.relpath(folder, self.folder)).parts
        class_dir = os.path.join(self.folder, parts[0])
        class_real = os.path.realpath(class_dir)
        inner = class_dir
        for part in parts[1:]:
            inner = os.path.join(inner, part)
            real = os.path.realpath(inner)
            if class_real == real or class_real.startswith(real.rstrip(os.sep) + os.sep):
                return True
        return False

    def report(self) -> None:
        if self.repeated:
            warnings.warn(
                f"image folder {self.folder!r}: {self.repeated} paths reach an image already listed "
                "(symbolic links, perhaps a loop); each image is used once",
                stacklevel=3,
            )
        if self.not_files:
            warnings.warn(
                f"image folder {self.folder!r}: skipped {len(self.not_files)} entries named like images "
                f"that are not regular files (e.g. {self.not_files[0]!r})",
                stacklevel=3,
            )


def load_imagefolder(
    root: str | Path, download: bool = False, allow_flip: bool = True, channels: int = 3
) -> ImageDataset:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` with the same class folders, decoded
    as RGB (``channels=3``) or greyscale (``channels=1``, for a 1-channel source network)."""
    if download:
        raise ValueError("dataset 'imagefolder' reads local folders; download=True is not supported")
    if channels not in (1, 3):
        raise ValueError(f"imagefolder: channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")
    root = Path(root)
    trees = {}
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise DatasetNotFoundError(
                f"image folder {str(folder.resolve())!r} does not exist: 'imagefolder' needs "
                "<data_root>/train/<class>/<image> and <data_root>/test/<class>/<image>"
            )
        images = _ImageFiles(folder)
        try:
            trees[split] = tvd.ImageFolder(str(folder), is_valid_file=images)
        except FileNotFoundError as error:  # raised for an empty class folder
            raise ValueError(f"image folder {str(folder)!r}: {error}") from error
        images.report()
    if trees["train"].classes != trees["test"].classes:
        only = sorted(set(trees["train"].classes) ^ set(trees["test"].classes))
        raise ValueError(f"train and test class folders differ under {str(root)!r}: {only[:10]}")
    return ImageDataset(
        "imagefolder",
        list(trees["train"].classes),
        _split_from_samples(trees["train"].samples, channels=channels),
        _split_from_samples(trees["test"].samples, channels=channels),
        channels=channels,
        allow_flip=allow_flip,
    )
