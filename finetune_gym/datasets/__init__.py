"""Target datasets by name: ``load_dataset("gtsrb", root, ...)``."""

from __future__ import annotations

import shutil
import urllib.error
from collections.abc import Callable
from pathlib import Path

from ..arguments import check_choice
from .base import DatasetNotFoundError, ImageDataset, Split
from .cub import load_cub
from .digits import load_digits
from .sampling import (
    check_sampling_rate,
    check_val_fraction,
    sample_and_split,
    sample_per_class,
    split_validation,
)
from .torchvision_sets import load_aircraft, load_cars, load_gtsrb, load_imagefolder

DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "aircraft": load_aircraft,
    "cub": load_cub,
    "cars": load_cars,
    "gtsrb": load_gtsrb,
    "imagefolder": load_imagefolder,
    "digits": load_digits,
}
NEEDS_ROOT = {"aircraft", "cub", "cars", "gtsrb", "imagefolder"}
DOWNLOADS = {"aircraft", "cub", "gtsrb"}  # the others' files are placed by hand


def load_dataset(
    name: str, root: str | Path | None = None, download: bool = False, **options
) -> ImageDataset:
    """List a registered dataset; ``options`` are the dataset's own (e.g. ``one_frame_per_track``)."""
    check_choice("dataset", name, sorted(DATASETS))
    if name in NEEDS_ROOT:
        if root is None:
            raise ValueError(
                f"dataset {name!r} needs data_root: the folder that holds (or will hold) its files"
            )
        if not download and not Path(root).is_dir():
            raise DatasetNotFoundError(
                f"data_root {str(Path(root).resolve())!r} does not exist: create it and place the "
                f"{name!r} files there" + (", or pass download=True" if name in DOWNLOADS else "")
            )
    created = root is not None and not Path(root).exists()
    try:
        return DATASETS[name](root, download, **options)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        if created:  # leave no empty folder behind for the next attempt to trip on
            shutil.rmtree(root, ignore_errors=True)
        reason = getattr(error, "reason", error)
        raise DatasetNotFoundError(
            f"downloading dataset {name!r} failed ({reason}); without a network, place its files under "
            f"{str(Path(root).resolve())!r} yourself and drop download=True"
        ) from error
    except TypeError as error:
        if "unexpected keyword" in str(error):
            raise ValueError(
                f"dataset {name!r} does not take option(s) {sorted(options)}: {error}"
            ) from error
        raise


__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "ImageDataset",
    "Split",
    "check_sampling_rate",
    "check_val_fraction",
    "load_dataset",
    "sample_and_split",
    "sample_per_class",
    "split_validation",
]
