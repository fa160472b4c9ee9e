"""CUB-200-2011 read from its official folder layout (torchvision has no loader for it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision.datasets.utils import download_and_extract_archive

from .base import DatasetNotFoundError, FileDecoder, ImageDataset, Split

URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
MD5 = "97eceeb196236b17998738112f37df78"
FILES = ("images.txt", "train_test_split.txt", "image_class_labels.txt", "classes.txt")


def _read_table(path: Path) -> dict[int, str]:
    rows = (line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())
    return {int(key): value.strip() for key, value in rows}


def load_cub(root: str | Path, download: bool = False) -> ImageDataset:
    """CUB-200-2011, 200 bird species, the official train (5,994) / test (5,794) split."""
    base = Path(root) / "CUB_200_2011"
    if download and not all((base / f).is_file() for f in FILES):
        download_and_extract_archive(URL, download_root=str(root), filename="CUB_200_2011.tgz", md5=MD5)
    missing = [f for f in FILES if not (base / f).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"CUB-200-2011 not found under {str(base.resolve())!r} (missing {', '.join(missing)}). "
            f"Use download=True, or unpack CUB_200_2011.tgz ({URL}) into {str(Path(root).resolve())!r} "
            "so that <root>/CUB_200_2011/images.txt and <root>/CUB_200_2011/images/ exist"
        )
    images = _read_table(base / "images.txt")
    is_train = {k: v == "1" for k, v in _read_table(base / "train_test_split.txt").items()}
    label_of = {k: int(v) - 1 for k, v in _read_table(base / "image_class_labels.txt").items()}
    classes = [name for _, name in sorted(_read_table(base / "classes.txt").items())]
    splits = {}
    for train in (True, False):
        ids = sorted(k for k in images if is_train[k] == train)
        splits[train] = Split(
            labels=np.asarray([label_of[k] for k in ids], dtype=np.int64),
            decoder=FileDecoder([str(base / "images" / images[k]) for k in ids]),
        )
    return ImageDataset("cub", classes, splits[True], splits[False])
