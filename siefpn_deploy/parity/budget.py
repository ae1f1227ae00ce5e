"""`quantize --precision int8 --budget AP_POINTS`: an INT8 model that holds its AP budget by itself.

1. The last `--sensitivity-images` images (by id) of the train split are held out; calibration uses the rest.
   The held-out images are never val images, so val stays untouched for parity.
2. Quantize as `quantize` does, and measure the AP of the INT8 model (in its own runtime) against the FP32 model
   in ONNX Runtime on the held-out images, both on the CPU.
3. While the loss exceeds the budget: rank the quantized layers by their output error when each alone is
   quantized (`quantize.sensitivity`, which says why that ranking), keep the most sensitive 1, 2, 4, ... of them
   out of INT8 (FP32 in the ONNX), quantize again and measure again.
4. Stop when the budget holds, or fail in one line once `--max-excluded` layers are out and it still does not.

Every step is written to reports/quantize/NAME.sensitivity.{json,md,png}, on success and on failure; the model
and its meta.json (with the ranking, the excluded layers and the AP after each step) are written only when the
budget holds, so a failed run leaves whatever was at the output path as it was.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from ..core.contract import GraphContract
from ..core.errors import UserError
from ..core.reporting import machine, machine_line, markdown_table, write_report
from ..core.sidecar import land, read_meta
from ..core.staging import staging_dir
from ..data import CocoDetection
from ..data.coco import holdout_split
from ..data.preprocess import Preprocess
from ..evaluation.loop import evaluate_predictor
from ..quantize.calibration import images_of_annotations, load_or_build
from ..quantize.options import BudgetOptions, QuantizeOptions
from ..quantize.quantizer import calibration_canvas, quantize_model
from ..quantize.range_check import exact
from ..quantize.sensitivity import LayerSensitivity, rank_layers
from ..runtime import Detector

PROBE_IMAGES = 16  # of the held-out images, the ones the per-layer output error is summed over
RANKING = ("output error of each layer quantized alone: the noise-to-signal ratio of its output when only its "
           "own inputs and weights go through the INT8 model's Q/DQ (one probe graph, one pass; see "
           "siefpn_deploy/quantize/sensitivity.py for why not AP per layer)")


def _train_split(options: QuantizeOptions, meta: dict[str, Any]) -> tuple[Path, Path]:
    """(instances JSON, image folder) of the train split: --calib-data when it is a JSON, else meta.json's."""
    if options.calib_data is not None and options.calib_data.suffix != ".json":
        raise UserError(f"--budget measures AP on held-out train images and needs their annotations: give "
                        f"--calib-data an instances JSON, not the folder {options.calib_data}")
    datasets = meta.get("datasets", {})
    annotations = options.calib_data or (Path(datasets["train_annotations"]) if datasets.get("train_annotations") else None)
    if annotations is None or not annotations.is_file():
        raise UserError(f"--budget needs the train split's annotations: {options.onnx}'s meta.json records "
                        f"{annotations or 'none'}; give --calib-data path/to/instances_train.json")
    image_dir = options.calib_image_dir or (Path(datasets["train_images"]) if options.calib_data is None else None)
    return annotations, image_dir or images_of_annotations(annotations, None)[0].parent


def _steps(ranked: int, cap: int) -> list[int]:
    """How many of the most sensitive layers each step keeps out of INT8: 1, 2, 4, ... up to the cap."""
    counts, k = [], 1
    while k < min(ranked, cap):
        counts.append(k)
        k *= 2
    return counts + [min(ranked, cap)] if min(ranked, cap) > 0 else counts


