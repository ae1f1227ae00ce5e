"""Parity on models that detect (issue 13, part 4): every CPU artifact's COCO AP beside PyTorch's, three detectors.

    python benchmarks/parity_cpu.py                          # RetinaNet, Faster R-CNN, Mask R-CNN
    python benchmarks/parity_cpu.py --archs retinanet --max-images 50

Per detector, from weights trained on the easy synthetic level (datasets/synth-easy, generated if missing):
  - retinanet: the demo's model (`siefpn-deploy demo`, output/demo/model_final.pth, trained on this CPU);
  - faster_rcnn, mask_rcnn: configs/synth_{faster,mask}_rcnn_R18_demo.yaml, weights in output/parity_cpu/ARCH/
    (trained on the lent H100 by benchmarks/device/train_rcnn_easy.sh and rejoined by
    benchmarks/device/join_weights.py; or train them here: `siefpn-deploy train --config-file CONFIG` with the
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

from siefpn_deploy.core.config import load_config
from siefpn_deploy.core.errors import UserError
from siefpn_deploy.core.reporting import write_benchmark_report
from siefpn_deploy.data import CocoDetection
from siefpn_deploy.data.synth import EASY
from siefpn_deploy.demo import dataset_overrides, ensure_synthetic, export_stage, quantize_stage
from siefpn_deploy.parity.budget import quantize_within_budget
from siefpn_deploy.parity.check import DEFAULT_BUDGETS, run_parity
from siefpn_deploy.parity.report import table as parity_table
from siefpn_deploy.quantize.options import BudgetOptions, QuantizeOptions
from siefpn_deploy.quantize.quantizer import quantize_model
from siefpn_deploy.runtime import Detector
from siefpn_deploy.runtime.bench import run_bench

CONFIGS = {"retinanet": "configs/synth_retinanet_R18_demo.yaml", "faster_rcnn": "configs/synth_faster_rcnn_R18_demo.yaml",
           "mask_rcnn": "configs/synth_mask_rcnn_R18_demo.yaml"}
WEIGHTS = {"retinanet": "output/demo/model_final.pth", "faster_rcnn": "output/parity_cpu/faster_rcnn/model_final.pth",
           "mask_rcnn": "output/parity_cpu/mask_rcnn/model_final.pth"}
CALIBRATION_IMAGES = 128  # as the demo


def artifacts(arch: str, weights: Path, args) -> tuple[Path, list[Path], dict]:
    """(config, [FP32 ONNX, FP16, INT8 TensorRT layout, INT8 CPU, INT8 CPU within the goal], the budget loop's
    outcome) for one detector."""
    config = CONFIGS[arch]
    cfg = load_config(config, dataset_overrides(Path(args.data)) + ["MODEL.WEIGHTS", str(weights)])
    work = Path(args.work)
    onnx_path = work / f"{arch}.onnx"
    meta = export_stage(cfg, config, onnx_path)
    calib = work / "calib"
    found = [onnx_path, quantize_stage(onnx_path, meta["sha256"], "fp16", calib),
             quantize_stage(onnx_path, meta["sha256"], "int8", calib)]
    cpu = QuantizeOptions(onnx=onnx_path, precision="int8", target="ort-cpu", num_calib=CALIBRATION_IMAGES,
                          calib_cache=calib)
    found.append(quantize_model(cpu)[0])
    outcomes = []
    for budget in args.int8_goals:  # the first goal met ends the list
        goal = BudgetOptions(budget=budget, report_dir=Path(args.report).parent / "parity_cpu_sensitivity")
        name = f"{arch}.int8-cpu-goal{budget:g}"
        try:
            found.append(quantize_within_budget(dataclasses.replace(cpu, output=work / f"{name}.onnx"), goal)[0])
            outcomes.append({"goal": budget, "met": True})
        except UserError as e:
            outcomes.append({"goal": budget, "met": False, "message": str(e)})
        outcomes[-1]["report"] = str(Path(goal.report_dir) / f"{name}.sensitivity.md")
        if outcomes[-1]["met"]:
            break
    return Path(config), found, outcomes


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
    ensure_synthetic(Path(args.data), level=EASY)
    sections, data = [], {}
    for arch in args.archs:
        if not Path(weights[arch]).is_file():
            raise SystemExit(f"error: {arch}: no weights at {weights[arch]} (see this script's --help)")
        config, found, goal = artifacts(arch, Path(weights[arch]), args)
        cfg = load_config(config, dataset_overrides(Path(args.data)))
        dataset = CocoDetection(image_dir=cfg.DATASETS.TEST_IMAGES, annotation_file=cfg.DATASETS.TEST_ANNOTATIONS,
                                with_masks=cfg.MODEL.has_masks)
        reference = Detector.from_checkpoint(weights[arch], config=config, device="cpu")
        parity = run_parity(reference, found, dataset, budgets=dict(DEFAULT_BUDGETS), max_images=args.max_images,
                            batch_size=1)
        cpu_int8 = [path for path in found if ".int8-cpu" in path.name]
        bench = run_bench(cpu_int8, batches=[1], sizes=[args.size], warmup=3, iters=args.iters, device="cpu")
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
