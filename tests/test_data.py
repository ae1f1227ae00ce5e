"""Data layer: synthetic generator, COCO loader (incl. every bad-input error) and training transforms."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from siefpn_deploy.cli import main
from siefpn_deploy.core.errors import UserError
from siefpn_deploy.data import (
    CocoDetection,
    build_train_transforms,
    collate,
    generate_synthetic,
)
from siefpn_deploy.data.image import as_float
from siefpn_deploy.data.synth import BENCHMARK, EASY, generated_at, level_of, mask_to_polygons, render
from siefpn_deploy.data.transforms import RandomHorizontalFlip, ResizeShortestEdge
from siefpn_deploy.pipeline import DatasetOptions, synthetic_dataset

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
TINY = {"num_train": 8, "num_val": 4, "min_side": 96, "max_side": 160, "progress": False}


# ----------------------------------------------------------------------------- helpers

def write_image(path: Path, w: int, h: int, mode: str = "RGB", exif_orientation: int | None = None) -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)
    if exif_orientation is None:
        img.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(path, exif=exif)


def make_dataset(tmp_path: Path, *, images=None, annotations=None, categories=None, **kw) -> Path:
    """A tiny COCO JSON; images are written unless their entry has "_skip"."""
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    if images is None:
        images = [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}]
    for im in images:
        if not im.pop("_skip", False):
            write_image(img_dir / im["file_name"], im["width"], im["height"])
    if categories is None:
        categories = [{"id": 7, "name": "seven"}, {"id": 2, "name": "two"}, {"id": 90, "name": "ninety"}]
    data = {"images": images, "annotations": annotations or [], "categories": categories, **kw}
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(data))
    return ann_file


def ann(aid: int, image_id: int, cat: int, bbox, iscrowd: int = 0, seg=None) -> dict:
    x, y, w, h = bbox
    return {"id": aid, "image_id": image_id, "category_id": cat, "bbox": list(bbox), "area": w * h,
            "iscrowd": iscrowd, "segmentation": seg if seg is not None else [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def load(tmp_path: Path, ann_file: Path, **kw) -> CocoDetection:
    return CocoDetection(image_dir=tmp_path / "images", annotation_file=ann_file, **kw)


def assert_user_error(excinfo, *names: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for n in names:
        assert n in msg, (n, msg)


def bbox_of(mask: torch.Tensor) -> list[int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


# ----------------------------------------------------------------------------- synthetic data

@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_synthetic(out, **TINY)
    return out


def test_synth_is_deterministic(tiny_synth, tmp_path):
    again = generate_synthetic(tmp_path / "again", **TINY)
    other = tmp_path / "other"
    generate_synthetic(other, **{**TINY, "seed": 1})
    for rel in ["annotations/instances_train.json", "annotations/instances_val.json",
                "train/000000000001.jpg", "val/000001000003.jpg"]:
        assert (tiny_synth / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    assert (tiny_synth / "train/000000000001.jpg").read_bytes() != (other / "train/000000000001.jpg").read_bytes()
    assert (tiny_synth / "annotations/instances_train.json").read_text() != \
        (other / "annotations/instances_train.json").read_text()
    assert again["splits"]["train"]["images"] == 8 and again["splits"]["val"]["images"] == 4


def test_synth_format_and_polygons(tiny_synth):
    for split in ("train", "val"):
        data = json.loads((tiny_synth / f"annotations/instances_{split}.json").read_text())
        ids = sorted(c["id"] for c in data["categories"])
        assert len(ids) >= 6 and ids != list(range(1, len(ids) + 1))
        images = {im["id"]: im for im in data["images"]}
        for im in images.values():
            assert 96 <= im["width"] <= 160 and 96 <= im["height"] <= 160
            with Image.open(tiny_synth / split / im["file_name"]) as img:
                assert img.size == (im["width"], im["height"])
        coco = COCO(tiny_synth / f"annotations/instances_{split}.json")
        for a in data["annotations"]:
            im = images[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert a["iscrowd"] == 0 and w >= 1 and h >= 1
            assert 0 <= x and 0 <= y and x + w <= im["width"] and y + h <= im["height"]
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])
            m = coco.annToMask(a).astype(bool)
            assert abs(int(m.sum()) - a["area"]) <= 0.1 * a["area"] + 2
            ys, xs = np.nonzero(m)
            assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == a["bbox"]


def test_polygons_round_trip_visible_masks():
    """Trace the visible masks straight from the renderer, rasterise the polygons back with pycocotools."""
    coco, ious, occluded = COCO(), [], 0
    for i in range(30):
        _, instances = render(np.random.default_rng([5, 0, i]), 200, 150)
        for inst in instances:
            occluded += int(0 < inst.visible_mask.sum() < inst.full_mask.sum())
            if inst.visible_mask.sum() < 100:
                continue
            polys = mask_to_polygons(inst.visible_mask)
            coco.imgs[1] = {"id": 1, "height": 150, "width": 200}
            m = coco.annToMask({"image_id": 1, "segmentation": polys}).astype(bool)
            ious.append((m & inst.visible_mask).sum() / (m | inst.visible_mask).sum())
    assert len(ious) > 20 and min(ious) >= 0.85
    assert occluded > 0


def test_polygons_handle_holes_and_diagonal_touches():
    rng = np.random.default_rng(0)
    masks = [rng.random((9, 11)) < 0.5 for _ in range(50)]
    ring = np.zeros((12, 12), bool)
    ring[2:10, 2:10] = True
    ring[4:7, 4:7] = False
    coco = COCO()
    for m in masks + [ring]:
        coco.imgs[1] = {"id": 1, "height": m.shape[0], "width": m.shape[1]}
        polys = mask_to_polygons(m)
        assert all(len(p) >= 6 for p in polys)
        assert (coco.annToMask({"image_id": 1, "segmentation": polys}).astype(bool) == m).all()


def test_synth_object_sizes_span_coco_ranges(tmp_path):
    generate_synthetic(tmp_path, num_train=40, num_val=0, progress=False)
    areas = [a["area"] for a in json.loads((tmp_path / "annotations/instances_train.json").read_text())["annotations"]]
    assert min(areas) < 32 ** 2 and max(areas) > 96 ** 2
    assert any(32 ** 2 <= a <= 96 ** 2 for a in areas)


def test_the_easy_level_has_fewer_calmer_mid_sized_objects(tmp_path):
    """`data synth --level easy` (the demo's): at most 4 objects an image, none wider than 0.35 of the short side,
    recorded in the file; the benchmark level (the default) keeps its up-to-8 objects and its large ones."""
    easy, bench = tmp_path / "easy", tmp_path / "bench"
    assert main(["data", "synth", "--level", "easy", "--output", str(easy), "--num-train", "40", "--num-val", "0"]) == 0
    generate_synthetic(bench, num_train=40, num_val=0, progress=False)
    per_image = {}
    for root in (easy, bench):
        data = json.loads((root / "annotations/instances_train.json").read_text())
        size = {im["id"]: min(im["width"], im["height"]) for im in data["images"]}
        counts = np.bincount([a["image_id"] - 1 for a in data["annotations"]], minlength=len(size))
        largest = max(max(a["bbox"][2], a["bbox"][3]) / size[a["image_id"]] for a in data["annotations"])
        per_image[root.name] = (counts.max(), largest, level_of(root / "annotations/instances_train.json"))
    assert per_image["easy"][0] <= 4 and per_image["easy"][1] <= 0.36 and per_image["easy"][2] == "easy"
    assert per_image["bench"][0] > 4 and per_image["bench"][1] > 0.36 and per_image["bench"][2] == "benchmark"
    # the file records the level's settings: data drawn at an earlier easy level is told apart, and the demo
    # refuses it in one line instead of training on it or overwriting it
    train_file = easy / "annotations/instances_train.json"
    assert generated_at(train_file, EASY) and not generated_at(train_file, BENCHMARK)
    data = json.loads(train_file.read_text())
    data["info"]["level_settings"]["min_object_size"] = 16.0
    (easy / "annotations/instances_val.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=f"{easy}.*--regenerate"):
        synthetic_dataset(DatasetOptions(root=easy, level="easy"))
    del data["info"]["level_settings"]  # a file from before the settings were recorded
    (easy / "annotations/instances_val.json").write_text(json.dumps(data))
    assert not generated_at(easy / "annotations/instances_val.json", EASY)


def test_synth_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="min_side"):
        generate_synthetic(tmp_path, min_side=300, max_side=200, progress=False)


# ----------------------------------------------------------------------------- loader

def test_loader_on_synthetic_data(tiny_synth):
    ds = CocoDetection(image_dir=tiny_synth / "train", annotation_file=tiny_synth / "annotations/instances_train.json",
                       with_masks=True)
    assert len(ds) == 8 and ds.num_classes == 6 and ds.class_names[0] == "circle"
    image, target = ds[0]
    h, w = image.shape[1:]
    assert image.dtype == torch.float32 and image.shape[0] == 3 and 0 <= image.min() and image.max() <= 1
    assert target["orig_size"].tolist() == [h, w]
    assert target["masks"].shape == (len(target["labels"]), h, w) and target["masks"].dtype == torch.uint8
    images, targets = collate([ds[0], ds[1]])
    assert isinstance(images, list) and len(images) == 2 and len(targets) == 2


def test_noncontiguous_ids_crowd_and_degenerate(tmp_path):
    images = [{"id": 5, "file_name": "a.jpg", "width": 40, "height": 30},
              {"id": 3, "file_name": "b.jpg", "width": 20, "height": 20}]
    anns = [ann(1, 5, 90, [1, 2, 10, 5]), ann(2, 5, 2, [0, 0, 40, 30]), ann(3, 5, 7, [5, 5, 8, 8], iscrowd=1),
            ann(4, 5, 7, [5, 5, 0.5, 8]), ann(5, 5, 7, [20, 10, 6, 4])]
    ds = load(tmp_path, make_dataset(tmp_path, images=images, annotations=anns), with_masks=True)
    assert ds.image_ids == [3, 5] and ds.category_ids == [2, 7, 90]
    assert ds.class_names == ["two", "seven", "ninety"] and ds.num_classes == 3
    image, t = ds[1]
    assert t["image_id"].item() == 5 and t["image_id"].dim() == 0
    assert t["labels"].tolist() == [3, 1, 2]  # crowd and degenerate annotations dropped
    assert t["boxes"].tolist() == [[1, 2, 11, 7], [0, 0, 40, 30], [20, 10, 26, 14]]
    assert ds.label_to_category_id(t["labels"]) == [90, 2, 7]
    assert ds.label_to_category_id([1, 2, 3]) == [2, 7, 90]
    assert t["masks"].shape == (3, 30, 40)
    assert bbox_of(t["masks"][0]) == [1, 2, 11, 7]
    # an image without annotations
    image, t = ds[0]
    assert image.shape == (3, 20, 20)
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["masks"].shape == (0, 20, 20)
    assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA"])
def test_image_modes_become_rgb(tmp_path, mode):
    images = [{"id": 1, "file_name": "a.png", "width": 12, "height": 9, "_skip": True}]
    ann_file = make_dataset(tmp_path, images=images)
    write_image(tmp_path / "images/a.png", 12, 9, mode=mode)
    image, _t = load(tmp_path, ann_file)[0]
    assert image.shape == (3, 9, 12)


def test_exif_orientation_is_applied(tmp_path):
    # stored 40x30, orientation 6 (rotate 90 on display): the displayed image, and the JSON, are 30x40
    images = [{"id": 1, "file_name": "r.jpg", "width": 30, "height": 40, "_skip": True}]
    ann_file = make_dataset(tmp_path, images=images, annotations=[ann(1, 1, 2, [2, 3, 10, 20])])
    write_image(tmp_path / "images/r.jpg", 40, 30, exif_orientation=6)
    image, t = load(tmp_path, ann_file, with_masks=True)[0]
    assert image.shape == (3, 40, 30) and t["orig_size"].tolist() == [40, 30]
    assert t["masks"].shape == (1, 40, 30)


# ----------------------------------------------------------------------------- bad input

def test_missing_or_malformed_annotation_file(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(UserError) as e:
        load(tmp_path, tmp_path / "nope.json")
    assert_user_error(e, "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError) as e:
        load(tmp_path, bad)
    assert_user_error(e, "bad.json")


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_key(tmp_path, key):
    ann_file = make_dataset(tmp_path)
    data = json.loads(ann_file.read_text())
    del data[key]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(UserError) as e:
        load(tmp_path, ann_file)
    assert_user_error(e, "ann.json", key)


def test_unknown_category_and_image(tmp_path):
    with pytest.raises(UserError) as e:
        load(tmp_path, make_dataset(tmp_path, annotations=[ann(41, 1, 3, [0, 0, 5, 5])]))
    assert_user_error(e, "ann.json", "41", "category_id")
    with pytest.raises(UserError) as e:
        load(tmp_path, make_dataset(tmp_path, annotations=[ann(42, 99, 2, [0, 0, 5, 5])]))
    assert_user_error(e, "ann.json", "42", "image_id")


def test_empty_dataset(tmp_path):
    with pytest.raises(UserError) as e:
        load(tmp_path, make_dataset(tmp_path, images=[]))
    assert_user_error(e, "ann.json", "no images")


def test_missing_image_dir_and_files(tmp_path):
    ann_file = make_dataset(tmp_path)
    with pytest.raises(UserError) as e:
        CocoDetection(image_dir=tmp_path / "elsewhere", annotation_file=ann_file)
    assert_user_error(e, "elsewhere")
    images = [{"id": i, "file_name": f"m{i}.jpg", "width": 8, "height": 8, "_skip": i > 1} for i in range(1, 4)]
    with pytest.raises(UserError) as e:
        load(tmp_path, make_dataset(tmp_path, images=images))
    assert_user_error(e, "m2.jpg", "2 of 3")


def test_corrupt_image(tmp_path):
    images = [{"id": 1, "file_name": "broken.jpg", "width": 8, "height": 8, "_skip": True}]
    ann_file = make_dataset(tmp_path, images=images)
    (tmp_path / "images/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg\n\nat all")
    ds = load(tmp_path, ann_file)
    with pytest.raises(UserError) as e:
        ds[0]
    assert_user_error(e, "broken.jpg")


def test_only_the_allowed_decoders_run(tmp_path, monkeypatch):
    """JPEG, PNG, WebP and BMP decode; anything else is refused by its content, whatever its name: an EPS file
    never reaches Pillow's EPS plugin (which would run Ghostscript on it), and TIFF is not decoded either."""
    from PIL import EpsImagePlugin

    from siefpn_deploy.data.image import DECODERS, decode_image, load_image

    for fmt in ("JPEG", "PNG", "WEBP", "BMP"):
        buffer = io.BytesIO()
        Image.new("RGB", (7, 5), (10, 200, 30)).save(buffer, format=fmt)
        assert decode_image(buffer.getvalue(), name=fmt).size == (7, 5)
    assert DECODERS == ("JPEG", "PNG", "WEBP", "BMP")

    def ghostscript(*args, **kwargs):
        raise AssertionError("the EPS decoder ran")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
           b"newpath 0 0 moveto 8 8 lineto stroke showpage\n%%EOF\n")
    tiff = io.BytesIO()
    Image.new("RGB", (4, 4)).save(tiff, format="TIFF")
    for name, data in (("upload.jpg", eps), ("a.eps", eps), ("scan.png", tiff.getvalue())):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError) as e:
            load_image(tmp_path / name)
        assert_user_error(e, name, "not a JPEG, PNG, WEBP, BMP image")
        with pytest.raises(UserError) as e:
            decode_image(data, name=name)
        assert_user_error(e, name, "not a JPEG, PNG, WEBP, BMP image")


