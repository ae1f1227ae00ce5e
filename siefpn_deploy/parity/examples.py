"""A parity report's example images: per artifact, the few images on which its detections agree least with
PyTorch's, each drawn twice (PyTorch left, the artifact right) into one grid PNG that parity.md shows.

An image's agreement (`evaluation.agreement.image_agreement`) is measured on what the pictures show: the
detections scoring at least `visualize.DEFAULT_MIN_SCORE`, paired at IoU >= 0.5 with the same label (what a person
sees as the same box). Most images agree fully on those; their ties are broken by the same measure over every
detection above the model's threshold at parity's own IoU, then by dataset order, so the choice is deterministic.
Nothing is run again: the numbers come from the detections parity already has, and beyond two numbers per image
only the chosen images' detections are kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..core.fileio import atomic_path
from ..data.image import load_image
from ..evaluation.agreement import as_rows, image_agreement
from ..runtime import Detections
from ..runtime.visualize import DEFAULT_MIN_SCORE, draw

EXAMPLES = 4  # images per artifact
SEEN_IOU = 0.5  # boxes a person reads as one
CELL_SIDE = 320  # px: each picture is scaled so that its long side is this
GAP = 8  # px between pictures
LINE = 16  # px: the height of one line of caption text
BACKGROUND, INK = (255, 255, 255), (0, 0, 0)
GRID_GLOB = "parity.examples.*.png"


def grid_name(position: int, kind: str) -> str:
    """The grid's file name in the report folder: the artifact's place in the command's list and its runtime."""
    return f"parity.examples.{position}.{kind}.png"


@dataclass(frozen=True)
class Example:
    image: Path
    image_id: int
    agreement: float  # of the detections drawn (score >= DEFAULT_MIN_SCORE, IoU >= SEEN_IOU)
    agreement_all: float  # of every detection, at parity's IoU
    reference: Detections
    artifact: Detections

    def record(self) -> dict[str, Any]:
        """What parity.json keeps of it."""
        return {"image_id": self.image_id, "file_name": self.image.name, "agreement": round(self.agreement, 4),
                "agreement_all": round(self.agreement_all, 4)}


@dataclass(frozen=True)
class ExampleGrid:
    name: str  # the PNG's file name (`grid_name`)
    title: str  # the artifact, as its column's heading says
    examples: list[Example]


def worst_first(agreement: dict[int, tuple[float, float]], count: int) -> list[int]:
    """The `count` image ids of lowest (drawn, all) agreement; ties keep the mapping's (the dataset's) order."""
    return sorted(agreement, key=agreement.__getitem__)[:count]


def pick_examples(reference: dict[int, Detections], other: dict[int, Detections], *, match_iou: float,
                  image_path: Callable[[int], Path], count: int = EXAMPLES) -> list[Example]:
    """The `count` images of `reference` (image id -> PyTorch's detections) on which `other` agrees least."""
    agreement = {
        image_id: (image_agreement(as_rows(ref, min_score=DEFAULT_MIN_SCORE),
                                   as_rows(other[image_id], min_score=DEFAULT_MIN_SCORE), min_iou=SEEN_IOU),
                   image_agreement(as_rows(ref), as_rows(other[image_id]), min_iou=match_iou))
        for image_id, ref in reference.items()}
    return [Example(image=image_path(i), image_id=i, agreement=agreement[i][0], agreement_all=agreement[i][1],
                    reference=reference[i], artifact=other[i]) for i in worst_first(agreement, count)]


def _fit(image: Image.Image, dets: Detections) -> tuple[Image.Image, Detections]:
    """The image scaled to CELL_SIDE on its long side, and its detections with it (so labels keep their size)."""
    scale = CELL_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    masks = dets.masks
    if masks is not None:
        masks = np.stack([np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST)) for m in masks]
                         ) if len(masks) else np.zeros((0, size[1], size[0]), dtype=bool)
    return (image.resize(size, Image.Resampling.BILINEAR),
            dataclasses.replace(dets, boxes=dets.boxes * np.float32(scale), masks=masks))


def draw_grid(grid: ExampleGrid) -> Image.Image:
    """One row per example, worst first: a caption line, then PyTorch's picture beside the artifact's."""
    width = 2 * CELL_SIDE + 3 * GAP
    row = LINE + CELL_SIDE + GAP
    out = Image.new("RGB", (width, GAP + LINE + len(grid.examples) * row), BACKGROUND)
    pen = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    pen.text((GAP, GAP), "PyTorch (reference)", fill=INK, font=font)
    pen.text((2 * GAP + CELL_SIDE, GAP), grid.title, fill=INK, font=font)
    for k, example in enumerate(grid.examples):
        top = GAP + LINE + k * row
        pen.text((GAP, top), f"{example.image.name}: agreement {example.agreement:.2f} of the detections drawn, "
                 f"{example.agreement_all:.2f} of all", fill=INK, font=font)
        image = load_image(example.image)
        for column, dets in enumerate((example.reference, example.artifact)):
            out.paste(draw(*_fit(image, dets)), (GAP + column * (CELL_SIDE + GAP), top + LINE))
    return out


def write_grids(grids: Sequence[ExampleGrid], folder: Path) -> list[Path]:
    """Each grid to folder/its name, atomically."""
    written = []
    for grid in grids:
        with atomic_path(folder / grid.name) as tmp:
            draw_grid(grid).save(tmp, format="PNG")
        written.append(folder / grid.name)
    return written


def remove_stale_grids(folder: Path, keep: list[Path]) -> None:
    """The grids an earlier report in `folder` had and this one has not: no file there is left unlinked."""
    for stale in set(folder.glob(GRID_GLOB)) - set(keep):
        stale.unlink(missing_ok=True)
