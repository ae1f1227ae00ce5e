"""The deployed graph's contract: the one definition of what every artifact takes and returns.

Export writes it into NAME.meta.json; quantize and build carry it on; the Python runtime, parity,
training's evaluation, the C++ runtime and Triton serving read it back from there. Nothing else
restates a name, a shape, K, the mask size or the label numbering.

    inputs   images    float32 [B,3,H,W]    the model's channel order (`color`: RGB, or BGR for detectron2's
                                            MSRA weights), 0..input_scale (255 or 1); H and W multiples of
                                            the divisibility; normalisation happens inside the graph
             image_sizes int32 [B,2]        (height, width) of each resized image at the canvas's top-left,
                                            before padding; boxes are clipped to it, as detectron2 clips to
                                            each image's size (pass (H, W) when the whole canvas is image)
    outputs  num_dets  int32   [B]          detections per image; rows from num_dets on are padding
             boxes     float32 [B,K,4]      xyxy in input (canvas) pixels, inside image_sizes, ordered by score
             scores    float32 [B,K]
             labels    int32   [B,K]        class labels (below); PAD_LABEL in padding rows
             masks     float32 [B,K,M,M]    Mask R-CNN only: each box's mask probabilities, M = MASK_SIZE;
                                            the runtime pastes them into the image. Only the first
                                            mask_detections rows (meta.json; K unless export
                                            --max-det-masks) are computed: later rows are zeros

Labels, one numbering everywhere: a label is 1..C, the dataset's categories sorted by COCO
category id; PAD_LABEL marks padding. BACKGROUND_LABEL (0) is torchvision's background: the R-CNNs never
emit it, but a torchvision RetinaNet head keeps a logit for it (trained only ever negative), so at very low
score thresholds a graph can emit a row labelled 0; runtimes drop such rows, and rows whose box is empty
after clipping to the image (`image_rows`). The
dataset's targets, the graph's `labels`, `Detections.labels` and the C++/Triton outputs all use it.
COCO JSON carries the original ids instead: category_id = classes.category_ids[label - 1]
(`label_to_category_id`).

Preprocessing (`PreprocessSpec`): RGB in 0..1 is resized with torchvision's test-time rule (the
shortest side to min_size, the longest at most max_size, one bilinear scale factor, align_corners
False), put in the model's channel order `color`, placed at the top-left of a canvas whose sides are
multiples of `divisibility`, filled with the pixel mean, and multiplied by input_scale. The graph
brings the input to 0..255, subtracts pixel_mean and divides by pixel_std (both in 0..255 units and in
the `color` order, detectron2's convention), so the padding becomes exactly the zeros that the eager
model pads with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import UserError

# meta.json and NAME.engine.json say which contract they hold; a reader refuses another major version.
SCHEMA_VERSION = "4.1"  # 4.1: mask_detections; 4: the image_sizes input; 3: pixel_mean/std in 0..255 units

INPUT = "images"
IMAGE_SIZES = "image_sizes"
INPUT_NAMES = (INPUT, IMAGE_SIZES)
NUM_DETS, BOXES, SCORES, LABELS, MASKS = "num_dets", "boxes", "scores", "labels", "masks"
DETECTION_OUTPUTS = (NUM_DETS, BOXES, SCORES, LABELS)

DEFAULT_MAX_DETECTIONS = 100  # K, detectron2's TEST.DETECTIONS_PER_IMAGE
MASK_POOL_SIZE = 14  # the mask head's RoIAlign output
MASK_SIZE = 2 * MASK_POOL_SIZE  # the mask predictor upsamples 2x: 28x28 probabilities per box
MASK_THRESHOLD = 0.5  # pasted probabilities above it are the instance
PAD_LABEL = -1
BACKGROUND_LABEL = 0
MASK_ARCHITECTURES = ("mask_rcnn",)
COLOR_ORDERS = ("RGB", "BGR")

OUTPUT_DTYPES = {NUM_DETS: np.int32, BOXES: np.float32, SCORES: np.float32, LABELS: np.int32, MASKS: np.float32}


def has_masks(architecture: str) -> bool:
    """The one rule for whether a model has the `masks` output."""
    return architecture in MASK_ARCHITECTURES


def class_index(labels: Sequence[int] | np.ndarray, num_classes: int) -> list[int]:
    """Contract labels (1..C) -> positions in the meta's `classes` lists (0..C-1)."""
    labels = [int(v) for v in np.asarray(labels).reshape(-1)]
    bad = [v for v in labels if not 1 <= v <= num_classes]
    if bad:
        raise ValueError(f"labels must lie in 1..{num_classes}, got {bad[:5]}")
    return [v - 1 for v in labels]


