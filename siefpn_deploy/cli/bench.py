"""`siefpn-deploy bench`: latency of artifacts over batch sizes and input sizes (stage `pipeline.bench_artifacts`),
and with --parity their ranking by speed within each AP budget (stage `pipeline.rank_artifacts`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_artifacts, add_checkpoint_config, add_device, add_report, add_runtime, runtimes

HELP = "latency (p50/p90/p99), throughput and memory of artifacts over batch sizes and input sizes"
DESCRIPTION = ("Time every artifact (and a checkpoint's PyTorch baselines) on the same inputs at each batch size and "
               "input size, and write bench.json, bench.md and bench.png.")
EPILOG = """\
examples:
  siefpn-deploy bench --artifacts export/demo.onnx export/demo.int8.onnx output/demo/model_final.pth
  siefpn-deploy bench --artifacts engines/r50.fp16.plan model_final.pth --config-file configs/retinanet_R50_1x.yaml \\
      --batch 1 4 8 --imgsz 640 800 --device cuda --gau-memory
  # every CPU artifact of one model, ranked against its AP cost (run parity on the same files first):
  siefpn-deploy parity --config-file output/demo/config.yaml --artifacts export/demo.onnx export/demo.fp16.onnx \\
      export/demo.int8-cpu.onnx export/demo_aoti.pt2 --report reports/parity MODEL.WEIGHTS output/demo/model_final.pth
  siefpn-deploy bench --device cpu --imgsz 384 --cpp --parity reports/parity/parity.json --artifacts \\
      output/demo/model_final.pth export/demo.onnx export/demo.fp16.onnx export/demo.int8-cpu.onnx export/demo_aoti.pt2

Inputs are deterministic synthetic scenes, resized to fill SIZE x SIZE. "model" times one preprocessed
batch through the artifact; "end-to-end" adds preprocessing, box mapping and mask pasting. On a GPU
the timer is CUDA events, and a checkpoint also runs under FP16 autocast, eagerly and with its backbone
and neck replayed as CUDA graphs (the PyTorch baselines an engine has to beat).
With --parity, each artifact also gets its AP cost from that parity report (the worst of its bbox and segm
deltas against PyTorch), and ranking.md names the fastest artifact within each of the report's AP budgets
(`parity --budget`; by default {budgets} points) at each batch and size, by end-to-end p50,
beside its ratio to eager FP32.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    import inspect

    from ..parity.check import DEFAULT_BUDGETS
    from ..pipeline.bench import BenchJob
    from ..runtime.bench import gau_memory

    parser.epilog = EPILOG.format(budgets=", ".join(f"{k} {v}" for k, v in DEFAULT_BUDGETS.items()))
    add_artifacts(parser, ".onnx, .pt2, .plan or .pth")
    parser.add_argument("--batch", type=int, nargs="+", default=list(BenchJob.batches), metavar="B",
                        help=f"batch sizes (default {' '.join(map(str, BenchJob.batches))})")
    parser.add_argument("--imgsz", type=int, nargs="+", default=list(BenchJob.sizes), metavar="PX",
                        help=f"square input sizes (default {' '.join(map(str, BenchJob.sizes))})")
    parser.add_argument("--warmup", type=int, default=BenchJob.warmup, metavar="N",
                        help="untimed runs first (default %(default)s)")
    parser.add_argument("--iters", type=int, default=BenchJob.iters, metavar="N",
                        help="timed runs per setting (default %(default)s)")
    add_device(parser)
    add_runtime(parser, several=True)
    add_checkpoint_config(parser)
    gau_size = inspect.signature(gau_memory).parameters["size"].default
    parser.add_argument("--gau-memory", action="store_true",
                        help="also measure the GAU attention at {}x{}".format(*gau_size))
    parser.add_argument("--cpp", action="store_true",
                        help="also time each .pt2 through the C++ runtime (siefpn-infer; `siefpn-deploy cpp build` "
                        "first)")
    parser.add_argument("--parity", type=Path, metavar="JSON", help="a parity.json of the same artifacts: rank them "
                        "by speed within each AP budget (writes ranking.md/json beside bench.md)")
    add_report(parser, BenchJob.report_dir, "bench.json, bench.md and bench.png (and ranking.md/json)")


def run(args: argparse.Namespace) -> int:
    from ..parity.rank import markdown as ranking_markdown
    from ..parity.rank import read_parity_report
    from ..pipeline import BenchJob, bench_artifacts, rank_artifacts
    from ..runtime.bench import markdown

    parity = read_parity_report(args.parity) if args.parity else None  # before minutes of timing
    bench = bench_artifacts(BenchJob(
        artifacts=tuple(args.artifacts), batches=tuple(args.batch), sizes=tuple(args.imgsz), warmup=args.warmup,
        iters=args.iters, device=args.device, config_file=args.config_file, cpp=args.cpp, runtimes=runtimes(args),
        gau_memory=args.gau_memory, report_dir=args.report))
    written = list(bench.written)
    print(markdown(bench.report))
    if parity is not None:
        ranking = rank_artifacts(bench.report, parity, args.report)
        written += ranking.written
        print(ranking_markdown(ranking.ranking))
    print(f"[bench] wrote {', '.join(map(str, written))}")
    return 0
