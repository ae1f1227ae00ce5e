"""COCO evaluation with pycocotools' COCOeval: bbox AP, and segm AP for Mask R-CNN."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.cocoeval import COCOeval
from torch import nn

from ..core.fileio import write_json
from ..core.progress import progress_bar
from ..data import CocoDetection, collate

METRIC_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def coco_results(image_id: int, boxes: np.ndarray, scores: np.ndarray, category_ids: list[int],
                 masks: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One image's detections (xyxy boxes [N,4] in image pixels, binary masks [N,H,W]) -> COCO result dicts."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
    results = [
        {"image_id": image_id, "category_id": int(c), "bbox": [round(v, 2) for v in b], "score": round(float(s), 5)}
        for b, s, c in zip(xywh, np.asarray(scores).tolist(), category_ids)
    ]
    if masks is not None and results:
        rles = mask_util.encode(np.asfortranarray(np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0)))
        for r, rle in zip(results, rles):
            r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    return results


def detections_to_coco(
    output: dict[str, torch.Tensor], image_id: int, dataset: CocoDetection, mask_threshold: float = 0.5
) -> list[dict[str, Any]]:
    """One image's torchvision detections (original image coordinates) -> COCO result dicts."""
    masks = (output["masks"][:, 0] > mask_threshold).cpu().numpy() if "masks" in output else None
    return coco_results(image_id, output["boxes"].cpu().numpy(), output["scores"].cpu().numpy(),
                        dataset.label_to_category_id(output["labels"].cpu()), masks)


@torch.no_grad()
def run_inference(
    model: nn.Module, dataset: CocoDetection, *, device: torch.device, batch_size: int = 2, num_workers: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate
    )
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    for images, targets in progress_bar(loader, desc="evaluate", unit="batch", disable=not progress):
        outputs = model([im.to(device) for im in images])
        for out, tgt in zip(outputs, targets):
            results += detections_to_coco(out, int(tgt["image_id"]), dataset)
    model.train(was_training)
    return results


def coco_eval(dataset: CocoDetection, results: list[dict[str, Any]], iou_type: str, *, verbose: bool) -> dict:
    """The 12 COCOeval numbers (fractions in 0..1, -1 where undefined), printed as pycocotools does,
    and `per_class`: each category id's AP (IoU .50:.95, all areas, 100 detections; -1 without ground truth)."""
    if not results:
        print(f"[{iou_type}] no detections: every metric is 0")
        return {**{name: 0.0 for name in METRIC_NAMES}, "per_class": {str(c): 0.0 for c in sorted(dataset.coco.cats)}}
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        coco_dt = dataset.coco.loadRes(results)
        ev = COCOeval(dataset.coco, coco_dt, iou_type)
        ev.params.imgIds = dataset.image_ids
        ev.evaluate()
        ev.accumulate()
    if verbose:
        print(f"[{iou_type}]")
        ev.summarize()
    else:
        with contextlib.redirect_stdout(quiet):
            ev.summarize()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # [IoU, recall, category, area=all, maxDets=100]
    per_class = {}
    for k, category_id in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        per_class[str(category_id)] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
    return {**{name: float(v) for name, v in zip(METRIC_NAMES, ev.stats)}, "per_class": per_class}


def evaluate(
    model: nn.Module, dataset: CocoDetection, *, device: torch.device, output_dir: str | Path | None,
    num_workers: int = 0, verbose: bool = True,
) -> dict[str, dict[str, float]]:
    """Run, score and (if output_dir) write `coco_instances_results.json` and `metrics.json`.

    Mask AP is scored when the dataset carries masks (it is built with_masks for Mask R-CNN)."""
    results = run_inference(model, dataset, device=device, num_workers=num_workers, progress=verbose)
    metrics = {"bbox": coco_eval(dataset, results, "bbox", verbose=verbose)}
    if dataset.with_masks:
        metrics["segm"] = coco_eval(dataset, results, "segm", verbose=verbose)
    if output_dir is not None:
        out = Path(output_dir)
        write_json(out / "coco_instances_results.json", results, indent=None)
        write_json(out / "metrics.json", metrics)
    return metrics