@pytest.mark.parametrize("size", [(400, 1), (1, 400), (3000, 2)])
def test_a_side_that_would_resize_to_nothing_is_one_line(size):
    """A 400x1 strip resized to fit 128..160 px would be 160x0: refused in one line, not an interpolation
    error from deep inside the model."""
    from siefpn_deploy.core.contract import PreprocessSpec
    from siefpn_deploy.data.preprocess import Preprocess

    spec = PreprocessSpec(min_size=128, max_size=160, divisibility=32, pixel_mean=(1.0, 2.0, 3.0),
                          pixel_std=(1.0, 1.0, 1.0))
    w, h = size
    with pytest.raises(UserError, match=rf"^an image of {w}x{h} pixels is too thin for this model: resized to fit "
                                        r"128..160 px it would be \d+x\d+$"):
        Preprocess(spec)([torch.zeros(3, h, w), torch.zeros(3, 128, 160)])
    assert Preprocess(spec)([torch.zeros(3, 3, 400)]).resized_hw == [(1, 160)]  # 3 px tall keeps a row


def test_uint8_images_stay_uint8_until_resized_and_give_the_same_canvas_as_float(tmp_path):
    """Images stay uint8 (a quarter of float32's memory at full size) until `Preprocess` resizes each one:
    the canvas equals, bit for bit, the one made from images converted to float first."""
    from siefpn_deploy.core.contract import PreprocessSpec
    from siefpn_deploy.data.image import to_pixels, to_tensor
    from siefpn_deploy.data.preprocess import Preprocess

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((300, 500), (97, 61))]
    path = tmp_path / "a.png"
    Image.fromarray(arrays[0]).save(path)
    pixels = [to_pixels(arrays[0], "BGR"), to_pixels(arrays[1]), to_pixels(path), to_pixels(torch.from_numpy(arrays[1]).permute(2, 0, 1))]
    assert all(p.dtype == torch.uint8 for p in pixels)
    floats = [to_tensor(arrays[0], "BGR"), to_tensor(arrays[1]), to_tensor(path), arrays[1].transpose(2, 0, 1) / 255.0]
    assert floats[0].dtype == torch.float32
    spec = PreprocessSpec(min_size=128, max_size=160, divisibility=32, pixel_mean=(1.0, 2.0, 3.0),
                          pixel_std=(1.0, 1.0, 1.0), input_scale=255.0)
    a = Preprocess(spec)(pixels)
    b = Preprocess(spec)([f if isinstance(f, torch.Tensor) else torch.from_numpy(f).float() for f in floats])
    assert torch.equal(a.images, b.images) and a.resized_hw == b.resized_hw and a.original_hw == b.original_hw


