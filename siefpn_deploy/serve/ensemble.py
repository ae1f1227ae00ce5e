"""The encoded-image ensemble that `triton-repo --ensemble` writes around an ONNX model or engine:

    NAME_ensemble:  image (BYTES [1]) -> NAME_preprocess -> NAME (onnxruntime_onnx | tensorrt_plan) -> NAME_postprocess
                    -> num_dets, boxes, scores, labels, category_ids, class_names, image_size, [masks], error

Its inputs and outputs are `serve`'s (protocol.py), so one client (`DetectorClient`) talks to both. The two steps
are Triton Python-backend models (triton_model.py) that run the classes below, which are the project's own
preprocessing and postprocessing (`Predictor.prepare` and `Predictor.postprocess`): there is no second copy of
the resize rule, the canvas, the box scaling or the mask pasting to drift from the graph contract.

Each request is preprocessed on its own (its rows share one canvas, as in `Detector.predict`), so the model's
dynamic batcher merges requests whose canvases have the same size: a static-size export, or frames of one camera.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.contract import IMAGE_SIZES, INPUT, NUM_DETS
from ..core.errors import UserError
from ..data.image import decode_reduced, to_pixels
from ..data.preprocess import Canvas
from ..model.predictor import Predictor
from . import protocol
from .protocol import ORIGINAL_SIZE


class _NoBackend:
    """The ensemble's model step runs the graph; these steps only prepare its inputs and read its outputs."""

    kind = "triton"
    on_gpu = False
    computes_in_torch = False

    def run(self, images: np.ndarray, image_sizes: np.ndarray | None = None) -> dict[str, np.ndarray]:
        raise RuntimeError("the ensemble's graph runs in Triton's model step, not here")


def steps_predictor(meta: dict[str, Any], source: str) -> Predictor:
    return Predictor(_NoBackend(), meta, Path(source))


class PreprocessStep:
    """image [n,1] encoded bytes -> images [n,3,H,W] (the canvas), image_sizes [n,2], original_size [n,2]."""

    def __init__(self, meta: dict[str, Any], *, source: str = "meta.json", max_image_pixels: int | None = None) -> None:
        self.predictor = steps_predictor(meta, source)
        self.max_image_pixels = max_image_pixels

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        blobs = np.asarray(image, dtype=object).reshape(-1)
        if len(blobs) == 0:
            raise UserError("an empty batch: send at least one image")
        # a JPEG decoded at a reduced size (`decode_reduced`); each image uint8 until Preprocess resizes it
        decoded = [decode_reduced(bytes(b), name=f"in row {i}", max_pixels=self.max_image_pixels,
                                  resized_to=self.predictor.resized_size) for i, b in enumerate(blobs)]
        canvas = self.predictor.prepare([to_pixels(im) for im, _ in decoded], [hw for _, hw in decoded])
        return {INPUT: canvas.images.numpy(), IMAGE_SIZES: canvas.image_sizes,
                ORIGINAL_SIZE: np.array(canvas.original_hw, np.int32).reshape(-1, 2)}


class PostprocessStep:
    """The graph's outputs (rows of one request) with image_sizes and original_size -> protocol.outputs rows:
    boxes in original-image pixels, category ids and class names, masks pasted and RLE-encoded."""

    def __init__(self, meta: dict[str, Any], *, source: str = "meta.json") -> None:
        self.predictor = steps_predictor(meta, source)

    @property
    def graph_outputs(self) -> tuple[str, ...]:
        return self.predictor.contract.output_names

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = {name: np.asarray(inputs[name]) for name in self.graph_outputs}
        outputs[NUM_DETS] = outputs[NUM_DETS].reshape(-1)  # Triton's per-row scalar arrives as [n,1]
        resized = [tuple(int(v) for v in hw) for hw in np.asarray(inputs[IMAGE_SIZES]).reshape(-1, 2)]
        original = [tuple(int(v) for v in hw) for hw in np.asarray(inputs[ORIGINAL_SIZE]).reshape(-1, 2)]
        canvas = Canvas(images=torch.empty(0), resized_hw=resized, original_hw=original)
        found = self.predictor.postprocess(outputs, canvas)
        contract = self.predictor.contract
        return protocol.stack(contract, [protocol.pack(contract, dets, hw) for dets, hw in zip(found, original)])
