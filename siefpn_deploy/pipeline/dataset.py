"""Stage: the embedded synthetic COCO-format dataset (`siefpn-deploy data synth`, the demo, benchmarks and
test fixtures)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from ..data import generate_synthetic
from ..data.synth import LEVELS, generated_at, level_of, split_paths

_GENERATE = generate_synthetic.__kwdefaults__  # one definition of the generator's defaults: data/synth.py


@dataclass(frozen=True)
class DatasetOptions:
    root: Path
    level: str = "benchmark"  # data.synth.LEVELS
    num_train: int = _GENERATE["num_train"]
    num_val: int = _GENERATE["num_val"]
    seed: int = _GENERATE["seed"]
    min_side: int = _GENERATE["min_side"]
    max_side: int = _GENERATE["max_side"]
    regenerate: bool = False  # write it again even when a dataset of this level is there
    progress: bool = True


@dataclass(frozen=True)
class DatasetResult:
    root: Path
    level: str
    generated: bool  # False: an existing dataset of the same level was reused
    train: tuple[Path, Path]  # (image folder, instances JSON)
    val: tuple[Path, Path]

    def overrides(self) -> list[str]:
        """The config overrides that train and evaluate on this dataset."""
        (train_images, train_json), (val_images, val_json) = self.train, self.val
        return ["DATASETS.TRAIN_IMAGES", str(train_images), "DATASETS.TRAIN_ANNOTATIONS", str(train_json),
                "DATASETS.TEST_IMAGES", str(val_images), "DATASETS.TEST_ANNOTATIONS", str(val_json)]


def dataset_paths(root: Path, level: str, generated: bool) -> DatasetResult:
    return DatasetResult(root=root, level=level, generated=generated, train=split_paths(root, "train"),
                         val=split_paths(root, "val"))


def synthetic_dataset(options: DatasetOptions, *, log=print) -> DatasetResult:
    """Generate the dataset unless one of the same level is there. A dataset drawn at another level, or at an
    earlier version of this one, is refused rather than overwritten (unless `regenerate`). The sizes and seed
    of an existing dataset are not checked: they change what is drawn, not what a reader expects."""
    if options.level not in LEVELS:
        raise UserError(f"--level must be one of {', '.join(LEVELS)}, got {options.level!r}")
    level = LEVELS[options.level]
    root = Path(options.root)
    annotations = split_paths(root, "val")[1]
    if options.regenerate or not annotations.is_file():
        log(f"[data] generating the synthetic dataset ({level.name} level) in {root}")
        generate_synthetic(root, num_train=options.num_train, num_val=options.num_val, seed=options.seed,
                           min_side=options.min_side, max_side=options.max_side, level=level,
                           progress=options.progress)
        return dataset_paths(root, level.name, generated=True)
    if not generated_at(annotations, level):
        found = level_of(annotations)
        what = (f"the {found} level, not the {level.name} level" if found != level.name
                else f"the {level.name} level as an earlier version drew it")
        raise UserError(f"{root} holds synthetic data of {what}; rerun with --regenerate to rewrite it, "
                        "or give --data another folder")
    log(f"[data] using the synthetic dataset in {root} ({level.name} level)")
    return dataset_paths(root, level.name, generated=False)
