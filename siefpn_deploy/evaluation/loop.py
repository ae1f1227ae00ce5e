"""COCO evaluation of any artifact through the runtime: the same images, the same preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.progress import progress_bar
from ..data import CocoDetection
from ..runtime import Detections, Detector
from .coco import coco_eval, coco_results


@dataclass
class Evaluation:
    metrics: dict[str, dict[str, float]]  # "bbox" (and "segm") -> the 12 COCOeval numbers, fractions
    results: list[dict[str, Any]]  # COCO results JSON
    detections: dict[int, Detections]  # image id -> detections


def evaluate_detector(detector: Detector, dataset: CocoDetection, *, max_images: int | None = None,
                      batch_size: int | None = None, desc: str | None = None, verbose: bool = False) -> Evaluation:
    count = min(max_images or len(dataset), len(dataset))
    ids = dataset.image_ids[:count]
    step = min(batch_size or detector.max_batch, detector.max_batch)
    detections: dict[int, Detections] = {}
    results: list[dict[str, Any]] = []
    with progress_bar(total=len(ids), desc=desc or f"{detector.kind} {detector.path.name}", unit="img") as bar:
        for start in range(0, len(ids), step):
            chunk = ids[start : start + step]
            images = [dataset[index][0] for index in range(start, start + len(chunk))]
            for image_id, dets in zip(chunk, detector.predict(images)):
                detections[image_id] = dets
                results += coco_results(image_id, dets.boxes, dets.scores, dets.category_ids, dets.masks)
            bar.update(len(chunk))
    subset = CocoSubset(dataset, ids)
    metrics = {"bbox": coco_eval(subset, results, "bbox", verbose=verbose)}
    if detector.meta["outputs"][-1]["name"] == "masks":
        metrics["segm"] = coco_eval(subset, results, "segm", verbose=verbose)
    return Evaluation(metrics=metrics, results=results, detections=detections)


class CocoSubset:
    """What coco_eval reads of a dataset (its COCO object and the image ids to score), for a subset."""

    def __init__(self, dataset: CocoDetection, image_ids: list[int]) -> None:
        self.coco = dataset.coco
        self.image_ids = image_ids
