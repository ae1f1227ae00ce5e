"""A deterministic synthetic detection dataset in COCO format: textured backgrounds, occluding shapes.

Annotations are modal (only what is visible): each object's mask is its raster minus the rasters of the
objects drawn after it, and its polygons trace that visible mask exactly (pixel-corner coordinates).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..core.errors import UserError
from ..core.fileio import atomic_path, read_json, write_json
from ..core.progress import progress_bar

# non-contiguous ids, like COCO's, so the loader's id -> label mapping is always exercised
CATEGORIES: list[tuple[int, str]] = [
    (1, "circle"), (3, "square"), (5, "triangle"), (7, "star"), (9, "hexagon"), (11, "cross"),
]
MIN_VISIBLE_FRACTION = 0.5
EMPTY_IMAGE_PROB = 0.03


@dataclass(frozen=True)
class Level:
    """How hard the scenes are. Each count is drawn uniformly from 0 (1 for objects) to its maximum."""

    name: str
    max_objects: int
    min_object_size: float  # px, diameter of the shape's circumscribed circle
    max_object_fraction: float  # the largest diameter, as a fraction of the image's short side
    max_stripes: int  # sinusoidal stripes across the background
    max_blotches: int  # soft colour blotches on the background
    noise: tuple[float, float]  # the image noise's standard deviation is drawn from this range


# The benchmark level: small objects (10 px), up to 8 per image, striped and blotched backgrounds. Every
# benchmark figure, the FPN vs Dual SIE-FPN A/B and the tests use it.
BENCHMARK = Level("benchmark", max_objects=8, min_object_size=10.0, max_object_fraction=0.7, max_stripes=2,
                  max_blotches=5, noise=(2.0, 12.0))
# The demo level: the same shapes and classes, at most 4 larger objects (24 px and up) on calmer backgrounds,
# which a model trained for minutes on 2 CPU cores can learn to detect well. The 24 px floor was chosen on
# held-out train images (benchmarks/results/demo_level_h100.md): below it the six shapes are confused.
EASY = Level("easy", max_objects=4, min_object_size=24.0, max_object_fraction=0.35, max_stripes=0, max_blotches=2,
             noise=(2.0, 6.0))
LEVELS = {level.name: level for level in (BENCHMARK, EASY)}


@dataclass
class Instance:
    category_id: int
    full_mask: np.ndarray  # bool [H, W], the whole raster (clipped to the image)
    visible_mask: np.ndarray  # bool [H, W], minus what later objects cover

    @property
    def visible_fraction(self) -> float:
        return float(self.visible_mask.sum()) / max(1, int(self.full_mask.sum()))


# ----------------------------------------------------------------------------- rendering

def _shape_vertices(name: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if name == "star":
        ang = np.arange(10) * math.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
    elif name == "cross":
        a = 0.33
        pts = np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a),
                        (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]) / math.hypot(1, a)
    else:
        n = {"square": 4, "triangle": 3, "hexagon": 6}[name]
        ang = np.arange(n) * 2 * math.pi / n
        pts = np.stack([np.cos(ang), np.sin(ang)], 1)
    c, s = math.cos(angle), math.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]]) * r + (cx, cy)
    return [tuple(p) for p in pts.tolist()]


def _background(rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray, level: Level) -> np.ndarray:
    # gradient between two random colours along a random direction
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    t = xx * math.cos(theta) + yy * math.sin(theta)
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    img = c0 + (c1 - c0) * t[..., None]  # [H, W, 3]
    # sinusoidal stripes with a random colour direction
    for _ in range(rng.integers(0, level.max_stripes + 1)):
        freq, phi, ang = rng.uniform(0.01, 0.15), rng.uniform(0, 2 * math.pi), rng.uniform(0, math.pi)
        wave = np.sin(freq * (xx * math.cos(ang) + yy * math.sin(ang)) * 2 * math.pi + phi)
        img += wave[..., None] * rng.uniform(-35, 35, 3).astype(np.float32)
    # soft blotches
    for _ in range(rng.integers(0, level.max_blotches + 1)):
        bx, by, sig = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 0.4 * max(h, w))
        blob = np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * sig * sig))
        img += blob[..., None] * rng.uniform(-70, 70, 3).astype(np.float32)
    return img


def render(rng: np.random.Generator, width: int, height: int, level: Level = BENCHMARK) -> tuple[np.ndarray, list[Instance]]:
    """Draw one image. Returns uint8 [H, W, 3] and the instances in drawing order (all of them, even
    those too occluded to be annotated)."""
    h, w = height, width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = _background(rng, h, w, yy, xx, level)
    n = 0 if rng.random() < EMPTY_IMAGE_PROB else int(rng.integers(1, level.max_objects + 1))
    max_size = level.max_object_fraction * min(h, w)
    cats, masks = [], []
    for _ in range(n):
        cat_id, name = CATEGORIES[rng.integers(len(CATEGORIES))]
        size = math.exp(rng.uniform(math.log(level.min_object_size), math.log(max(max_size, level.min_object_size))))
        r = size / 2
        # centres may sit a little outside so that some objects are truncated by the border
        cx = rng.uniform(min(0.3 * r, w / 2), max(w - 0.3 * r, w / 2))
        cy = rng.uniform(min(0.3 * r, h / 2), max(h - 0.3 * r, h / 2))
        angle = rng.uniform(0, 2 * math.pi)
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        if name == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        else:
            draw.polygon(_shape_vertices(name, cx, cy, r, angle), fill=1)
        m = np.asarray(canvas, dtype=bool)
        if not m.any():
            continue
        # a colour far enough from what is under the shape, so the task is learnable
        under = img[m].mean(0)
        for _ in range(20):
            col = rng.uniform(0, 255, 3).astype(np.float32)
            if np.linalg.norm(col - under) > 110:
                break
        else:
            col = np.where(under > 127, 0.0, 255.0).astype(np.float32)
        shade = ((xx[m] - cx) * math.cos(angle) + (yy[m] - cy) * math.sin(angle)) / r  # in [-1, 1]
        pix = col + shade[:, None] * rng.uniform(-20, 20)
        pix += rng.standard_normal(pix.shape, dtype=np.float32) * rng.uniform(0, 8)
        img[m] = pix
        cats.append(cat_id)
        masks.append(m)
    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(*level.noise)
    instances, cover = [], np.zeros((h, w), bool)
    for cat_id, m in zip(reversed(cats), reversed(masks)):
        instances.append(Instance(category_id=cat_id, full_mask=m, visible_mask=m & ~cover))
        cover |= m
    return np.clip(img, 0, 255).astype(np.uint8), instances[::-1]


# ----------------------------------------------------------------------------- mask -> polygons

_STEP_X = (1, 0, -1, 0)  # direction codes: 0 +x, 1 +y, 2 -x, 3 -y (image coords, y down)
_STEP_Y = (0, 1, 0, -1)


def _trace_loops(p: np.ndarray) -> list[np.ndarray]:
    """Closed boundary loops of a zero-padded bool mask `p` [H, W], along pixel edges, as corner vertices
    [(x, y), ...] in pixel-corner coordinates. Foreground is on the right of travel: outer boundaries come
    out with positive shoelace area, holes negative. Diagonal touches join (8-connected foreground)."""
    H, W = p.shape
    stride = W + 1
    bits = np.zeros((H + 1) * stride, np.uint8)  # out-edge directions per corner vertex
    r, c = np.nonzero(p[1:] & ~p[:-1])  # fg below a horizontal edge: +x
    bits[(r + 1) * stride + c] |= 1
    r, c = np.nonzero(p[:, :-1] & ~p[:, 1:])  # fg left of a vertical edge: +y
    bits[r * stride + c + 1] |= 2
    r, c = np.nonzero(p[:-1] & ~p[1:])  # fg above: -x
    bits[(r + 1) * stride + c + 1] |= 4
    r, c = np.nonzero(p[:, 1:] & ~p[:, :-1])  # fg right: -y
    bits[(r + 1) * stride + c + 1] |= 8
    starts = np.flatnonzero(bits).tolist()
    bits = bits.tolist()
    used = dict.fromkeys(starts, 0)
    step = (1, stride, -1, -stride)
    loops = []
    for s in starts:
        while free := bits[s] & ~used[s]:  # a diagonal-touch vertex can start two loops
            d = first = (free & -free).bit_length() - 1
            v, prev, verts = s, -1, []
            while True:
                used[v] |= 1 << d
                if d != prev:
                    verts.append(v)
                prev = d
                v += step[d]
                b = bits[v]
                # prefer the left turn: at a diagonal touch it keeps both foreground pixels in one loop
                if b & (1 << ((d + 3) & 3)):
                    nd = (d + 3) & 3
                elif b & (1 << d):
                    nd = d
                else:
                    nd = (d + 1) & 3
                if used[v] & (1 << nd):
                    break
                d = nd
            if d == first:  # the start vertex lies mid-edge: not a corner
                verts = verts[1:]
            verts = np.array(verts)
            loops.append(np.stack([verts % stride, verts // stride], 1))
    return loops


def _signed_area(v: np.ndarray) -> float:
    x, y = v[:, 0].astype(np.float64), v[:, 1].astype(np.float64)
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _contains(loop: np.ndarray, px: float, py: float) -> bool:
    # even-odd ray cast towards +x; only vertical edges can cross a half-integer y
    x0, y0 = loop[:, 0], loop[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    hit = (x0 == x1) & (x0 > px) & ((y0 > py) != (y1 > py))
    return bool(hit.sum() % 2)


def mask_to_polygons(mask: np.ndarray) -> list[list[int]]:
    """COCO polygons for a bool mask [H, W]: one polygon per 8-connected component, exact to the pixel.

    Holes are joined to their outer boundary by a zero-width bridge traversed both ways; pycocotools fills
    polygons even-odd, so the bridge cancels and the hole stays empty.
    """
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return []
    y0, x0 = int(ys.min()), int(xs.min())
    crop = np.pad(np.asarray(mask[y0:ys.max() + 1, x0:xs.max() + 1], dtype=bool), 1)
    outers, holes = [], []
    for loop in _trace_loops(crop):
        area = _signed_area(loop)
        (outers if area > 0 else holes).append((abs(area), loop))
    children: list[list[np.ndarray]] = [[] for _ in outers]
    for _, hole in holes:
        # a point at the centre of the foreground pixel right of the hole's first edge
        dx, dy = np.sign(hole[1] - hole[0])
        px, py = (hole[0] + hole[1]) / 2 + 0.5 * np.array([-dy, dx])
        owners = [i for i, (_, o) in enumerate(outers) if _contains(o, px, py)]
        if owners:
            children[min(owners, key=lambda i: outers[i][0])].append(hole)
    polygons = []
    for (_, outer), kids in zip(outers, children):
        seq = [outer]
        for hole in kids:
            if (hole[0] == outer[0]).all():  # a zero-length bridge would break the rasteriser
                hole = np.roll(hole, -1, axis=0)
            seq += [outer[:1], hole, hole[:1]]
        poly = np.concatenate(seq) + (x0 - 1, y0 - 1)
        polygons.append([int(t) for t in poly.reshape(-1)])
    return polygons


# ----------------------------------------------------------------------------- dataset

def split_paths(out_dir: str | Path, split: str) -> tuple[Path, Path]:
    """(image folder, instances JSON) of one split of a dataset written by `generate`."""
    out_dir = Path(out_dir)
    return out_dir / split, out_dir / "annotations" / f"instances_{split}.json"


def _settings(level: Level) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(level).items()}


def _info(annotation_file: str | Path) -> dict:
    return read_json(Path(annotation_file), what="annotation file").get("info") or {}


def level_of(annotation_file: str | Path) -> str:
    """The level a generated instances file records (files from before levels: the benchmark level)."""
    return str(_info(annotation_file).get("level", BENCHMARK.name))


def generated_at(annotation_file: str | Path, level: Level) -> bool:
    """Whether a generated instances file was drawn at `level` as it is defined now. Files from before the
    settings were recorded match only the benchmark level, which has not changed since."""
    info = _info(annotation_file)
    recorded = info.get("level_settings")
    if recorded is None:
        return info.get("level", BENCHMARK.name) == level.name == BENCHMARK.name
    return recorded == _settings(level)


def generate(out_dir: str | Path, *, num_train: int = 1200, num_val: int = 200, seed: int = 0,
             min_side: int = 192, max_side: int = 352, level: Level = BENCHMARK, progress: bool = True) -> dict:
    """Write out_dir/{train,val}/*.jpg and out_dir/annotations/instances_{train,val}.json."""
    if num_train < 0 or num_val < 0:
        raise UserError(f"num_train and num_val must be >= 0, got {num_train} and {num_val}")
    if not 32 <= min_side <= max_side:
        raise UserError(f"need 32 <= min_side <= max_side, got min_side={min_side} max_side={max_side}")
    out_dir = Path(out_dir)
    categories = [{"id": i, "name": n, "supercategory": "shape"} for i, n in CATEGORIES]
    summary: dict = {"out_dir": str(out_dir), "categories": [n for _, n in CATEGORIES], "level": level.name,
                     "splits": {}}
    bar = progress_bar(total=num_train + num_val, desc="synthetic images", unit="img", disable=not progress)
    for split_index, (split, count) in enumerate([("train", num_train), ("val", num_val)]):
        image_dir, ann_file = split_paths(out_dir, split)
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng([seed, split_index, i])
            w, h = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
            pixels, instances = render(rng, w, h, level)
            image_id = split_index * 1_000_000 + i + 1
            file_name = f"{image_id:012d}.jpg"
            with atomic_path(image_dir / file_name) as tmp:
                Image.fromarray(pixels).save(tmp, format="JPEG", quality=90)
            images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
            for inst in instances:
                if inst.visible_fraction < MIN_VISIBLE_FRACTION:
                    continue
                polygons = mask_to_polygons(inst.visible_mask)
                if not polygons:
                    continue
                ys, xs = np.nonzero(inst.visible_mask)
                x1, y1 = int(xs.min()), int(ys.min())
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": inst.category_id,
                    "bbox": [x1, y1, int(xs.max()) + 1 - x1, int(ys.max()) + 1 - y1],
                    "area": int(inst.visible_mask.sum()), "iscrowd": 0, "segmentation": polygons,
                })
            bar.update(1)
        write_json(ann_file, indent=None, obj={
            "info": {"description": f"siefpn-deploy synthetic shapes, seed {seed}, level {level.name}",
                     "level": level.name, "level_settings": _settings(level)},
            "images": images, "annotations": annotations, "categories": categories,
        })
        summary["splits"][split] = {
            "images": len(images), "annotations": len(annotations),
            "image_dir": str(image_dir), "annotation_file": str(ann_file),
        }
    bar.close()
    return summary
