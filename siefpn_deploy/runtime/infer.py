"""`siefpn-deploy infer`: an artifact over an image or a folder -> drawn PNGs and COCO-style JSON."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import UserError
from ..core.fileio import atomic_path, write_json
from ..core.progress import progress_bar
from ..data.coco import find_images, load_image
from ..evaluation.coco import coco_results
from .detector import Detector
from .visualize import draw


def image_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.exists():
        raise UserError(f"--source not found: {source}")
    return find_images(source)


def run_infer(detector: Detector, source: Path, *, save_vis: Path | None, save_json: Path | None,
              batch_size: int | None = None, log=print) -> list[dict]:
    files = image_files(source)
    step = min(batch_size or detector.max_batch, detector.max_batch)
    records: list[dict] = []
    count = 0
    # closed (ending its line) before any error propagates, so the error starts a line of its own
    with progress_bar(total=len(files), desc=f"infer {detector.path.name}", unit="img") as bar:
        for start in range(0, len(files), step):
            chunk = files[start : start + step]
            images = [load_image(p) for p in chunk]  # a corrupt file is a one-line error naming it
            for path, image, dets in zip(chunk, images, detector.predict(images)):
                count += len(dets)
                for r in coco_results(0, dets.boxes, dets.scores, dets.category_ids, dets.masks):
                    r.pop("image_id")
                    records.append({"file_name": str(path), **r})
                if save_vis is not None:
                    name = path.relative_to(source).with_suffix(".png") if source.is_dir() else path.stem + ".png"
                    with atomic_path(save_vis / name) as tmp:
                        draw(image, dets).save(tmp, format="PNG")
            bar.update(len(chunk))
    if save_json is not None:
        write_json(save_json, records)
    log(f"[infer] {count} detections in {len(files)} images"
        + (f"; drawn into {save_vis}" if save_vis else "") + (f"; JSON: {save_json}" if save_json else ""))
    return records
