"""COCO results (the JSON COCO.loadRes takes) and pycocotools' COCOeval: bbox AP, and segm AP for Mask R-CNN."""

from __future__ import annotations

import contextlib
import io
from typing import Any, Protocol

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRIC_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def coco_results(image_id: int, boxes: np.ndarray, scores: np.ndarray, category_ids: list[int],
                 masks: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One image's detections (xyxy boxes [N,4] in image pixels, COCO category ids, binary masks [N,H,W])
    -> COCO result dicts: image_id, category_id, bbox [x,y,w,h], score, and an RLE segmentation with masks."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
    results = [
        {"image_id": image_id, "category_id": int(c), "bbox": [round(v, 2) for v in b], "score": round(float(s), 5)}
        for b, s, c in zip(xywh, np.asarray(scores).tolist(), category_ids)
    ]
    if masks is not None and results:
        for r, rle in zip(results, rle_encode(masks)):
            r["segmentation"] = rle
    return results


def rle_encode(masks: np.ndarray) -> list[dict[str, Any]]:
    """Binary masks [N,H,W] -> COCO compressed RLEs {"size": [H, W], "counts": str}, as results files hold them."""
    if len(masks) == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0)))
    return [{"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")} for rle in rles]


def rle_decode(rles: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """`rle_encode`'s inverse: bool [N,H,W] (an empty [0,H,W] for no RLEs)."""
    if not rles:
        return np.zeros((0, height, width), bool)
    coded = [{"size": list(r["size"]), "counts": r["counts"].encode("ascii")} for r in rles]
    return mask_util.decode(coded).transpose(2, 0, 1).astype(bool)


class Scored(Protocol):
    """What coco_eval reads of a dataset: its COCO ground truth and the image ids to score."""

    coco: COCO
    image_ids: list[int]


def coco_eval(dataset: Scored, results: list[dict[str, Any]], iou_type: str, *, verbose: bool) -> dict:
    """The 12 COCOeval numbers (fractions in 0..1, -1 where undefined), printed as pycocotools does,
    and `per_class`: each category id's AP (IoU .50:.95, all areas, 100 detections; -1 without ground truth)."""
    if not results:
        if verbose:
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