def quantize_within_budget(options: QuantizeOptions, budget: BudgetOptions, *, log=print) -> tuple[Path, dict[str, Any]]:
    if options.precision != "int8":
        raise UserError("--budget is for --precision int8 (FP16 keeps its own range check)")
    if budget.budget < 0 or budget.sensitivity_images < 1 or budget.max_excluded < 0:
        raise UserError("--budget must be >= 0, --sensitivity-images >= 1 and --max-excluded >= 0")
    meta = read_meta(options.onnx)
    annotations, image_dir = _train_split(options, meta)
    output = options.output_path()
    report_name = output.name.removesuffix(".onnx") + ".sensitivity"
    report: dict[str, Any] = {"model": str(options.onnx), "output": str(output), "target": options.target,
                              "budget": budget.budget, "max_excluded": budget.max_excluded, "ranking": RANKING,
                              "layers": [], "steps": [], "machine": machine()}
    # the steps' models are made in a staging folder beside the output, and the one that holds is moved into place
    with staging_dir(output) as scratch:
        fit, held = holdout_split(annotations, budget.sensitivity_images, out_dir=scratch)
        base = dataclasses.replace(options, calib_data=fit, calib_image_dir=image_dir)
        dataset = CocoDetection(image_dir=image_dir, annotation_file=held)
        report["held_out"] = {"annotations": str(annotations), "images": len(dataset)}
        log(f"[quantize] budget {budget.budget:g} AP points, measured on the last {len(dataset)} images of "
            f"{annotations} (held out of calibration)")
        reference = evaluate_predictor(Detector.from_path(options.onnx, device="cpu", runtime="onnxruntime"), dataset,
                                       batch_size=1, desc="fp32 onnxruntime, held-out train images")
        report["fp32_ap"] = {t: 100 * m["AP"] for t, m in reference.metrics.items()}
        ranking: list[LayerSensitivity] | None = None
        excluded: list[str] = []
        plan: list[int] = []
        while True:
            t0 = time.perf_counter()
            step_options = dataclasses.replace(base, output=scratch / f"step{len(report['steps'])}" / output.name,
                                               exclude=list(options.exclude) + exact(excluded))
            step_options.output.parent.mkdir()
            candidate, candidate_meta = quantize_model(step_options, log=log)
            detector = Detector.from_path(candidate, device="cpu")
            evaluation = evaluate_predictor(detector, dataset, batch_size=1,
                                            desc=f"int8 {detector.kind}, {len(excluded)} layers kept out")
            delta = {t: 100 * (evaluation.metrics[t]["AP"] - reference.metrics[t]["AP"]) for t in reference.metrics}
            holds = all(-d <= budget.budget for d in delta.values())
            report["steps"].append({"excluded": list(excluded), "delta_ap": delta, "holds": holds,
                                    "int8_ap": {t: 100 * m["AP"] for t, m in evaluation.metrics.items()},
                                    "qdq_nodes": candidate_meta["quantization"]["qdq_nodes"],
                                    "seconds": round(time.perf_counter() - t0, 1)})
            log(f"[quantize] step {len(report['steps'])}: {len(excluded)} layers kept out of INT8, "
                + ", ".join(f"{t} ΔAP {d:+.2f}" for t, d in delta.items()) + (": holds" if holds else ": over budget"))
            if holds:
                break
            if ranking is None:
                ranking = _rank(candidate, options, meta, dataset, log)
                report["layers"] = [{"node": s.node, "op": s.op, "nsr": s.nsr,
                                     "sqnr_db": s.sqnr_db if math.isfinite(s.sqnr_db) else None} for s in ranking]
                plan = _steps(len(ranking), budget.max_excluded)
            if not plan:
                break
            excluded = [s.node for s in ranking[: plan.pop(0)]]
        report["excluded"] = excluded  # on failure: the largest set tried
        report["holds"] = holds
        written = write_report(budget.report_dir, report_name, data=report, markdown=markdown(report),
                               plot=lambda fig: plot(report, fig))
        log(f"[quantize] sensitivity report: {', '.join(map(str, written))}")
        if not holds:
            worst = min(report["steps"][-1]["delta_ap"].values())
            raise UserError(f"INT8 of {options.onnx.name} loses {-worst:.2f} AP points on {len(dataset)} held-out "
                            f"train images with the {len(excluded)} most sensitive layers kept out of INT8 (budget "
                            f"{budget.budget:g}, --max-excluded {budget.max_excluded}); nothing written. See "
                            f"{written[1]}; raise --max-excluded or --budget, or use --precision fp16")
        final_meta = read_meta(candidate)
        final_meta["quantization"]["calibration"]["held_out"] = report["held_out"]
        final_meta["quantization"]["sensitivity"] = {
            "budget": budget.budget, "fp32_ap": report["fp32_ap"], "ranking": RANKING, "layers": report["layers"], "excluded": excluded,
            "steps": report["steps"], "report": str(written[0])}
        final_meta = land(candidate, output, final_meta)
    log(f"[quantize] wrote {output}: within {budget.budget:g} AP points with {len(excluded)} layers kept out of INT8")
    return output, final_meta


