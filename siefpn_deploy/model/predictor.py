"""`Predictor`: images in, per-image `Detections` in image pixels out, over any backend that runs the
graph contract (eager PyTorch here; ONNX Runtime and TensorRT in `runtime`).

    images -> Preprocess (the contract's spec) -> canvas [B,3,H,W] + image_sizes [B,2] -> backend.run
           -> padded outputs
           -> `Predictor.postprocess`: rows up to num_dets, boxes back to image pixels, masks pasted
              into the image with torchvision's paste_masks_in_image and thresholded

Training's evaluation, parity's PyTorch reference and every deployed artifact go through this one
class, so one checkpoint has one AP.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..core.config import Config
from ..core.contract import (
    BOXES,
    LABELS,
    MASKS,
    NUM_DETS,
    SCORES,
    GraphContract,
    ShapeRange,
    class_index,
    image_rows,
)
from ..core.errors import UserError
from ..data.image import to_pixels
from ..data.preprocess import Canvas, Preprocess
from .heads import nonempty
from .inference import EagerBackend
from .masks import paste_masks as paste
from .meta import default_size_range, model_meta


class Backend(Protocol):
    kind: str
    on_gpu: bool
    computes_in_torch: bool  # the model runs in PyTorch's own thread pool (eager, AOTInductor)

    def run(self, images: np.ndarray, image_sizes: np.ndarray | None = None) -> dict[str, np.ndarray]: ...


@dataclass
class Detections:
    """One image's detections, in its own pixels."""

    boxes: np.ndarray  # [N,4] float32 xyxy
    scores: np.ndarray  # [N]
    labels: np.ndarray  # [N] int64, the contract's labels 1..C
    category_ids: list[int]  # COCO category id of each label
    class_names: list[str]
    masks: np.ndarray | None = None  # [N,H,W] bool (Mask R-CNN)
    # [N,M,M] the mask head's probabilities, when pasting was left to the caller (`predict(paste_masks=False)`):
    # N masks at image size are N x H x W bytes at once, which a server pastes and encodes one at a time
    mask_probs: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)


def as_list(images: Any) -> tuple[list[Any], bool]:
    """(images, was_a_single_image)."""
    if isinstance(images, (str, Path, Image.Image)):
        return [images], True
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images), False
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return [images], True
    return list(images), False


CHECKPOINT_MAX_BATCH = 64  # eager PyTorch has no exported range; a bound for batching


