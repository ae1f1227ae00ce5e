"""`siefpn-deploy train`: train or evaluate a detector (stage `pipeline.train_detector`)."""

from __future__ import annotations

import argparse

from .options import add_config_file, add_overrides

HELP = "train or evaluate a detector (same shape as detectron2's train_net.py)"
DESCRIPTION = ("Train a Dual SIE-FPN RetinaNet / Faster R-CNN / Mask R-CNN from a config into its OUTPUT_DIR "
               "(checkpoints, metrics.jsonl, config.yaml, model_final.pth), evaluating on DATASETS.TEST_* at the end; "
               "or, with --eval-only, evaluate MODEL.WEIGHTS. A finished run is trained again: --resume continues "
               "an interrupted one from OUTPUT_DIR/last_checkpoint.")
EPILOG = """\
examples:
  siefpn-deploy train --config-file configs/synth_retinanet_R18.yaml
  siefpn-deploy train --config-file configs/retinanet_R50_1x.yaml --num-gpus 8 SOLVER.IMS_PER_BATCH 16 SOLVER.BASE_LR 0.01
  siefpn-deploy train --config-file configs/synth_retinanet_R18.yaml --resume      # after a kill or Ctrl-C
  siefpn-deploy train --config-file configs/synth_retinanet_R18.yaml --eval-only MODEL.WEIGHTS output/synth_retinanet_R18/model_final.pth

Any config key can be overridden with KEY VALUE pairs after the options (values are parsed as YAML).
Presets: see `siefpn-deploy train --list-presets`.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..pipeline.train import TrainOptions

    add_config_file(parser, "YAML config, or the name of a shipped preset")
    parser.add_argument("--num-gpus", type=int, default=TrainOptions.num_gpus, metavar="N",
                        help="processes to train with (DDP: NCCL on GPUs, gloo on the CPU); default %(default)s")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate MODEL.WEIGHTS on DATASETS.TEST_*")
    parser.add_argument("--list-presets", action="store_true", help="list the shipped config presets and exit")
    add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from ..core.config import PRESET_DIR
    from ..core.errors import UserError
    from ..pipeline import TrainOptions, train_detector

    if args.list_presets:
        for p in sorted(PRESET_DIR.glob("*.yaml")):
            if not p.name.startswith("Base"):
                print(f"configs/{p.name}")
        return 0
    if args.config_file is None:
        raise UserError("--config-file is required (try --list-presets)")
    if args.num_gpus < 1:
        raise UserError(f"--num-gpus must be >= 1, got {args.num_gpus}")
    # the command trains (a finished run of the same config is trained again); --resume continues one
    train_detector(TrainOptions(config_file=args.config_file, overrides=tuple(args.opts), resume=args.resume,
                                reuse=False, num_gpus=args.num_gpus, eval_only=args.eval_only))
    return 0
