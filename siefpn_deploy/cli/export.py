"""`siefpn-deploy export`: a trained detector -> NAME.onnx or NAME.pt2 with its meta.json, verified against PyTorch
(stage `pipeline.export_detector`)."""

from __future__ import annotations

import argparse

from .options import REQUIRED_WEIGHTS, add_config_file, add_overrides

HELP = "export a trained detector to ONNX or an AOTInductor package (+ meta.json), verified against PyTorch"
DESCRIPTION = ("Export a trained RetinaNet / Faster R-CNN / Mask R-CNN with its postprocessing to one plugin-free ONNX "
               "graph with fixed-size outputs (or, with --format aoti, a compiled AOTInductor package), write "
               "NAME.meta.json beside it, and check it: onnx.checker and ONNX Runtime (or the loaded package) against "
               "PyTorch on two sizes at batch 2. Options not given are read from the config.")
EPILOG = """\
examples:
  siefpn-deploy export --config-file configs/synth_retinanet_R18.yaml MODEL.WEIGHTS output/demo/model_final.pth
  siefpn-deploy export --config-file configs/synth_mask_rcnn_R18.yaml --nms tensor --dynamic-batch 4 \\
      --dynamic-size 64 640 MODEL.WEIGHTS output/synth_mask_rcnn_R18/model_final.pth     # for TensorRT-RTX
  siefpn-deploy export --config-file configs/retinanet_R50_1x.yaml --batch 1 --imgsz 800 1344 \\
      --output export/retinanet_R50_800x1344.onnx MODEL.WEIGHTS model_final.pth      # one static shape
  siefpn-deploy export --format aoti --config-file configs/synth_retinanet_R18.yaml \\
      MODEL.WEIGHTS output/demo/model_final.pth           # export/synth_retinanet_R18_aoti.pt2, compiled

the graph (siefpn_deploy/core/contract.py):
{graph}

It has no data-dependent shapes. With --nms onnx it uses the standard NonMaxSuppression and RoiAlign ops
(ONNX Runtime, OpenVINO, TensorRT 10/11); with --nms tensor it is plugin-free: exact greedy NMS in plain
tensor ops and RoIAlign as a Gather and a batched MatMul (also TensorRT-RTX, which has neither layer).
NAME.meta.json beside the ONNX holds everything a runtime needs (see `export/README.md`).

--format aoti compiles the same graph with torch.export and AOTInductor into NAME.pt2 (--device cpu or
cuda), run by `Detector.from_path`, parity, bench and infer without ONNX Runtime. Its NMS and RoIAlign
are torchvision's kernels (--nms loop: the greedy NMS as a torch.while_loop instead, about 0.1 ms a step);
the package's own metadata holds the meta.json (key siefpn_deploy.meta).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..core.contract import describe_graph
    from ..export import options as eo  # export options: the defaults and choices export takes
    from ..pipeline.export import ExportJob

    parser.epilog = EPILOG.format(graph=describe_graph())
    o = eo.ExportOptions
    parser.add_argument("--format", choices=eo.FORMATS, default=o.format,
                        help="onnx: NAME.onnx; aoti: NAME.pt2, compiled by AOTInductor (default %(default)s)")
    parser.add_argument("--device", choices=eo.PACKAGE_DEVICES, default=o.device,
                        help="--format aoti: the device the package is compiled for (default %(default)s)")
    parser.add_argument("--precision", choices=eo.PACKAGE_PRECISIONS, default=o.precision,
                        help="--format aoti --device cuda: fp16 compiles the network under CUDA autocast (inputs and "
                        "outputs stay float32; verified against eager FP16 autocast); default %(default)s")
    add_config_file(parser, "the config the weights were trained with", required=True)
    parser.add_argument("--output", metavar="PATH",
                        help=f"NAME.onnx (NAME.pt2) to write (default: {eo.EXPORT_DIR}/<config name>.onnx, "
                        f"{eo.EXPORT_DIR}/<config name>_tensornms.onnx with --nms tensor, "
                        f"{eo.EXPORT_DIR}/<config name>_aoti.pt2 with --format aoti)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, metavar="B", help="a static batch size")
    batch.add_argument("--dynamic-batch", type=int, default=o.batch.max, metavar="MAX",
                       help=f"a dynamic batch {o.batch.min}..MAX (default %(default)s)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--imgsz", type=int, nargs="+", metavar="PX",
                      help="a static input size: H [W] (multiples of INPUT.SIZE_DIVISIBILITY; one value means square)")
    size.add_argument("--dynamic-size", type=int, nargs=2, metavar=("MIN", "MAX"),
                      help="dynamic H and W in MIN..MAX (multiples of INPUT.SIZE_DIVISIBILITY; default 2 x "
                      "INPUT.SIZE_DIVISIBILITY .. INPUT.MAX_SIZE_TEST padded to the divisibility)")
    nms = list(dict.fromkeys(n for lowerings in eo.NMS_LOWERINGS.values() for n in lowerings))
    parser.add_argument("--nms", choices=nms,
                        help="onnx: the NonMaxSuppression op (ONNX Runtime, TensorRT 10/11); tensor: exact greedy NMS "
                        "in plain ops (also TensorRT-RTX); for --format aoti, kernel: torchvision's NMS kernel, one call "
                        "per batch, and loop: the greedy NMS as a torch.while_loop. All equal torchvision's "
                        "batched_nms (default: "
                        + ", ".join(f"{n} for {f}" for f, n in eo.DEFAULT_NMS.items()) + ")")
    parser.add_argument("--roi-align", choices=eo.ROI_ALIGN_LOWERINGS,
                        help="R-CNN RoIAlign: onnx, the RoiAlign op (exact for every RoI; ONNX Runtime, OpenVINO, "
                        "TensorRT 10/11); gather, plugin-free Gather/MatMul (also TensorRT-RTX; exact for adaptive "
                        "sampling up to --roi-samples per bin); bag, gather's samples summed by EmbeddingBag on "
                        "every thread (--format aoti only; same exactness). Default: bag for a CPU package at a fixed "
                        "MODEL.ROI_POOLER_SAMPLING_RATIO, else "
                        + ", ".join(f"{r} with --nms {n}" for n, r in eo.ROI_ALIGN_FOR_NMS.items()))
    parser.add_argument("--roi-samples", type=int, default=o.roi_samples, metavar="S",
                        help="the gather RoIAlign's bound on adaptive samples per bin and axis: RoIs whose bins are at "
                        "most S feature pixels a side are exact (default %(default)s)")
    parser.add_argument("--max-det", type=int, metavar="K",
                        help=f"K, detections per image, <= {eo.MAX_TOPK} (default MODEL.DETECTIONS_PER_IMAGE)")
    parser.add_argument("--score-thresh", type=float, metavar="S", help="default MODEL.SCORE_THRESH_TEST")
    parser.add_argument("--iou-thresh", type=float, metavar="T",
                        help="NMS IoU threshold (default MODEL.NMS_THRESH_TEST)")
    parser.add_argument("--input-range", type=int, choices=[255, 1], default=int(o.input_scale),
                        help="pixel range the graph takes, 0..255 or 0..1 (default %(default)s)")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset, 18 or newer (default: the exporter's)")
    parser.add_argument("--box-candidates", type=int, default=o.box_candidates, metavar="N",
                        help=f"R-CNN box head: best per-class candidates entering NMS, <= {eo.MAX_TOPK} "
                        "(default %(default)s)")
    parser.add_argument("--max-det-masks", type=int, metavar="N",
                        help="Mask R-CNN: run the mask head on the N best-scoring of the K detections only; later "
                        "rows' masks are zeros (empty). The mask head's cost is per row, found or not: on the CPU, "
                        "N=20 makes a K=100 graph's mask branch 5x cheaper (default: all K, exact)")
    parser.add_argument("--simplify", action="store_true", help="also run onnxslim on the graph")
    parser.add_argument("--no-verify", action="store_true", help="skip the check against PyTorch")
    parser.add_argument("--verify-images", type=int, default=ExportJob.verify_images, metavar="N",
                        help="test-split images the check runs (synthetic renders if the split is absent; "
                        "default %(default)s)")
    add_overrides(parser, REQUIRED_WEIGHTS)


def _shapes(args: argparse.Namespace) -> dict:
    """ExportOptions' batch, height and width from the flags; a size not given is left to the config."""
    from ..core.contract import ShapeRange
    from ..core.errors import UserError
    from ..export.options import ExportOptions

    shapes = {"batch": ShapeRange(args.batch, args.batch) if args.batch is not None
              else ShapeRange(ExportOptions.batch.min, args.dynamic_batch)}
    if args.imgsz:
        if len(args.imgsz) > 2:
            raise UserError(f"--imgsz takes H [W], got {len(args.imgsz)} values")
        h, w = (args.imgsz * 2)[:2]
        shapes.update(height=ShapeRange(h, h), width=ShapeRange(w, w))
    elif args.dynamic_size:
        lo, hi = args.dynamic_size
        shapes.update(height=ShapeRange(lo, hi), width=ShapeRange(lo, hi))
    return shapes


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..pipeline import ExportJob, ExportOptions, export_detector

    overrides = list(args.opts)
    for key, value in (("MODEL.DETECTIONS_PER_IMAGE", args.max_det), ("MODEL.SCORE_THRESH_TEST", args.score_thresh),
                       ("MODEL.NMS_THRESH_TEST", args.iou_thresh)):
        if value is not None:
            overrides += [key, str(value)]
    options = ExportOptions(
        output=Path(args.output) if args.output else None, format=args.format, device=args.device,
        precision=args.precision, nms=args.nms, input_scale=float(args.input_range), opset=args.opset,
        box_candidates=args.box_candidates, simplify=args.simplify, roi_align=args.roi_align,
        roi_samples=args.roi_samples, max_det_masks=args.max_det_masks, **_shapes(args))
    # the command exports: an earlier export of the same request is made again
    export_detector(ExportJob(config_file=args.config_file, options=options, overrides=tuple(overrides),
                              verify_images=None if args.no_verify else args.verify_images, reuse=False))
    return 0