class Predictor:
    @classmethod
    def eager(cls, detector: nn.Module, *, cfg: Config, classes: dict[str, list], path: Path,
              device: torch.device, autocast_dtype: torch.dtype | None = None, cuda_graphs: bool = False) -> Self:
        """A trained torchvision detector in memory, run eagerly (see `EagerBackend`)."""
        size = default_size_range(cfg)
        meta = model_meta(cfg, detector, classes, batch=ShapeRange(1, CHECKPOINT_MAX_BATCH), height=size, width=size)
        contract = GraphContract.from_meta(meta, source=str(path))
        return cls(EagerBackend(detector, contract, device, autocast_dtype=autocast_dtype, cuda_graphs=cuda_graphs),
                   meta, path)

    def __init__(self, backend: Backend, meta: dict[str, Any], path: Path) -> None:
        self.backend = backend
        self.meta = meta
        self.path = path
        self.contract = GraphContract.from_meta(meta, source=str(path))
        self.preprocess = Preprocess(self.contract.preprocess)
        shapes = meta["shapes"]  # the runnable range: the export's, or a TensorRT engine's profile
        self.min_batch, self.max_batch = shapes["batch"]["min"], shapes["batch"]["max"]
        self.range = (shapes["height"], shapes["width"])
        classes = meta["classes"]
        self.class_names: list[str] = list(classes["names"])
        self.category_ids: list[int] = list(classes["category_ids"])

    @property
    def kind(self) -> str:
        return self.backend.kind

    @property
    def torch_threads(self) -> int | None:
        """PyTorch's intra-op thread count for running this predictor (`core.cpu.torch_threads`): 1 where ONNX
        Runtime or OpenVINO computes the model on the CPU, None (as it is) where PyTorch computes it or it runs on a
        GPU. Then PyTorch only pre- and postprocesses, and with its default pool its OpenMP workers spin for
        milliseconds after the preprocessing, on the cores the runtime is computing on: 6 ms of the demo's INT8's
        24 per image (benchmarks/results/e2e_gap_cpu.md). One thread costs the preprocessing a fraction of that."""
        return None if self.backend.computes_in_torch or self.backend.on_gpu else 1

    @property
    def precision(self) -> str:
        return self.meta.get("precision", "fp32")

    def at_size(self, min_size: int, max_size: int | None = None) -> Predictor:
        """The same artifact with the test resize set to (min_size, max_size): e.g. at_size(640) fills a 640
        canvas. The backend is shared, not reloaded."""
        other = copy.copy(self)
        other.preprocess = self.preprocess.at_size(min_size, max_size)
        return other

    def prepare(self, images: list[torch.Tensor], original_hw: list[tuple[int, int]] | None = None) -> Canvas:
        """original_hw: the images' sizes before a reduced decode (`data.image.decode_reduced`)."""
        h, w = self.range
        static = h["min"] == h["max"] and w["min"] == w["max"]
        canvas = self.preprocess(images, (h["max"], w["max"]) if static else None, original_hw)
        _, _, ch, cw = canvas.images.shape
        if not static and (ch > h["max"] or cw > w["max"] or ch < h["min"] or cw < w["min"]):
            # outside the runnable range: a fixed canvas at the nearest edge of the range
            canvas = self.preprocess(images, self._in_range(ch, cw), original_hw)
        return canvas

    def resized_size(self, height: int, width: int) -> tuple[int, int] | None:
        """The most an image of height x width is resized to (a fixed or out-of-range canvas can only shrink it
        further), for `decode_reduced`; None for an image no canvas can take (`canvas_of` says why)."""
        try:
            factor = self.preprocess.scale(height, width)
        except UserError:
            return None
        return math.floor(height * factor), math.floor(width * factor)

    def _in_range(self, ch: int, cw: int) -> tuple[int, int]:
        h, w = self.range
        return min(max(ch, h["min"]), h["max"]), min(max(cw, w["min"]), w["max"])

    def canvas_of(self, height: int, width: int) -> tuple[int, int]:
        """The canvas (H, W) `prepare` gives an image of height x width on its own. Images with the same canvas
        can share a batch without changing each other's detections (the padding around an image is part of
        what the network sees); a one-line UserError for an image no canvas can take."""
        h, w = self.range
        if h["min"] == h["max"] and w["min"] == w["max"]:
            self.preprocess.scale(height, width, (h["max"], w["max"]))  # refuses a degenerate image
            return h["max"], w["max"]
        return self._in_range(*self.preprocess.padded_size(height, width))

    def feeds(self, canvas: Canvas) -> tuple[np.ndarray, np.ndarray]:
        """The backend's inputs for one preprocessed batch: images [B,3,H,W] and image_sizes [B,2], padded (with
        copies of its last image) up to the smallest batch the artifact takes, e.g. a static batch."""
        images, sizes = canvas.images.numpy(), canvas.image_sizes
        real = len(images)
        if real < self.min_batch:
            images = np.concatenate([images, np.repeat(images[-1:], self.min_batch - real, axis=0)])
            sizes = np.concatenate([sizes, np.repeat(sizes[-1:], self.min_batch - real, axis=0)])
        return images, sizes

    def run_canvas(self, canvas: Canvas) -> dict[str, np.ndarray]:
        """The backend on one preprocessed batch (`feeds`), cut back to the batch's own images."""
        out = self.backend.run(*self.feeds(canvas))
        return {k: v[: len(canvas.images)] for k, v in out.items()}

    def postprocess(self, outputs: dict[str, np.ndarray], canvas: Canvas, *, paste_masks: bool = True
                    ) -> list[Detections]:
        results = []
        for b in range(len(outputs[NUM_DETS])):
            rows = image_rows(outputs, b)
            boxes = canvas.to_image(torch.from_numpy(rows[BOXES].astype(np.float32)), b)
            # detectron2's detector_postprocess: boxes empty after clipping to the image are dropped
            keep = nonempty(boxes).numpy()
            rows = {k: v[keep] for k, v in rows.items()}
            boxes = boxes[torch.from_numpy(keep)]
            labels = rows[LABELS]
            index = class_index(labels, len(self.class_names))
            masks = probs = None
            if MASKS in rows and paste_masks:
                masks = paste(torch.from_numpy(rows[MASKS]), boxes, canvas.original_hw[b]).numpy()
            elif MASKS in rows:
                probs = rows[MASKS]
            results.append(Detections(
                boxes=boxes.numpy(), scores=rows[SCORES].astype(np.float32), labels=labels,
                category_ids=[self.category_ids[i] for i in index], class_names=[self.class_names[i] for i in index],
                masks=masks, mask_probs=probs,
            ))
        return results

    def predict(self, images: Any, *, color: str = "RGB", batch_size: int | None = None, paste_masks: bool = True,
                original_hw: list[tuple[int, int]] | None = None) -> Detections | list[Detections]:
        """Detections for one image or a batch (a list, NHWC array or NCHW tensor); `color` says whether
        numpy arrays are RGB or BGR (OpenCV). `batch_size` images share a canvas (default: the largest
        batch the artifact takes). paste_masks=False leaves Mask R-CNN's masks as `mask_probs`. original_hw:
        each image's size before a reduced decode (`data.image.decode_reduced`): detections come back in
        those pixels."""
        items, single = as_list(images)
        tensors = [to_pixels(im, color) for im in items]
        if original_hw is not None and len(original_hw) != len(tensors):
            raise UserError(f"original_hw has {len(original_hw)} sizes for {len(tensors)} images")
        step = min(batch_size or self.max_batch, self.max_batch)
        results: list[Detections] = []
        for start in range(0, len(tensors), step):
            sizes = original_hw[start : start + step] if original_hw is not None else None
            canvas = self.prepare(tensors[start : start + step], sizes)
            results += self.postprocess(self.run_canvas(canvas), canvas, paste_masks=paste_masks)
        return results[0] if single else results
