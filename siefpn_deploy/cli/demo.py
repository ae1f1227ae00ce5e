"""`siefpn-deploy demo`: the end-to-end job on the embedded synthetic dataset (pipeline.demo.run_demo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_config_file, add_overrides, add_report

HELP = "the end-to-end job on the embedded synthetic dataset"
DESCRIPTION = ("Generate the synthetic dataset (once), train a small Dual SIE-FPN RetinaNet on the CPU, evaluate it "
               "with COCO metrics, export it to ONNX (verified in ONNX Runtime against PyTorch), make FP16 and INT8 "
               "models, build TensorRT engines where a builder is installed, check the COCO AP of every artifact "
               "against PyTorch's, benchmark them, pick the fastest CPU artifact within the INT8 budget (`optimize`), "
               "prepare `serve` to start with no package index, and print a summary. Exits 1 when parity fails. A "
               "rerun reuses every stage whose output answers the same request from the same input.")
EPILOG = """\
examples:
  siefpn-deploy demo                                        # the whole job, sized for a 2-core CPU
  siefpn-deploy demo --output output/demo_long SOLVER.MAX_ITER 3000
  siefpn-deploy demo --data datasets/synth-easy --regenerate   # draw the scenes again
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..data.synth import LEVELS
    from ..pipeline.demo import GPU_ITER_FACTOR
    from ..pipeline.demo import DemoOptions as o

    parser.add_argument("--data", type=Path, default=o.data, metavar="DIR",
                        help="synthetic dataset folder, generated if missing (default %(default)s)")
    parser.add_argument("--level", choices=list(LEVELS), default=o.level,
                        help="the scenes to generate when --data is missing (see `data synth --help`; "
                        "default %(default)s)")
    parser.add_argument("--output", type=Path, default=o.output, metavar="DIR",
                        help="training output folder (default %(default)s)")
    parser.add_argument("--export-dir", type=Path, default=o.export_dir, metavar="DIR",
                        help="where the ONNX models and their meta.json go (default %(default)s)")
    parser.add_argument("--engine-dir", type=Path, default=o.engine_dir, metavar="DIR",
                        help="where the TensorRT engines go (default %(default)s)")
    parser.add_argument("--calib-dir", type=Path, default=o.calib_dir, metavar="DIR",
                        help="where the preprocessed calibration images are cached (default %(default)s)")
    add_report(parser, o.report_dir, "the parity and benchmark reports")
    add_config_file(parser, f"the training preset; on a GPU the demo trains {GPU_ITER_FACTOR}x its SOLVER.MAX_ITER "
                    "unless an override gives SOLVER.MAX_ITER", default=o.config_file)
    parser.add_argument("--regenerate", action="store_true", help="regenerate the dataset even if present")
    parser.add_argument("--bench-batch", type=int, nargs="+", default=list(o.bench_batches), metavar="N",
                        help="the batch sizes the closing benchmark times (default %(default)s)")
    parser.add_argument("--bench-iters", type=int, default=o.bench_iters, metavar="N",
                        help="timed runs per artifact and batch in the closing benchmark; `bench` and benchmarks/ "
                        "measure properly (default %(default)s)")
    parser.add_argument("--optimize-dir", type=Path, default=o.optimize_dir, metavar="DIR",
                        help="where `optimize --target cpu` writes best.* and its report (default: EXPORT_DIR/optimized/RUN, "
                        "e.g. export/optimized/demo)")
    parser.add_argument("--no-optimize", dest="optimize", action="store_false",
                        help="skip the closing `optimize --target cpu` (about 3 minutes on 2 cores)")
    parser.add_argument("--python-env", type=Path, default=o.python_env, metavar="DIR",
                        help="where to build `serve`'s stub environment (default: serve's own, under "
                        "~/.cache/siefpn-deploy); it is the one part of serving that needs a package index")
    parser.add_argument("--no-serving", dest="serving", action="store_false",
                        help="do not prepare `serve`'s stub environment")
    add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from ..core.errors import UserError
    from ..pipeline.demo import DemoOptions, run_demo

    if args.bench_iters < 1 or min(args.bench_batch) < 1:
        raise UserError("--bench-iters and --bench-batch must be at least 1")
    result = run_demo(DemoOptions(
        data=args.data, level=args.level, regenerate=args.regenerate, output=args.output, export_dir=args.export_dir,
        engine_dir=args.engine_dir, calib_dir=args.calib_dir, report_dir=args.report, config_file=args.config_file,
        overrides=tuple(args.opts), bench_batches=tuple(args.bench_batch), bench_iters=args.bench_iters,
        optimize=args.optimize, optimize_dir=args.optimize_dir, serving=args.serving, python_env=args.python_env))
    return 0 if result.parity_passed else 1
