"""Detections drawn onto the image: boxes, class and score labels, and translucent masks."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

from .detector import Detections


def color_of(index: int) -> tuple[int, int, int]:
    """A distinct, stable colour per class (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw(image: Image.Image, dets: Detections, *, mask_alpha: float = 0.45) -> Image.Image:
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    if dets.masks is not None:
        for mask, label in zip(dets.masks, dets.labels):
            canvas[mask] = canvas[mask] * (1 - mask_alpha) + np.array(color_of(int(label))) * mask_alpha
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(out)
    for box, score, label, name in zip(dets.boxes, dets.scores, dets.labels, dets.class_names):
        color = color_of(int(label))
        x1, y1, x2, y2 = (float(v) for v in box)
        pen.rectangle([x1, y1, x2, y2], outline=color, width=2)
        text = f"{name} {score:.2f}"
        left, top, right, bottom = pen.textbbox((x1, y1), text)
        pen.rectangle([left, top - (bottom - top) - 2, right + 2, top], fill=color)
        pen.text((x1 + 1, top - (bottom - top) - 2), text, fill=(0, 0, 0))
    return out
