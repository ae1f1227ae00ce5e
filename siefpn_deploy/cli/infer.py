"""`siefpn-deploy infer`: run any artifact on images (runtime.infer)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_checkpoint_config, add_detections_json, add_device, add_runtime, add_source, add_threads

HELP = "run any artifact on images: boxes, labels and masks drawn to PNGs, COCO-style JSON"
DESCRIPTION = ("Run a .onnx, .pt2, .plan or .pth on an image or a folder of images, through the same preprocessing "
               "and postprocessing as parity and bench: detections drawn to PNGs and/or written as JSON.")
EPILOG = """\
examples:
  siefpn-deploy infer --artifact export/demo.onnx --source datasets/synth/val --save-vis out/vis --save-json out/dets.json
  siefpn-deploy infer --artifact export/demo.onnx --source datasets/synth/val --save-json out/results.json \\
      --annotations datasets/synth/annotations/instances_val.json          # COCO results, ready for COCOeval
  siefpn-deploy infer --artifact output/demo/model_final.pth --source photo.jpg --save-vis out/

Labels are 1..C as in siefpn_deploy/core/contract.py; the JSON carries each label's COCO category_id.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifact", required=True, type=Path, metavar="PATH",
                        help=".onnx, .pt2, .plan or a .pth checkpoint")
    add_source(parser)
    parser.add_argument("--save-vis", type=Path, metavar="DIR", help="write NAME.png with the detections drawn")
    add_detections_json(parser)
    add_checkpoint_config(parser)
    add_device(parser)
    add_runtime(parser, several=False)
    add_threads(parser)
    parser.add_argument("--batch", type=int, metavar="B",
                        help="images per canvas (default: one image per canvas, as training's evaluation and parity: "
                        "a batch's padding reaches the border detections of its smaller images)")


def run(args: argparse.Namespace) -> int:
    from ..runtime import Detector
    from ..runtime.infer import run_infer

    detector = Detector.from_path(args.artifact, device=args.device, config=args.config_file, runtime=args.runtime,
                                  threads=args.threads)
    run_infer(detector, args.source, save_vis=args.save_vis, save_json=args.save_json, annotations=args.annotations,
              batch_size=args.batch)
    return 0
