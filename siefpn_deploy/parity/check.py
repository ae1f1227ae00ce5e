"""`siefpn-deploy parity`: the COCO AP of every artifact beside the PyTorch model's, on the same images
with the same preprocessing, plus tensor-level agreement with PyTorch's detections, against budgets.

An artifact that cannot run on this machine (a TensorRT engine without a GPU) is listed as
"not run: <reason>", never dropped, and fails the gate unless the caller allows it (`allow_not_run`): a CI
job handed only engines on a host without a GPU must not go green on nothing. A broken budget fails it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.cpu import torch_threads
from ..core.errors import CannotRunHere, UserError
from ..core.openvino import OPENVINO_PRECISION, Runtimes, runtime_order, runtimes_for
from ..core.reporting import machine
from ..core.sidecar import ENGINE_SUFFIX, PACKAGE_SUFFIX, read_meta
from ..data import CocoDetection
from ..evaluation.agreement import Agreement, as_rows
from ..evaluation.loop import Evaluation, evaluate_predictor
from ..runtime import Detector
from .examples import ExampleGrid, grid_name, pick_examples

# AP points (0..100) an artifact may lose, per precision. bf16 is the arithmetic of an FP32 (or FP16) graph run in
# openvino-bf16 (`budget_name`): between fp16 and int8, since bf16 keeps FP32's range but rounds to 8 mantissa bits
# (fp16: 11), and OpenVINO computes every convolution in it, where fp16's AutoCast keeps the sensitive nodes in
# FP32; it is still far finer than INT8's 256 levels per tensor.
DEFAULT_BUDGETS = {"fp32": 0.1, "fp16": 0.2, "bf16": 0.5, "int8": 1.0}
MATCH_IOU = 0.9


@dataclass
class ArtifactResult:
    path: str
    kind: str
    precision: str
    status: str  # "pass", "fail" or "not run"
    reason: str = ""
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    delta: dict[str, float] = field(default_factory=dict)  # AP points vs PyTorch, per iou type (negative = lower)
    budget: float | None = None
    agreement: dict[str, Any] = field(default_factory=dict)
    int8_target: str | None = None  # an INT8 model's layout: quantize --target (tensorrt, ort-cpu, openvino)
    examples: dict[str, Any] = field(default_factory=dict)  # {"grid": its PNG's name, "images": Example.record()s}


@dataclass(frozen=True)
class ParityRun:
    report: dict[str, Any]  # parity.json's content
    grids: list[ExampleGrid]  # each artifact's example images, worst-agreeing first (`parity.examples`)


def int8_target(detector: Detector) -> str | None:
    """Which runtime an INT8 model was laid out for (models from before --target are ModelOpt's: tensorrt)."""
    if detector.precision != "int8":
        return None
    return (detector.meta.get("quantization") or {}).get("target") or "tensorrt"


def budget_name(precision: str, kind: str) -> str:
    """The budget an artifact is held to: its precision's, except that a graph computed in bf16 (a runtime whose
    `core.openvino.OPENVINO_PRECISION` is bf16) is held to bf16's, whether its file is FP32 or FP16 (bf16
    arithmetic is the coarser); an INT8 graph there keeps int8's (its quantized ops dominate the error, the bf16
    remainder adds little). A precision without a budget of its own gets fp32's."""
    if OPENVINO_PRECISION.get(kind) == "bf16" and precision != "int8":
        return "bf16"
    return precision if precision in DEFAULT_BUDGETS else "fp32"


def parse_budgets(items: list[str]) -> dict[str, float]:
    budgets = dict(DEFAULT_BUDGETS)
    for item in items:
        key, _, value = item.partition("=")
        if key not in budgets or not value:
            raise UserError(f"--budget takes PRECISION=AP_POINTS with precision in {', '.join(budgets)}, got {item!r}")
        try:
            budgets[key] = float(value)
        except ValueError:
            raise UserError(f"--budget {item!r}: {value!r} is not a number") from None
    return budgets


def verdict(reference: dict[str, dict[str, Any]], metrics: dict[str, dict[str, Any]], *, budget: float,
            non_finite: int) -> tuple[str, dict[str, float]]:
    """("pass" or "fail", the AP change in points per IoU type): an artifact passes when no IoU type (bbox, and
    segm for masks) loses more than `budget` AP points against the reference and no value it returned is
    NaN or infinite. Gaining AP never fails."""
    delta = {t: 100 * (metrics[t]["AP"] - reference[t]["AP"]) for t in reference}
    ok = all(-d <= budget for d in delta.values()) and non_finite == 0
    return ("pass" if ok else "fail"), delta


def _agreement(reference: Evaluation, other: Evaluation, score_thresh: float, max_det: int) -> Agreement:
    agreement = Agreement()
    for image_id, ref in reference.detections.items():
        agreement.add(as_rows(ref), as_rows(other.detections[image_id]), min_iou=MATCH_IOU, score_thresh=score_thresh,
                      max_det=max_det)
    return agreement


def same_model(reference: Detector, artifact: Detector) -> None:
    """Refuse an artifact exported from other weights: its AP would say nothing about these."""
    want = reference.meta["source"].get("weights_sha256")
    got = artifact.meta.get("source", {}).get("weights_sha256")
    if want and got and want != got:
        raise UserError(f"{artifact.path} was exported from other weights ({artifact.meta['source']['weights']}) "
                        f"than MODEL.WEIGHTS {reference.path}")


def run_parity(reference: Detector, artifacts: list[Path], dataset: CocoDetection, *, budgets: dict[str, float],
               max_images: int | None, batch_size: int, runtimes: Runtimes = None,
               allow_not_run: bool = False, log=print) -> ParityRun:
    """Every artifact and the reference on the same images in the same batches of `batch_size` (so the same
    canvases; TEST.IMS_PER_BATCH, as training's evaluation uses), through the one evaluation loop. Each
    .onnx runs once per runtime in `runtimes` (ONNX Runtime, OpenVINO, OpenVINO-bf16), a row each; None runs each
    in its own. Each row is held to the budget of `budget_name`, and gets the images it agrees least on."""
    count = min(max_images or len(dataset), len(dataset))
    rows = [ArtifactResult(path=str(reference.path), kind="pytorch", precision="fp32", status="reference")]
    runnable: list[tuple[Path, Detector]] = []
    for path in artifacts:
        for runtime in runtimes_for(path, runtimes):
            try:
                # images of mixed sizes: OpenVINO's fixed-shape compiles would cost more than they save
                detector = Detector.from_path(path, runtime=runtime, fix_shapes=False)
                same_model(reference, detector)
                runnable.append((path, detector))
            except CannotRunHere as e:
                log(f"[parity] {path}: not run: {e}")
                kind = runtime if path.suffix == ".onnx" else _kind(path)
                rows.append(ArtifactResult(path=str(path), kind=kind, precision=_precision(path), status="not run",
                                           reason=str(e)))
    batch = min([batch_size, reference.max_batch] + [d.max_batch for _, d in runnable])
    log(f"[parity] reference: PyTorch {reference.path} on {count} images of {dataset.annotation_file}, batch {batch}")
    ref_eval = evaluate_predictor(reference, dataset, max_images=max_images, batch_size=batch,
                                  desc=f"pytorch {reference.path.name}")
    rows[0].metrics = ref_eval.metrics
    post = reference.meta["postprocess"]
    grids = []
    image_path = lambda image_id: dataset.image_dir / dataset.coco.imgs[image_id]["file_name"]
    for path, detector in runnable:
        with torch_threads(detector.torch_threads):
            evaluation = evaluate_predictor(detector, dataset, max_images=max_images, batch_size=batch,
                                            desc=f"{detector.kind} {detector.precision} {path.name}")
        name = budget_name(detector.precision, detector.kind)
        budget = budgets.get(name, DEFAULT_BUDGETS[name])
        agreement = _agreement(ref_eval, evaluation, post["score_thresh"], reference.contract.max_detections)
        status, delta = verdict(ref_eval.metrics, evaluation.metrics, budget=budget, non_finite=agreement.non_finite)
        grids.append(ExampleGrid(name=grid_name(artifacts.index(path) + 1, detector.kind),
                                 title=f"{path.name} ({detector.kind} {detector.precision})",
                                 examples=pick_examples(ref_eval.detections, evaluation.detections,
                                                        match_iou=MATCH_IOU, image_path=image_path)))
        rows.append(ArtifactResult(path=str(path), kind=detector.kind, precision=detector.precision,
                                   status=status, metrics=evaluation.metrics, delta=delta,
                                   budget=budget, agreement=agreement.statistics(), int8_target=int8_target(detector),
                                   examples={"grid": grids[-1].name,
                                             "images": [e.record() for e in grids[-1].examples]}))
        log(f"[parity] {path}: bbox AP {100 * evaluation.metrics['bbox']['AP']:.2f} "
            f"({delta['bbox']:+.2f} vs PyTorch, budget {budget:g}): {rows[-1].status}")
    order = {str(p): i for i, p in enumerate(artifacts)}  # report in the order given, runtimes as given
    kinds = {k: i for i, k in enumerate(runtime_order(runtimes))}
    rows[1:] = sorted(rows[1:], key=lambda r: (order[r.path], kinds.get(r.kind, 0)))
    return ParityRun(report={
        "reference": str(reference.path), "dataset": str(dataset.annotation_file), "images": count, "batch": batch,
        "budgets": budgets, "match_iou": MATCH_IOU,
        "classes": dict(zip(map(str, reference.category_ids), reference.class_names)),
        "artifacts": [vars(r) for r in rows], "environment": environment(), "allow_not_run": allow_not_run,
        "passed": all(r.status in ("pass", "reference") or (allow_not_run and r.status == "not run") for r in rows)},
        grids=grids)


def _precision(path: Path) -> str:
    """What an artifact that cannot run here says of itself."""
    from ..tensorrt.plan import read_engine_meta

    try:
        if path.suffix == ".onnx":
            return read_meta(path).get("precision", "fp32")
        return read_engine_meta(path)["precision"] if path.suffix == ENGINE_SUFFIX else "?"
    except UserError:
        return "?"


def _kind(path: Path) -> str:
    return {".onnx": "onnxruntime", PACKAGE_SUFFIX: "aoti", ENGINE_SUFFIX: "tensorrt"}.get(path.suffix, "pytorch")


def environment() -> dict[str, Any]:
    import onnxruntime
    import torchvision

    from .. import __version__

    m = machine()
    env = {**m, "siefpn_deploy": __version__, "torchvision": torchvision.__version__,
           "onnxruntime": onnxruntime.__version__, "device": m["gpu"] or "cpu", "cpu_threads": m["threads"],
           "numpy": np.__version__}
    try:
        from ..tensorrt.builder import load_backend

        backend = load_backend()
        env["tensorrt"] = f"{backend.flavour} {backend.version}"
    except UserError:
        env["tensorrt"] = "not installed"
    return env