def label_to_category_id(labels: Sequence[int] | np.ndarray, category_ids: Sequence[int]) -> list[int]:
    """Contract labels (1..C) -> the dataset's COCO category ids."""
    return [int(category_ids[i]) for i in class_index(labels, len(category_ids))]


def category_id_to_label(category_ids: Sequence[int]) -> dict[int, int]:
    """{COCO category id: contract label} for a dataset's categories (sorted by id)."""
    return {int(c): i + 1 for i, c in enumerate(sorted(category_ids))}


@dataclass(frozen=True)
class ShapeRange:
    """An input dimension's range, inclusive (meta.json's shapes.batch/height/width)."""

    min: int
    max: int

    @property
    def static(self) -> bool:
        return self.min == self.max


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def as_meta(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


MAX_TOPK = 3840  # TensorRT's TopK limit: bounds K (--max-det) and the R-CNN box candidates
# Bounds on what a meta.json may say, so a damaged or hostile one is a one-line error and not a division by
# zero or an allocation of gigabytes: a resize side of 16384 px is 4x the largest input any preset uses
MAX_RESIZE_SIDE = 16384
MAX_DIVISIBILITY = 1024
MAX_BATCH = 4096  # the largest batch range a runtime accepts from a meta.json
MAX_MASK_SIDE = 1024  # the masks output's M (28 in every preset)


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes the `images` input (see the module docstring)."""

    min_size: int
    max_size: int
    divisibility: int
    pixel_mean: tuple[float, float, float]  # in 0..255 units, in the `color` order
    pixel_std: tuple[float, float, float]
    input_scale: float = 255.0  # the graph takes 0..255 (or 0..1)
    color: str = "RGB"  # the channel order of the graph's input: "RGB" or "BGR"

    def __post_init__(self) -> None:
        if self.color not in COLOR_ORDERS:
            raise UserError(f"channel order must be one of {', '.join(COLOR_ORDERS)}, got {self.color!r}")
        if not 1 <= self.min_size <= self.max_size <= MAX_RESIZE_SIDE:
            raise UserError(f"resize sides must satisfy 1 <= min_size <= max_size <= {MAX_RESIZE_SIDE}, got "
                            f"min_size {self.min_size}, max_size {self.max_size}")
        if not 1 <= self.divisibility <= MAX_DIVISIBILITY:
            raise UserError(f"divisibility must be in 1..{MAX_DIVISIBILITY}, got {self.divisibility}")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise UserError("pixel_mean and pixel_std must hold 3 values each")
        if not all(math.isfinite(v) for v in self.pixel_mean) or not all(math.isfinite(v) and v > 0 for v in self.pixel_std):
            raise UserError(f"pixel_mean must be finite and pixel_std finite and > 0, got {list(self.pixel_mean)} "
                            f"and {list(self.pixel_std)}")
        if not (math.isfinite(self.input_scale) and self.input_scale > 0):
            raise UserError(f"input_scale must be finite and > 0, got {self.input_scale}")

    @property
    def pad_value(self) -> list[float]:
        """The canvas fill, in input units: the pixel mean."""
        return [v * self.input_scale / 255.0 for v in self.pixel_mean]

    def as_meta(self) -> dict[str, Any]:
        return {"layout": "NCHW", "color": self.color, "input_scale": self.input_scale,
                "pixel_mean": list(self.pixel_mean), "pixel_std": list(self.pixel_std), "pad_value": self.pad_value,
                "resize": {"min_size": self.min_size, "max_size": self.max_size, "mode": "bilinear",
                           "rule": "shortest side to min_size, longest at most max_size"},
                "divisibility": self.divisibility, "placement": "top-left", "normalized_in_graph": True}

    @classmethod
    def from_meta(cls, pre: dict[str, Any]) -> PreprocessSpec:
        return cls(min_size=int(pre["resize"]["min_size"]), max_size=int(pre["resize"]["max_size"]),
                   divisibility=int(pre["divisibility"]), pixel_mean=tuple(pre["pixel_mean"]),
                   pixel_std=tuple(pre["pixel_std"]), input_scale=float(pre["input_scale"]), color=str(pre["color"]))


@dataclass(frozen=True)
class GraphContract:
    """One model's instance of the contract: its architecture, K and preprocessing."""

    architecture: str
    max_detections: int
    preprocess: PreprocessSpec
    # Mask R-CNN: the mask head runs on the first mask_detections rows (the best-scoring), later rows are
    # zeros; None means all K. A smaller count keeps the mask head's cost down when K is large
    mask_detections: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_detections <= MAX_TOPK:
            raise UserError(f"max_detections (K) must be in 1..{MAX_TOPK}, got {self.max_detections}")
        if self.mask_detections is not None and not (self.has_masks and 1 <= self.mask_detections <= self.max_detections):
            raise UserError(f"mask_detections ({self.mask_detections}) needs a mask architecture and must lie in "
                            f"1..K ({self.max_detections}); got {self.architecture}")

    @property
    def has_masks(self) -> bool:
        return has_masks(self.architecture)

    @property
    def mask_rows(self) -> int:
        """How many leading rows of `masks` hold computed masks (0 without masks)."""
        if not self.has_masks:
            return 0
        return self.max_detections if self.mask_detections is None else self.mask_detections

    @property
    def output_names(self) -> tuple[str, ...]:
        return DETECTION_OUTPUTS + ((MASKS,) if self.has_masks else ())

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(INPUT, "float32", ("batch", 3, "height", "width")), TensorSpec(IMAGE_SIZES, "int32", ("batch", 2))]

    def outputs(self) -> list[TensorSpec]:
        k = self.max_detections
        shapes: dict[str, tuple[int | str, ...]] = {
            NUM_DETS: ("batch",), BOXES: ("batch", k, 4), SCORES: ("batch", k), LABELS: ("batch", k),
            MASKS: ("batch", k, MASK_SIZE, MASK_SIZE)}
        return [TensorSpec(n, np.dtype(OUTPUT_DTYPES[n]).name, shapes[n]) for n in self.output_names]

    def empty_outputs(self, batch: int) -> dict[str, np.ndarray]:
        """The padded output layout for `batch` images with no detections."""
        return {spec.name: np.full([batch, *spec.shape[1:]], PAD_LABEL if spec.name == LABELS else 0,
                                   OUTPUT_DTYPES[spec.name]) for spec in self.outputs()}

    def as_meta(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "architecture": self.architecture,
                "inputs": [t.as_meta() for t in self.inputs()], "outputs": [t.as_meta() for t in self.outputs()],
                "max_detections": self.max_detections, "preprocess": self.preprocess.as_meta(),
                **({"mask_detections": self.mask_rows} if self.has_masks else {}),
                "labels": {"first": 1, "pad": PAD_LABEL, "mask_threshold": MASK_THRESHOLD,
                           "to_category_id": "classes.category_ids[label - 1]"}}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], *, source: str) -> GraphContract:
        check_schema(meta, source=source)
        try:
            mask_detections = meta.get("mask_detections")
            contract = cls(architecture=str(meta["architecture"]), max_detections=int(meta["max_detections"]),
                           preprocess=PreprocessSpec.from_meta(meta["preprocess"]),
                           mask_detections=None if mask_detections is None else int(mask_detections))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{source} does not describe a siefpn-deploy graph (bad or missing {e})") from None
        except UserError as e:  # a value out of range: name the file
            raise UserError(f"{source}: {e}") from None
        listed = tuple(o["name"] for o in meta.get("outputs", []))
        if listed != contract.output_names:
            raise UserError(f"{source} lists outputs {list(listed)}, but a {contract.architecture} graph has "
                            f"{list(contract.output_names)}")
        return contract


