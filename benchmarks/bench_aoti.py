"""AOTInductor benchmark: per detector, CPU latency of PyTorch eager FP32, the Python runtime on the compiled
`.pt2` package, the C++ runtime (siefpn-infer, engines/cpp) on the same package and ONNX Runtime FP32, for the
same weights on the same canvases, in one run.

    python benchmarks/bench_aoti.py                       # 3 detectors, 384x384, batch 1 and 4
    python benchmarks/bench_aoti.py --archs retinanet --batches 1
    python benchmarks/bench_aoti.py --static --report benchmarks/results/aoti_cpu_static.md   # optimize's .pt2

Models: the synthetic presets, briefly trained once into --work/<arch> (shared with bench_export.py), exported
with dynamic batch 1..4 and sizes 64..max(--sizes) as ONNX (`--nms onnx`) and as a package (`--format aoti`;
with --static, one package per batch and size, compiled for exactly that shape).
Latency: median of --iters runs of the model alone (`Detector.run_canvas`: the graph and its in-graph
postprocessing) after 3 warm-up runs, the Python runtimes taking turns run by run; the C++ column is siefpn-infer --bench's model time on the same synthetic
scenes (written as PNGs, so C++ decodes the same pixels), with the same thread count (`siefpn-deploy cpp build`
runs first). Target (issues 12, 28): `.pt2` <= 0.7x eager, in Python and C++.
Prints a markdown table and writes it, with date, machine and commit, to --report.
"""

from __future__ import annotations

from functools import partial

import torch
from common import invocation, shapes, synthetic_benchmark_arguments, synthetic_model

from siefpn_deploy.core.contract import ShapeRange
from siefpn_deploy.core.reporting import markdown_table, write_benchmark_report
from siefpn_deploy.core.timing import measure_interleaved
from siefpn_deploy.pipeline import ExportOptions
from siefpn_deploy.runtime import Detector
from siefpn_deploy.runtime.bench import cpp_settings, synthetic_batch
from siefpn_deploy.runtime.cpp import CppBuild, default_build_dir


def main() -> None:
    p = synthetic_benchmark_arguments(__doc__, "benchmarks/results/aoti_cpu.md")
    p.set_defaults(sizes=[384])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--static", action="store_true",
                   help="one package per batch and size, compiled for exactly that shape (optimize's .pt2), instead "
                   "of one with dynamic batch and size")
    args = p.parse_args()
    dynamic = shapes(max(args.batches), max(args.sizes))
    rows = []
    CppBuild(build_dir=default_build_dir()).run()
    for arch in args.archs:
        run, onnx = synthetic_model(arch, args, ExportOptions(**dynamic))
        threads = torch.get_num_threads()
        eager, ort = Detector.from_path(run.weights, device="cpu"), Detector.from_path(onnx.path, threads=threads)
        for size, batch in ((size, batch) for size in args.sizes for batch in args.batches):
            exact = {"batch": ShapeRange(batch, batch), "height": ShapeRange(size, size), "width": ShapeRange(size, size)}
            _, package = synthetic_model(arch, args, ExportOptions(format="aoti", **(exact if args.static else dynamic)))
            runtimes = {"PyTorch eager": eager, ".pt2 (Python)": Detector.from_path(package.path), "ONNX Runtime": ort}
            cpp = cpp_settings(package.path, runtimes[".pt2 (Python)"], batches=[batch], size=size, warmup=3,
                               iters=args.iters)[0].model.median_ms
            calls = {}
            for name, detector in runtimes.items():
                at, _, canvas = synthetic_batch(detector, batch, size)
                calls[name] = partial(at.run_canvas, canvas)
            ms = {name: t.median_ms for name, t in measure_interleaved(calls, warmup=3, iters=args.iters).items()}
            base = ms["PyTorch eager"]
            rows.append([arch, f"{size}x{size}", batch, *(f"{v:.0f}" for v in ms.values()), f"{cpp:.0f}",
                         f"{ms['.pt2 (Python)'] / base:.2f}", f"{cpp / base:.2f}", f"{ms['ONNX Runtime'] / base:.2f}",
                         f"{package.meta['export']['compile_seconds']:.0f}", "static" if args.static else "dynamic"])
            print(" | ".join(map(str, rows[-1])), flush=True)
    header = ["detector", "input", "batch", "PyTorch eager ms", ".pt2 (Python) ms", "ONNX Runtime ms",
              ".pt2 (C++) ms", ".pt2 / eager", "C++ / eager", "ORT / eager", "AOTI compile s", "package shapes"]
    notes = (f"Synthetic presets (ResNet-18, 64-wide Dual SIE-FPN), trained {args.train_iters} iterations; FP32 "
             f"throughout; median of {args.iters} runs after 3 warm-up runs of the model alone (graph and in-graph "
             f"postprocessing), the Python runtimes taking turns run by run, every runtime on the same synthetic "
             f"canvas per setting; {torch.get_num_threads()} "
             "threads; C++: siefpn-infer --bench (model time) on the same package and scenes, same threads.")
    command = invocation()
    title = "AOTInductor package vs PyTorch eager and ONNX Runtime (CPU)"
    write_benchmark_report(args.report, title=title, data={"header": header, "rows": rows}, command=command,
                           body=markdown_table(header, rows) + "\n\n" + notes)


if __name__ == "__main__":
    main()