@pytest.mark.parametrize("size", [(160, 128), (128, 130), (128, 128)])
def test_an_image_already_at_its_resized_size_is_not_interpolated_and_gets_the_same_pixels(size, monkeypatch):
    """An image whose resize keeps its size (a camera at the model's size, bench's scenes) skips interpolate,
    and the canvas equals, bit for bit, the one interpolate gives; an image that does change size still goes
    through it."""
    from siefpn_deploy.core.contract import PreprocessSpec
    from siefpn_deploy.data import preprocess

    spec = PreprocessSpec(min_size=128, max_size=160, divisibility=32, pixel_mean=(1.0, 2.0, 3.0),
                          pixel_std=(1.0, 1.0, 1.0), input_scale=255.0)
    w, h = size
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, h, w), dtype=np.uint8))
    skipped = preprocess.Preprocess(spec)([image])
    calls = []
    interpolate = preprocess.F.interpolate
    monkeypatch.setattr(preprocess.F, "interpolate", lambda *a, **k: calls.append(k) or interpolate(*a, **k))
    assert preprocess.Preprocess(spec)([image]).resized_hw == skipped.resized_hw and calls == []
    forced = interpolate(as_float(image)[None], scale_factor=1.0, mode="bilinear", recompute_scale_factor=True,
                         align_corners=False)[0]
    assert skipped.resized_hw == [(h, w)] and torch.equal(skipped.images[0, :, :h, :w], forced * 255.0)
    preprocess.Preprocess(spec)([torch.zeros(3, 64, 80, dtype=torch.uint8)])  # resized to 128x160
    assert len(calls) == 1


