"""Training benchmark: the CPU training options (throughput, AP after a fixed budget, peak memory), and plain
FPN vs Dual SIE-FPN under one budget.

    python benchmarks/bench_train.py                        # options, then the preset's full budget for the A/B
    python benchmarks/bench_train.py --ab-iters 100         # a quicker, weaker A/B
    python benchmarks/bench_train.py --skip-ab              # the options only
    python benchmarks/bench_train.py --skip-ab --option-ap-iters 0   # the options' throughput and memory only
    python benchmarks/bench_train.py --skip-ab --data datasets/synth-easy --option-ap-iters 300   # AP on the easy level

Options (issue 13): FP32 with 1 loader worker (the baseline), FP32 + channels_last, bf16 autocast, bf16 autocast +
channels_last (each with 1 worker), and the preset's default (SOLVER.AMP auto, SOLVER.CHANNELS_LAST True,
DATALOADER.NUM_WORKERS 0). Each is measured in a process of its own, so its peak RSS
is its own: images/s of the real training step with the preset's data loader, then, with --option-ap-iters N,
AP after N iterations on a held-out part of the train split (the last 200 images; never val).

Prints markdown tables and writes them (with date and machine) to --report.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from siefpn_deploy.core.config import load_config
from siefpn_deploy.core.reporting import write_benchmark_report
from siefpn_deploy.core.timing import peak_rss_mib
from siefpn_deploy.data.coco import holdout_split
from siefpn_deploy.model import build_detector
from siefpn_deploy.pipeline import DatasetOptions, DatasetResult, TrainOptions, synthetic_dataset, train_detector
from siefpn_deploy.train.throughput import throughput
from siefpn_deploy.train.trainer import Trainer, build_test_dataset


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


ONE_WORKER = ["DATALOADER.NUM_WORKERS", "1"]  # a loader process beside the training step
OPTIONS = {  # name -> (label, config overrides); the first is the baseline the others are compared with
    "fp32": ("fp32, 1 loader worker (baseline)", ["SOLVER.AMP", "fp32", "SOLVER.CHANNELS_LAST", "False",
                                                  *ONE_WORKER]),
    "fp32-cl": ("fp32 + channels_last, 1 worker", ["SOLVER.AMP", "fp32", "SOLVER.CHANNELS_LAST", "True", *ONE_WORKER]),
    "bf16": ("bf16 autocast, 1 worker", ["SOLVER.AMP", "bf16", "SOLVER.CHANNELS_LAST", "False", *ONE_WORKER]),
    "bf16-cl": ("bf16 autocast + channels_last, 1 worker", ["SOLVER.AMP", "bf16", "SOLVER.CHANNELS_LAST", "True",
                                                            *ONE_WORKER]),
    # the preset as shipped: SOLVER.AMP auto (bf16 where the CPU computes it natively), channels_last, and the
    # loader in the training process (on a small CPU a worker process competes with the step for a core, while
    # loading a batch costs a small part of a step)
    "default": ("the preset's default: AMP auto + channels_last, no loader worker", []),
}
HOLDOUT = 200  # train images held out to score the options on


def dataset(args: argparse.Namespace, log=print) -> DatasetResult:
    return synthetic_dataset(DatasetOptions(root=Path(args.data)), log=log)


def measure_option(args: argparse.Namespace) -> dict:
    """One option, in this process: throughput, then (with --option-ap-iters) AP after that many iterations."""
    data = dataset(args, log=lambda message: print(message, file=sys.stderr))  # stdout carries the result
    images, annotations = data.train
    fit, tune = holdout_split(annotations, HOLDOUT)
    split = ["DATASETS.TRAIN_ANNOTATIONS", str(fit), "DATASETS.TEST_IMAGES", str(images),
             "DATASETS.TEST_ANNOTATIONS", str(tune)]
    opts = data.overrides() + split + OPTIONS[args.measure_option][1]
    t = throughput(Trainer(load_config(args.config_file, opts), config_name="bench"), iters=args.iters,
                   warmup=args.warmup)
    out = {"images_per_s": t["images_per_s"]}
    if args.option_ap_iters:
        out_dir = Path(args.output) / "options" / args.measure_option
        train = TrainOptions(args.config_file, overrides=(*opts, "SOLVER.MAX_ITER", str(args.option_ap_iters),
                                                          "OUTPUT_DIR", str(out_dir)), reuse=False)  # timed
        t0 = time.perf_counter()
        bbox = train_detector(train).metrics["bbox"]
        out.update(ap=bbox["AP"], ap50=bbox["AP50"], train_minutes=(time.perf_counter() - t0) / 60)
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def options_section(args: argparse.Namespace) -> list[str]:
    head = "| option | train images/s | vs the first row | peak RSS MiB |"
    if args.option_ap_iters:
        head += f" AP / AP50 after {args.option_ap_iters} it (held-out train) | train + eval min |"
    lines = ["", head, "|" + "---|" * (head.count("|") - 1)]
    base = None
    for name in args.options or list(OPTIONS):
        child = subprocess.run([sys.executable, *sys.argv, "--measure-option", name], stdout=subprocess.PIPE,
                               text=True, check=True)
        r = json.loads(child.stdout.strip().splitlines()[-1])
        base = base or r["images_per_s"]
        row = f"| {OPTIONS[name][0]} | {r['images_per_s']:.2f} | {r['images_per_s'] / base:.2f}x | {r['peak_rss_mib']:.0f} |"
        if args.option_ap_iters:
            row += f" {r['ap']:.3f} / {r['ap50']:.3f} | {r['train_minutes']:.1f} |"
        lines.append(row)
        print(row, flush=True)
    return lines


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
    p.add_argument("--option-ap-iters", type=int, default=300,
                   help="training iterations per option before its AP is taken (0: throughput and memory only)")
    p.add_argument("--options", nargs="+", choices=list(OPTIONS), metavar="NAME",
                   help=f"only these options, the first the baseline ({', '.join(OPTIONS)}; default all)")
    p.add_argument("--measure-option", choices=list(OPTIONS), help=argparse.SUPPRESS)  # the child's one option
    args = p.parse_args()
    if args.measure_option:
        print(json.dumps(measure_option(args)))
        return 0

    data = dataset(args).overrides()
    base = load_config(args.config_file, data)
    size = (base.INPUT.MIN_SIZE_TEST, base.INPUT.MIN_SIZE_TEST * 4 // 3 // 32 * 32)
    lines = [(f"Preset `{args.config_file}` on `{args.data}`, batch {base.SOLVER.IMS_PER_BATCH}, train sizes "
              f"{base.INPUT.MIN_SIZE_TRAIN}; images/s over {args.iters} "
              f"training steps after {args.warmup}, data loading included.")]
    lines += options_section(args)
    if not args.skip_ab:
        iters = args.ab_iters or base.SOLVER.MAX_ITER
        lines += ["", f"A/B under the same preset and budget ({iters} iterations), evaluated on the synthetic val split;",
                  f"GFLOPs and CPU latency of the whole detector at {size[0]}x{size[1]}, batch 1 (median of {args.latency_runs}).", "",
                  "| neck | bbox AP | AP50 | APs | params (M) | neck params (M) | GFLOPs | CPU latency ms |",
                  "|---|---|---|---|---|---|---|---|"]
        for neck in ["fpn", "dual_sie_fpn"]:
            out = Path(args.output) / neck
            arm = data + ["MODEL.NECK", neck, "SOLVER.MAX_ITER", str(iters), "OUTPUT_DIR", str(out)]
            cfg = load_config(args.config_file, arm)
            # not timed: a finished run of the same arm on the same data is reused
            metrics = train_detector(TrainOptions(args.config_file, overrides=tuple(arm))).metrics["bbox"]
            prof = profile(cfg, build_test_dataset(cfg).num_classes, size, args.latency_runs)
            lines.append(f"| {neck} | {metrics['AP']:.3f} | {metrics['AP50']:.3f} | {metrics['APs']:.3f} | "
                         f"{prof['params_m']:.2f} | {prof['neck_params_m']:.2f} | {prof['gflops']:.1f} | {prof['latency_ms']:.0f} |")
            print(lines[-1], flush=True)
    write_benchmark_report(args.report, title="Training benchmark", body="\n".join(lines),
                           command=f"python {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
