"""What `siefpn-deploy serve` takes and returns: one encoded image in, one image's detections out.

The names of the detection outputs, K and the label numbering are the graph contract's (core/contract.py);
what this module adds is the served form, which a client can use without knowing the preprocessing:

    input   image         BYTES  [1]     an encoded image file (JPEG, PNG, WebP or BMP: data/image.py DECODERS)
    output  num_dets      INT32  [1]     detections in this image, <= K
            boxes         FP32   [K,4]   xyxy in the original image's pixels; rows >= num_dets are zero
            scores        FP32   [K]
            labels        INT32  [K]     the contract's labels 1..C (PAD_LABEL past num_dets)
            category_ids  INT32  [K]     the COCO category id of each label (0 past num_dets)
            class_names   BYTES  [K]
            image_size    INT32  [2]     (height, width) of the decoded image: the size of the masks
            masks         BYTES  [K]     Mask R-CNN only: COCO compressed RLE counts, pasted at image size
            error         BYTES  [1]     empty, or why this image was refused (not an image, too large)

Every row of a batch is one image, so Triton's dynamic batcher can merge requests of any image size. A
request whose image cannot be used gets `error` and no detections instead of failing the batch it was
merged into: one bad client never fails the requests batched with its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.contract import BOXES, LABELS, MASKS, NUM_DETS, PAD_LABEL, SCORES, GraphContract
from ..core.errors import UserError
from ..evaluation.coco import rle_decode, rle_encode
from ..model.masks import paste_masks
from ..model.predictor import Detections

IMAGE = "image"
CATEGORY_IDS = "category_ids"
CLASS_NAMES = "class_names"
IMAGE_SIZE = "image_size"
ERROR = "error"
ORIGINAL_SIZE = "original_size"  # the ensemble's pre- to postprocessing tensor: int32 [2], the decoded (height, width)


@dataclass(frozen=True)
class Field:
    name: str
    dtype: type  # numpy dtype; np.bytes_ is Triton's BYTES
    shape: tuple[int, ...]  # per image, without the batch dimension


def inputs() -> tuple[Field, ...]:
    return (Field(IMAGE, np.bytes_, (1,)),)


def outputs(contract: GraphContract) -> tuple[Field, ...]:
    k = contract.max_detections
    fields = [Field(NUM_DETS, np.int32, (1,)), Field(BOXES, np.float32, (k, 4)), Field(SCORES, np.float32, (k,)),
              Field(LABELS, np.int32, (k,)), Field(CATEGORY_IDS, np.int32, (k,)), Field(CLASS_NAMES, np.bytes_, (k,)),
              Field(IMAGE_SIZE, np.int32, (2,))]
    if contract.has_masks:
        fields.append(Field(MASKS, np.bytes_, (k,)))
    return (*fields, Field(ERROR, np.bytes_, (1,)))


class RequestError(UserError):
    """The server refused an image (its `error` output), or Triton refused the request."""


def pack(contract: GraphContract, dets: Detections | None, image_size: tuple[int, int], error: str = ""
         ) -> dict[str, np.ndarray]:
    """One image's row of every output: `dets` padded to K, or no detections and `error`."""
    k = contract.max_detections
    n = 0 if dets is None else min(len(dets), k)
    row = {
        NUM_DETS: np.array([n], np.int32),
        BOXES: np.zeros((k, 4), np.float32), SCORES: np.zeros(k, np.float32),
        LABELS: np.full(k, PAD_LABEL, np.int32), CATEGORY_IDS: np.zeros(k, np.int32),
        CLASS_NAMES: np.full(k, b"", dtype=object), IMAGE_SIZE: np.array(image_size, np.int32),
        ERROR: np.array([error.encode()], dtype=object),
    }
    if contract.has_masks:
        row[MASKS] = np.full(k, b"", dtype=object)
    if n:
        row[BOXES][:n], row[SCORES][:n], row[LABELS][:n] = dets.boxes[:n], dets.scores[:n], dets.labels[:n]
        row[CATEGORY_IDS][:n] = dets.category_ids[:n]
        row[CLASS_NAMES][:n] = [name.encode() for name in dets.class_names[:n]]
        if contract.has_masks:
            row[MASKS][:n] = [rle["counts"].encode("ascii") for rle in mask_rles(dets, n, image_size)]
    return row


def mask_rles(dets: Detections, n: int, image_size: tuple[int, int]) -> list[dict]:
    """The first n masks as COCO RLEs. Unpasted ones (`mask_probs`) are pasted and encoded one at a time, so a
    response never holds more than one mask at image size (K of them at 40 M pixels would be 4 GB)."""
    if dets.masks is not None:
        return rle_encode(dets.masks[:n])
    if dets.mask_probs is None:
        return []
    boxes, probs = torch.from_numpy(dets.boxes), torch.from_numpy(dets.mask_probs)
    return [rle for i in range(n) for rle in rle_encode(paste_masks(probs[i : i + 1], boxes[i : i + 1], image_size).numpy())]


def stack(contract: GraphContract, rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`pack`ed rows -> one response: every output [n, ...] (n may be 0)."""
    return {f.name: np.stack([row[f.name] for row in rows]) if rows
            else np.zeros((0, *f.shape), object if f.dtype is np.bytes_ else f.dtype) for f in outputs(contract)}


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def unpack(out: dict[str, np.ndarray], b: int, *, source: str = "image") -> Detections:
    """Image b of a response (every output batched, as a Triton client returns them) -> its `Detections`, or
    a RequestError with the server's reason."""
    error = text(out[ERROR].reshape(-1)[b])
    if error:
        raise RequestError(f"{source}: {error}")
    n = int(out[NUM_DETS].reshape(-1)[b])
    height, width = (int(v) for v in out[IMAGE_SIZE][b])
    masks = None
    if MASKS in out:
        counts = [text(c) for c in out[MASKS][b, :n]]
        masks = rle_decode([{"size": [height, width], "counts": c} for c in counts], height, width)
    return Detections(boxes=out[BOXES][b, :n].astype(np.float32), scores=out[SCORES][b, :n].astype(np.float32),
                      labels=out[LABELS][b, :n].astype(np.int64),
                      category_ids=[int(c) for c in out[CATEGORY_IDS][b, :n]],
                      class_names=[text(c) for c in out[CLASS_NAMES][b, :n]], masks=masks)