def test_size_mismatch_with_json(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8, "_skip": True}]
    ann_file = make_dataset(tmp_path, images=images)
    write_image(tmp_path / "images/a.jpg", 10, 8)
    with pytest.raises(UserError) as e:
        load(tmp_path, ann_file)[0]
    assert_user_error(e, "a.jpg", "ann.json")


# ----------------------------------------------------------------------------- transforms

def _sample(h: int = 30, w: int = 40) -> tuple[torch.Tensor, dict]:
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 2:7, 1:11] = 1
    masks[1, 10:30, 25:40] = 1
    boxes = torch.tensor([[1, 2, 11, 7], [25, 10, 40, 30]], dtype=torch.float32)
    return torch.rand(3, h, w), {"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks}


def test_flip_maps_boxes_and_masks_consistently():
    image, target = _sample()
    out_image, out = RandomHorizontalFlip(prob=1.0)(image, target, torch.Generator())
    assert torch.equal(out_image, image.flip(-1))
    assert out["boxes"].tolist() == [[29, 2, 39, 7], [0, 10, 15, 30]]
    for m, b in zip(out["masks"], out["boxes"]):
        assert bbox_of(m) == [int(v) for v in b.tolist()]
    same_image, same = RandomHorizontalFlip(prob=0.0)(image, target, torch.Generator())
    assert same_image is image and torch.equal(same["boxes"], target["boxes"])


def test_resize_shortest_edge_and_max_size():
    image, target = _sample()
    out_image, out = ResizeShortestEdge(short_edge_lengths=[60], max_size=1000)(image, target, torch.Generator())
    assert out_image.shape == (3, 60, 80)
    assert torch.allclose(out["boxes"], target["boxes"] * 2)
    assert out["masks"].shape == (2, 60, 80) and out["masks"].dtype == torch.uint8
    assert bbox_of(out["masks"][0]) == [2, 4, 22, 14]
    # the long edge would reach 120 > 100: scale to the max size instead
    out_image, out = ResizeShortestEdge(short_edge_lengths=[90], max_size=100)(image, target, torch.Generator())
    assert out_image.shape == (3, 75, 100)
    assert torch.allclose(out["boxes"], target["boxes"] * 2.5)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 30, 40, dtype=torch.uint8)}
    _, out = ResizeShortestEdge(short_edge_lengths=[60], max_size=1000)(image, empty, torch.Generator())
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 60, 80)


