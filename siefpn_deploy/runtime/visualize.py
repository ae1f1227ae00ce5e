"""Detections drawn onto the image for a person to read: only the confident ones (`min_score`, at most `top`),
boxes and outlined translucent masks in their class colour, and labels that never cover one another.

What is drawn never decides what is kept: `infer --save-json` and the client write every detection above the
model's own threshold (COCOeval needs them); this filter is the picture's alone.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .detector import Detections

# The score a detection needs to be drawn unless the caller says otherwise (infer's --vis-score default too): the
# model's own threshold (0.05) keeps near-duplicates for COCOeval that would bury the objects in a picture.
DEFAULT_MIN_SCORE = 0.5
MASK_ALPHA = 0.45  # the class colour's share of a masked pixel
BOX_WIDTH = 2  # px, boxes
OUTLINE_WIDTH = 2  # px, the contour drawn around each mask
LABEL_PAD = 1  # px of label background around the text
DARK_FILL = 140  # a label fill darker than this (luma, 0..255) gets white text, a lighter one black
WHITE, BLACK = (255, 255, 255), (0, 0, 0)

Rect = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, x2 and y2 exclusive


def color_of(index: int) -> tuple[int, int, int]:
    """A distinct, stable colour per class (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def text_color(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads on `fill` (ITU-R BT.601 luma)."""
    r, g, b = fill
    return WHITE if 0.299 * r + 0.587 * g + 0.114 * b < DARK_FILL else BLACK


def shown(scores: np.ndarray, *, min_score: float, top: int | None) -> np.ndarray:
    """Indices of the detections to draw, lowest score first (so the best is drawn last, on top): those scoring
    at least `min_score`, of them the `top` best."""
    keep = np.flatnonzero(scores >= min_score)
    best_first = keep[np.argsort(-scores[keep], kind="stable")][:top]
    return best_first[::-1]


def place_labels(boxes: Sequence[Sequence[float]], sizes: Sequence[tuple[int, int]], *, width: int,
                 height: int) -> list[Rect | None]:
    """Where each box's label goes, in the given order (the first gets the first choice): above the box, else
    inside its top-left corner, else below it; each spot moved inside the `width` x `height` image; the first
    that overlaps no label placed before it. None where no spot is free: that label is left out, not its box.
    `sizes` are the labels' (width, height)."""
    placed: list[Rect] = []
    spots: list[Rect | None] = []
    for (x1, y1, _, y2), (w, h) in zip(boxes, sizes):
        spot = next((r for r in _candidates(x1, y1, y2, w, h, width, height)
                     if not any(_overlap(r, p) for p in placed)), None)
        spots.append(spot)
        if spot is not None:
            placed.append(spot)
    return spots


def _candidates(x1: float, y1: float, y2: float, w: int, h: int, width: int, height: int) -> list[Rect]:
    left = max(0, min(round(x1), width - w))
    tops = (round(y1) - h, round(y1), round(y2))  # above, inside the top-left corner, below
    return [(left, top, left + w, top + h) for top in (max(0, min(t, height - h)) for t in tops)]


def _overlap(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def outline(mask: np.ndarray, width: int = OUTLINE_WIDTH) -> np.ndarray:
    """[H,W] bool -> the mask's pixels within `width` of its edge (the mask minus itself eroded `width` times, a
    3x3 erosion in which the image's outside counts as outside the mask)."""
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    edge = np.zeros_like(mask)
    if len(ys) == 0:
        return edge
    # eroding only the mask's bounding box (plus the erosion's reach) keeps this cheap on a large image
    y0, y1, x0, x1 = max(ys[0] - width, 0), ys[-1] + width + 1, max(xs[0] - width, 0), xs[-1] + width + 1
    crop = mask[y0:y1, x0:x1]
    inner = crop
    for _ in range(width):
        padded = np.pad(inner, 1)
        h, w = inner.shape
        inner = np.all([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)
    edge[y0:y1, x0:x1] = crop & ~inner
    return edge


def draw(image: Image.Image, dets: Detections, *, min_score: float = DEFAULT_MIN_SCORE, top: int | None = None,
         mask_alpha: float = MASK_ALPHA) -> Image.Image:
    """`image` with the detections scoring at least `min_score` (of them the `top` best) drawn: masks blended in
    their class colour and outlined, boxes, and "class score" labels placed best first so none covers another."""
    order = shown(dets.scores, min_score=min_score, top=top)
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()  # [H,W,3]
    colors = {i: color_of(int(dets.labels[i])) for i in order}
    if dets.masks is not None:
        for i in order:
            mask, color = dets.masks[i], np.array(colors[i], dtype=np.float32)
            canvas[mask] = canvas[mask] * (1 - mask_alpha) + color * mask_alpha
            canvas[outline(mask)] = color
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(out)
    for i in order:
        pen.rectangle([float(v) for v in dets.boxes[i]], outline=colors[i], width=BOX_WIDTH)
    font = ImageFont.load_default()
    best_first = order[::-1]
    texts = [f"{dets.class_names[i]} {dets.scores[i]:.2f}" for i in best_first]
    extents = [pen.textbbox((0, 0), text, font=font) for text in texts]  # (left, top, right, bottom) of the glyphs
    sizes = [(r - left + 2 * LABEL_PAD, b - t + 2 * LABEL_PAD) for left, t, r, b in extents]
    spots = place_labels([dets.boxes[i] for i in best_first], sizes, width=out.width, height=out.height)
    for i, text, (left, t, _, _), spot in zip(best_first, texts, extents, spots):
        if spot is None:
            continue
        pen.rectangle([spot[0], spot[1], spot[2] - 1, spot[3] - 1], fill=colors[i])
        pen.text((spot[0] + LABEL_PAD - left, spot[1] + LABEL_PAD - t), text, fill=text_color(colors[i]), font=font)
    return out


def drawn_note(drawn: int, found: int, *, min_score: float, top: int | None, into: Path, per: str) -> str:
    """The end of infer's summary line: what was drawn where, and a hint when the filter hid everything."""
    return (f"; {drawn} drawn (score >= {min_score:g}" + (f", at most {top} per {per}" if top else "") + f") into {into}"
            + ("; lower --vis-score to see the others" if found and not drawn else ""))