def _rank(candidate: Path, options: QuantizeOptions, meta: dict[str, Any], dataset: CocoDetection, log
          ) -> list[LayerSensitivity]:
    """The quantized layers of `candidate`, most sensitive first, on the first held-out images."""
    images = [dataset.image_dir / dataset.coco.imgs[i]["file_name"] for i in dataset.image_ids[:PROBE_IMAGES]]
    contract = GraphContract.from_meta(meta, source=str(options.onnx))
    with tempfile.TemporaryDirectory(prefix="probe-") as cache:
        probe = load_or_build(images, preprocess=Preprocess(contract.preprocess), canvas=calibration_canvas(options, meta),
                              onnx_sha256=meta["sha256"], cache_dir=Path(cache), log=log)
        ranking = rank_layers(options.onnx, candidate, probe.tensors, probe.image_sizes, log=log)
        del probe  # its arrays map files in `cache`
    log("[quantize] most sensitive: " + ", ".join(f"{s.node} ({s.sqnr_db:.1f} dB)" for s in ranking[:3]))
    return ranking


def markdown(report: dict[str, Any]) -> str:
    steps = [[i + 1, len(s["excluded"]), *(f"{s['delta_ap'][t]:+.2f}" for t in report["fp32_ap"]), s["qdq_nodes"],
              "holds" if s["holds"] else "over budget", f"{s['seconds']:.0f}"] for i, s in enumerate(report["steps"])]
    head = ["step", "layers kept out", *(f"Δ {t} AP" for t in report["fp32_ap"]), "Q/DQ nodes", "verdict", "s"]
    kept = set(report["excluded"])
    layers = [[i + 1, f"`{s['node']}`", s["op"], "inf" if s["sqnr_db"] is None else f"{s['sqnr_db']:.1f}",
               f"{s['nsr']:.2e}", "yes" if s["node"] in kept else ""]
              for i, s in enumerate(report["layers"][:30])]
    verdict = (f"**holds** with {len(report['excluded'])} layers kept out of INT8" if report["holds"] else
               f"**not met** with {len(report['excluded'])} layers kept out (--max-excluded "
               f"{report['max_excluded']}): nothing written")
    text = (f"# INT8 sensitivity: {Path(report['output']).name}\n\n"
            f"{report['model']} quantized for {report['target']}; AP budget {report['budget']:g} points, measured "
            f"against the FP32 model in ONNX Runtime on the last {report['held_out']['images']} images of "
            f"`{report['held_out']['annotations']}` (held out of calibration). FP32 AP there: "
            + ", ".join(f"{t} {v:.2f}" for t, v in report["fp32_ap"].items()) + f". Result: {verdict}.\n\n"
            + markdown_table(head, steps) + "\n")
    if layers:
        text += (f"\nRanking: {report['ranking']}. Lower SQNR = more sensitive; the {min(30, len(report['layers']))} "
                 f"most sensitive of {len(report['layers'])} quantized layers:\n\n"
                 + markdown_table(["rank", "layer", "op", "SQNR dB", "NSR", "kept out"], layers) + "\n")
    return text + f"\nMachine: {machine_line(report['machine'])}.\n"


def plot(report: dict[str, Any], fig: Any) -> None:
    """Per-layer SQNR (most sensitive at the top), the layers kept out of INT8 in red."""
    layers = report["layers"][:30][::-1]
    if not layers:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "budget held without exclusions: no ranking needed", ha="center", va="center")
        ax.set_axis_off()
        return
    fig.set_size_inches(9, max(3.0, 0.28 * len(layers) + 1))
    ax = fig.subplots()
    kept = set(report["excluded"])
    ax.barh([s["node"][-60:] for s in layers], [s["sqnr_db"] or 0.0 for s in layers],  # None: no error at all
            color=["#c33" if s["node"] in kept else "#49a" for s in layers])
    ax.set_xlabel("SQNR of the layer's output, quantized alone (dB; lower = more sensitive)")
    ax.set_title(f"INT8 sensitivity, {Path(report['output']).name} (red: kept out of INT8)")
    ax.tick_params(axis="y", labelsize=7)
