"""What the per-detector benchmark scripts share: their options, and the briefly trained, exported synthetic
model each of them measures, made by the pipeline's stages (siefpn_deploy.pipeline) as the CLI makes it.

Every stage returns what an earlier run left when it answers the same request from the same input, so the
scripts share one trained model per detector (--work/<arch>) and one export per set of export options.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from siefpn_deploy.core.contract import ShapeRange
from siefpn_deploy.core.sidecar import PACKAGE_SUFFIX
from siefpn_deploy.export.options import DEFAULT_NMS
from siefpn_deploy.pipeline import (
    Artifact,
    DatasetOptions,
    DatasetResult,
    ExportJob,
    ExportOptions,
    TrainOptions,
    TrainResult,
    export_detector,
    synthetic_dataset,
    train_detector,
)

ARCHS = ["retinanet", "faster_rcnn", "mask_rcnn"]


def invocation() -> str:
    """The command line that ran this script, as its report records it: `python benchmarks/NAME.py ARGS`."""
    return f"python benchmarks/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}".strip()


def synthetic_benchmark_arguments(description: str, report: str) -> argparse.ArgumentParser:
    """The options every per-detector benchmark script takes; `report` is the default --report."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    p.add_argument("--iters", type=int, default=20, help="timed runs per setting (median reported)")
    p.add_argument("--train-iters", type=int, default=60, help="brief training, for realistic candidate counts")
    p.add_argument("--data", default="datasets/synth", help="synthetic dataset, benchmark level (generated if missing)")
    p.add_argument("--work", default="output/bench_export", help="where the training runs and exports go")
    p.add_argument("--report", default=report)
    return p


def synthetic_data(args: argparse.Namespace) -> DatasetResult:
    """The benchmark-level synthetic dataset in args.data, generated when missing."""
    return synthetic_dataset(DatasetOptions(root=Path(args.data)))


def shapes(batch: int, size: int, smallest: int = 64) -> dict[str, ShapeRange]:
    """ExportOptions fields for dynamic batch 1..batch and square sizes smallest..size (the CLI's
    --dynamic-batch BATCH --dynamic-size SMALLEST SIZE)."""
    sizes = ShapeRange(smallest, size)
    return {"batch": ShapeRange(1, batch), "height": sizes, "width": sizes}


def export_name(arch: str, export: ExportOptions) -> str:
    """<arch>_<each option that differs from ExportOptions()'s default>.onnx (or .pt2): one file per set of
    options, so the exports of one model sit side by side and each is reused by the options that made it. The
    format's own NMS lowering, given or not, names the same file."""
    if export.nms == DEFAULT_NMS[export.format]:
        export = dataclasses.replace(export, nms=None)
    default, square = ExportOptions(), export.height == export.width
    parts = [arch]
    for f in dataclasses.fields(ExportOptions):
        value = getattr(export, f.name)
        if f.name == "output" or value == getattr(default, f.name) or (square and f.name == "width"):
            continue
        name = "size" if square and f.name == "height" else f.name.replace("_", "")
        text = f"{value.min}-{value.max}" if isinstance(value, ShapeRange) else str(value)
        parts.append(name + text.replace(".", "p"))
    suffix = PACKAGE_SUFFIX if export.format == "aoti" else ".onnx"
    return "_".join(parts if len(parts) > 1 else [arch, "default"]) + suffix


def synthetic_model(arch: str, args: argparse.Namespace, export: ExportOptions, *,
                    verify: bool = True) -> tuple[TrainResult, Artifact]:
    """(training run, export) of the synthetic R18 preset of `arch`: trained args.train_iters iterations on the
    benchmark-level dataset in args.data into args.work/<arch>, exported with `export` into args.work (named by
    `export_name` unless export.output is given) and, unless verify is False, verified against PyTorch.
    Briefly trained weights give postprocessing realistic candidate counts, where random weights give none."""
    data = synthetic_data(args)
    work, iters = Path(args.work), args.train_iters
    run = train_detector(TrainOptions(
        config_file=f"configs/synth_{arch}_R18.yaml",
        overrides=(*data.overrides(), "OUTPUT_DIR", str(work / arch), "SOLVER.MAX_ITER", str(iters),
                   "SOLVER.WARMUP_ITERS", str(iters // 4))))
    if export.output is None:
        export = dataclasses.replace(export, output=work / export_name(arch, export))
    artifact = export_detector(ExportJob(config_file=run.config, weights=run.weights, options=export,
                                         **({} if verify else {"verify_images": None})))
    return run, artifact
