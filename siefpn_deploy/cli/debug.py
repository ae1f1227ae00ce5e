"""`siefpn-deploy debug compare`: two versions of one export, layer by layer (siefpn_deploy.debug)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from .options import add_checkpoint_config

GROUP = "debug"
GROUP_HELP = "find where a reduced-precision model loses accuracy"
NAME = "compare"
HELP = "compare two versions of one export tensor by tensor: FP32 vs FP16/INT8, or ONNX vs its PyTorch checkpoint"
DESCRIPTION = ("Run A (the reference, e.g. the FP32 export) and B (its FP16 or INT8, any layout) on the same images, "
               "prepared as the runtime prepares them, and measure every tensor both graphs name alike: max and mean "
               "absolute error, cosine similarity and SQNR, in A's graph order. Name the first tensor over tolerance, "
               "the layers that add the most error and where the error starts, suggest `quantize --exclude` regexes "
               "for those, and write compare.md, compare.json and compare.png (the error along depth).")
EPILOG = """\
examples:
  siefpn-deploy debug compare export/demo.onnx export/demo.int8.onnx --images datasets/synth/val
  siefpn-deploy debug compare export/demo.onnx export/demo.fp16.onnx --images datasets/synth/val --tol sqnr=40
  siefpn-deploy debug compare export/demo.onnx export/demo.int8-cpu.onnx --images val2017 --max-images 4 \\
      --tol cosine=0.99 --output reports/debug/int8-cpu
  siefpn-deploy debug compare output/demo/model_final.pth export/demo.onnx --images datasets/synth/val
      # graph outputs only: the exported graph's tensors have no names in the eager model

--tol METRIC=VALUE (default {tolerance}): sqnr (a floor in dB), cosine (a floor), max or mean (ceilings on
|B - A|). Tensors over it are listed; the ones whose compared inputs are all within it are where the error
starts, and the reduced-precision ones among them (reading an INT8 DequantizeLinear, or computed in FP16) are
suggested as `quantize --exclude` regexes, with the quantize command that makes B again. ONNX models run in
ONNX Runtime on the CPU without graph optimisation, so Q/DQ pairs compute in float what they describe (a
runtime's integer kernels round within the same scales). Integer and boolean tensors (shapes, indices, NMS
selections) are checked for equality only; where one differs (a TopK or the NMS picked other candidates), the
float tensors computed from it are set apart. Exits 1 when a tensor is over tolerance, as a failed Polygraphy
comparison does. Details: docs/precision.md, "Finding where accuracy is lost".
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..debug import DEFAULT_IMAGES, DEFAULT_TOLERANCE, METRICS

    parser.epilog = EPILOG.format(tolerance=f"{DEFAULT_TOLERANCE.metric}={DEFAULT_TOLERANCE.limit:g}")
    parser.add_argument("a", type=Path, metavar="A", help="the reference: an .onnx with its meta.json (or a .pth)")
    parser.add_argument("b", type=Path, metavar="B", help="the model to check: an .onnx of the same export (or a .pth)")
    parser.add_argument("--images", required=True, type=Path, metavar="DIR",
                        help="a folder of images (recursively), prepared as the runtime prepares them")
    parser.add_argument("--max-images", type=int, default=DEFAULT_IMAGES, metavar="N",
                        help="images used, spread over the folder's sorted list (default %(default)s)")
    parser.add_argument("--tol", default=f"{DEFAULT_TOLERANCE.metric}={DEFAULT_TOLERANCE.limit:g}",
                        metavar="METRIC=VALUE", help=f"the tolerance: METRIC one of {', '.join(METRICS)} "
                        "(default %(default)s)")
    parser.add_argument("--output", type=Path, metavar="DIR",
                        help="where compare.{md,json,png} go (default reports/debug/<A stem>_vs_<B stem>)")
    add_checkpoint_config(parser)


def run(args: argparse.Namespace) -> int:
    from ..debug import Tolerance, compare, default_folder, quantize_command, write

    tolerance = Tolerance.parse(args.tol)  # a bad --tol fails before any model loads
    result = compare(args.a, args.b, args.images, tolerance=tolerance, max_images=args.max_images,
                     config=Path(args.config_file) if args.config_file else None)
    written = write(result, args.output or default_folder(args.a, args.b))
    first = result.first_over
    if first is None:
        print(f"[debug] {len(result.considered)} tensors compared on {len(result.images)} images: all within {tolerance}")
    else:
        print(f"[debug] {len(result.over_tolerance)} of {len(result.considered)} tensors over tolerance ({tolerance}); "
              f"the first: {first.tensor} from {first.producer.node} ({first.producer.op})")
    if result.differing:
        print(f"[debug] {len(result.rows) - len(result.considered)} tensors come after a TopK or NMS selection that "
              "differs in B: compared, but left out of the findings")
    if result.worst:
        print("[debug] adding the most error: " + ", ".join(r.producer.node for r in result.worst[:3]))
    if result.suggested_excludes:
        print("[debug] suggested: " + (quantize_command(result) or shlex.join(
            arg for regex in result.suggested_excludes for arg in ("--exclude", regex))))
    print(f"[debug] report: {', '.join(map(str, written))}")
    return 1 if first is not None else 0
