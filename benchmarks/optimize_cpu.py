"""`siefpn-deploy optimize --target cpu` on one trained model, with issue 28's verdicts, written as a dated report.

    python benchmarks/optimize_cpu.py --checkpoint output/demo/model_final.pth
    python benchmarks/optimize_cpu.py --checkpoint output/demo/model_0000174.pth --config-file output/demo/config.yaml \
        --onnx export/demo.onnx --output export/optimized/bench

Runs the optimize stage (pipeline.optimize_detector: every CPU candidate made or reused, parity on the config's
val split, bench at batch 1 and the model's largest input) and adds the verdicts:
- the winner is at least 1.5x faster (end-to-end p50) than the fastest peer default measured in the same run:
  ONNX Runtime FP32, and OpenVINO FP32 with its default precision (bf16 where the CPU computes it natively);
- the winner's ratio to eager PyTorch FP32 (goal <= 0.3x);
both from optimize's head-to-head timing (the winner, eager PyTorch and the peers in blocks taking turns);
- the .pt2's compile time (from its meta.json) when it was made.
Writes --report (.md and .json) with the date, machine, CPU model and commit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from siefpn_deploy.core.cpu import bf16_units, cpu_model
from siefpn_deploy.core.reporting import write_benchmark_report
from siefpn_deploy.core.sidecar import read_meta
from siefpn_deploy.parity.winner import EAGER_NAME, markdown
from siefpn_deploy.pipeline.optimize import OptimizeJob, duel_markdown, optimize_detector

PEER_SPEEDUP, EAGER_GOAL = 1.5, 0.3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--config-file")
    p.add_argument("--onnx", type=Path)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--size", type=int, help="square input side (default: the model's largest test input)")
    p.add_argument("--max-images", type=int)
    p.add_argument("--no-pt2", dest="pt2", action="store_false")
    p.add_argument("--output", type=Path, default=Path("export/optimized/bench"))
    p.add_argument("--report", default="benchmarks/results/optimize_cpu.md")
    args = p.parse_args()
    result = optimize_detector(OptimizeJob(weights=args.checkpoint, config_file=args.config_file, onnx=args.onnx,
                                           iters=args.iters, max_images=args.max_images, pt2=args.pt2, size=args.size,
                                           output=args.output))
    choice = result.choice
    # the head-to-head figures (the winner, eager PyTorch and the peers in blocks taking turns), as the summary
    duel = choice.get("head_to_head") or {}
    peers = {name: ms for name, ms in duel.items() if name not in ("winner", EAGER_NAME)}
    verdicts = []
    if peers:
        name, fastest = min(peers.items(), key=lambda kv: kv[1])
        speedup = fastest / duel["winner"]
        verdicts.append(f"winner vs the fastest peer default ({name}, {fastest:.1f} ms head to head): {speedup:.2f}x "
                        f"(target >= {PEER_SPEEDUP}x): {'met' if speedup >= PEER_SPEEDUP else 'missed'}")
    if EAGER_NAME in duel:
        ratio = duel["winner"] / duel[EAGER_NAME]
        verdicts.append(f"winner vs eager PyTorch FP32 (end to end, head to head): {ratio:.2f}x (goal <= "
                        f"{EAGER_GOAL}x): {'met' if ratio <= EAGER_GOAL else 'missed'}")
    for r in choice["rows"]:
        if r["artifact"].endswith(".pt2"):
            seconds = read_meta(r["artifact"])["export"].get("compile_seconds")
            verdicts.append(f"the .pt2 compiled in {seconds} s (issue 28's goal for RetinaNet: <= 120 s)")
            break
    body = (f"CPU: {cpu_model()}; native bf16: {bf16_units() or 'none'}. Model: {args.checkpoint} "
            f"({args.config_file or 'config.yaml beside it'}).\n\n{result.summary}.\n\n{markdown(choice)}"
            f"{duel_markdown(duel or None, args.iters)}\n\n"
            + "\n".join(f"- {v}" for v in verdicts) + "\n")
    write_benchmark_report(args.report, title="optimize --target cpu", body=body,
                           data={"choice": choice, "verdicts": verdicts, "summary": result.summary},
                           command=f"python benchmarks/optimize_cpu.py {' '.join(sys.argv[1:])}".strip())


if __name__ == "__main__":
    main()
