"""Instance sets: declared, versioned lists of fine-tuning runs, split into train and test.

A controller meta-trained over many fine-tuning runs is only evidence of anything if the runs it
learned from and the runs it is judged on are fixed in advance and kept apart (DACBench's users ask
for this first). An :class:`Instance` is one fine-tuning run, fully determined: the target dataset,
the source network and its weights, the sampling rate, the data seed (which fixes the subset, the
validation split and the new head) and the number of epochs. An :class:`InstanceSet` is a file of
them with named splits, each a train and a test list of instance ids::

    instances = InstanceSet.load("v1")            # finetune_gym/instance_sets/v1.json
    train = instances.split("1", "train")         # GTSRB held out
    env = gym.make("FineTune-Tasks-v0", instance_set="v1", split="1", part="train")

The shipped sets are written by :func:`declare_v1` (the declaration is the code; the JSON file is
its versioned record, and a test keeps the two equal): changing what a version holds means a new
version, so a result always names the instances it came from.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import presets
from .datasets.sampling import check_sampling_rate
from .models.resnets import CIFAR_FILES

FORMAT = "finetune-gym-instances-1"
SETS_DIR = Path(__file__).resolve().parent / "instance_sets"
# The real target datasets in ../shared/data read as ImageFolder (64 px, read at 32 px).
IMAGEFOLDER_DATASETS = ("sign_digits", "clothing10", "omniglot_alphabets", "oracle_mnist")
DATASETS = ("digits", "gtsrb", *IMAGEFOLDER_DATASETS)
SOURCES = ("digits_resnet8", *(f"cifar_resnet{depth}" for depth in sorted(CIFAR_FILES)))
PARTS = ("train", "test")
# Every instance's batch size: the grid's (benchmarks/grid.py), so that a test instance is a grid
# cell and its baselines' results are the grid's.
BATCH_SIZE = 32


@dataclass(frozen=True)
class Instance:
    """One fine-tuning run, fully determined (see the module's docstring)."""

    dataset: str
    source: str
    sampling_rate: float
    seed: int
    epochs: int

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"instance dataset {self.dataset!r} is unknown: choose one of {DATASETS}")
        if self.source not in SOURCES:
            raise ValueError(f"instance source {self.source!r} is unknown: choose one of {SOURCES}")
        if (self.dataset == "digits") != (self.source == "digits_resnet8"):
            raise ValueError(
                f"instance {self.dataset!r} from {self.source!r}: the built-in digits go with their own "
                "ResNet-8 source (digits_resnet8) and only with it"
            )
        check_sampling_rate(self.sampling_rate)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"instance seed must be an integer >= 0, got {self.seed!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"instance epochs must be a positive integer, got {self.epochs!r}")

    @property
    def id(self) -> str:
        """A readable, unique name: ``dataset/source/r<rate>/s<seed>/e<epochs>``."""
        return f"{self.dataset}/{self.source}/r{self.sampling_rate:g}/s{self.seed}/e{self.epochs}"

    @property
    def depth(self) -> int | None:
        """The CIFAR source's depth (None for the built-in digits' ResNet-8)."""
        return None if self.source == "digits_resnet8" else int(self.source.removeprefix("cifar_resnet"))

    def env_kwargs(self, data_root: str | Path | None = None, device: str = "cpu") -> dict[str, Any]:
        """The :class:`~finetune_gym.env.FineTuneEnv` arguments of this run (data and source
        checkpoints under ``data_root``, default :func:`~finetune_gym.presets.data_root`)."""
        run = {"sampling_rate": self.sampling_rate, "seed": self.seed, "epochs_per_episode": self.epochs}
        if self.dataset == "digits":
            return {**presets.digits(), "device": device, **run}
        root = Path(presets.data_root() if data_root is None else data_root)
        depth = self.depth
        assert depth is not None
        target = presets.gtsrb(root) if self.dataset == "gtsrb" else presets.imagefolder(root / self.dataset)
        source = presets.cifar_source(presets.cifar_checkpoint(root, depth), depth)
        return {**source, **target, "batch_size": BATCH_SIZE, "device": device, **run}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class InstanceSet:
    """Instances by id, and named splits of them into train and test (see the module's docstring)."""

    def __init__(
        self,
        name: str,
        instances: Iterable[Instance],
        splits: dict[str, dict[str, Sequence[str]]],
        description: str = "",
    ) -> None:
        self.name, self.description = name, description
        self.instances: dict[str, Instance] = {}
        for instance in instances:
            if instance.id in self.instances:
                raise ValueError(f"instance set {name!r} lists {instance.id} twice")
            self.instances[instance.id] = instance
        self.splits: dict[str, dict[str, list[str]]] = {}
        for split, parts in splits.items():
            if set(parts) != set(PARTS):
                raise ValueError(f"split {split!r} of {name!r} must have exactly the parts {PARTS}")
            unknown = sorted({i for part in parts.values() for i in part} - set(self.instances))
            if unknown:
                raise ValueError(
                    f"split {split!r} of {name!r} names instances it does not hold: {unknown[:5]}"
                )
            shared = sorted(set(parts["train"]) & set(parts["test"]))
            if shared:
                raise ValueError(f"split {split!r} of {name!r} has instances in train and test: {shared[:5]}")
            self.splits[split] = {part: list(parts[part]) for part in PARTS}

    def split(self, split: str, part: str) -> list[Instance]:
        """The instances of ``part`` (train or test) of split ``split``, in the file's order."""
        if split not in self.splits:
            raise ValueError(
                f"instance set {self.name!r} has no split {split!r}: it has {sorted(self.splits)}"
            )
        if part not in PARTS:
            raise ValueError(f"part {part!r}: choose one of {PARTS}")
        return [self.instances[i] for i in self.splits[split][part]]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "description": self.description,
            "instances": [instance.to_json() for instance in self.instances.values()],
            "splits": self.splits,
        }

    def save(self, path: str | Path) -> None:
        """The set as JSON, one instance and one split part a line (readable diffs between versions)."""
        data = self.to_json()
        lines = [f' "{key}": {json.dumps(data[key])},' for key in ("format", "name", "description")]
        lines.append(' "instances": [')
        lines.append(",\n".join(f"  {json.dumps(item)}" for item in data["instances"]))
        lines.append(" ],")
        lines.append(' "splits": {')
        splits = [
            f'  "{split}": {{\n'
            + ",\n".join(f'   "{part}": {json.dumps(ids)}' for part, ids in parts.items())
            + "\n  }"
            for split, parts in data["splits"].items()
        ]
        lines.append(",\n".join(splits))
        lines.append(" }")
        Path(path).write_text("{\n" + "\n".join(lines) + "\n}\n")

    @classmethod
    def load(cls, name_or_path: str | Path) -> InstanceSet:
        """A shipped set by name (``"v1"``) or a set's JSON file."""
        path = Path(name_or_path)
        if not path.suffix:
            path = SETS_DIR / f"{name_or_path}.json"
            if not path.is_file():
                shipped = sorted(p.stem for p in SETS_DIR.glob("*.json"))
                raise ValueError(
                    f"no shipped instance set {str(name_or_path)!r}: choose one of {shipped} or give a file"
                )
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read instance set {str(path)!r}: {error}") from error
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{str(path)!r} is not an instance set (format {FORMAT!r} expected)")
        try:
            instances = [Instance(**item) for item in data["instances"]]
        except TypeError as error:
            raise ValueError(f"{str(path)!r}: an instance has wrong fields ({error})") from error
        return cls(data["name"], instances, data["splits"], data.get("description", ""))


