"""Training benchmark: throughput and peak memory, and plain FPN vs Dual SIE-FPN under one budget.

    python benchmarks/bench_train.py                        # preset's full budget for the A/B (slow)
    python benchmarks/bench_train.py --ab-iters 100         # a quicker, weaker A/B
    python benchmarks/bench_train.py --skip-ab              # throughput and memory only

Prints markdown tables and writes them (with date and machine) to --report.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from siefpn_deploy.core.config import load_config
from siefpn_deploy.core.reporting import write_benchmark_report
from siefpn_deploy.demo import dataset_overrides, ensure_synthetic
from siefpn_deploy.model import build_detector
from siefpn_deploy.train.throughput import throughput
from siefpn_deploy.train.trainer import Trainer, build_test_dataset, train


def profile(cfg, num_classes: int, size: tuple[int, int], runs: int) -> dict:
    """Parameters, forward GFLOPs and median eval latency (batch 1) of the whole detector at `size`."""
    model = build_detector(cfg, num_classes=num_classes).eval()
    image = [torch.rand(3, *size)]
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            model(image)
        for _ in range(3):
            model(image)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            model(image)
            times.append(time.perf_counter() - t)
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "neck_params_m": sum(p.numel() for p in model.backbone.neck.parameters()) / 1e6,
        "gflops": counter.get_total_flops() / 1e9,
        "latency_ms": statistics.median(times) * 1000,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="configs/synth_retinanet_R18.yaml")
    p.add_argument("--data", default="datasets/synth", help="synthetic dataset (generated if missing)")
    p.add_argument("--iters", type=int, default=20, help="timed training iterations for throughput")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--ab-iters", type=int, default=0, help="training iterations per A/B arm (0: the preset's MAX_ITER)")
    p.add_argument("--skip-ab", action="store_true", help="only throughput and memory")
    p.add_argument("--latency-runs", type=int, default=20)
    p.add_argument("--output", default="output/bench_train", help="where the A/B runs train")
    p.add_argument("--report", default="benchmarks/results/train_cpu.md")
    args = p.parse_args()

    data = Path(args.data)
    ensure_synthetic(data)
    base = load_config(args.config_file, dataset_overrides(data))
    size = (base.INPUT.MIN_SIZE_TEST, base.INPUT.MIN_SIZE_TEST * 4 // 3 // 32 * 32)
    lines = [f"Preset `{args.config_file}`, batch {base.SOLVER.IMS_PER_BATCH}, train sizes {base.INPUT.MIN_SIZE_TRAIN}.", "",
             "| neck | train images/s | peak host RSS MiB (whole process so far) |", "|---|---|---|"]
    for neck in ["fpn", "dual_sie_fpn"]:
        cfg = load_config(args.config_file, dataset_overrides(data) + ["MODEL.NECK", neck, "DATALOADER.NUM_WORKERS", "0"])
        t = throughput(Trainer(cfg, config_name="bench"), iters=args.iters, warmup=args.warmup)
        lines.append(f"| {neck} | {t['images_per_s']:.2f} | {t['peak_rss_mib']:.0f} |")
        print(lines[-1], flush=True)
    if not args.skip_ab:
        iters = args.ab_iters or base.SOLVER.MAX_ITER
        lines += ["", f"A/B under the same preset and budget ({iters} iterations), evaluated on the synthetic val split;",
                  f"GFLOPs and CPU latency of the whole detector at {size[0]}x{size[1]}, batch 1 (median of {args.latency_runs}).", "",
                  "| neck | bbox AP | AP50 | APs | params (M) | neck params (M) | GFLOPs | CPU latency ms |",
                  "|---|---|---|---|---|---|---|---|"]
        for neck in ["fpn", "dual_sie_fpn"]:
            out = Path(args.output) / neck
            cfg = load_config(args.config_file, dataset_overrides(data) + [
                "MODEL.NECK", neck, "SOLVER.MAX_ITER", str(iters), "OUTPUT_DIR", str(out)])
            metrics = train(cfg, config_name=args.config_file, resume=False)["bbox"]
            prof = profile(cfg, build_test_dataset(cfg).num_classes, size, args.latency_runs)
            lines.append(f"| {neck} | {metrics['AP']:.3f} | {metrics['AP50']:.3f} | {metrics['APs']:.3f} | "
                         f"{prof['params_m']:.2f} | {prof['neck_params_m']:.2f} | {prof['gflops']:.1f} | {prof['latency_ms']:.0f} |")
            print(lines[-1], flush=True)
    write_benchmark_report(args.report, title="Training benchmark", body="\n".join(lines),
                           command=f"python {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
