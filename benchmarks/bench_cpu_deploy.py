"""CPU deployment, one model per detector: every CPU artifact ranked by speed within each AP budget, in one run.

    python benchmarks/bench_cpu_deploy.py                        # 3 detectors, 384x384, batch 1 and 4
    python benchmarks/bench_cpu_deploy.py --archs mask_rcnn --batches 1 --iters 5

Per detector, from one trained model (the synthetic preset, briefly trained once into --work/<arch>, shared with
bench_export.py):
  - eager PyTorch FP32 (the checkpoint);
  - ONNX Runtime: FP32 (--nms onnx, dynamic batch 1..4, sizes 64..--size), FP16, INT8 in the TensorRT layout
    (`quantize --target tensorrt`) and INT8 in ONNX Runtime's CPU layout (`quantize --target ort-cpu`);
  - OpenVINO (when installed): the FP32 graphs, and NNCF's INT8 of them (`quantize --target openvino`);
    for Mask R-CNN also FP32, CPU-INT8 and NNCF INT8 exported with `--max-det-masks` (the mask head on the best N rows);
  - the AOTInductor CPU package (.pt2), in Python and, when `siefpn-deploy cpp build` has run, in C++.
AP: `parity` on the val split (200 images, batch 1): each artifact's bbox (and segm) AP beside PyTorch's.
Latency: `bench` on the same synthetic scenes for every artifact (model only, and end to end), median and p99 of
--iters runs after 3 warm-up runs, with all of this machine's threads. Ranking: `parity.rank`, the fastest
artifact by end-to-end p50 within each AP budget (fp32 0.1, fp16 0.2, bf16 0.5, int8 1.0 points).
Targets (issue 14): CPU INT8 >= 1.5x ONNX Runtime FP32 (model only, every batch) with ΔAP <= 1.0; the Mask
R-CNN graph <= 0.8x eager (model only); the fastest artifact within the INT8 budget <= 0.5x eager (end to end).
Target (issue 16): the fastest artifact within the INT8 budget is faster than OpenVINO FP32 (end to end).
Prints the tables and writes them, with the date, CPU, threads and commit, to --report.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import platform
import sys
import time
from pathlib import Path

import torch
from common import shapes, synthetic_benchmark_arguments, synthetic_model

from siefpn_deploy.core.reporting import markdown_table, write_benchmark_report
from siefpn_deploy.parity.check import DEFAULT_BUDGETS
from siefpn_deploy.pipeline import (
    BenchJob,
    ExportOptions,
    ParityJob,
    QuantizeJob,
    QuantizeOptions,
    TrainResult,
    bench_artifacts,
    check_parity,
    quantize_detector,
    rank_artifacts,
)

INT8_SPEEDUP, MASK_VS_EAGER, FASTEST_VS_EAGER = 1.5, 0.8, 0.5
OPENVINO = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def artifacts_of(arch: str, args) -> tuple[TrainResult, list[Path], list[Path], dict[Path, float]]:
    """(the training run, every artifact to rank, the FP32 graphs, seconds each quantization took). The quantized
    models are made again on every run, so that their times are measured."""
    dynamic = shapes(max(args.batches), args.size)
    run, fp32 = synthetic_model(arch, args, ExportOptions(nms="onnx", **dynamic))
    graphs = [fp32.path]
    if arch == "mask_rcnn":
        cut = ExportOptions(nms="onnx", max_det_masks=args.mask_rows, **dynamic)
        graphs.append(synthetic_model(arch, args, cut)[1].path)
    found, seconds = [fp32.path], {}

    def quantized(onnx: Path, precision: str, target: str = "tensorrt") -> Path:
        t = time.perf_counter()
        path = quantize_detector(QuantizeJob(QuantizeOptions(
            onnx=onnx, precision=precision, target=target, num_calib=args.num_calib, calib_batch=4,
            calib_cache=Path(args.work) / "calib"), reuse=False)).path
        seconds[path] = time.perf_counter() - t
        return path

    found += [quantized(fp32.path, "fp16"), quantized(fp32.path, "int8", "tensorrt")]
    for graph in graphs:
        found += ([graph] if graph != fp32.path else []) + [quantized(graph, "int8", "ort-cpu")]
        found += [quantized(graph, "int8", "openvino")] if OPENVINO else []
    found.append(synthetic_model(arch, args, ExportOptions(format="aoti", **dynamic))[1].path)
    return run, found, graphs, seconds


def with_openvino_fp32(report: dict, openvino: dict, key: str) -> dict:
    """One report of the two runs: each file in its own runtime, and the FP32 graphs again in OpenVINO."""
    return {**report, key: report[key] + openvino[key]}


def row_name(r: dict) -> str:
    return f"{r['artifact']} ({r['variant']})"


def main() -> None:
    p = synthetic_benchmark_arguments(__doc__, "benchmarks/results/cpu_deploy.md")
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--num-calib", type=int, default=128)
    p.add_argument("--mask-rows", type=int, default=20, help="Mask R-CNN's --max-det-masks variant (default 20)")
    p.add_argument("--no-cpp", action="store_true", help="skip the C++ runtime rows")
    p.set_defaults(iters=10)
    args = p.parse_args()
    threads = torch.get_num_threads()
    sections, verdicts, data = [], [], {}
    for arch in args.archs:
        run, artifacts, graphs, quantize_s = artifacts_of(arch, args)
        reports = Path(args.work) / "cpu_deploy" / arch  # each stage's own parity, bench and ranking reports
        parity_job = ParityJob(run.config, weights=run.weights, artifacts=tuple(artifacts), batch=1,
                               report_dir=reports)
        parity = check_parity(parity_job).report
        timing = {"batches": tuple(args.batches), "sizes": (args.size,), "warmup": 3, "iters": args.iters,
                  "device": "cpu"}
        bench = bench_artifacts(BenchJob(artifacts=(run.weights, *artifacts), cpp=not args.no_cpp,
                                         report_dir=reports, **timing)).report
        if OPENVINO:
            openvino = reports / "openvino"
            parity = with_openvino_fp32(parity, check_parity(dataclasses.replace(
                parity_job, artifacts=tuple(graphs), runtimes=("openvino",), report_dir=openvino)).report, "artifacts")
            bench = with_openvino_fp32(bench, bench_artifacts(BenchJob(
                artifacts=tuple(graphs), runtimes=("openvino",), report_dir=openvino, **timing)).report, "rows")
        ranking = rank_artifacts(bench, parity, reports).ranking
        data[arch] = {"parity": parity, "bench": bench, "ranking": ranking,
                      "quantize_seconds": {str(k): v for k, v in quantize_s.items()}}
        ref_ap = {t: 100 * m["AP"] for t, m in parity["artifacts"][0]["metrics"].items()}
        rows = sorted(ranking["rows"], key=lambda r: (r["batch"], r["e2e_p50_ms"]))
        table = markdown_table(
            ["batch", "artifact", "variant", "model p50 / p99 ms", "e2e p50 / p99 ms", "model vs eager", "e2e vs eager",
             "ΔAP (worst)"],
            [[r["batch"], r["artifact"], r["variant"], f"{r['model_p50_ms']:.0f} / {r['model_p99_ms']:.0f}",
              f"{r['e2e_p50_ms']:.0f} / {r['e2e_p99_ms']:.0f}",
              f"{r['model_vs_eager']:.2f}x", f"{r['e2e_vs_eager']:.2f}x",
              "-" if r["ap_cost"] is None else f"{-r['ap_cost']:+.2f}"] for r in rows])
        fastest = markdown_table(
            ["batch", "AP budget", "fastest artifact", "e2e p50 ms", "e2e vs eager", "model vs eager", "ΔAP"],
            [[f["batch"], f"{f['budget']:g}", row_name(f["best"]), f"{f['best']['e2e_p50_ms']:.0f}",
              f"{f['best']['e2e_vs_eager']:.2f}x", f"{f['best']['model_vs_eager']:.2f}x", f"{-f['best']['ap_cost']:+.2f}"]
             for f in ranking["fastest"] if f["best"] is not None])
        sections.append(f"## {arch}\n\nPyTorch AP on {parity['images']} val images: "
                        + ", ".join(f"{t} {v:.2f}" for t, v in ref_ap.items()) + "\n\n" + table
                        + "\n\nFastest within each AP budget (end-to-end p50):\n\n" + fastest)
        verdicts += targets(arch, ranking, args)
        print(sections[-1], flush=True)

    notes = [(f"CPU: {cpu_model()}, {threads} threads; {args.size}x{args.size} canvas, synthetic scenes; "
              f"{args.iters} timed runs after 3 warm-up runs; p50 and p99 of those runs."),
             (f"Models: the synthetic presets (ResNet-18, 64-wide Dual SIE-FPN) trained {args.train_iters} iterations "
              "(benchmarks/parity_cpu.py measures parity on models that detect): their AP is low, so a ΔAP here is "
              "a coarse check. "
              f"INT8: {args.num_calib} train images. ΔAP: the worst of bbox and segm against PyTorch, AP points."),
             "Targets: " + "; ".join(verdicts) + "."]
    body = "\n\n".join(sections) + "\n\n" + "\n\n".join(notes)
    write_benchmark_report(args.report, title="CPU deployment: every artifact, ranked within each AP budget",
                           data={"cpu": cpu_model(), "threads": threads, "detectors": data}, body=body,
                           command=f"python benchmarks/bench_cpu_deploy.py {' '.join(sys.argv[1:])}".strip())


def targets(arch: str, ranking: dict, args) -> list[str]:
    """The three issue-14 verdicts for one detector, each with the figures behind it."""
    rows = ranking["rows"]

    def find(batch: int, test) -> dict | None:
        return next((r for r in rows if r["batch"] == batch and test(r)), None)

    out = []
    for batch in args.batches:
        fp32 = find(batch, lambda r: r["variant"] == "onnxruntime fp32" and "maxdetmasks" not in r["artifact"])
        int8_name = fp32["artifact"].replace(".onnx", ".int8-cpu.onnx")
        cpu = find(batch, lambda r, name=int8_name: r["artifact"] == name)
        speedup = fp32["model_p50_ms"] / cpu["model_p50_ms"]
        ok = speedup >= INT8_SPEEDUP and cpu["ap_cost"] <= DEFAULT_BUDGETS["int8"]
        out.append(f"{arch} b{batch} CPU-INT8 {speedup:.2f}x ORT FP32, ΔAP {-cpu['ap_cost']:+.2f}: "
                   f"{'met' if ok else 'missed'}")
        if arch == "mask_rcnn":
            cut = find(batch, lambda r: "maxdetmasks" in r["artifact"] and r["variant"] == "onnxruntime fp32")
            out.append(f"mask_rcnn b{batch} graph vs eager (model only): K=100 rows {fp32['model_vs_eager']:.2f}x, "
                       f"--max-det-masks {args.mask_rows} {cut['model_vs_eager']:.2f}x (target <= {MASK_VS_EAGER}x): "
                       f"{'met' if min(fp32['model_vs_eager'], cut['model_vs_eager']) <= MASK_VS_EAGER else 'missed'}")
        best = next(f["best"] for f in ranking["fastest"] if f["batch"] == batch and f["budget"] == DEFAULT_BUDGETS["int8"])
        out.append(f"{arch} b{batch} fastest within the INT8 budget: {row_name(best)} at {best['e2e_vs_eager']:.2f}x "
                   f"eager end to end (target <= {FASTEST_VS_EAGER}x): "
                   f"{'met' if best['e2e_vs_eager'] <= FASTEST_VS_EAGER else 'missed'}")
        ov = find(batch, lambda r, name=fp32["artifact"]: r["artifact"] == name and r["variant"] == "openvino fp32")
        if ov is not None:
            ratio = best["e2e_p50_ms"] / ov["e2e_p50_ms"]
            out.append(f"{arch} b{batch} fastest within the INT8 budget vs OpenVINO FP32 (end to end): {ratio:.2f}x "
                       f"({best['e2e_p50_ms']:.0f} vs {ov['e2e_p50_ms']:.0f} ms; target < 1x): "
                       f"{'met' if ratio < 1 else 'missed'}")
    return out


if __name__ == "__main__":
    main()
