"""The gap between end-to-end and model-only latency in the Python runtime, per artifact: with PyTorch's thread
count as the toolkit sets it (`Predictor.torch_threads`: one thread where another runtime computes on the CPU), with
PyTorch's default count, and with that default under OMP_WAIT_POLICY=PASSIVE (each setting in a process of its own:
OpenMP reads it at start).

    python benchmarks/e2e_gap.py --artifacts export/optimized/demo/candidates/demo.int8-cpu.onnx \
        output/demo/model_final.pth

Per artifact, at batch 1 on one synthetic size x size scene: `Detector.prepare` alone, `run_canvas` alone (the
model) and `predict` (decode to detections: prepare, model, postprocess), the median of --iters runs after 5
warm-up runs each. Where predict exceeds prepare + model by much, the runtime and PyTorch's preprocessing are
contending for the cores between calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

# name: (environment, whether PyTorch's thread count is the toolkit's choice for the artifact)
SETTINGS = {"toolkit's torch threads": ({}, True), "torch's default threads": ({}, False),
            "torch's default, OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, False)}
WARMUP = 5


def child(artifact: str, size: int, iters: int, toolkit_threads: bool) -> dict[str, float]:
    import torch

    from siefpn_deploy.core.cpu import torch_threads
    from siefpn_deploy.core.timing import measure
    from siefpn_deploy.data.image import to_tensor
    from siefpn_deploy.runtime import Detector
    from siefpn_deploy.runtime.bench import synthetic_batch

    detector, images, canvas = synthetic_batch(Detector.from_path(artifact), 1, size)
    calls = {"prepare": lambda: detector.prepare([to_tensor(im) for im in images]),
             "model": lambda: detector.run_canvas(canvas), "predict": lambda: detector.predict(images)}
    with torch.inference_mode(), torch_threads(detector.torch_threads if toolkit_threads else None):
        return {name: measure(fn, warmup=WARMUP, iters=iters).median_ms for name, fn in calls.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", nargs="+", help="checkpoints (.pth) or exported models to time")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3, help="processes per artifact and setting, taking turns")
    p.add_argument("--report", default="benchmarks/results/e2e_gap_cpu.md")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--toolkit-threads", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.size, args.iters, args.toolkit_threads)))
        return
    if not args.artifacts:
        p.error("--artifacts: give at least one checkpoint or exported model")
    from common import invocation

    from siefpn_deploy.core.reporting import markdown_table, write_benchmark_report

    # each (artifact, setting) runs in --rounds processes, the rounds taking turns, and the medians are reported:
    # on this machine one process's model time can differ from the next's by a quarter
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    for round_ in range(args.rounds):
        for artifact in args.artifacts:
            for setting, (env, toolkit) in SETTINGS.items():
                out = subprocess.run([sys.executable, __file__, "--child", artifact, "--size", str(args.size),
                                      "--iters", str(args.iters), *(["--toolkit-threads"] if toolkit else [])],
                                     env={**os.environ, **env}, capture_output=True, text=True, check=True)
                runs.setdefault((artifact, setting), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {round_ + 1}: {artifact} | {setting} | {runs[artifact, setting][-1]}", flush=True)
    rows = []
    for (artifact, setting), found in runs.items():
        ms = {k: statistics.median(r[k] for r in found) for k in ("prepare", "model", "predict")}
        gap = statistics.median(r["predict"] - r["prepare"] - r["model"] for r in found)
        rows.append([artifact, setting, *(f"{ms[k]:.1f}" for k in ("prepare", "model", "predict")), f"{gap:.1f}"])
    header = ["artifact", "setting", "prepare ms", "model ms", "predict ms", "predict - prepare - model ms"]
    body = markdown_table(header, rows) + (f"\n\nBatch 1, one {args.size}x{args.size} synthetic scene; in each of "
                                           f"{args.rounds} processes per row the median of {args.iters} runs after "
                                           f"{WARMUP} warm-up runs, and the median of those.")
    command = invocation()
    write_benchmark_report(args.report, title="End-to-end against model-only latency in the Python runtime (CPU)",
                           body=body, command=command, data={"header": header, "rows": rows})


if __name__ == "__main__":
    main()
