"""`siefpn-deploy convert`: import a checkpoint of the paper's official (detectron2) code."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_config_file, add_overrides

IMPORT_DIR = Path("output") / "imported"  # where a converted checkpoint goes when no --output is given

HELP = "import a detectron2 / official Dual SIE-FPN checkpoint (.pth or .pkl)"
DESCRIPTION = ("Convert a checkpoint of the paper's official (detectron2) code into this project's format: weights, "
               "config and classes in one .pth that every stage reads.")
EPILOG = f"""\
examples:
  siefpn-deploy convert --from detectron2 retinanet_r50_dual_sie_fpn.pth --config-file retinanet_R50_1x
  siefpn-deploy convert --from detectron2 model_final.pth --config-file mask_rcnn_R101_1x \\
      --output {IMPORT_DIR}/mask_rcnn_R101.pth
  siefpn-deploy convert --from detectron2 model_best.pth --config-file faster_rcnn_R50_1x \\
      --classes datasets/uavdt/annotations/instances_train.json       # a model trained on your own classes

then, unchanged:
  siefpn-deploy train --eval-only --config-file retinanet_R50_1x MODEL.WEIGHTS {IMPORT_DIR}/retinanet_R50_1x.pth
  siefpn-deploy export --config-file retinanet_R50_1x MODEL.WEIGHTS {IMPORT_DIR}/retinanet_R50_1x.pth

What is read: a .pth (torch.load weights_only=True; {{'model': ...}} with or without detectron2's trainer
state, or a bare state dict) or a .pkl of numpy arrays (a restricted unpickler: a pickle that asks for
anything but numpy's array reconstructors is refused before it runs). The architecture, ResNet depth,
class count and pyramid width are read from the tensors and checked against the config; every key must
map and every parameter must be filled, or nothing is written.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", nargs=2, required=True, metavar=("FRAMEWORK", "CHECKPOINT"),
                        help="detectron2 and its model_final.pth, model_best.pth or model-zoo .pkl")
    add_config_file(parser, "the preset (or YAML) the model was trained with, e.g. retinanet_R50_1x", required=True)
    parser.add_argument("--output", type=Path, metavar="PATH", help=f"default: {IMPORT_DIR}/<config name>.pth")
    parser.add_argument("--classes", metavar="JSON",
                        help="a COCO instances JSON whose categories the model predicts (default: COCO's 80)")
    add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from ..convert.detectron2 import convert_checkpoint, read_classes
    from ..core.config import load_config, resolve_config_file
    from ..core.errors import UserError

    framework, checkpoint = args.source
    if framework != "detectron2":
        raise UserError(f"--from {framework}: only detectron2 checkpoints are supported")
    cfg = load_config(args.config_file, list(args.opts))
    stem = Path(str(args.config_file)).name.removesuffix(".yaml")
    output = args.output or IMPORT_DIR / f"{stem}.pth"
    if output.suffix != ".pth":
        raise UserError(f"--output must be a .pth file, got {output}")
    summary = convert_checkpoint(checkpoint, cfg, output=output, classes=read_classes(args.classes),
                                 config_name=str(resolve_config_file(args.config_file)))
    print(f"[convert] {checkpoint}: {summary['architecture']} R{summary['depth']}, {summary['num_classes']} "
          f"classes, {summary['keys']} tensors, every key mapped -> {output}")
    return 0
