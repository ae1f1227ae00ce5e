"""Export verification: onnx.checker, then ONNX Runtime (CPU), or the AOTInductor package as the runtime loads
it, against the PyTorch detector.

Both see the same canvases and image sizes, made by the runtime's own preprocessing, at two sizes and
batch 2 where the exported ranges allow.
The reference is the trained torchvision detector itself (`EagerBackend`: eager, with its own
postprocessing), not the deploy wrapper, so the check covers the in-graph postprocessing too. Both
sides' outputs are the contract's padded layout, compared image by image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.aoti import load_package
from ..core.config import Config
from ..core.contract import IMAGE_SIZES, INPUT, GraphContract, graph_inputs, image_rows
from ..core.errors import UserError
from ..core.ort import ort_session
from ..core.sidecar import check_input_shape
from ..data import CocoDetection, synth
from ..data.image import to_tensor
from ..data.preprocess import Preprocess
from ..evaluation.agreement import Agreement
from ..model.inference import EagerBackend

BOX_RTOL = 1e-3  # |box error| <= BOX_RTOL * max(|coordinate|, 1 px)
SCORE_ATOL = 1e-4
MASK_ATOL = 1e-2  # the M x M mask probabilities of matched detections


@dataclass(frozen=True)
class Tolerances:
    box_rel: float = BOX_RTOL
    score_abs: float = SCORE_ATOL
    mask_abs: float = MASK_ATOL
    unmatched_borderline: int = 0  # reference detections left unmatched that lie at the score threshold


FP32_TOLERANCES = Tolerances()
# An FP16 package against eager FP16 autocast: the same arithmetic class, but other kernels and fusions round
# differently in half precision, so a detection at the score threshold may fall either side of it.
FP16_TOLERANCES = Tolerances(box_rel=1e-2, score_abs=1e-2, mask_abs=5e-2, unmatched_borderline=2)


@dataclass
class Verification:
    shapes: list[list[int]]
    agreement: Agreement
    tolerances: Tolerances = Tolerances()

    @property
    def passed(self) -> bool:
        a, t = self.agreement, self.tolerances
        return (a.unmatched <= min(a.unmatched_borderline, t.unmatched_borderline) and a.max_box_rel <= t.box_rel
                and a.max_score_abs <= t.score_abs and a.max_mask_abs <= t.mask_abs)

    def as_dict(self) -> dict[str, Any]:
        a = self.agreement
        return {"shapes": self.shapes, "passed": self.passed, "reference": a.reference, "matched": a.matched,
                "unmatched": a.unmatched, "unmatched_borderline": a.unmatched_borderline,
                "max_box_abs": a.max_box_abs, "max_box_rel": a.max_box_rel, "max_score_abs": a.max_score_abs,
                "max_mask_abs": a.max_mask_abs, "tolerances": vars(self.tolerances)}


def verification_shapes(meta: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    """Two different sizes inside the exported ranges (at least one not square), at batch 2 where allowed;
    neither is the export example's shape unless the ranges leave no choice."""
    s = meta["shapes"]
    div = meta["preprocess"]["divisibility"]
    batch = min(max(2, s["batch"]["min"]), s["batch"]["max"])

    def pick(r: dict, target: int) -> int:
        return min(r["max"], max(r["min"], target // div * div))

    first = (pick(s["height"], 256), pick(s["width"], 224))
    second = (pick(s["height"], first[0] - 2 * div), pick(s["width"], first[1] + 3 * div))
    if second == first:
        second = (pick(s["height"], first[0] + 2 * div), pick(s["width"], first[1] - 3 * div))
    shapes = [(batch, 3, *first)]
    if second != first:
        shapes.append((batch, 3, *second))
    elif s["batch"]["min"] != batch:
        shapes.append((s["batch"]["min"], 3, *first))
    return shapes


def verification_images(cfg: Config, *, count: int = 4, log=print) -> list[torch.Tensor]:
    """The first `count` images of the config's test split (real content, so real detections), else
    deterministic synthetic renders when that split is not on this machine. RGB [3,h,w] in 0..1."""
    d = cfg.DATASETS
    if Path(d.TEST_ANNOTATIONS).is_file() and Path(d.TEST_IMAGES).is_dir():
        dataset = CocoDetection(image_dir=d.TEST_IMAGES, annotation_file=d.TEST_ANNOTATIONS)
        if len(dataset):
            log(f"[verify] images: the first {min(count, len(dataset))} of {d.TEST_IMAGES}")
            return [dataset.image(i) for i in range(min(count, len(dataset)))]
    log(f"[verify] images: {count} synthetic renders ({d.TEST_ANNOTATIONS} is not here)")
    renders = [synth.render(np.random.default_rng([7, i]), 320 - 32 * i, 224 + 32 * i)[0] for i in range(count)]
    return [to_tensor(r) for r in renders]


def verify_onnx(path: str | Path, meta: dict[str, Any], detector: nn.Module, images: list[torch.Tensor], *,
                log=print) -> Verification:
    """onnx.checker, then the graph in ONNX Runtime against the eager detector (`verify_against_eager`)."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # noqa: BLE001 - onnx.checker's ValidationError and protobuf's errors alike
        raise UserError(f"onnx.checker rejects {path}: {str(e).strip().splitlines()[0]}") from None
    session = ort_session(path)
    names = [o.name for o in session.get_outputs()]
    return verify_against_eager(lambda feeds: dict(zip(names, session.run(None, feeds))), path, meta, detector,
                                images, runtime="ONNX Runtime", log=log)


def verify_package(path: str | Path, meta: dict[str, Any], detector: nn.Module, images: list[torch.Tensor], *,
                   device: str = "cpu", autocast_dtype: torch.dtype | None = None, log=print) -> Verification:
    """The AOTInductor package, loaded as the runtime loads it, against the eager detector (an FP16 package:
    against eager FP16 autocast on the same device, with FP16_TOLERANCES)."""
    contract = GraphContract.from_meta(meta, source=str(path))
    run = load_package(path, contract.output_names, device=device)
    reference, tolerances = None, None  # verify_against_eager's defaults: eager FP32 on the CPU, FP32_TOLERANCES
    if autocast_dtype is not None:
        reference = EagerBackend(detector, contract, torch.device(device), autocast_dtype=autocast_dtype)
        tolerances = FP16_TOLERANCES
    return verify_against_eager(run, path, meta, detector, images, runtime="the AOTInductor package", log=log,
                                reference=reference, tolerances=tolerances)


def verify_against_eager(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], path: str | Path,
                         meta: dict[str, Any], detector: nn.Module, images: list[torch.Tensor], *, runtime: str,
                         reference: EagerBackend | None = None, tolerances: Tolerances | None = None,
                         log=print) -> Verification:
    """`run(feeds) -> outputs` against `EagerBackend` (default: FP32 on the CPU) on the same canvases and image
    sizes, image by image."""
    contract = GraphContract.from_meta(meta, source=str(path))
    reference = reference or EagerBackend(detector, contract, torch.device("cpu"))
    tolerances = tolerances or FP32_TOLERANCES
    post = meta["postprocess"]
    preprocess = Preprocess(contract.preprocess)
    agreement = Agreement()
    shapes = verification_shapes(meta)
    for shape in shapes:
        check_input_shape(meta, shape, source=str(path))
        canvas = preprocess([images[i % len(images)] for i in range(shape[0])], canvas=shape[2:])
        feeds = graph_inputs(canvas.images.numpy(), canvas.image_sizes)
        got = run(feeds)
        ref = reference.run(feeds[INPUT], feeds[IMAGE_SIZES])
        before = Agreement(**{k: getattr(agreement, k) for k in ("reference", "matched", "unmatched")})
        for b in range(shape[0]):
            agreement.add(image_rows(ref, b), image_rows(got, b), min_iou=0.5, score_thresh=post["score_thresh"],
                          max_det=contract.max_detections)
        log(f"[verify] {list(shape)}: {agreement.matched - before.matched}/{agreement.reference - before.reference} "
            f"PyTorch detections matched in {runtime}")
    result = Verification(shapes=[list(s) for s in shapes], agreement=agreement, tolerances=tolerances)
    log(f"[verify] {agreement.summary()}")
    if agreement.reference == 0:
        log(f"[verify] warning: PyTorch detects nothing above score {post['score_thresh']} on these images, so only "
            "shapes and empty outputs were compared; verify a trained model, or lower --score-thresh")
    if not result.passed:
        raise UserError(
            f"verification of {path} failed: {agreement.summary()}; tolerances: box {tolerances.box_rel:g} relative, "
            f"score {tolerances.score_abs:g}, mask {tolerances.mask_abs:g} (rerun with --no-verify to keep the file "
            "anyway)"
        )
    return result
