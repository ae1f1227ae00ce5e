"""OpenVINO's compile of the graph as exported (dynamic batch and size) against the compile with the shape fixed
that a backend makes for a canvas shape it sees again (`runtime.backends.OpenVINOBackend`), per artifact and
OpenVINO runtime (f32, and bf16 where the CPU computes it natively).

    python benchmarks/openvino_shapes.py --artifacts export/optimized/demo/candidates/demo.int8-ov.onnx \
        export/optimized/demo/candidates/demo.onnx

The model alone (`run_canvas`) on one size x size synthetic scene at batch 1, with PyTorch on one thread as the
toolkit runs it: the two compiles take turns run by run, --iters runs each after 5 warm-up runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

WARMUP = 5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", nargs="+", required=True, help=".onnx files to time")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--report", default="benchmarks/results/openvino_shapes_cpu.md")
    args = p.parse_args()
    import torch
    from common import invocation

    from siefpn_deploy.core.cpu import torch_threads
    from siefpn_deploy.core.errors import CannotRunHere
    from siefpn_deploy.core.openvino import OPENVINO_PRECISION
    from siefpn_deploy.core.reporting import markdown_table, write_benchmark_report
    from siefpn_deploy.core.timing import measure_interleaved
    from siefpn_deploy.runtime import Detector
    from siefpn_deploy.runtime.bench import synthetic_batch

    rows = []
    for artifact in args.artifacts:
        for runtime in OPENVINO_PRECISION:
            try:
                fixed = Detector.from_path(artifact, runtime=runtime)
            except CannotRunHere as e:
                print(f"{artifact} {runtime}: not run: {e}")
                continue
            dynamic = Detector.from_path(artifact, runtime=runtime, fix_shapes=False)
            detectors = {"dynamic": synthetic_batch(dynamic, 1, args.size), "fixed": synthetic_batch(fixed, 1, args.size)}
            calls = {name: (lambda d=d, c=c: d.run_canvas(c)) for name, (d, _, c) in detectors.items()}
            with torch.inference_mode(), torch_threads(fixed.torch_threads):
                found = measure_interleaved(calls, warmup=WARMUP, iters=args.iters)
            assert detectors["fixed"][0].backend.fixed, "the fixed-shape compile was not made"
            ms = {name: f"{found[name].median_ms:.1f} / {1e3 * found[name].percentile(99):.1f}" for name in calls}
            rows.append([Path(artifact).name, runtime, ms["dynamic"], ms["fixed"],
                         f"{found['fixed'].median_ms / found['dynamic'].median_ms:.2f}x"])
            print(" | ".join(rows[-1]), flush=True)
    header = ["artifact", "runtime", "dynamic compile p50 / p99 ms", "fixed shape p50 / p99 ms", "fixed / dynamic"]
    body = markdown_table(header, rows) + (f"\n\nThe model alone, batch 1, one {args.size}x{args.size} synthetic "
                                           f"scene; {args.iters} runs each after {WARMUP} warm-up runs, the two "
                                           "compiles taking turns run by run (`core.timing.measure_interleaved`).")
    write_benchmark_report(args.report, title="OpenVINO: the dynamic compile against the fixed-shape compile (CPU)",
                           body=body, command=invocation(), data={"header": header, "rows": rows})


if __name__ == "__main__":
    main()