def test_train_transforms_follow_their_generator_not_the_global_rng():
    tf = build_train_transforms(min_sizes=[20, 40, 60], max_size=90, flip_prob=0.5)
    image, target = _sample()
    shapes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        a = tf(image, target, torch.Generator().manual_seed(seed))
        torch.manual_seed(seed + 100)  # the global RNG plays no part
        global_before = torch.get_rng_state()
        b = tf(image, target, torch.Generator().manual_seed(seed))
        assert torch.equal(torch.get_rng_state(), global_before)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
        assert max(a[0].shape[1:]) <= 90
        shapes.add(tuple(a[0].shape))
    assert len(shapes) > 1


def smooth_picture(w: int, h: int) -> Image.Image:
    """A photo-like picture: gradients and a few flat shapes (random noise would not survive any downscale)."""
    from PIL import ImageDraw

    y, x = np.mgrid[0:h, 0:w]
    array = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=2).astype(np.uint8)
    image = Image.fromarray(array)
    draw = ImageDraw.Draw(image)
    for i in range(5):
        draw.ellipse((w * i // 6, h // 4, w * i // 6 + w // 8, h // 2), fill=(40 * i, 250 - 40 * i, 128))
    return image


def test_a_jpeg_is_decoded_at_the_smallest_scale_that_still_covers_its_resize():
    """decode_reduced: libjpeg's 1/2, 1/4, 1/8 DCT scaling, the largest reduction whose image is still at least
    the size the model resizes to; the original size comes back beside it (after the EXIF rotation)."""
    from siefpn_deploy.data.image import decode_image, decode_reduced

    picture = smooth_picture(2000, 1500)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=92)
    data = buffer.getvalue()
    full = decode_image(data)
    reduced, original = decode_reduced(data, resized_to=lambda h, w: (h // 4, w // 4))
    assert reduced.size == (500, 375) and original == (1500, 2000)
    # libjpeg's reduced decode is close to the full decode shrunk by averaging each 4x4 block
    block = np.asarray(full.resize((500, 375), Image.BOX), dtype=np.float32)
    assert np.abs(np.asarray(reduced, dtype=np.float32) - block).mean() < 2.0
    # one pixel more than a quarter: only a half is at least that big
    assert decode_reduced(data, resized_to=lambda h, w: (h // 4 + 1, w // 4))[0].size == (1000, 750)
    assert decode_reduced(data, resized_to=lambda h, w: (h // 100, w // 100))[0].size == (250, 188)  # 1/8 at most
    assert decode_reduced(data, resized_to=lambda h, w: None)[0].size == (2000, 1500)  # no target: full size
    # a quarter turn in EXIF: the original is the displayed (rotated) size; the target is asked of the stored one
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = io.BytesIO()
    picture.save(rotated, format="JPEG", quality=92, exif=exif)
    asked = []
    reduced, original = decode_reduced(rotated.getvalue(), resized_to=lambda h, w: asked.append((h, w)) or (h // 4, w // 4))
    assert asked == [(1500, 2000)] and reduced.size == (375, 500) and original == (2000, 1500)
    # formats without reduced decoding come whole, and the pixel cap still comes first
    png = io.BytesIO()
    picture.save(png, format="PNG")
    assert decode_reduced(png.getvalue(), resized_to=lambda h, w: (h // 4, w // 4))[0].size == (2000, 1500)
    with pytest.raises(UserError, match="more than the 2999999 pixels"):
        decode_reduced(data, max_pixels=2999999, resized_to=lambda h, w: (h // 4, w // 4))
