"""`Detector`: one interface for every artifact (checkpoint, .onnx, .plan).

    det = Detector.from_path("export/demo.onnx")                 # or engines/NAME.plan, or a .pth
    results = det.predict(["a.jpg", "b.jpg"])                    # paths, HWC arrays or CHW tensors
    results[0].boxes, .scores, .labels, .category_ids, .class_names, .masks

Preprocessing is `data.preprocess.Preprocess`, driven by the artifact's meta.json, so calibration,
parity and inference see the same pixels. Results are in original image pixels; Mask R-CNN masks are
pasted at image resolution with torchvision's `paste_masks_in_image` and thresholded at 0.5.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..core.errors import UserError
from ..data.coco import load_image
from ..data.preprocess import Canvas, Preprocess
from .backends import OnnxRuntimeBackend, TensorRTBackend, TorchBackend

MASK_THRESHOLD = 0.5


@dataclass
class Detections:
    """One image's detections, in its own pixels."""

    boxes: np.ndarray  # [N,4] float32 xyxy
    scores: np.ndarray  # [N]
    labels: np.ndarray  # [N] int64, 0-based class index
    category_ids: list[int]
    class_names: list[str]
    masks: np.ndarray | None = None  # [N,H,W] bool (Mask R-CNN)

    def __len__(self) -> int:
        return len(self.scores)


def to_tensor(image: Any, color: str) -> torch.Tensor:
    """A path, a PIL image, an HWC numpy array (uint8 0..255 or float 0..1) or a CHW tensor -> RGB float
    [3,H,W] in 0..1."""
    if isinstance(image, (str, Path)):
        image = load_image(image)
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] not in (1, 3):
            raise UserError(f"a numpy image must be HWC with 1 or 3 channels, got shape {list(image.shape)}")
        array = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
        array = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array
        array = array[..., ::-1] if color == "BGR" else array
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise UserError(f"a tensor image must be CHW with 3 channels, got shape {list(image.shape)}")
        return image.float().cpu() / (255.0 if image.dtype == torch.uint8 else 1.0)
    raise UserError(f"cannot read an image from a {type(image).__name__}; pass a path, an HWC array or a CHW tensor")


def as_list(images: Any) -> tuple[list[Any], bool]:
    """(images, was_a_single_image)."""
    if isinstance(images, (str, Path, Image.Image)):
        return [images], True
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images), False
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return list(images), False
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return [images], True
    return list(images), False