def graph_inputs(images: np.ndarray, image_sizes: np.ndarray | Sequence[Sequence[int]] | None = None
                 ) -> dict[str, np.ndarray]:
    """The feeds of a graph: images [B,3,H,W] float32 and image_sizes [B,2] int32 (default: every image fills
    the canvas). Sizes outside 1..H x 1..W are a one-line error: the graph would clip boxes to them."""
    images = np.ascontiguousarray(images, np.float32)
    b, _, h, w = images.shape
    sizes = np.tile(np.int32([h, w]), (b, 1)) if image_sizes is None else np.ascontiguousarray(image_sizes, np.int32)
    if sizes.shape != (b, 2) or (sizes < 1).any() or (sizes[:, 0] > h).any() or (sizes[:, 1] > w).any():
        raise UserError(f"{IMAGE_SIZES} must be [{b},2] (height, width) pairs within the {h}x{w} canvas, "
                        f"got {sizes.tolist() if sizes.size <= 8 else list(sizes.shape)}")
    return {INPUT: images, IMAGE_SIZES: sizes}


def image_rows(outputs: dict[str, np.ndarray], b: int) -> dict[str, np.ndarray]:
    """Image b's detections from the padded outputs: the rows before num_dets whose label is a class
    (not BACKGROUND_LABEL) and whose box is not empty (a box wholly in the padding is empty once clipped to
    image_sizes; detectron2 drops it after clipping too); boxes, scores, labels as int64 and masks if present."""
    n = int(outputs[NUM_DETS][b])
    boxes = outputs[BOXES][b, :n]
    keep = (outputs[LABELS][b, :n] != BACKGROUND_LABEL) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    rows = {name: outputs[name][b, :n][keep] for name in (BOXES, SCORES, LABELS, MASKS) if name in outputs}
    rows[LABELS] = rows[LABELS].astype(np.int64)
    return rows


