"""`siefpn-deploy build`: a strongly typed TensorRT engine from an FP32/FP16/INT8 ONNX
(stage `pipeline.build_detector_engine`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import optional_path

HELP = "build a TensorRT engine (10.x, 11.x or TensorRT-RTX) from an FP32/FP16/INT8 ONNX"
DESCRIPTION = ("Build one optimization profile's engine, NAME.plan with NAME.engine.json, from an exported or "
               "quantized ONNX and its meta.json, with whichever TensorRT is installed.")
EPILOG = """\
examples:
  siefpn-deploy build --onnx export/synth_retinanet_R18_tensornms.int8.onnx
  siefpn-deploy build --onnx export/retinanet_R50.fp16.onnx --min-shape 1,3,320,320 --opt-shape 1,3,800,1344 \\
      --max-shape 4,3,1344,1344 --workspace 4

The network is built strongly typed: precision comes from the ONNX (FP16 casts, INT8 Q/DQ), never from
builder flags, which TensorRT 11 removed. The same code serves TensorRT 10 (STRONGLY_TYPED flag), 11
and TensorRT-RTX, whichever is installed (full TensorRT first). TensorRT-RTX has no NMS layer: build
graphs exported with --nms tensor. The engine's NAME.engine.json holds its I/O, profile, TensorRT
flavour and version, precision, source ONNX sha256 and the model's meta.json.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..tensorrt.plan import ENGINE_DIR, TIMING_CACHE

    parser.add_argument("--onnx", required=True, type=Path, metavar="PATH",
                        help="NAME[.fp16|.int8].onnx with its meta.json")
    parser.add_argument("--engine", type=Path, metavar="PATH",
                        help=f"default: {ENGINE_DIR}/NAME.plan (+ NAME.engine.json)")
    parser.add_argument("--min-shape", metavar="B,3,H,W", help="default: the exported minimum")
    parser.add_argument("--opt-shape", metavar="B,3,H,W", help="default: the smallest batch at the largest size")
    parser.add_argument("--max-shape", metavar="B,3,H,W",
                        help="default: the exported maximum (image_sizes [B,2] follows these shapes' batch)")
    parser.add_argument("--workspace", type=float, metavar="GiB", help="builder workspace limit (default: TensorRT's)")
    parser.add_argument("--timing-cache", type=optional_path, default=str(TIMING_CACHE), metavar="PATH",
                        help="read if present, written after the build (default %(default)s; '' disables)")
    levels = range(6)  # TensorRT's builder optimization levels
    parser.add_argument("--builder-optimization-level", type=int, choices=levels, metavar="N",
                        help=f"{levels[0]}..{levels[-1]} (default: TensorRT's own); higher builds longer for faster "
                        "engines")
    parser.add_argument("--version-compatible", action="store_true",
                        help="an engine later TensorRT versions can run (with the lean runtime)")


def run(args: argparse.Namespace) -> int:
    from ..pipeline import BuildJob, BuildOptions, build_detector_engine
    from ..tensorrt.plan import parse_shape

    def shape(text: str | None, flag: str) -> tuple[int, ...] | None:
        return parse_shape(text, flag) if text else None

    # the command builds: an engine of the same request is built again
    build_detector_engine(BuildJob(BuildOptions(
        onnx=args.onnx, engine=args.engine, min_shape=shape(args.min_shape, "--min-shape"),
        opt_shape=shape(args.opt_shape, "--opt-shape"), max_shape=shape(args.max_shape, "--max-shape"),
        workspace_gib=args.workspace, timing_cache=args.timing_cache,
        optimization_level=args.builder_optimization_level, version_compatible=args.version_compatible,
    ), reuse=False))
    return 0
