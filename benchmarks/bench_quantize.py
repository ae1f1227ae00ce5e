"""Quantize-and-build benchmark: per detector, FP32 vs FP16 vs INT8 -- quantize and build time, ONNX and
engine sizes, ONNX Runtime CPU latency at each size, and COCO bbox AP on the synthetic val split.

    python benchmarks/bench_quantize.py                              # 3 detectors, 320 and 640, 512 calib images
    python benchmarks/bench_quantize.py --archs retinanet --num-calib 64

Models: the synthetic presets, briefly trained once into --work/<arch> (shared with bench_export.py),
exported with --nms tensor and dynamic sizes up to the largest --sizes. INT8 calibrates on
--num-calib train images at --calib-size. Engines are built with whichever TensorRT is installed (TensorRT-RTX
builds without a GPU); an engine cannot run without one, so engines have sizes and build times only. The
quantized models and engines are made again on every run: their times are what is measured.
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

import torch
from common import shapes, synthetic_benchmark_arguments, synthetic_model

from siefpn_deploy.core.config import load_config
from siefpn_deploy.core.errors import UserError
from siefpn_deploy.core.reporting import markdown_table, write_benchmark_report
from siefpn_deploy.core.timing import measure
from siefpn_deploy.data import CocoDetection
from siefpn_deploy.evaluation.loop import evaluate_predictor
from siefpn_deploy.pipeline import (
    BuildJob,
    BuildOptions,
    ExportOptions,
    QuantizeJob,
    QuantizeOptions,
    build_detector_engine,
    quantize_detector,
)
from siefpn_deploy.runtime import Detector
from siefpn_deploy.runtime.bench import synthetic_batch
from siefpn_deploy.tensorrt.plan import engine_name


def main() -> None:
    p = synthetic_benchmark_arguments(__doc__, "benchmarks/results/quantize_cpu.md")
    p.add_argument("--num-calib", type=int, default=512)
    p.add_argument("--calib-size", type=int, default=640)
    p.add_argument("--calib-batch", type=int, default=4)
    args = p.parse_args()

    rows = []
    for arch in args.archs:
        run, onnx = synthetic_model(arch, args, ExportOptions(nms="tensor", **shapes(4, max(args.sizes))))
        onnx_path = onnx.path
        cfg = load_config(run.config)
        dataset = CocoDetection(image_dir=cfg.DATASETS.TEST_IMAGES, annotation_file=cfg.DATASETS.TEST_ANNOTATIONS)
        models = {"fp32": (onnx_path, 0.0)}
        for precision in ("fp16", "int8"):
            t = time.perf_counter()
            # FP16's range check keeps its default 16 images (it holds all their activations in memory)
            quantized = quantize_detector(QuantizeJob(QuantizeOptions(
                onnx=onnx_path, precision=precision, num_calib=args.num_calib if precision == "int8" else None,
                calib_size=(args.calib_size, args.calib_size), calib_batch=args.calib_batch,
                calib_cache=Path(args.work) / "calib"), reuse=False))
            models[precision] = (quantized.path, time.perf_counter() - t)
        for precision, (path, quantize_s) in models.items():
            try:
                t = time.perf_counter()
                engine = build_detector_engine(BuildJob(BuildOptions(
                    onnx=path, engine=Path(args.work) / "engines" / engine_name(path), timing_cache=None), reuse=False))
                build = (f"{time.perf_counter() - t:.1f}", f"{engine.path.stat().st_size / 2**20:.1f}")
            except UserError as e:  # no TensorRT builder here (CannotRunHere), or the build failed
                build = ("-", f"not built: {e}")
            detector = Detector.from_path(path, threads=torch.get_num_threads())
            ap = evaluate_predictor(detector, dataset, batch_size=1).metrics["bbox"]["AP"]
            latencies = []
            for size in args.sizes:
                at, _, canvas = synthetic_batch(detector, 1, size)
                latencies.append(f"{measure(partial(at.run_canvas, canvas), warmup=3, iters=args.iters).median_ms:.0f}")
            rows.append([arch, precision, f"{quantize_s:.1f}" if quantize_s else "-", build[0],
                         f"{path.stat().st_size / 2**20:.1f}", build[1], *latencies, f"{100 * ap:.2f}"])
            print(" | ".join(rows[-1]), flush=True)

    header = ["detector", "precision", "quantize s", "build s", "ONNX MiB", "engine MiB",
              *[f"ORT CPU ms @{s} (b1)" for s in args.sizes], "bbox AP (val, points)"]
    write_benchmark_report(
        args.report, title="Quantize and build benchmark", data={"header": header, "rows": rows},
        body=markdown_table(header, rows) + "\n\n"
        + f"Synthetic presets trained {args.train_iters} iterations, exported with `--nms tensor`. INT8: "
        f"{args.num_calib} train images at {args.calib_size}x{args.calib_size}, entropy calibration in batches of "
        f"{args.calib_batch} (the quantize time includes preprocessing and caching them on a first run); FP16: "
        "AutoCast with a 16-image range check. Latency: median of "
        f"{args.iters} runs of the model alone after 3 warm-up runs. AP: 200 val images at the config's test size.",
        command=f"python benchmarks/bench_quantize.py {' '.join(sys.argv[1:])}".strip(),
    )


if __name__ == "__main__":
    main()
