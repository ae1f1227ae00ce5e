"""The one evaluation loop: any `Predictor` (a checkpoint being trained, or a deployed artifact) over a
COCO dataset, through the contract's preprocessing and postprocessing, scored by COCOeval.

`train` (its final and periodic evaluation, and --eval-only) and `parity` (the PyTorch reference and
every artifact) both call `evaluate_predictor`, so one checkpoint has one AP. Images are batched
`batch_size` at a time onto one canvas; `TEST.IMS_PER_BATCH` (default 1, as detectron2's test loader)
sets it for both, because a batch's padding reaches the border detections of its smaller images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.fileio import write_json
from ..core.progress import progress_bar
from ..data import CocoDetection
from ..model.predictor import Detections, Predictor
from .coco import coco_eval, coco_results


@dataclass
class Evaluation:
    metrics: dict[str, dict[str, Any]]  # "bbox" (and "segm") -> the 12 COCOeval numbers (fractions), per_class
    results: list[dict[str, Any]]  # COCO results JSON
    detections: dict[int, Detections]  # image id -> detections

    def write(self, folder: Path) -> None:
        """coco_instances_results.json and metrics.json, as detectron2 names them."""
        write_json(folder / "coco_instances_results.json", self.results, indent=None)
        write_json(folder / "metrics.json", self.metrics)


@dataclass(frozen=True)
class CocoSubset:
    """What coco_eval reads of a dataset (its COCO object and the image ids to score), for a subset."""

    coco: Any
    image_ids: list[int]


def evaluate_predictor(predictor: Predictor, dataset: CocoDetection, *, batch_size: int,
                       max_images: int | None = None, desc: str | None = None, verbose: bool = False,
                       progress: bool = True) -> Evaluation:
    count = min(max_images or len(dataset), len(dataset))
    ids = dataset.image_ids[:count]
    step = max(1, min(batch_size, predictor.max_batch))
    detections: dict[int, Detections] = {}
    results: list[dict[str, Any]] = []
    with progress_bar(total=len(ids), desc=desc or f"{predictor.kind} {predictor.path.name}", unit="img",
                      disable=not progress) as bar:
        for start in range(0, len(ids), step):
            chunk = ids[start : start + step]
            images = [dataset.image(index) for index in range(start, start + len(chunk))]
            for image_id, dets in zip(chunk, predictor.predict(images, batch_size=step)):
                detections[image_id] = dets
                results += coco_results(image_id, dets.boxes, dets.scores, dets.category_ids, dets.masks)
            bar.update(len(chunk))
    subset = CocoSubset(dataset.coco, ids)
    metrics = {"bbox": coco_eval(subset, results, "bbox", verbose=verbose)}
    if predictor.contract.has_masks:
        metrics["segm"] = coco_eval(subset, results, "segm", verbose=verbose)
    return Evaluation(metrics=metrics, results=results, detections=detections)
