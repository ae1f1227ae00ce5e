"""`siefpn-deploy quantize`: FP16 or calibrated INT8 (Q/DQ) from an FP32 export (stage `pipeline.quantize_detector`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import optional_path

HELP = "make an FP16 or a calibrated INT8 (Q/DQ) model from an exported ONNX (NVIDIA ModelOpt)"
DESCRIPTION = ("Make NAME.fp16.onnx or an INT8 model with explicit Q/DQ from an FP32 export and its meta.json, "
               "calibrated on the model's train split, optionally held to an AP budget against the FP32 model.")
EPILOG = """\
examples:
  siefpn-deploy quantize --onnx export/synth_retinanet_R18.onnx --precision fp16
  siefpn-deploy quantize --onnx export/synth_retinanet_R18.onnx --precision int8     # train split from meta.json
  siefpn-deploy quantize --onnx export/synth_retinanet_R18.onnx --precision int8 --target ort-cpu   # ONNX Runtime, CPU
  siefpn-deploy quantize --onnx export/synth_retinanet_R18.onnx --precision int8 --target openvino  # NNCF, OpenVINO
  siefpn-deploy quantize --onnx export/retinanet_R50.onnx --precision int8 --num-calib 512 --calib-size 640 640 \\
      --calib-data datasets/coco/annotations/instances_train2017.json
  siefpn-deploy quantize --onnx export/synth_retinanet_R18.onnx --precision int8 --target ort-cpu --budget 0.5
      # AP within 0.5 points of FP32 on {sensitivity_images} held-out train images, most sensitive layers kept in FP32

FP16 is ModelOpt AutoCast (I/O stays float32); INT8 is explicit Q/DQ in the layout of the runtime that runs
it (--target): ModelOpt's for TensorRT, ONNX Runtime's static quantization, or NNCF's for OpenVINO. The
GAU attention logits and softmax, class-score sigmoids/softmaxes, box decoding, RoIAlign sampling and
NMS stay in FP32 (--no-default-excludes drops that; --exclude adds node-name regexes such as
'^/backbone/neck/mic/'). Calibration images come from the train split, are preprocessed exactly as the
runtime preprocesses them, and are cached in {calib_cache}/ keyed by the ONNX sha256, the image list and the
preprocessing. The quantized model's meta.json records the method, image count and exclusions.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..quantize.options import (
        CALIB_CACHE,
        DEFAULT_CALIB_METHOD,
        INT8_SUFFIX,
        TARGETS,
        BudgetOptions,
        QuantizeOptions,
    )

    parser.epilog = EPILOG.format(sensitivity_images=BudgetOptions.sensitivity_images, calib_cache=CALIB_CACHE)
    counts = {p: QuantizeOptions(onnx=Path(), precision=p).count for p in ("int8", "fp16")}
    parser.add_argument("--onnx", required=True, type=Path, metavar="PATH",
                        help="the FP32 export (NAME.onnx, with NAME.meta.json)")
    parser.add_argument("--precision", required=True, choices=["fp16", "int8"])
    parser.add_argument("--output", type=Path, metavar="PATH",
                        help="default: NAME.fp16.onnx / NAME.<target suffix>.onnx beside the source")
    parser.add_argument("--calib-data", type=Path, metavar="DIR|JSON",
                        help="training images: a folder, or an instances JSON (default: the train split in meta.json)")
    parser.add_argument("--calib-image-dir", type=Path, metavar="DIR", help="the images of --calib-data JSON "
                        "(default: COCO's layout, annotations/instances_X.json -> X/)")
    parser.add_argument("--num-calib", type=int, metavar="N",
                        help=f"calibration images, spread over the set (default {counts['int8']} for int8, "
                        f"{counts['fp16']} for fp16's range check)")
    suffix = {t: f"NAME.{s}.onnx" for t, s in INT8_SUFFIX.items()}
    parser.add_argument("--target", choices=TARGETS, default=QuantizeOptions.target,
                        help=f"int8: tensorrt, ModelOpt's explicit Q/DQ that `build` takes ({suffix['tensorrt']}); "
                        "ort-cpu, ONNX Runtime's static quantization in the layout its x86 integer kernels fuse: uint8 "
                        f"activations, per-channel int8 Conv weights ({suffix['ort-cpu']}); openvino, NNCF's "
                        "post-training quantization in the layout OpenVINO's CPU plugin fuses, run with --runtime "
                        f"openvino ({suffix['openvino']}; pip install 'siefpn-deploy[openvino]'). Default %(default)s")
    parser.add_argument("--calib-method", choices=["entropy", "max"],
                        help="INT8 ranges (default: "
                        + ", ".join(f"{m} for {t}" for t, m in DEFAULT_CALIB_METHOD.items()) + ")")
    parser.add_argument("--calib-batch", type=int, default=QuantizeOptions.calib_batch, metavar="B",
                        help="images per calibration step (default %(default)s)")
    parser.add_argument("--calib-size", type=int, nargs=2, metavar=("H", "W"),
                        help="calibration canvas (default: the largest exported size)")
    parser.add_argument("--calib-cache", type=optional_path, default=str(CALIB_CACHE), metavar="DIR",
                        help="cache of preprocessed images (default %(default)s/; '' keeps none)")
    parser.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                        help="node names (regex, re.match) to keep in FP32; repeatable")
    parser.add_argument("--no-default-excludes", action="store_true",
                        help="quantize the GAU attention, score and decoding nodes too (not recommended)")
    budget = parser.add_argument_group(
        "AP budget (int8)", "measure the INT8 model's AP loss on held-out train images and keep the most sensitive "
        f"layers out of INT8 until it is within the budget (see {BudgetOptions.report_dir}/NAME.sensitivity.md)")
    budget.add_argument("--budget", type=float, metavar="AP_POINTS",
                        help="largest AP loss (points, 0..100) against the FP32 model in ONNX Runtime, e.g. 1.0")
    budget.add_argument("--sensitivity-images", type=int, default=BudgetOptions.sensitivity_images, metavar="N",
                        help="the last N train images by id, held out of calibration and scored (default %(default)s)")
    budget.add_argument("--max-excluded", type=int, default=BudgetOptions.max_excluded, metavar="N",
                        help="give up (and write nothing) once N layers are kept out and the budget still "
                        "fails (default %(default)s)")
    budget.add_argument("--report-dir", type=Path, default=BudgetOptions.report_dir, metavar="DIR",
                        help="where NAME.sensitivity.{json,md,png} go (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    from ..pipeline import BudgetOptions, QuantizeJob, QuantizeOptions, quantize_detector

    options = QuantizeOptions(
        onnx=args.onnx, precision=args.precision, output=args.output, calib_data=args.calib_data,
        calib_image_dir=args.calib_image_dir, num_calib=args.num_calib, calib_method=args.calib_method,
        calib_batch=args.calib_batch, target=args.target, calib_cache=args.calib_cache,
        calib_size=tuple(args.calib_size) if args.calib_size else None, exclude=args.exclude,
        default_excludes=not args.no_default_excludes)
    budget = None if args.budget is None else BudgetOptions(
        budget=args.budget, sensitivity_images=args.sensitivity_images, max_excluded=args.max_excluded,
        report_dir=args.report_dir)
    # the command quantizes: an earlier model of the same request is made again
    quantize_detector(QuantizeJob(options, budget=budget, reuse=False))
    return 0
