"""GPU benchmark: what only a CUDA machine can show, in one run, as one markdown report.

    python benchmarks/bench_gpu.py --report benchmarks/results/gpu_h100.md

1. GAU attention memory at 800x1333 (C=256), FP32 and FP16, and which SDPA kernel runs.
2. Training throughput and peak GPU memory: the synthetic R18 presets, and the paper's R50 presets at
   their COCO sizes (800-class images, batch --r50-batch), on the synthetic data (upscaled to those sizes).
3. The demo's training (synthetic RetinaNet R18, its full schedule) on the GPU: wall time and AP.
4. Inference latency (`siefpn-deploy bench` on CUDA): eager FP32, FP16 autocast, and FP16 autocast with
   the backbone and neck replayed as CUDA graphs, for the demo model and the three R50 detectors.
   The R50 weights are the throughput run's (a few iterations from scratch): their latency is real,
   their detections are not, so postprocessing sees few boxes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from siefpn_deploy.core.config import load_config
from siefpn_deploy.core.reporting import machine, machine_line, markdown_table, write_report
from siefpn_deploy.pipeline import (
    BenchJob,
    DatasetOptions,
    TrainOptions,
    bench_artifacts,
    synthetic_dataset,
    train_detector,
)
from siefpn_deploy.runtime.bench import gau_markdown, gau_memory, markdown
from siefpn_deploy.train.throughput import throughput
from siefpn_deploy.train.trainer import Trainer

ARCHS = ["retinanet", "faster_rcnn", "mask_rcnn"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="datasets/synth", help="synthetic dataset (generated if missing)")
    p.add_argument("--work", default="output/bench_gpu", help="where training runs write")
    p.add_argument("--iters", type=int, default=20, help="timed training iterations per preset")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--r50-batch", type=int, default=8, help="images per training step for the R50 presets")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers")
    p.add_argument("--demo-iters", type=int, default=0, help="the demo training's iterations (0: the preset's)")
    p.add_argument("--bench-iters", type=int, default=50)
    p.add_argument("--sections", nargs="+", default=["gau", "throughput", "demo", "latency"],
                   choices=["gau", "throughput", "demo", "latency"], help="what to run (default: all)")
    p.add_argument("--latency-archs", nargs="+", default=ARCHS, choices=ARCHS, help="R50 detectors to time")
    p.add_argument("--report", default="benchmarks/results/gpu.md")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    started = time.perf_counter()
    work = Path(args.work)
    dataset = synthetic_dataset(DatasetOptions(root=Path(args.data))).overrides()
    lines = [f"# GPU benchmark ({machine_line(machine())})", ""]
    report = Path(args.report)

    def emit(*new: str) -> None:  # each section is written as soon as it is measured
        lines.extend(new)
        print("\n".join(new), flush=True)
        write_report(report.parent, report.stem, data={"markdown": lines}, markdown="\n".join(lines) + "\n")

    if "gau" in args.sections:
        emit("## " + gau_markdown(gau_memory(device="cuda")), "")

    rows, checkpoints = [], {}
    common = dataset + ["DATALOADER.NUM_WORKERS", str(args.workers)]
    presets = [f"configs/synth_{a}_R18.yaml" for a in ARCHS] + [f"configs/{a}_R50_1x.yaml" for a in ARCHS]
    if "throughput" not in args.sections:  # still train the R50 detectors to be timed a few steps
        presets = [f"configs/{a}_R50_1x.yaml" for a in args.latency_archs] if "latency" in args.sections else []
    for preset in presets:
        r50 = "R50" in preset
        extra = ["MODEL.BACKBONE_WEIGHTS", "", "SOLVER.IMS_PER_BATCH", str(args.r50_batch)] if r50 else []
        out = work / Path(preset).stem
        cfg = load_config(preset, common + extra + ["OUTPUT_DIR", str(out)])
        trainer = Trainer(cfg, config_name=preset)
        t = throughput(trainer, iters=args.iters, warmup=args.warmup)
        trainer.save(args.iters + args.warmup, "model_final.pth")
        checkpoints[preset] = out / "model_final.pth"
        rows.append([Path(preset).stem, cfg.SOLVER.IMS_PER_BATCH, f"{cfg.INPUT.MIN_SIZE_TRAIN}, max {cfg.INPUT.MAX_SIZE_TRAIN}",
                     f"{t['images_per_s']:.1f}", f"{t['peak_cuda_mib']:.0f}"])
        print(rows[-1], flush=True)
        del trainer
        torch.cuda.empty_cache()
    if rows:
        emit("## Training throughput (FP32, one GPU, data loading included)", "",
             f"{args.iters} timed iterations after {args.warmup}; R50 presets from scratch (no ImageNet file on the "
             "machine).", "", markdown_table(["preset", "batch", "train sizes", "images/s", "peak GPU MiB"], rows), "")

    timed = []
    if "demo" in args.sections:
        demo_out = work / "demo_training"
        timed.append(("demo model (synthetic RetinaNet R18, trained above)", demo_out / "model_final.pth", [320], [1, 8]))
        overrides = dataset + ["OUTPUT_DIR", str(demo_out), "DATALOADER.NUM_WORKERS", str(args.workers)] + (
            ["SOLVER.MAX_ITER", str(args.demo_iters)] if args.demo_iters else [])
        cfg = load_config("configs/synth_retinanet_R18.yaml", overrides)
        t0 = time.perf_counter()
        # trained again on every run: its wall time is what is measured
        metrics = train_detector(TrainOptions("configs/synth_retinanet_R18.yaml", overrides=tuple(overrides),
                                              reuse=False)).metrics["bbox"]
        wall = time.perf_counter() - t0
        emit("## The demo's training on the GPU", "",
             f"`configs/synth_retinanet_R18.yaml`, {cfg.SOLVER.MAX_ITER} iterations at batch {cfg.SOLVER.IMS_PER_BATCH}, "
             f"{args.workers} loader workers: {wall:.0f} s including the final evaluation; bbox AP {metrics['AP']:.3f}, "
             f"AP50 {metrics['AP50']:.3f}, AR100 {metrics['AR100']:.3f}.", "")

    if "latency" in args.sections:
        timed += [(f"{a} R50 Dual SIE-FPN (paper preset, {args.iters + args.warmup} iterations from scratch)",
                   checkpoints[f"configs/{a}_R50_1x.yaml"], [800], [1, 4]) for a in args.latency_archs]
    for label, path, sizes, batches in timed:
        latency = bench_artifacts(BenchJob(artifacts=(path,), batches=tuple(batches), sizes=tuple(sizes), warmup=10,
                                           iters=args.bench_iters, device="cuda",
                                           report_dir=work / "bench" / path.parent.name)).report
        emit(f"## Inference latency: {label}", "", f"CUDA events, {args.bench_iters} runs after 10 warm-up; "
             "end-to-end includes host preprocessing, copies, box mapping and mask pasting.", "",
             markdown(latency).strip(), "")
    emit(f"Command: `python {' '.join(sys.argv)}` ({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
