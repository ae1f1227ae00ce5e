"""Where the deploy wrapper's time goes, run eagerly, beside the eager model's: per detector, the median time of
each and torch.profiler's self CPU time of their heaviest operators, on the same synthetic canvas.

    python benchmarks/profile_deploy.py --archs retinanet faster_rcnn mask_rcnn --batch 4 --sizes 384

The deploy wrapper (export/deploy.py) is the graph that `export` traces: its ops are what a `.pt2` package runs
(`--nms kernel`, torchvision's roi_align) and what an ONNX export lowers. So an operator that costs more here
than in the eager model costs more in the package too, whatever Inductor does around it; this is how the
quadratic NMS call of benchmarks/results/aoti_cpu_static_quiet.md was found.
Models: the synthetic presets, briefly trained once into --work/<arch> (shared with bench_aoti.py).
"""

from __future__ import annotations

from functools import partial

import torch
from common import invocation, synthetic_benchmark_arguments, synthetic_model
from torch.profiler import ProfilerActivity, profile

from siefpn_deploy.core.config import load_config
from siefpn_deploy.core.contract import ShapeRange
from siefpn_deploy.core.reporting import markdown_table, write_benchmark_report
from siefpn_deploy.core.timing import measure_interleaved
from siefpn_deploy.export.exporter import prepare
from siefpn_deploy.pipeline import ExportOptions
from siefpn_deploy.runtime import Detector
from siefpn_deploy.runtime.bench import synthetic_batch

TOP = 6  # operators listed per detector: the heaviest of either side


def self_ms(fn) -> dict[str, float]:
    """Self CPU milliseconds per operator of one call of fn."""
    with profile(activities=[ProfilerActivity.CPU]) as p:
        fn()
    return {e.key: e.self_cpu_time_total / 1000 for e in p.key_averages()}


def main() -> None:
    p = synthetic_benchmark_arguments(__doc__, "benchmarks/results/profile_deploy_cpu.md")
    p.set_defaults(sizes=[384], archs=["retinanet", "faster_rcnn", "mask_rcnn"])
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args()
    size, batch = max(args.sizes), args.batch
    exact = {"batch": ShapeRange(batch, batch), "height": ShapeRange(size, size), "width": ShapeRange(size, size)}
    times, ops = [], []
    for arch in args.archs:
        run, _ = synthetic_model(arch, args, ExportOptions(batch=ShapeRange(1, batch), height=ShapeRange(64, size),
                                                           width=ShapeRange(64, size)))
        eager, _, canvas = synthetic_batch(Detector.from_path(run.weights, device="cpu"), batch, size)
        cfg = load_config(run.config, ["MODEL.WEIGHTS", str(run.weights)])
        options = ExportOptions(format="aoti", output=str(run.config.parent / "profile.pt2"), **exact).resolved(
            cfg, run.config.name)
        deploy = prepare(cfg, options, config_name=run.config.name, log=lambda *_: None).deploy.eval()
        sizes = torch.tensor(canvas.image_sizes, dtype=torch.int32)
        # the canvas holds 0..255 pixels, as the exported graph takes them (input_scale 255)
        calls = {"eager model": partial(eager.run_canvas, canvas), "deploy wrapper": partial(deploy, canvas.images, sizes)}
        with torch.inference_mode():
            ms = {name: t.median_ms for name, t in measure_interleaved(calls, warmup=3, iters=args.iters).items()}
            spent = {name: self_ms(fn) for name, fn in calls.items()}
        times.append([arch, f"{size}x{size}", batch, f"{ms['eager model']:.0f}", f"{ms['deploy wrapper']:.0f}",
                      f"{ms['deploy wrapper'] / ms['eager model']:.2f}"])
        heaviest = sorted(set(spent["eager model"]) | set(spent["deploy wrapper"]),
                          key=lambda op: -max(spent["eager model"].get(op, 0), spent["deploy wrapper"].get(op, 0)))
        for op in heaviest[:TOP]:
            ops.append([arch, f"`{op}`", *(f"{spent[side].get(op, 0):.1f}" for side in ("eager model", "deploy wrapper"))])
        print(" | ".join(map(str, times[-1])), flush=True)
    head_t = ["detector", "input", "batch", "eager model ms", "deploy wrapper (eager) ms", "wrapper / model"]
    head_o = ["detector", "operator", "eager model self CPU ms", "deploy wrapper self CPU ms"]
    body = (markdown_table(head_t, times) + f"\n\nThe {TOP} heaviest operators of either side (one profiled call "
            "each, self CPU time):\n\n" + markdown_table(head_o, ops) +
            f"\n\nSynthetic presets (ResNet-18, 64-wide Dual SIE-FPN), trained {args.train_iters} iterations; FP32; "
            f"median of {args.iters} runs after 3 warm-up runs, the two taking turns run by run, on the same "
            f"synthetic canvas; {torch.get_num_threads()} threads.")
    command = invocation()
    write_benchmark_report(args.report, title="The deploy wrapper against the eager model, operator by operator (CPU)",
                           body=body, command=command, data={"times": times, "operators": ops})


if __name__ == "__main__":
    main()
