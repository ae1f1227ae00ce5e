"""`siefpn-deploy parity`: the COCO AP of every artifact beside PyTorch's, against per-precision budgets
(stage `pipeline.check_parity`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import REQUIRED_WEIGHTS, add_artifacts, add_config_file, add_overrides, add_report, add_runtime, runtimes

HELP = "COCO AP of every artifact beside PyTorch's, with budgets (exit 1 when one is broken or cannot run)"
DESCRIPTION = ("Evaluate PyTorch and every artifact on the same images through the same preprocessing, and hold each "
               "artifact's AP drop to its precision's budget: a CI or release gate.")
EPILOG = """\
examples:
  siefpn-deploy parity --config-file output/demo/config.yaml MODEL.WEIGHTS output/demo/model_final.pth \\
      --artifacts export/demo.onnx export/demo.fp16.onnx export/demo.int8.onnx engines/demo.int8.plan
  siefpn-deploy parity --config-file configs/retinanet_R50_1x.yaml --artifacts export/r50.int8.onnx \\
      --dataset datasets/coco/val2017 datasets/coco/annotations/instances_val2017.json --max-images 500 \\
      --budget int8=1.5 MODEL.WEIGHTS model_final.pth

Every artifact and the PyTorch model see the same images through the same preprocessing. Per artifact:
COCO bbox AP (and segm AP for Mask R-CNN), its difference from PyTorch in AP points, pass/fail against
its precision's budget (defaults {budgets}), and agreement with PyTorch's detections
(matched at IoU >= {match_iou:g} with the same class; box and score errors; non-finite values). Writes
parity.json, parity.md and parity.png; exits 1 when a budget is broken or an artifact could not run here (a
TensorRT engine without a GPU): a CI or release gate. --allow-not-run lets the second pass; the report still
says "not run: <reason>".
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..core.config import TestConfig
    from ..parity.check import DEFAULT_BUDGETS, MATCH_IOU
    from ..pipeline.parity import ParityJob

    budgets = " ".join(f"{k}={v}" for k, v in DEFAULT_BUDGETS.items())
    parser.epilog = EPILOG.format(budgets=budgets, match_iou=MATCH_IOU)
    add_config_file(parser, "the config the weights were trained with", required=True)
    add_artifacts(parser, ".onnx (ONNX Runtime or OpenVINO), .pt2 (AOTInductor) and .plan (TensorRT) artifacts to "
                  "compare with PyTorch")
    parser.add_argument("--dataset", nargs=2, type=Path, metavar=("IMAGES", "JSON"),
                        help="evaluation images and instances JSON (default: the config's DATASETS.TEST_*)")
    parser.add_argument("--budget", nargs="+", default=[], metavar="PREC=AP",
                        help=f"largest AP drop in points per precision (default {budgets}); a precision not given "
                        "keeps its default")
    parser.add_argument("--max-images", type=int, metavar="N", help="only the first N images")
    add_runtime(parser, several=True)
    parser.add_argument("--batch", type=int, metavar="B",
                        help=f"images per canvas, the same for every artifact (default TEST.IMS_PER_BATCH, "
                        f"{TestConfig.IMS_PER_BATCH}, as the train command's evaluation, so its PyTorch AP is the one "
                        "training printed)")
    parser.add_argument("--allow-not-run", action="store_true",
                        help="an artifact this machine cannot run (a TensorRT engine without a GPU) does not fail "
                        "the gate; it is still reported as not run, with the reason")
    add_report(parser, ParityJob.report_dir, "parity.json, parity.md and parity.png")
    add_overrides(parser, REQUIRED_WEIGHTS)


def run(args: argparse.Namespace) -> int:
    from ..parity.check import parse_budgets
    from ..parity.report import markdown
    from ..pipeline import ParityJob, check_parity

    result = check_parity(ParityJob(
        config_file=args.config_file, artifacts=tuple(args.artifacts), overrides=tuple(args.opts),
        dataset=tuple(args.dataset) if args.dataset else None, budgets=parse_budgets(args.budget),
        max_images=args.max_images, batch=args.batch, runtimes=runtimes(args), report_dir=args.report,
        allow_not_run=args.allow_not_run))
    print(markdown({**result.report, "date": "now"}))
    print(f"[parity] wrote {', '.join(map(str, result.written))}")
    not_run = [a["path"] for a in result.report["artifacts"] if a["status"] == "not run"]
    if not_run and not args.allow_not_run:
        print(f"[parity] FAIL: {len(not_run)} artifact(s) could not run here ({', '.join(not_run)}); "
              "--allow-not-run accepts that", file=sys.stderr)
    return 0 if result.passed else 1
