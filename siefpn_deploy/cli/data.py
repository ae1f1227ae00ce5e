"""`siefpn-deploy data synth`: the embedded synthetic COCO-format dataset (stage `pipeline.synthetic_dataset`)."""

from __future__ import annotations

import argparse
from pathlib import Path

GROUP = "data"
GROUP_HELP = "datasets: generate the embedded synthetic COCO dataset"
NAME = "synth"
HELP = "write a deterministic synthetic COCO-format dataset (train/val images + instances JSON)"
DESCRIPTION = ("Write NAME/train, NAME/val and NAME/annotations/instances_{train,val}.json: six shape classes drawn "
               "on textured backgrounds, the same bytes for the same seed and sizes. The synth presets "
               "(configs/synth_*.yaml) train and evaluate on the default folder.")
EPILOG = """\
examples:
  siefpn-deploy data synth                                  # the benchmark level, where the synth presets look
  siefpn-deploy data synth --level easy --output datasets/synth-easy          # the demo's scenes
  siefpn-deploy data synth --output /tmp/synth --num-train 40 --num-val 8     # a tiny one for a smoke test
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..core.config import DatasetsConfig
    from ..data.synth import BENCHMARK, EASY, LEVELS
    from ..pipeline.dataset import DatasetOptions

    # the folder the configs' DATASETS.* point at by default (data.synth.split_paths' layout)
    parser.add_argument("--output", type=Path, default=Path(DatasetsConfig.TRAIN_IMAGES).parent, metavar="DIR",
                        help="dataset folder to write (default %(default)s)")
    parser.add_argument("--num-train", type=int, default=DatasetOptions.num_train, metavar="N",
                        help="training images (default %(default)s)")
    parser.add_argument("--num-val", type=int, default=DatasetOptions.num_val, metavar="N",
                        help="validation images (default %(default)s)")
    parser.add_argument("--seed", type=int, default=DatasetOptions.seed,
                        help="same seed, same bytes (default %(default)s)")
    parser.add_argument("--min-side", type=int, default=DatasetOptions.min_side, metavar="PX",
                        help="smallest image side in pixels (default %(default)s)")
    parser.add_argument("--max-side", type=int, default=DatasetOptions.max_side, metavar="PX",
                        help="largest image side in pixels (default %(default)s)")
    parser.add_argument(
        "--level", choices=list(LEVELS), default=DatasetOptions.level,
        help=f"{BENCHMARK.name}: up to {BENCHMARK.max_objects} objects from {BENCHMARK.min_object_size:g} px on busy "
        f"backgrounds (every benchmark figure); {EASY.name}: up to {EASY.max_objects} objects of "
        f"{EASY.min_object_size:g} px to {EASY.max_object_fraction:g} of the short side on calmer backgrounds (the "
        "demo's); default %(default)s")


def run(args: argparse.Namespace) -> int:
    from ..core.fileio import read_json
    from ..pipeline import DatasetOptions, synthetic_dataset

    # `data synth` always writes, over whatever is in the folder
    result = synthetic_dataset(DatasetOptions(
        root=args.output, level=args.level, num_train=args.num_train, num_val=args.num_val, seed=args.seed,
        min_side=args.min_side, max_side=args.max_side, regenerate=True))
    counts = {split: read_json(paths[1]) for split, paths in (("train", result.train), ("val", result.val))}
    classes = len(counts["val"]["categories"])
    splits = ", ".join(f"{name}: {len(c['images'])} images, {len(c['annotations'])} objects"
                       for name, c in counts.items())
    print(f"wrote {args.output} ({classes} classes; {splits})")
    return 0
