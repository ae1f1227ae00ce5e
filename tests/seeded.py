"""Seeded detectors that detect, for tests that prove equality (exported vs eager, C++ vs Python): no training,
so nothing depends on what a short training happens to learn on this CPU or in which arithmetic.

The weights are PyTorch's seeded initialisation. Left so, every location scores about the same (the class
layers' inputs share a large common part), and equality tests would compare near-ties. So, as in data-dependent
initialisation, each score layer is standardised over two fixed synthetic renders: class logits become about
N(SHIFT, SPREAD^2) over positions, which leaves tens of detections per image with scores well apart. The mask logits are
made about N(MASK_SHIFT, MASK_SPREAD^2): masks that fill their boxes, so mask comparisons test where pasting puts
a box's border rather than how random high-frequency noise resamples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from siefpn_deploy.core.config import Config
from siefpn_deploy.data import CocoDetection, synth
from siefpn_deploy.data.image import to_tensor
from siefpn_deploy.model.checkpoint import save_checkpoint
from siefpn_deploy.model.detectors import build_detector

SPREAD, SHIFT = 2.0, -9.0  # class logits over positions: a score above 0.05 is about 3 sigma out
BACKGROUND = 4.0  # the R-CNN box head's background logit, above the standardised classes: most RoIs are background
MASK_SPREAD, MASK_SHIFT = 1.0, 4.0  # mask logits about N(4, 1): masks that fill their boxes
UNUSED_CLASS = -30.0  # RetinaNet's label 0 (torchvision counts a background class it never scores)


def _standardise(layer: nn.Module, outputs: list[torch.Tensor], spread: float, shift: float) -> None:
    if isinstance(layer, nn.Linear):
        flat = torch.cat(outputs).T  # [C, RoIs]
    else:  # conv: [N, C, H, W] per level
        flat = torch.cat([o.transpose(0, 1).reshape(o.shape[1], -1) for o in outputs], 1)
    mean, std = flat.mean(1), flat.std(1).clamp_min(1e-6)
    scale = spread / std
    layer.weight.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))))
    layer.bias.copy_((layer.bias - mean) * scale + shift)


@torch.no_grad()
def seeded_detector(cfg: Config, num_classes: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_detector(cfg, num_classes=num_classes).eval()
    if cfg.MODEL.META_ARCHITECTURE == "retinanet":
        head = model.head.classification_head
        layers = [(head.cls_logits, SPREAD, SHIFT)]
    else:
        layers = [(model.rpn.head.cls_logits, SPREAD, SHIFT), (model.roi_heads.box_predictor.cls_score, SPREAD, SHIFT)]
        if cfg.MODEL.has_masks:
            layers.append((model.roi_heads.mask_predictor.mask_fcn_logits, MASK_SPREAD, MASK_SHIFT))
    renders = [to_tensor(synth.render(np.random.default_rng([9, i]), 160, 128)[0]) for i in range(2)]
    # each layer is standardised on what reaches it once the layers before it are (RPN, then the box head)
    for layer, spread, shift in layers:
        seen: list[torch.Tensor] = []
        hook = layer.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o))
        model(renders)
        hook.remove()
        _standardise(layer, seen, spread, shift)
    if cfg.MODEL.META_ARCHITECTURE == "retinanet":
        classes = model.head.classification_head.num_classes
        model.head.classification_head.cls_logits.bias[::classes] = UNUSED_CLASS
    else:
        model.roi_heads.box_predictor.cls_score.bias[0] = BACKGROUND
    return model


def write_seeded_run(cfg: Config, out: Path, seed: int = 0) -> Path:
    """OUTPUT_DIR as a training run leaves it (model_final.pth with its classes, config.yaml) for a seeded
    detector of cfg on its training set's classes; returns the folder."""
    train = CocoDetection(image_dir=cfg.DATASETS.TRAIN_IMAGES, annotation_file=cfg.DATASETS.TRAIN_ANNOTATIONS)
    model = seeded_detector(cfg, len(train.class_names), seed)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "model_final.pth", {"model": model.state_dict(), "config": cfg.to_dict(),
                                              "classes": {"names": train.class_names,
                                                          "category_ids": train.category_ids}}, mark_last=False)
    (out / "config.yaml").write_text(cfg.dump())
    return out
