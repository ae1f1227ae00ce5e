"""AOTInductor benchmark: per detector, CPU latency of PyTorch eager FP32, the Python runtime on the compiled
`.pt2` package, the C++ runtime (siefpn-infer, engines/cpp) on the same package and ONNX Runtime FP32, for the
same weights on the same canvases, in one run.

    python benchmarks/bench_aoti.py                       # 3 detectors, 384x384, batch 1 and 4
    python benchmarks/bench_aoti.py --archs retinanet --batches 1

Models: the synthetic presets, briefly trained once into --work/<arch> (shared with bench_export.py), exported
with dynamic batch 1..4 and sizes 64..max(--sizes) as ONNX (`--nms onnx`) and as a package (`--format aoti`).
Latency: median of --iters runs of the model alone (`Detector.run_canvas`: the graph and its in-graph
postprocessing) after 3 warm-up runs; the C++ column is siefpn-infer --bench's model time on the same synthetic
scenes (written as PNGs, so C++ decodes the same pixels), with the same thread count (`siefpn-deploy cpp build`
runs first). Target (issue 12): C++ `.pt2` <= 0.7x eager.
Prints a markdown table and writes it, with date, machine and commit, to --report.
"""

from __future__ import annotations

import sys
from functools import partial

import torch
from common import shapes, synthetic_benchmark_arguments, synthetic_model

from siefpn_deploy.core.reporting import markdown_table, write_benchmark_report
from siefpn_deploy.core.timing import measure
from siefpn_deploy.pipeline import ExportOptions
from siefpn_deploy.runtime import Detector
from siefpn_deploy.runtime.bench import cpp_settings, synthetic_batch
from siefpn_deploy.runtime.cpp import CppBuild, default_build_dir


def main() -> None:
    p = synthetic_benchmark_arguments(__doc__, "benchmarks/results/aoti_cpu.md")
    p.set_defaults(sizes=[384])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    args = p.parse_args()
    dynamic = shapes(max(args.batches), max(args.sizes))
    rows = []
    CppBuild(build_dir=default_build_dir()).run()
    for arch in args.archs:
        run, onnx = synthetic_model(arch, args, ExportOptions(**dynamic))
        _, package = synthetic_model(arch, args, ExportOptions(format="aoti", **dynamic))
        threads = torch.get_num_threads()
        runtimes = {"PyTorch eager": Detector.from_path(run.weights, device="cpu"),
                    ".pt2 (Python)": Detector.from_path(package.path),
                    "ONNX Runtime": Detector.from_path(onnx.path, threads=threads)}
        compile_s = package.meta["export"]["compile_seconds"]
        for size in args.sizes:
            cpp = {s.batch: s.model.median_ms for s in cpp_settings(package.path, runtimes[".pt2 (Python)"],
                                                                    batches=args.batches, size=size, warmup=3,
                                                                    iters=args.iters)}
            for batch in args.batches:
                ms = {}
                for name, detector in runtimes.items():
                    at, _, canvas = synthetic_batch(detector, batch, size)
                    ms[name] = measure(partial(at.run_canvas, canvas), warmup=3, iters=args.iters).median_ms
                eager = ms["PyTorch eager"]
                rows.append([arch, f"{size}x{size}", batch, *(f"{v:.0f}" for v in ms.values()), f"{cpp[batch]:.0f}",
                             f"{ms['.pt2 (Python)'] / eager:.2f}", f"{cpp[batch] / eager:.2f}",
                             f"{ms['ONNX Runtime'] / eager:.2f}", f"{compile_s:.0f}"])
                print(" | ".join(map(str, rows[-1])), flush=True)
    header = ["detector", "input", "batch", "PyTorch eager ms", ".pt2 (Python) ms", "ONNX Runtime ms",
              ".pt2 (C++) ms", ".pt2 / eager", "C++ / eager", "ORT / eager", "AOTI compile s"]
    notes = (f"Synthetic presets (ResNet-18, 64-wide Dual SIE-FPN), trained {args.train_iters} iterations; FP32 "
             f"throughout; median of {args.iters} runs after 3 warm-up runs of the model alone (graph and in-graph "
             f"postprocessing), every runtime on the same synthetic canvas per setting; {torch.get_num_threads()} "
             "threads; C++: siefpn-infer --bench (model time) on the same package and scenes, same threads.")
    command = f"python benchmarks/bench_aoti.py {' '.join(sys.argv[1:])}".strip()
    title = "AOTInductor package vs PyTorch eager and ONNX Runtime (CPU)"
    write_benchmark_report(args.report, title=title, data={"header": header, "rows": rows}, command=command,
                           body=markdown_table(header, rows) + "\n\n" + notes)


if __name__ == "__main__":
    main()
