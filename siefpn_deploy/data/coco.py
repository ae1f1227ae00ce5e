"""COCO-format detection dataset on pycocotools, with every bad input turned into a one-line UserError."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from ..core.contract import category_id_to_label, label_to_category_id
from ..core.errors import UserError
from ..core.fileio import read_json, write_json
from .image import load_image, to_tensor


def load_coco(annotation_file: str | Path) -> COCO:
    """Read and validate a COCO instances file; build the index without pycocotools' prints."""
    path = Path(annotation_file)
    data = read_json(path, what="annotation file")
    if not isinstance(data, dict):
        raise UserError(f"annotation file {path} must hold a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise UserError(f"annotation file {path} has no '{key}' list")
    if not data["images"]:
        raise UserError(f"annotation file {path} lists no images")
    try:
        image_ids = {img["id"] for img in data["images"] if "file_name" in img}
        category_ids = {cat["id"] for cat in data["categories"]}
    except (KeyError, TypeError):
        raise UserError(f"annotation file {path} has an image or category without an 'id'") from None
    if len(image_ids) != len(data["images"]):
        raise UserError(f"annotation file {path} has an image without a 'file_name' or with a duplicate id")
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            raise UserError(f"annotation file {path} has an annotation that is not an object")
        aid = ann.get("id")
        if ann.get("category_id") not in category_ids:
            raise UserError(f"annotation {aid} in {path} has category_id {ann.get('category_id')!r}, "
                            f"which is not in 'categories'")
        if ann.get("image_id") not in image_ids:
            raise UserError(f"annotation {aid} in {path} has image_id {ann.get('image_id')!r}, "
                            f"which is not in 'images'")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise UserError(f"annotation {aid} in {path} has no valid 'bbox' [x, y, w, h]")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(torch.utils.data.Dataset):
    """Yields (image float32 [3, H, W] in 0..1, target dict) with the contract's labels 1..C
    (`core.contract`: categories sorted by id; 0 is torchvision's background).

    Crowd annotations are left out of the targets; evaluation uses `self.coco`, which honours them.
    """

    def __init__(self, *, image_dir: str | Path, annotation_file: str | Path,
                 transforms: Callable | None = None, with_masks: bool = False):
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        self.transforms = transforms
        self.with_masks = with_masks
        if not self.image_dir.is_dir():
            raise UserError(f"image directory not found: {self.image_dir}")
        self.coco = load_coco(self.annotation_file)
        self.image_ids: list[int] = sorted(self.coco.imgs)
        self.category_ids: list[int] = sorted(self.coco.cats)
        self.class_names: list[str] = [str(self.coco.cats[c].get("name", c)) for c in self.category_ids]
        self._label_of = category_id_to_label(self.category_ids)
        paths = [self._path(i) for i in self.image_ids]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise UserError(f"{len(missing)} of {len(paths)} images listed in {self.annotation_file} are missing, "
                            f"first: {missing[0]}")

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label_to_category_id(self, labels: torch.Tensor | list[int]) -> list[int]:
        return label_to_category_id(labels, self.category_ids)

    def _path(self, image_id: int) -> Path:
        return self.image_dir / self.coco.imgs[image_id]["file_name"]

    def __len__(self) -> int:
        return len(self.image_ids)

    def image(self, index: int) -> torch.Tensor:
        """Image `index` alone (RGB [3,H,W] in 0..1, no transforms, no masks decoded): what evaluation reads."""
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self._path(image_id)
        # EXIF goes to the image only: COCO's boxes and masks already refer to the displayed frame
        img = load_image(path)
        w, h = img.size
        if (info.get("width", w), info.get("height", h)) != (w, h):
            raise UserError(f"image {path} is {w}x{h} after EXIF orientation but {self.annotation_file} "
                            f"says {info.get('width')}x{info.get('height')}")
        return to_tensor(img)  # [3, H, W] RGB 0..1

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`key` is an index, or (index, seed) from the training sampler: the seed drives the transforms'
        random choices, so a sample's augmentation depends on its place in the data order alone."""
        index, seed = key if isinstance(key, tuple) else (key, 0)
        image_id = self.image_ids[index]
        image = self.image(index)
        h, w = image.shape[1:]

        anns = []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                continue
            x, y, bw, bh = ann["bbox"]
            x1, y1 = max(0.0, x), max(0.0, y)
            x2, y2 = min(float(w), x + bw), min(float(h), y + bh)
            if x2 - x1 >= 1 and y2 - y1 >= 1:
                anns.append((ann, [x1, y1, x2, y2]))
        target: dict[str, Any] = {
            "boxes": torch.tensor([b for _, b in anns], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([self._label_of[a["category_id"]] for a, _ in anns], dtype=torch.int64),
            "image_id": torch.tensor(image_id, dtype=torch.int64),
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
        }
        if self.with_masks:
            masks = np.zeros((len(anns), h, w), np.uint8)
            with warnings.catch_warnings():
                # pycocotools' decode trips numpy 2's copy=False deprecation on every call
                warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
                for i, (ann, _) in enumerate(anns):
                    if ann.get("segmentation"):
                        masks[i] = self.coco.annToMask(ann)
            target["masks"] = torch.from_numpy(masks)  # [N, H, W]
        if self.transforms is not None:
            image, target = self.transforms(image, target, torch.Generator().manual_seed(seed))
        return image, target


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def holdout_split(annotation_file: str | Path, holdout: int, *, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """The instances file split in two, beside it or in `out_dir`: NAME_fit.json (every image but the last
    `holdout` by id) and NAME_holdout.json (those last ones), for choosing settings on training data without
    touching val."""
    path = Path(annotation_file)
    data = read_json(path, what="annotation file")
    ids = sorted(im["id"] for im in data["images"])
    if not 0 < holdout < len(ids):
        raise UserError(f"cannot hold out {holdout} of the {len(ids)} images in {path}")
    held = set(ids[-holdout:])
    out = []
    for name, keep in (("fit", lambda i: i not in held), ("holdout", lambda i: i in held)):
        target = Path(out_dir or path.parent) / f"{path.stem}_{name}.json"
        write_json(target, indent=None, obj={**data, "images": [im for im in data["images"] if keep(im["id"])],
                                              "annotations": [a for a in data["annotations"] if keep(a["image_id"])]})
        out.append(target)
    return out[0], out[1]
