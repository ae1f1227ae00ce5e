"""`siefpn-deploy infer`: an artifact over an image or a folder -> drawn PNGs and detections as JSON.

With `annotations` (a COCO instances file listing the images) the JSON is a true COCO results file:
image_id, the original category_id, bbox [x,y,w,h], score, and an RLE segmentation for masks, which
`COCO.loadRes` takes unchanged. Without it, each record names its image by file_name instead.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import UserError
from ..core.fileio import atomic_path, write_json
from ..core.progress import progress_bar
from ..data.coco import load_coco
from ..data.image import find_images, load_image
from ..evaluation.coco import coco_results
from .detector import Detector
from .visualize import DEFAULT_MIN_SCORE, draw, drawn_note, shown


def image_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.exists():
        raise UserError(f"--source not found: {source}")
    return find_images(source)


def image_ids_by_name(annotations: Path, files: list[Path], source: Path) -> dict[Path, int]:
    """Each file's COCO image id, matched on its path below `source` (or its name) against `file_name`."""
    coco = load_coco(annotations)
    ids = {info["file_name"]: image_id for image_id, info in coco.imgs.items()}
    found, missing = {}, []
    for path in files:
        key = str(path.relative_to(source)) if source.is_dir() else path.name
        image_id = ids.get(key, ids.get(path.name))
        if image_id is None:
            missing.append(key)
        else:
            found[path] = image_id
    if missing:
        raise UserError(f"{len(missing)} of {len(files)} images are not listed in {annotations} (--annotations), "
                        f"first: {missing[0]}")
    return found


def run_infer(detector: Detector, source: Path, *, save_vis: Path | None, save_json: Path | None,
              annotations: Path | None = None, batch_size: int | None = None, min_score: float = DEFAULT_MIN_SCORE,
              top: int | None = None, log=print) -> list[dict]:
    """Every detection above the model's threshold goes to the JSON; the pictures show those scoring at least
    `min_score`, at most `top` per image (`visualize.draw`)."""
    files = image_files(source)
    image_ids = image_ids_by_name(annotations, files, source) if annotations is not None else None
    step = min(batch_size or 1, detector.max_batch)
    records: list[dict] = []
    count = drawn = 0
    # closed (ending its line) before any error propagates, so the error starts a line of its own
    with progress_bar(total=len(files), desc=f"infer {detector.path.name}", unit="img") as bar:
        for start in range(0, len(files), step):
            chunk = files[start : start + step]
            images = [load_image(p) for p in chunk]  # a corrupt file is a one-line error naming it
            for path, image, dets in zip(chunk, images, detector.predict(images, batch_size=step)):
                count += len(dets)
                image_id = image_ids[path] if image_ids is not None else 0
                for r in coco_results(image_id, dets.boxes, dets.scores, dets.category_ids, dets.masks):
                    if image_ids is None:
                        r.pop("image_id")
                        r = {"file_name": str(path), **r}
                    records.append(r)
                if save_vis is not None:
                    name = path.relative_to(source).with_suffix(".png") if source.is_dir() else path.stem + ".png"
                    with atomic_path(save_vis / name) as tmp:
                        draw(image, dets, min_score=min_score, top=top).save(tmp, format="PNG")
                    drawn += len(shown(dets.scores, min_score=min_score, top=top))
            bar.update(len(chunk))
    if save_json is not None:
        write_json(save_json, records, indent=None)
    note = drawn_note(drawn, count, min_score=min_score, top=top, into=save_vis, per="image") if save_vis else ""
    log(f"[infer] {count} detections in {len(files)} images" + note + (f"; JSON: {save_json}" if save_json else ""))
    return records
