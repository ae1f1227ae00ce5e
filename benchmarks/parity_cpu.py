"""Parity on models that detect (issue 13, part 4): every CPU artifact's COCO AP beside PyTorch's, three detectors.

    python benchmarks/parity_cpu.py                          # RetinaNet, Faster R-CNN, Mask R-CNN
    python benchmarks/parity_cpu.py --archs retinanet --max-images 50

Per detector, from weights trained on the easy synthetic level (datasets/synth-easy, generated if missing):
  - retinanet: the demo's model (`siefpn-deploy demo`, output/demo/model_final.pth);
  - faster_rcnn, mask_rcnn: configs/synth_{faster,mask}_rcnn_R18_demo.yaml, weights in output/parity_cpu/ARCH/
    (from a GPU: benchmarks/experiments/train_rcnn_easy.sh trains them and benchmarks/experiments/join_weights.py
    rejoins the parts it sends back; or train them here: `siefpn-deploy train --config-file CONFIG` with the
    dataset given as in the demo). --weights ARCH=PATH overrides either.
The script exports the demo's graph (tensor NMS), makes FP16, INT8 for TensorRT (ModelOpt, entropy), INT8 for
ONNX Runtime's CPU kernels (max) and that INT8 again with `quantize --budget` (sensitivity-driven exclusions
until the AP loss on 200 held-out train images is within the first of --int8-goals that can be met), then runs `parity` on the
val split (budgets fp16 0.2, int8 1.0 AP points) and `bench` on the two CPU INT8 models (the cost of the
exclusions). Prints the tables and writes them, with the date, CPU, threads and commit, to --report.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from siefpn_deploy.core.errors import UserError
from siefpn_deploy.core.reporting import write_benchmark_report
from siefpn_deploy.parity.report import table as parity_table
from siefpn_deploy.pipeline import (
    BenchJob,
    BudgetOptions,
    DatasetOptions,
    ExportJob,
    ExportOptions,
    ParityJob,
    QuantizeJob,
    QuantizeOptions,
    bench_artifacts,
    check_parity,
    export_detector,
    quantize_detector,
    synthetic_dataset,
)

CONFIGS = {"retinanet": "configs/synth_retinanet_R18_demo.yaml", "faster_rcnn": "configs/synth_faster_rcnn_R18_demo.yaml",
           "mask_rcnn": "configs/synth_mask_rcnn_R18_demo.yaml"}
WEIGHTS = {"retinanet": "output/demo/model_final.pth", "faster_rcnn": "output/parity_cpu/faster_rcnn/model_final.pth",
           "mask_rcnn": "output/parity_cpu/mask_rcnn/model_final.pth"}
CALIBRATION_IMAGES = 128  # the demo's: enough for these small models


def artifacts(arch: str, weights: Path, overrides: tuple[str, ...], args) -> tuple[list[Path], list[dict]]:
    """([FP32 ONNX, FP16, INT8 TensorRT layout, INT8 CPU, INT8 CPU within the goal], the budget loop's outcome)
    for one detector; each made again only when its input or request changed."""
    work = Path(args.work)
    calib = work / "calib"
    # the demo's graph: tensor NMS, which ONNX Runtime runs and every TensorRT flavour builds
    onnx = export_detector(ExportJob(CONFIGS[arch], weights=weights, overrides=overrides,
                                     options=ExportOptions(output=work / f"{arch}.onnx", nms="tensor"))).path
    # FP16's range check keeps its default image count
    found = [onnx] + [quantize_detector(QuantizeJob(QuantizeOptions(
        onnx=onnx, precision=p, calib_cache=calib, num_calib=CALIBRATION_IMAGES if p == "int8" else None))).path
        for p in ("fp16", "int8")]
    cpu = QuantizeOptions(onnx=onnx, precision="int8", target="ort-cpu", num_calib=CALIBRATION_IMAGES,
                          calib_cache=calib)
    found.append(quantize_detector(QuantizeJob(cpu)).path)
    outcomes = []
    for budget in args.int8_goals:  # the first goal met ends the list
        goal = BudgetOptions(budget=budget, report_dir=Path(args.report).parent / "parity_cpu_sensitivity")
        name = f"{arch}.int8-cpu-goal{budget:g}"
        try:
            within = dataclasses.replace(cpu, output=work / f"{name}.onnx")
            found.append(quantize_detector(QuantizeJob(within, budget=goal)).path)
            outcomes.append({"goal": budget, "met": True})
        except UserError as e:
            outcomes.append({"goal": budget, "met": False, "message": str(e)})
        outcomes[-1]["report"] = str(Path(goal.report_dir) / f"{name}.sensitivity.md")
        if outcomes[-1]["met"]:
            break
    return found, outcomes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--weights", nargs="*", default=[], metavar="ARCH=PATH", help="weights other than the defaults")
    p.add_argument("--data", default="datasets/synth-easy", help="the easy level (generated if missing)")
    p.add_argument("--work", default="output/parity_cpu", help="where the exported and quantized models go")
    p.add_argument("--max-images", type=int, help="val images (default all 200)")
    p.add_argument("--int8-goals", type=float, nargs="+", default=[0.5, 1.0],
                   help="AP losses `quantize --budget` aims for, tightest first; the first met ends it (default 0.5 1.0)")
    p.add_argument("--size", type=int, default=320, help="bench canvas (the demo's largest test size)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--report", default="benchmarks/results/parity_cpu.md")
    args = p.parse_args()
    weights = {**WEIGHTS, **dict(item.split("=", 1) for item in args.weights)}
    overrides = tuple(synthetic_dataset(DatasetOptions(root=Path(args.data), level="easy")).overrides())
    sections, data = [], {}
    for arch in args.archs:
        if not Path(weights[arch]).is_file():
            raise SystemExit(f"error: {arch}: no weights at {weights[arch]} (see this script's --help)")
        found, goal = artifacts(arch, Path(weights[arch]), overrides, args)
        reports = Path(args.work) / "reports" / arch  # the parity and bench stages' own reports
        parity = check_parity(ParityJob(CONFIGS[arch], weights=Path(weights[arch]), artifacts=tuple(found),
                                        overrides=overrides, max_images=args.max_images, batch=1,
                                        report_dir=reports)).report
        cpu_int8 = tuple(path for path in found if ".int8-cpu" in path.name)
        bench = bench_artifacts(BenchJob(artifacts=cpu_int8, batches=(1,), sizes=(args.size,), iters=args.iters,
                                         device="cpu", report_dir=reports)).report
        data[arch] = {"weights": weights[arch], "parity": parity, "bench": bench, "int8_goal": goal}
        trained = {t: 100 * m["AP"] for t, m in parity["artifacts"][0]["metrics"].items()}
        e2e = {Path(r["artifact"]).name: r["e2e_p50_ms"] for r in bench["rows"]}
        goal_text = "; ".join(f"within {g['goal']:g}: " + (f"met, see `{g['report']}`" if g["met"] else
                                                             f"not met: {g['message']}") for g in goal)
        latency = ", ".join(f"`{name}` {ms:.1f} ms" for name, ms in e2e.items())
        sections.append(
            f"## {arch}\n\nWeights `{weights[arch]}`; trained AP (PyTorch, {parity['images']} val images): "
            + ", ".join(f"{t} {v:.2f}" for t, v in trained.items()) + f". Parity: **{'PASS' if parity['passed'] else 'FAIL'}**."
            f"\n\n{parity_table(parity)}\n\nINT8 by sensitivity-driven exclusions (`quantize --target ort-cpu "
            f"--budget GOAL`, measured on held-out train images): {goal_text}\n\n"
            f"End-to-end p50, batch 1, {args.size}x{args.size}, ONNX Runtime on this CPU: {latency}.")
        print(sections[-1], flush=True)
    notes = ("Data: the easy synthetic level (`data synth --level easy`), val split. AP in points (0..100); Δ is the "
             "artifact minus PyTorch. Budgets: fp32 0.1, fp16 0.2, int8 1.0. INT8 calibration: 128 train images; "
             "the --budget loop holds out the last 200 train images (never val) and calibrates on the rest.")
    write_benchmark_report(args.report, title="Parity on models that detect: CPU artifacts vs PyTorch",
                           data={"detectors": data}, body="\n\n".join(sections) + "\n\n" + notes,
                           command=f"python benchmarks/parity_cpu.py {' '.join(sys.argv[1:])}".strip())


if __name__ == "__main__":
    main()
