"""Fault runs of training: SIGKILL and SIGTERM at random points, each followed by `train --resume`, until the run
finishes; then the loss log is checked whole.

    python benchmarks/fault_train.py                  # 12 kills, half SIGKILL, half SIGTERM (random order)
    python benchmarks/fault_train.py --kills 30 --seed 1

A tiny synthetic RetinaNet (ResNet-18, 16-channel neck, images of 96..160 px) trains --max-iter iterations with a
checkpoint every --checkpoint-period. Each attempt starts `siefpn-deploy train` (with --resume once a checkpoint
exists) and, after a random delay, signals it. After SIGTERM, "reached" is the iteration training says it stopped
and saved at, and "lost" what the next attempt did not resume from; after SIGKILL the iteration reached is not
observable (the log is written at checkpoints), and the loss is below the checkpoint period by construction.
After the last kill the run is resumed to the end, and metrics.jsonl must hold each iteration 1..max-iter once.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import invocation

from siefpn_deploy.core.reporting import markdown_table, write_benchmark_report
from siefpn_deploy.data.synth import split_paths
from siefpn_deploy.pipeline import DatasetOptions, synthetic_dataset

PRESET = "configs/synth_retinanet_R18.yaml"
RESUMED = re.compile(r"resumed from \S+ at iteration (\d+)")
MIN_DELAY_S = 5.0  # earlier, a signal only ever meets the interpreter starting
STOPPED = re.compile(r"terminated \(SIGTERM\) at iteration (\d+)")


def overrides(data: Path, out: Path, max_iter: int, period: int) -> list[str]:
    images, annotations = split_paths(data, "train")
    val_images, val_annotations = split_paths(data, "val")
    opts = {"MODEL.FPN_OUT_CHANNELS": 16, "INPUT.MIN_SIZE_TRAIN": "[96, 128]", "INPUT.MAX_SIZE_TRAIN": 160,
            "INPUT.MIN_SIZE_TEST": 128, "INPUT.MAX_SIZE_TEST": 160, "SOLVER.IMS_PER_BATCH": 2,
            "SOLVER.MAX_ITER": max_iter, "SOLVER.WARMUP_ITERS": 2, "SOLVER.CHECKPOINT_PERIOD": period,
            "DATALOADER.NUM_WORKERS": 0, "DATASETS.TRAIN_IMAGES": images, "DATASETS.TRAIN_ANNOTATIONS": annotations,
            "DATASETS.TEST_IMAGES": val_images, "DATASETS.TEST_ANNOTATIONS": val_annotations, "OUTPUT_DIR": out,
            "LOG_PERIOD": 1, "TEST.EVAL_PERIOD": 0}
    return [str(x) for kv in opts.items() for x in kv]


def attempt(argv: list[str], delay_s: float | None, sig: signal.Signals | None) -> dict:
    """One `train` process, signalled after delay_s (None: run to the end) -> what it printed and how it ended."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    start = time.monotonic()
    if delay_s is not None:
        try:
            proc.wait(timeout=delay_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
    out, _ = proc.communicate(timeout=600)
    stopped, resumed = STOPPED.search(out), RESUMED.search(out)
    return {"rc": proc.returncode, "seconds": time.monotonic() - start,
            "reached": int(stopped.group(1)) if stopped else None,
            "resumed_at": int(resumed.group(1)) if resumed else None, "tail": out.strip().splitlines()[-1:] or [""]}


def dash(value: int | None) -> int | str:
    return "-" if value is None else value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=12)
    p.add_argument("--max-iter", type=int, default=400)
    p.add_argument("--checkpoint-period", type=int, default=10)
    p.add_argument("--max-delay", type=float, default=40.0, help="the latest a signal comes, in seconds (a start takes 10-20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="output/fault_train")
    p.add_argument("--report", default="benchmarks/results/fault_train.md")
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work)
    data = synthetic_dataset(DatasetOptions(root=work / "data", num_train=16, num_val=6, min_side=96, max_side=160)).root
    out = work / "run"
    if out.exists():
        sys.exit(f"error: {out} exists; remove it or pass another --work")
    base = [sys.executable, "-m", "siefpn_deploy", "train", "--config-file", PRESET]
    opts = overrides(data, out, args.max_iter, args.checkpoint_period)
    rows: list[list] = []
    lost: list[int] = []
    stopped: int | None = None  # the row of a SIGTERM-stopped attempt whose loss is not known yet
    for k in range(args.kills + 1):
        final = k == args.kills
        sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
        delay = None if final else rng.uniform(MIN_DELAY_S, args.max_delay)
        resume = (out / "last_checkpoint").is_file()
        result = attempt(base + (["--resume"] if resume else []) + opts, delay, None if final else sig)
        if stopped is not None and result["resumed_at"] is not None:
            # the attempt SIGTERM stopped lost what the first later attempt to resume did not resume from
            lost.append(rows[stopped][4] - result["resumed_at"])
            rows[stopped][6] = lost[-1]
            stopped = None
        rows.append([k + 1, "to the end" if final else f"{sig.name} at {delay:.1f} s",
                     "--resume" if resume else "fresh", dash(result["resumed_at"]), dash(result["reached"]),
                     result["rc"], "-", result["tail"][0][:90]])
        print(" | ".join(map(str, rows[-1])), flush=True)
        if result["reached"] is not None:
            stopped = len(rows) - 1
        if final and result["rc"] != 0:
            sys.exit(f"error: the final resume failed: {result['tail']}")
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    iterations = [r["iteration"] for r in log if "iteration" in r and "loss" in r]
    intact = iterations == list(range(1, args.max_iter + 1))
    header = ["attempt", "signal", "start", "resumed at", "stopped at (SIGTERM)", "exit code", "iterations lost",
              "last line"]
    landed = [r for r in rows[:-1] if r[5] != 0]  # exit 0: the run had finished before the signal came
    summary = (f"{args.kills} signals, {len(landed)} of them before the run finished "
               f"({sum(1 for r in landed if 'SIGKILL' in r[1])} SIGKILL, {sum(1 for r in landed if 'SIGTERM' in r[1])} "
               f"SIGTERM), then a resume to the end. Iterations lost after a SIGTERM that came during training: {lost} "
               f"(checkpoint period {args.checkpoint_period}; after SIGKILL, up to one period plus the iteration in "
               f"flight). Loss log: {len(iterations)} lines, iterations 1..{args.max_iter} each once: "
               f"{'yes' if intact else 'NO'}.")
    command = invocation()
    write_benchmark_report(args.report, title="Training under SIGKILL and SIGTERM, then --resume (CPU)",
                           data={"rows": rows, "lost": lost, "log_intact": intact}, command=command,
                           body=markdown_table(header, rows) + "\n\n" + summary)
    sys.exit(0 if intact else 1)


if __name__ == "__main__":
    main()
