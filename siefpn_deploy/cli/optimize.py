"""`siefpn-deploy optimize`: the fastest artifact of one model within an AP budget (stage
`pipeline.optimize_detector`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import add_config_file, add_overrides

HELP = "make every artifact a target can run, measure each, and keep the fastest within an AP budget"
DESCRIPTION = ("From one checkpoint: make every candidate the target runs (FP32, bf16, INT8 graphs in each runtime, the "
               ".pt2 ...), measure each one's AP against PyTorch (parity) and its latency (bench) on the same images "
               "and scenes, and write the fastest within --budget to DIR/best.* with its meta.json, beside a report "
               "of every candidate and why each lost.")
EPILOG = """\
examples:
  siefpn-deploy optimize --checkpoint output/demo/model_final.pth
  siefpn-deploy optimize --checkpoint output/demo/model_final.pth --onnx export/demo.onnx --no-pt2 --budget 0.5
  siefpn-deploy optimize --checkpoint model_final.pth --config-file configs/retinanet_R50_1x.yaml \\
      --dataset datasets/coco/val2017 datasets/coco/annotations/instances_val2017.json --max-images 500 \\
      --batch 4 --size 800 --output export/optimized/r50
  # then serve or deploy the winner (its meta.json names the runtime that won):
  siefpn-deploy serve --artifact export/optimized          # the folder: its best.*
  siefpn-deploy infer --artifact export/optimized/best.onnx --source photos/

Targets and their candidates:
  cpu       the FP32 graph in ONNX Runtime, OpenVINO f32 and OpenVINO bf16 (CPUs with native bf16), ONNX Runtime's
            CPU-INT8, NNCF's INT8 in OpenVINO (f32 and bf16 remainder), the .pt2 in Python; Mask R-CNN also with
            --max-det-masks; when every INT8 misses the budget, INT8 with its sensitive layers kept out
  cpp       the .pt2 through the C++ runtime (`siefpn-deploy cpp build` first)
  cuda      the FP32 and FP16 graphs in ONNX Runtime's CUDA provider, the CUDA .pt2 (needs a GPU)
  tensorrt  FP32, FP16 and INT8 engines (needs a GPU and TensorRT)
Candidates are made in DIR/candidates/ and reused when their sidecar says they are current, so a rerun only
measures again. The winner is the fastest by end-to-end p50 (preprocessing, model, box mapping, mask pasting)
whose AP loss (the worst of bbox and segm, AP points) is within --budget. DIR/optimize.md lists every candidate
with its ΔAP, latency, ratio to eager PyTorch and why it lost. Exit 1 when no candidate is within the budget.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..pipeline.optimize import MASK_ROWS, TARGETS, OptimizeJob

    parser.add_argument("--checkpoint", type=Path, required=True, metavar="PTH",
                        help="the trained weights (model_final.pth): PyTorch's AP is the reference")
    add_config_file(parser, "the config the weights were trained with (default: config.yaml beside --checkpoint)")
    parser.add_argument("--onnx", type=Path, metavar="ONNX",
                        help="an FP32 export of these weights to start from (default: export one, NMS in the graph; "
                        "for --target cpu a tensor-NMS export is exported again with ONNX's NonMaxSuppression, "
                        "which ONNX Runtime and OpenVINO run faster)")
    parser.add_argument("--target", choices=TARGETS, default=OptimizeJob.target,
                        help="where the winner will run (default %(default)s)")
    parser.add_argument("--budget", type=float, default=OptimizeJob.budget, metavar="AP",
                        help="AP points (0..100) the winner may lose against PyTorch (default %(default)s)")
    parser.add_argument("--batch", type=int, default=OptimizeJob.batch, metavar="B",
                        help="images per call the winner is timed at (default %(default)s)")
    parser.add_argument("--size", type=int, metavar="PX",
                        help="square input side it is timed at (default: the model's largest test input)")
    parser.add_argument("--dataset", nargs=2, type=Path, metavar=("IMAGES", "JSON"),
                        help="parity's images and instances JSON (default: the config's DATASETS.TEST_*)")
    parser.add_argument("--max-images", type=int, metavar="N", help="parity on the first N images only")
    parser.add_argument("--num-calib", type=int, default=OptimizeJob.num_calib, metavar="N",
                        help="INT8 calibration images from the train split (default %(default)s)")
    parser.add_argument("--iters", type=int, default=OptimizeJob.iters, metavar="N",
                        help="timed runs per candidate (default %(default)s)")
    parser.add_argument("--no-pt2", dest="pt2", action="store_false",
                        help="leave out the AOTInductor package (compiled for the one --batch and --size: a minute "
                        "or two on a small CPU)")
    parser.add_argument("--mask-rows", type=int, default=MASK_ROWS, metavar="N",
                        help="Mask R-CNN: the --max-det-masks candidate's N (default %(default)s)")
    parser.add_argument("--output", type=Path, default=OptimizeJob.output, metavar="DIR",
                        help="where best.*, optimize.md/json/png and the candidates go (default %(default)s)")
    add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from ..pipeline.optimize import OptimizeJob, optimize_detector

    result = optimize_detector(OptimizeJob(
        weights=args.checkpoint, config_file=args.config_file, onnx=args.onnx, target=args.target, budget=args.budget,
        batch=args.batch, size=args.size, dataset=tuple(args.dataset) if args.dataset else None,
        max_images=args.max_images, num_calib=args.num_calib, iters=args.iters, pt2=args.pt2,
        mask_rows=args.mask_rows, overrides=tuple(args.opts), output=args.output))
    print(f"[optimize] report: {', '.join(map(str, result.written))}")
    if result.best is None:
        print(f"error: {result.summary}; see {result.written[0]}", file=sys.stderr)
        return 1
    print(f"[optimize] best: {result.best} (runtime {result.runtime})")
    return 0
