"""The `siefpn-deploy` command line: one subcommand per stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError, one_line

EPILOG_TRAIN = """\
examples:
  siefpn-deploy train --config-file configs/synth_retinanet_R18.yaml
  siefpn-deploy train --config-file configs/retinanet_R50_1x.yaml --num-gpus 8 SOLVER.IMS_PER_BATCH 16 SOLVER.BASE_LR 0.01
  siefpn-deploy train --config-file configs/synth_retinanet_R18.yaml --resume      # after a kill or Ctrl-C
  siefpn-deploy train --config-file configs/synth_retinanet_R18.yaml --eval-only MODEL.WEIGHTS output/synth_retinanet_R18/model_final.pth

Any config key can be overridden with KEY VALUE pairs after the options (values are parsed as YAML).
Presets: see `siefpn-deploy train --list-presets`.
"""


def _cmd_synth(args: argparse.Namespace) -> int:
    from .data import generate_synthetic

    summary = generate_synthetic(
        args.output, num_train=args.num_train, num_val=args.num_val, seed=args.seed,
        min_side=args.min_side, max_side=args.max_side,
    )
    splits = ", ".join(f"{name}: {s['images']} images, {s['annotations']} objects" for name, s in summary["splits"].items())
    print(f"wrote {args.output} ({len(summary['categories'])} classes; {splits})")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import PRESET_DIR, load_config, resolve_config_file
    from .engine.launch import launch
    from .engine.trainer import evaluate_only

    if args.list_presets:
        for p in sorted(PRESET_DIR.glob("*.yaml")):
            if not p.name.startswith("Base"):
                print(f"configs/{p.name}")
        return 0
    if args.config_file is None:
        raise UserError("--config-file is required (try --list-presets)")
    cfg = load_config(args.config_file, args.opts)
    name = str(resolve_config_file(args.config_file))
    if args.eval_only:
        evaluate_only(cfg, config_name=name)
        return 0
    launch(_train_entry, (cfg, name, args.resume), num_processes=args.num_gpus)
    return 0


def _train_entry(cfg, name: str, resume: bool, *, rank: int, world_size: int) -> None:
    from .engine.trainer import train

    train(cfg, config_name=name, resume=resume, rank=rank, world_size=world_size)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        data_dir=Path(args.data), output_dir=Path(args.output), config_file=args.config_file,
        overrides=args.opts, regenerate=args.regenerate,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="siefpn-deploy",
        description="Train, evaluate and deploy Dual SIE-FPN detectors (RetinaNet, Faster R-CNN, Mask R-CNN).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="datasets: generate the embedded synthetic COCO dataset")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data_sub.add_parser(
        "synth", help="write a deterministic synthetic COCO-format dataset (train/val images + instances JSON)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    synth.add_argument("--output", default="datasets/synth", help="dataset folder to write")
    synth.add_argument("--num-train", type=int, default=1200, help="training images")
    synth.add_argument("--num-val", type=int, default=200, help="validation images")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    synth.add_argument("--min-side", type=int, default=192, help="smallest image side in pixels")
    synth.add_argument("--max-side", type=int, default=352, help="largest image side in pixels")
    synth.set_defaults(func=_cmd_synth)

    train = sub.add_parser(
        "train", help="train or evaluate a detector (same shape as detectron2's train_net.py)",
        epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--config-file", metavar="FILE", help="YAML config, or the name of a shipped preset")
    train.add_argument("--num-gpus", type=int, default=1, metavar="N",
                       help="processes to train with (DDP: NCCL on GPUs, gloo on the CPU); default 1")
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint")
    train.add_argument("--eval-only", action="store_true", help="only evaluate MODEL.WEIGHTS on DATASETS.TEST_*")
    train.add_argument("--list-presets", action="store_true", help="list the shipped config presets and exit")
    train.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    train.set_defaults(func=_cmd_train)

    demo = sub.add_parser(
        "demo", help="the end-to-end job on the embedded synthetic dataset",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Generate the synthetic dataset (once), train a small Dual SIE-FPN RetinaNet on the CPU, "
        "evaluate it with COCO metrics and print a summary.",
    )
    demo.add_argument("--data", default="datasets/synth", help="synthetic dataset folder (generated if missing)")
    demo.add_argument("--output", default="output/demo", help="training output folder")
    demo.add_argument("--config-file", default="configs/synth_retinanet_R18.yaml", help="training preset")
    demo.add_argument("--regenerate", action="store_true", help="regenerate the dataset even if present")
    demo.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