# -- the shipped sets ------------------------------------------------------------------------

TRAIN_RATES = (0.15, 0.3)
TRAIN_SEEDS = (10, 11, 12)  # not the grid's seeds 0-4: other subsets of the same datasets
TRAIN_EPOCHS = 15  # shorter than the 50-epoch test runs: about 100-500 steps; GTSRB test 250-1650
TEST_EPOCHS = 50  # the grid's budget: a test instance is a grid cell
TEST_SEEDS = (0, 1, 2, 3, 4)


def declare_v1() -> InstanceSet:
    """Version 1. Training: the four ImageFolder domains from the four CIFAR-10 ResNets (20, 32,
    44, 56) and the built-in digits from their ResNet-8, at 15% and 30%, three data seeds, 15
    epochs (102 runs). Split 1 holds out GTSRB (ResNet-20, the grid's protocol: 15/30/50/100%,
    seeds 0-4, 50 epochs); split 2 holds out clothing10 (ResNet-20, 15% and 100%, seeds 0-4, 50
    epochs) and trains without it. GTSRB is in no training part."""
    train = [
        Instance(dataset, f"cifar_resnet{depth}", rate, seed, TRAIN_EPOCHS)
        for dataset in IMAGEFOLDER_DATASETS
        for depth in sorted(CIFAR_FILES)
        for rate in TRAIN_RATES
        for seed in TRAIN_SEEDS
    ] + [
        Instance("digits", "digits_resnet8", rate, seed, TRAIN_EPOCHS)
        for rate in TRAIN_RATES
        for seed in TRAIN_SEEDS
    ]
    gtsrb = [
        Instance("gtsrb", "cifar_resnet20", rate, seed, TEST_EPOCHS)
        for rate in (0.15, 0.3, 0.5, 1.0)
        for seed in TEST_SEEDS
    ]
    clothing = [
        Instance("clothing10", "cifar_resnet20", rate, seed, TEST_EPOCHS)
        for rate in (0.15, 1.0)
        for seed in TEST_SEEDS
    ]
    splits = {
        "1": {"train": [i.id for i in train], "test": [i.id for i in gtsrb]},
        "2": {"train": [i.id for i in train if i.dataset != "clothing10"], "test": [i.id for i in clothing]},
    }
    return InstanceSet("v1", [*train, *gtsrb, *clothing], splits, inspect.cleandoc(declare_v1.__doc__ or ""))


DECLARED = {"v1": declare_v1}
