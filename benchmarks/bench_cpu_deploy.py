"""CPU deployment: per detector, ONNX Runtime FP32 against the two INT8 layouts -- ModelOpt's explicit Q/DQ
for TensorRT (`quantize --target tensorrt`) and ONNX Runtime's static quantization for its x86 integer kernels
(`quantize --target ort-cpu`) -- on latency and COCO bbox AP, in one run.

    python benchmarks/bench_cpu_deploy.py                             # 3 detectors, 384x384, batch 1 and 4
    python benchmarks/bench_cpu_deploy.py --archs retinanet --batches 1

Models: the synthetic presets, briefly trained once into --work/<arch> (shared with bench_export.py), exported
with --nms onnx (ONNX Runtime's own NMS op), dynamic batch 1..4 and sizes 64..--size. INT8: --num-calib train
images at the export's largest size, each target with its default calibration (entropy for tensorrt, max for
ort-cpu). Latency: median of --iters runs of the model alone (`Detector.run_canvas`) after 3 warm-up runs, on the
same synthetic canvas for every model, with all of this machine's threads. AP: the 200 val images at the
config's test size, batch 1. Target (issue 14): CPU INT8 >= 1.5x faster than FP32 at batch 1 and 4 with
bbox AP within 1.0 point.
Prints a markdown table and writes it, with date, machine and commit, to --report.
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

import torch

from siefpn_deploy.core.config import load_config
from siefpn_deploy.core.reporting import markdown_table, write_benchmark_report
from siefpn_deploy.core.timing import measure
from siefpn_deploy.data import CocoDetection
from siefpn_deploy.demo import synthetic_benchmark_arguments, synthetic_export
from siefpn_deploy.evaluation.loop import evaluate_predictor
from siefpn_deploy.quantize.quantizer import QuantizeOptions, quantize_model
from siefpn_deploy.runtime import Detector
from siefpn_deploy.runtime.bench import synthetic_batch

SPEEDUP_TARGET, AP_BUDGET = 1.5, 1.0


def main() -> None:
    p = synthetic_benchmark_arguments(__doc__, "benchmarks/results/cpu_deploy.md")
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--num-calib", type=int, default=128)
    args = p.parse_args()
    threads = torch.get_num_threads()
    rows, verdicts = [], []
    for arch in args.archs:
        run, onnx_path = synthetic_export(arch, args, export_args=[
            "--nms", "onnx", "--dynamic-batch", str(max(args.batches)), "--dynamic-size", "64", str(args.size)])
        cfg = load_config(run / "config.yaml")
        dataset = CocoDetection(image_dir=cfg.DATASETS.TEST_IMAGES, annotation_file=cfg.DATASETS.TEST_ANNOTATIONS)
        models = {"FP32": (onnx_path, None)}
        for label, target in (("INT8 (tensorrt layout)", "tensorrt"), ("INT8 (ort-cpu layout)", "ort-cpu")):
            t = time.perf_counter()
            path, _ = quantize_model(QuantizeOptions(onnx=onnx_path, precision="int8", target=target,
                                                     num_calib=args.num_calib, calib_batch=4,
                                                     calib_cache=Path(args.work) / "calib"))
            models[label] = (path, time.perf_counter() - t)
        ms, ap = {}, {}
        for label, (path, _) in models.items():
            detector = Detector.from_path(path, threads=threads)
            ap[label] = 100 * evaluate_predictor(detector, dataset, batch_size=1).metrics["bbox"]["AP"]
            for batch in args.batches:
                at, _, canvas = synthetic_batch(detector, batch, args.size)
                ms[label, batch] = measure(partial(at.run_canvas, canvas), warmup=3, iters=args.iters).median_ms
        for label, (path, quantize_s) in models.items():
            speedups = [ms["FP32", b] / ms[label, b] for b in args.batches]
            rows.append([arch, label, path.name, f"{quantize_s:.0f}" if quantize_s else "-",
                         *(f"{ms[label, b]:.0f}" for b in args.batches), *(f"{s:.2f}" for s in speedups),
                         f"{ap[label]:.2f}", f"{ap[label] - ap['FP32']:+.2f}"])
            print(" | ".join(rows[-1]), flush=True)
        cpu = "INT8 (ort-cpu layout)"
        met = all(ms["FP32", b] / ms[cpu, b] >= SPEEDUP_TARGET for b in args.batches) and ap[cpu] - ap["FP32"] >= -AP_BUDGET
        verdicts.append(f"{arch}: {'met' if met else 'missed'}")

    header = ["detector", "model", "file", "quantize s", *[f"ms b{b}" for b in args.batches],
              *[f"speedup vs FP32 b{b}" for b in args.batches], "bbox AP", "Δ AP"]
    notes = (f"ONNX Runtime on the CPU, {threads} threads, {args.size}x{args.size} canvas. Synthetic presets (ResNet-18, "
             f"64-wide Dual SIE-FPN) trained {args.train_iters} iterations: their AP is low, so Δ AP is a coarse check. "
             f"INT8: {args.num_calib} train images. Target: CPU INT8 >= {SPEEDUP_TARGET}x FP32 at every batch and "
             f"Δ AP >= -{AP_BUDGET}: " + "; ".join(verdicts) + ".")
    write_benchmark_report(args.report, title="CPU deployment: ONNX Runtime FP32 vs INT8 layouts",
                           data={"header": header, "rows": rows}, body=markdown_table(header, rows) + "\n\n" + notes,
                           command=f"python benchmarks/bench_cpu_deploy.py {' '.join(sys.argv[1:])}".strip())


if __name__ == "__main__":
    main()