class Detector:
    def __init__(self, backend: Any, meta: dict[str, Any], path: Path) -> None:
        self.backend = backend
        self.meta = meta
        self.path = path
        self.preprocess = Preprocess.from_meta(meta)
        shapes = meta["shapes"]
        self.max_batch = shapes["batch"]["max"]
        self.static_batch = shapes["batch"]["min"] == shapes["batch"]["max"]
        self.range = (shapes["height"], shapes["width"])
        classes = meta["classes"]
        self.class_names: list[str] = list(classes["names"])
        self.category_ids: list[int] = list(classes["category_ids"])

    @property
    def kind(self) -> str:
        return self.backend.kind

    @property
    def precision(self) -> str:
        return self.meta.get("precision", "fp32")

    @classmethod
    def from_path(cls, path: str | Path, *, device: str = "auto", config: str | Path | None = None,
                  threads: int | None = None) -> "Detector":
        """`.onnx` (ONNX Runtime), `.plan`/`.engine` (TensorRT), or `.pth` (PyTorch; `config` or the
        config stored in the checkpoint). device: auto, cpu or cuda."""
        from ..core.sidecar import read_meta

        path = Path(path)
        if path.suffix == ".onnx":
            meta = read_meta(path)
            return cls(OnnxRuntimeBackend(path, meta, device=device, threads=threads), meta, path)
        if path.suffix in (".plan", ".engine"):
            from ..tensorrt.plan import read_engine_meta

            engine_meta = read_engine_meta(path)
            return cls(TensorRTBackend(path, engine_meta), engine_meta["model"], path)
        if path.suffix in (".pth", ".pt"):
            return cls.from_checkpoint(path, config=config, device=device)
        raise UserError(f"unknown artifact {path}: expected .onnx, .plan/.engine or a .pth checkpoint")

    @classmethod
    def from_checkpoint(cls, weights: Path, *, config: str | Path | None, device: str = "auto",
                        overrides: Sequence[str] = (), autocast_dtype: torch.dtype | None = None,
                        cuda_graphs: bool = False) -> "Detector":
        """PyTorch eager; on CUDA optionally under autocast (e.g. torch.float16) and with the backbone and
        neck replayed as CUDA graphs (see runtime/cuda_graphs.py)."""
        from ..core.config import load_config
        from ..export.exporter import (
            ExportOptions,
            default_size_range,
            load_trained_detector,
            model_meta,
        )
        from ..model.checkpoint import load_checkpoint

        if config is None:
            stored = load_checkpoint(weights).get("config")
            if not stored:
                raise UserError(f"{weights} stores no config; pass the config it was trained with")
            config = weights.parent / "config.yaml"
            if not config.is_file():
                raise UserError(f"{weights}: pass --config-file (no config.yaml beside it)")
        cfg = load_config(config, [*overrides, "MODEL.WEIGHTS", str(weights)])
        detector, classes = load_trained_detector(cfg, config_name=str(config))
        size = default_size_range(cfg)
        options = ExportOptions(output=weights, height=size, width=size, batch=replace(size, min=1, max=64),
                                divisibility=cfg.INPUT.SIZE_DIVISIBILITY)
        meta = model_meta(cfg, options, detector, classes)
        torch_device = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
        if device == "cuda" and torch_device.type != "cuda":
            raise UserError("--device cuda: there is no CUDA device here")
        backend = TorchBackend(detector, meta, torch_device, autocast_dtype=autocast_dtype, cuda_graphs=cuda_graphs)
        return cls(backend, meta, weights)

    def at_size(self, min_size: int, max_size: int | None = None) -> "Detector":
        """The same artifact with the test resize set to (min_size, max_size): e.g. at_size(640) fills a 640
        canvas. The backend is shared, not reloaded."""
        other = copy.copy(self)
        other.preprocess = replace(self.preprocess, min_size=min_size, max_size=max_size or min_size)
        return other

    def prepare(self, images: list[torch.Tensor]) -> Canvas:
        h, w = self.range
        static = h["min"] == h["max"] and w["min"] == w["max"]
        canvas = self.preprocess(images, canvas=(h["max"], w["max"]) if static else None)
        _, _, ch, cw = canvas.images.shape
        if not static and (ch > h["max"] or cw > w["max"] or ch < h["min"] or cw < w["min"]):
            # outside the exported range: a fixed canvas at the nearest edge of the range
            target = (min(max(ch, h["min"]), h["max"]), min(max(cw, w["min"]), w["max"]))
            canvas = self.preprocess(images, canvas=target)
        return canvas

    def run_canvas(self, canvas: Canvas) -> dict[str, np.ndarray]:
        """The backend on one preprocessed batch, padded to a static batch size where the model has one."""
        images = canvas.images.numpy()
        real = len(images)
        if self.static_batch and real < self.max_batch:
            images = np.concatenate([images, np.repeat(images[-1:], self.max_batch - real, axis=0)])
        out = self.backend.run(images)
        return {k: v[:real] for k, v in out.items()}

    def postprocess(self, outputs: dict[str, np.ndarray], canvas: Canvas) -> list[Detections]:
        from torchvision.models.detection.roi_heads import paste_masks_in_image

        results = []
        for b, n in enumerate(outputs["num_dets"]):
            n = int(n)
            boxes = canvas.to_image(torch.from_numpy(outputs["boxes"][b, :n].astype(np.float32)), b)
            labels = outputs["labels"][b, :n].astype(np.int64) - 1
            masks = None
            if "masks" in outputs:
                probs = torch.from_numpy(outputs["masks"][b, :n, None].astype(np.float32))
                pasted = paste_masks_in_image(probs, boxes, canvas.original_hw[b], padding=1)[:, 0]
                masks = (pasted > MASK_THRESHOLD).numpy()
            results.append(Detections(
                boxes=boxes.numpy(), scores=outputs["scores"][b, :n].astype(np.float32), labels=labels,
                category_ids=[self.category_ids[i] for i in labels], class_names=[self.class_names[i] for i in labels],
                masks=masks,
            ))
        return results

    def predict(self, images: Any, *, color: str = "RGB", batch_size: int | None = None
                ) -> Detections | list[Detections]:
        """Detections for one image or a batch (a list, NHWC array or NCHW tensor); `color` says whether
        numpy arrays are RGB or BGR (OpenCV)."""
        if color not in ("RGB", "BGR"):
            raise UserError(f"color must be RGB or BGR, got {color!r}")
        items, single = as_list(images)
        if not items:
            return []
        tensors = [to_tensor(im, color) for im in items]
        step = min(batch_size or self.max_batch, self.max_batch)
        results: list[Detections] = []
        for start in range(0, len(tensors), step):
            canvas = self.prepare(tensors[start : start + step])
            results += self.postprocess(self.run_canvas(canvas), canvas)
        return results[0] if single else results
