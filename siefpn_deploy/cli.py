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


EPILOG_EXPORT = """\
examples:
  siefpn-deploy export --config-file configs/synth_retinanet_R18.yaml MODEL.WEIGHTS output/demo/model_final.pth
  siefpn-deploy export --config-file configs/synth_mask_rcnn_R18.yaml --nms tensor --dynamic-batch 4 \\
      --dynamic-size 64 640 MODEL.WEIGHTS output/synth_mask_rcnn_R18/model_final.pth     # for TensorRT-RTX
  siefpn-deploy export --config-file configs/retinanet_R50_1x.yaml --batch 1 --imgsz 800 1344 \\
      --output export/retinanet_R50_800x1344.onnx MODEL.WEIGHTS model_final.pth      # one static shape

the graph:
  images    float32 [B,3,H,W]  RGB, 0..255 (or 0..1 with --input-range 1); H, W multiples of 32;
                               normalisation is inside the graph
  num_dets  int32   [B]        detections per image; rows after it are padding
  boxes     float32 [B,K,4]    xyxy in input pixels, ordered by score
  scores    float32 [B,K]
  labels    int32   [B,K]      1-based class index (meta.json maps it to names and COCO ids); -1 pads
  masks     float32 [B,K,28,28] Mask R-CNN only: the box's mask probabilities, pasted by the runtime

It has no plugins and no data-dependent shapes: RoIAlign is GridSample, NMS is either the
standard NonMaxSuppression op (--nms onnx: ONNX Runtime, TensorRT 10/11) or an exact greedy NMS
in plain tensor ops (--nms tensor: also TensorRT-RTX, which has no NMS layer).
NAME.meta.json beside the ONNX holds everything a runtime needs (see `export/README.md`).
"""


def _size_range(args: argparse.Namespace, default: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(height (min, max), width (min, max)) from --imgsz H [W] or --dynamic-size MIN MAX."""
    if args.imgsz:
        if len(args.imgsz) > 2:
            raise UserError(f"--imgsz takes H [W], got {len(args.imgsz)} values")
        h, w = (args.imgsz * 2)[:2]
        return (h, h), (w, w)
    lo, hi = args.dynamic_size or default
    return (lo, hi), (lo, hi)


def _cmd_export(args: argparse.Namespace) -> int:
    from .config import load_config, resolve_config_file
    from .export.exporter import ExportOptions, ShapeRange, default_output, default_size_range, export_onnx
    from .export.verify import verification_images

    overrides = list(args.opts)
    for key, value in (("MODEL.DETECTIONS_PER_IMAGE", args.max_det), ("MODEL.SCORE_THRESH_TEST", args.score_thresh),
                       ("MODEL.NMS_THRESH_TEST", args.iou_thresh)):
        if value is not None:
            overrides += [key, str(value)]
    cfg = load_config(args.config_file, overrides)
    default = default_size_range(cfg)
    (h_lo, h_hi), (w_lo, w_hi) = _size_range(args, (default.min, default.max))
    batch = (args.batch, args.batch) if args.batch is not None else (1, args.dynamic_batch)
    options = ExportOptions(
        output=Path(args.output or default_output(args.config_file, args.nms)),
        batch=ShapeRange(*batch), height=ShapeRange(h_lo, h_hi), width=ShapeRange(w_lo, w_hi), divisibility=cfg.INPUT.SIZE_DIVISIBILITY,
        nms=args.nms, input_scale=float(args.input_range), opset=args.opset, box_candidates=args.box_candidates,
        simplify=args.simplify,
    )
    options.validate()
    images = None if args.no_verify else verification_images(cfg, count=args.verify_images)
    export_onnx(cfg, options, config_name=str(resolve_config_file(args.config_file)), verify_images=images)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        data_dir=Path(args.data), output_dir=Path(args.output), export_dir=Path(args.export_dir),
        config_file=args.config_file,
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

    export = sub.add_parser(
        "export", help="export a trained detector to ONNX (+ meta.json), verified in ONNX Runtime",
        epilog=EPILOG_EXPORT, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a trained RetinaNet / Faster R-CNN / Mask R-CNN with its postprocessing to one "
        "plugin-free ONNX graph with fixed-size outputs, write NAME.meta.json beside it, and check it: "
        "onnx.checker, then ONNX Runtime against PyTorch on two sizes at batch 2.",
    )
    export.add_argument("--config-file", metavar="FILE", required=True, help="the config the weights were trained with")
    export.add_argument("--output", metavar="PATH", help="NAME.onnx to write (default: export/<config name>.onnx, "
                        "export/<config name>_tensornms.onnx with --nms tensor)")
    batch = export.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, metavar="B", help="a static batch size")
    batch.add_argument("--dynamic-batch", type=int, default=8, metavar="MAX", help="a dynamic batch 1..MAX (default 8)")
    size = export.add_mutually_exclusive_group()
    size.add_argument("--imgsz", type=int, nargs="+", metavar="PX",
                      help="a static input size: H [W] (multiples of 32; one value means square)")
    size.add_argument("--dynamic-size", type=int, nargs=2, metavar=("MIN", "MAX"),
                      help="dynamic H and W in MIN..MAX (multiples of 32; default 64..INPUT.MAX_SIZE_TEST padded to 32)")
    export.add_argument("--nms", choices=["onnx", "tensor"], default="onnx",
                        help="onnx: the NonMaxSuppression op (ONNX Runtime, TensorRT 10/11); tensor: exact greedy NMS "
                        "in plain ops (also TensorRT-RTX). Both equal torchvision's batched_nms (default onnx)")
    export.add_argument("--max-det", type=int, metavar="K", help="K, detections per image (default MODEL.DETECTIONS_PER_IMAGE)")
    export.add_argument("--score-thresh", type=float, metavar="S", help="default MODEL.SCORE_THRESH_TEST")
    export.add_argument("--iou-thresh", type=float, metavar="T", help="NMS IoU threshold (default MODEL.NMS_THRESH_TEST)")
    export.add_argument("--input-range", type=int, choices=[255, 1], default=255,
                        help="pixel range the graph takes, 0..255 or 0..1 (default 255)")
    export.add_argument("--opset", type=int, metavar="N", help="ONNX opset, 18 or newer (default: the exporter's)")
    export.add_argument("--box-candidates", type=int, default=1000, metavar="N",
                        help="R-CNN box head: best per-class candidates entering NMS, <= 3840 (default 1000)")
    export.add_argument("--simplify", action="store_true", help="also run onnxslim on the graph")
    export.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check")
    export.add_argument("--verify-images", type=int, default=4, metavar="N",
                        help="test-split images the check runs (synthetic renders if the split is absent; default 4)")
    export.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides; MODEL.WEIGHTS path/to/model_final.pth is required")
    export.set_defaults(func=_cmd_export)

    demo = sub.add_parser(
        "demo", help="the end-to-end job on the embedded synthetic dataset",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Generate the synthetic dataset (once), train a small Dual SIE-FPN RetinaNet on the CPU, "
        "evaluate it with COCO metrics, export it to ONNX, verify the ONNX in ONNX Runtime against PyTorch, and "
        "print a summary.",
    )
    demo.add_argument("--data", default="datasets/synth", help="synthetic dataset folder (generated if missing)")
    demo.add_argument("--output", default="output/demo", help="training output folder")
    demo.add_argument("--export-dir", default="export", help="where the ONNX model and its meta.json go")
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