def describe_graph(input_scale_note: str = "0..255 (or 0..1 with --input-range 1)") -> str:
    """The contract as a table for `--help` and docs, rendered from the definitions above."""
    rows = [(INPUT, "float32", "[B,3,H,W]", f"{input_scale_note}; H, W multiples of the size divisibility;"),
            ("", "", "", "the model's channel order (meta.json color: RGB, or BGR for detectron2's models);"),
            ("", "", "", "normalisation is inside the graph"),
            (IMAGE_SIZES, "int32", "[B,2]", "(height, width) of each resized image at the canvas's top-left, before"),
            ("", "", "", "padding; boxes are clipped to it (pass (H, W) when the image fills the canvas)"),
            (NUM_DETS, "int32", "[B]", "detections per image; rows from num_dets on are padding"),
            (BOXES, "float32", "[B,K,4]", "xyxy in input pixels, inside image_sizes, ordered by score"),
            (SCORES, "float32", "[B,K]", ""),
            (LABELS, "int32", "[B,K]", f"class labels 1..C (meta.json's classes[label - 1]); {PAD_LABEL} pads"),
            (MASKS, "float32", f"[B,K,{MASK_SIZE},{MASK_SIZE}]", "Mask R-CNN only: mask probabilities, pasted by the runtime;"),
            ("", "", "", "rows from meta.json's mask_detections on are zeros (export --max-det-masks)")]
    return "\n".join(f"  {n:<11} {t:<8} {s:<14} {d}".rstrip() for n, t, s, d in rows) + (
        f"\nK is MODEL.DETECTIONS_PER_IMAGE ({DEFAULT_MAX_DETECTIONS} by default).")


def check_schema(meta: Any, *, source: str) -> None:
    """Refuse a sidecar written for another major version of this contract, in one line naming it."""
    version = meta.get("schema_version") if isinstance(meta, dict) else None
    if not isinstance(version, str) or version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise UserError(f"{source} has schema_version {version!r}, but this siefpn-deploy reads "
                        f"{SCHEMA_VERSION.split('.')[0]}.x; re-export the model with this version")

