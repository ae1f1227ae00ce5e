"""Importing detectron2 / official Dual SIE-FPN checkpoints (`siefpn-deploy convert`).

The checkpoints are generated from the documented key structure (tests/detectron2_layout.py), never from
this project's own model, and the numerical checks do not rely on the conversion being right: anchors are
computed by hand from detectron2's formulas, RoIAlignV2 is checked against torchvision (test_roi_align.py),
and the class layout by a checkpoint in which one class's weights are distinctive.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2_layout import (
    ARCHS,
    detectron2_state_dict,
    documented_element_count,
    element_count,
    key_count,
    save_detectron2_pkl,
    save_detectron2_pth,
)

from siefpn_deploy.cli import main
from siefpn_deploy.convert.detectron2 import read_classes
from siefpn_deploy.core.config import load_config
from siefpn_deploy.core.errors import UserError
from siefpn_deploy.model.anchors import AnchorGenerator, cell_anchors
from siefpn_deploy.model.checkpoint import load_checkpoint
from siefpn_deploy.model.detectors import build_detector
from siefpn_deploy.runtime.detector import Detector

COCO_IDS = read_classes(None)["category_ids"]


@pytest.fixture(scope="module")
def d2(tmp_path_factory) -> dict[str, Path]:
    """One seeded detectron2-layout R50 checkpoint per detector (K = 80), as detectron2 training writes it."""
    root = tmp_path_factory.mktemp("d2")
    files = {}
    for arch in ARCHS:
        files[arch] = root / f"{arch}_model_final.pth"
        save_detectron2_pth(detectron2_state_dict(arch, seed=0), files[arch], style="trainer")
    return files


def convert(capsys, source: Path, config: str, output: Path, *extra: str) -> tuple[int, str]:
    code = main(["convert", "--from", "detectron2", str(source), "--config-file", config, "--output", str(output),
                 *extra])
    return code, capsys.readouterr().err.strip()


def refused(capsys, source: Path, config: str, output: Path, *extra: str) -> str:
    code, err = convert(capsys, source, config, output, *extra)
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not output.exists() and not list(output.parent.glob(f".{output.name}.*"))  # nothing half-written
    return err


@pytest.mark.parametrize("depth", [50, 101])
def test_generated_checkpoints_follow_the_documented_structure(depth):
    for arch in ARCHS:
        state = detectron2_state_dict(arch, depth=depth, seed=0)
        assert len(state) == key_count(arch, depth)
        assert element_count(state) == documented_element_count(arch, depth)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_key_maps_and_pkl_equals_pth(arch, d2, tmp_path, capsys):
    code, err = convert(capsys, d2[arch], f"{arch}_R50_1x", tmp_path / "from_pth.pth")
    assert code == 0, err
    pkl = tmp_path / "model.pkl"
    save_detectron2_pkl(detectron2_state_dict(arch, seed=0), pkl)
    assert convert(capsys, pkl, f"{arch}_R50_1x", tmp_path / "from_pkl.pth")[0] == 0
    a, b = load_checkpoint(tmp_path / "from_pth.pth"), load_checkpoint(tmp_path / "from_pkl.pth")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["classes"]["category_ids"] == COCO_IDS and len(a["classes"]["names"]) == 80
    cfg = load_config(f"{arch}_R50_1x")
    model = build_detector(cfg, num_classes=80)
    assert a["model"].keys() == model.state_dict().keys()  # the converted file loads strictly
    body = model.backbone.body
    assert body.layer3[0].conv1.stride == (2, 2) and body.layer3[0].conv2.stride == (1, 1)  # MSRA: stride in 1x1
    assert cfg.INPUT.FORMAT == "BGR" and cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]


def test_every_container_style_reads_alike(d2, tmp_path, capsys):
    state = detectron2_state_dict("retinanet", seed=0)
    reference = load_checkpoint(convert_ok(capsys, d2["retinanet"], tmp_path / "trainer.pth"))["model"]
    for style in ("best", "bare"):
        source = tmp_path / f"{style}_src.pth"
        save_detectron2_pth(state, source, style=style)
        got = load_checkpoint(convert_ok(capsys, source, tmp_path / f"{style}.pth"))["model"]
        assert all(torch.equal(got[k], reference[k]) for k in reference)
    ddp = tmp_path / "ddp_src.pth"  # a module. prefix (DataParallel) is stripped, as fvcore does
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, ddp)
    got = load_checkpoint(convert_ok(capsys, ddp, tmp_path / "ddp.pth"))["model"]
    assert all(torch.equal(got[k], reference[k]) for k in reference)


def convert_ok(capsys, source: Path, output: Path, config: str = "retinanet_R50_1x") -> Path:
    code, err = convert(capsys, source, config, output)
    assert code == 0, err
    return output


class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pkl_is_refused_without_running(tmp_path, capsys):
    marker = tmp_path / "it_ran"
    source = tmp_path / "model_final.pkl"
    with source.open("wb") as f:
        pickle.dump({"model": {"backbone.fpn_output5.weight": np.zeros(3), "x": _RunsCommand(marker)},
                     "__author__": "evil"}, f)
    err = refused(capsys, source, "retinanet_R50_1x", tmp_path / "out.pth")
    assert "asks for posix.system" in err and "only numpy arrays are allowed" in err
    assert not marker.exists()


def test_a_pkl_entry_of_dtype_object_is_one_line_naming_the_file_and_key(tmp_path, capsys):
    """The restricted unpickler lets an object array through (its items are plain str/None); torch cannot hold
    one, and that must be one line, not torch's TypeError."""
    source = tmp_path / "model_final.pkl"
    with source.open("wb") as f:
        pickle.dump({"model": {"backbone.fpn_output5.weight": np.zeros(3, np.float32),
                               "backbone.names": np.array(["res2", None, 3], dtype=object)}, "__author__": "x"}, f)
    err = refused(capsys, source, "retinanet_R50_1x", tmp_path / "out.pth")
    assert str(source) in err and "'backbone.names'" in err and "dtype object" in err


def test_bad_checkpoints_get_one_line_errors_and_leave_nothing(d2, tmp_path, capsys):
    out = tmp_path / "out" / "model.pth"
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(d2["retinanet"].read_bytes()[:100_000])
    assert "cannot load detectron2 checkpoint" in refused(capsys, truncated, "retinanet_R50_1x", out)
    truncated_pkl = tmp_path / "truncated.pkl"
    save_detectron2_pkl({"a": torch.zeros(1000)}, truncated_pkl)
    truncated_pkl.write_bytes(truncated_pkl.read_bytes()[:500])
    assert "refused detectron2 checkpoint" in refused(capsys, truncated_pkl, "retinanet_R50_1x", out)
    err = refused(capsys, d2["retinanet"], "faster_rcnn_R50_1x", out)  # the wrong architecture
    assert "MODEL.META_ARCHITECTURE is faster_rcnn, the checkpoint is a retinanet" in err
    err = refused(capsys, d2["retinanet"], "retinanet_R101_1x", out)  # the wrong depth
    assert "MODEL.BACKBONE is resnet101, the checkpoint's ResNet is resnet50" in err
    err = refused(capsys, d2["retinanet"], "retinanet_R50_1x", out, "--classes", str(classes_file(tmp_path, 3)))
    assert "the classes list has 3 classes, the checkpoint has 80" in err

    state = detectron2_state_dict("faster_rcnn", seed=0)
    extra = tmp_path / "extra.pth"
    save_detectron2_pth({**state, "roi_heads.box_head.fc3.weight": torch.zeros(4, 4)}, extra)
    err = refused(capsys, extra, "faster_rcnn_R50_1x", out)
    assert "1 unmapped keys (roi_heads.box_head.fc3.weight)" in err
    missing = tmp_path / "missing.pth"
    save_detectron2_pth({k: v for k, v in state.items() if not k.startswith("backbone.rfe_block.1.bn2.")}, missing)
    err = refused(capsys, missing, "faster_rcnn_R50_1x", out)
    assert "5 model keys with no source (backbone.neck.mic.2.refine.0.1.weight" in err
    older = tmp_path / "fefpn.pth"  # an earlier code state's INFBlock, refused by name
    save_detectron2_pth({**state, "backbone.inf_block.w1": torch.ones(1)}, older)
    assert "has backbone.inf_block keys" in refused(capsys, older, "faster_rcnn_R50_1x", out)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def classes_file(root: Path, count: int) -> Path:
    path = root / "instances.json"
    cats = [{"id": 10 + 7 * i, "name": f"class{i}"} for i in range(count)]
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": cats[::-1]}))
    return path


def test_anchors_are_detectron2s_by_hand():
    """detectron2: w = size / sqrt(ratio), h = size * sqrt(ratio), unrounded, size-major; fixed strides."""
    sizes = [32 * 2 ** (i / 3) for i in range(3)]  # RetinaNet's P3 sizes: 32, 40.3175, 50.7968
    cells = cell_anchors(sizes, [0.5, 1.0, 2.0])
    assert cells.shape == (9, 4)
    # a = size_index * 3 + ratio_index; size 32, ratio 0.5: 22.627 x 11.314 half-sizes... w = 45.2548, h = 22.6274
    assert torch.allclose(cells[0], torch.tensor([-22.627417, -11.313708, 22.627417, 11.313708]))
    assert torch.allclose(cells[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    assert torch.allclose(cells[4], torch.tensor([-20.158737, -20.158737, 20.158737, 20.158737]))  # size 40.3175
    gen = AnchorGenerator(sizes=[[32.0], [512.0]], aspect_ratios=[1.0], strides=[8, 128])
    # a P7 of an 800 x 1216 input has 7 x 10 cells; torchvision would derive stride 800 // 7 = 114, detectron2 128
    grid = gen.grid(1, torch.zeros(1, 1, 7, 10))
    assert grid.shape == (70, 4)
    x, y = 3, 2  # location (x=3, y=2) is row-major index 2*10+3
    assert torch.equal(grid[2 * 10 + 3], torch.tensor([x * 128 - 256.0, y * 128 - 256.0, x * 128 + 256.0,
                                                         y * 128 + 256.0]))


def _distinctive(arch: str, d2_class: int) -> dict[str, torch.Tensor]:
    """A checkpoint whose classifier favours one contiguous detectron2 class everywhere."""
    state = detectron2_state_dict(arch, seed=1)
    if arch == "retinanet":
        w, b = state["head.cls_score.weight"], state["head.cls_score.bias"]
        w.zero_()
        b.fill_(-10.0)
        b.view(9, 80)[:, d2_class] = 3.0  # channel a*K + k
    else:
        w, b = state["roi_heads.box_predictor.cls_score.weight"], state["roi_heads.box_predictor.cls_score.bias"]
        w.zero_()
        b.fill_(0.0)
        b[d2_class] = 8.0  # background is the last row (index 80) and stays at 0
    return state


@pytest.mark.parametrize("arch", ["retinanet", "faster_rcnn"])
def test_the_class_layout_gives_the_right_coco_category(arch, tmp_path, capsys):
    d2_class = 57  # contiguous index 57 is COCO "couch", category id 63
    source = tmp_path / "distinctive.pth"
    save_detectron2_pth(_distinctive(arch, d2_class), source)
    output = convert_ok(capsys, source, tmp_path / "converted.pth", f"{arch}_R50_1x")
    detector = Detector.from_path(output)
    image = (np.random.default_rng(0).random((128, 160, 3)) * 255).astype(np.uint8)
    found = detector.at_size(128, 160).predict(image, color="BGR")
    assert len(found) > 0
    assert COCO_IDS[d2_class] == 63
    assert set(found.category_ids) == {63} and set(found.class_names) == {"couch"}
    if arch == "retinanet":  # the logit is exactly the bias: no other class, and no class-0 channel, comes near
        assert math.isclose(float(found.scores.max()), 1 / (1 + math.exp(-3.0)), rel_tol=1e-5)
    else:  # softmax of bias 8 against 80 zeros
        assert math.isclose(float(found.scores.max()), math.exp(8) / (math.exp(8) + 80), rel_tol=1e-5)


def _caffe2_name(d2_name: str) -> str:
    """detectron2 bottom_up name -> Caffe2 blob name, written out from Caffe2's ResNet naming."""
    if d2_name == "stem.conv1.weight":
        return "conv1_w"
    if d2_name.startswith("stem.conv1.norm."):
        return {"weight": "res_conv1_bn_s", "bias": "res_conv1_bn_b"}[d2_name.rsplit(".", 1)[1]]
    stage, block, conv, *rest = d2_name.split(".")
    branch = {"shortcut": "branch1", "conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c"}[conv]
    suffix = {"weight": "_bn_s", "bias": "_bn_b"}[rest[1]] if rest[0] == "norm" else "_w"
    return f"{stage}_{block}_{branch}{suffix}"


def test_msra_imagenet_pkl_initialises_the_backbone(tmp_path):
    """detectron2's ImageNet R-50.pkl layout (Caffe2 names, BN folded to scale/bias, momentum blobs, the
    classifier) through the numpy-only unpickler gives the backbone the converter would give it."""
    state = detectron2_state_dict("retinanet", seed=4)
    blobs = {}
    for name, tensor in state.items():
        if not name.startswith("backbone.bottom_up.") or "running_" in name:
            continue
        blobs[_caffe2_name(name.removeprefix("backbone.bottom_up."))] = tensor.numpy()
    blobs["conv1_w_momentum"] = np.zeros(1, np.float32)
    blobs["fc1000_w"], blobs["fc1000_b"] = np.zeros((1000, 2048), np.float32), np.zeros(1000, np.float32)
    path = tmp_path / "R-50.pkl"
    with path.open("wb") as f:
        pickle.dump({"blobs": blobs, "__author__": "Caffe2"}, f, protocol=2)
    cfg = load_config("retinanet_R50_1x", ["MODEL.BACKBONE_WEIGHTS", str(path)])
    body = build_detector(cfg, num_classes=80).backbone.body.state_dict()
    assert torch.equal(body["conv1.weight"], state["backbone.bottom_up.stem.conv1.weight"])
    assert torch.equal(body["layer3.5.conv2.weight"], state["backbone.bottom_up.res4.5.conv2.weight"])
    assert torch.equal(body["layer2.0.downsample.1.weight"], state["backbone.bottom_up.res3.0.shortcut.norm.weight"])
    assert torch.equal(body["layer4.2.bn3.bias"], state["backbone.bottom_up.res5.2.conv3.norm.bias"])
    assert torch.equal(body["bn1.running_var"], torch.ones(64)) and not body["layer1.0.bn1.running_mean"].any()
    blobs["res6_0_branch2a_w"] = np.zeros(1, np.float32)
    with path.open("wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    with pytest.raises(UserError, match=r"1 blobs that are not a Caffe2 ResNet's \(e.g. res6_0_branch2a_w\)"):
        build_detector(cfg, num_classes=80)


GOLDEN = Path(__file__).parent / "golden" / "detectron2_official.json"
GOLDEN_SIZES = [(256, 320), (224, 288), (250, 330)]


def golden_image(index: int) -> np.ndarray:
    """HWC BGR uint8, exactly as tests/golden/README.md generated it for the official run."""
    h, w = GOLDEN_SIZES[index]
    rng = np.random.default_rng(1000 + index)
    base = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3)).astype(np.float32)
    img = np.kron(base, np.ones((16, 16, 1), np.float32))[:h, :w]
    img += rng.normal(0, 12, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("arch", ARCHS)
def test_detections_equal_the_official_implementations(arch, d2, tmp_path, capsys):
    """Golden detections of the official code (Chenjunhu-13/Dual-SIE-FPN aba440a, detectron2 0.6, run outside
    this project on the same seeded checkpoint and images: tests/golden/README.md says exactly how) against
    the converted model through the Predictor (the contract's preprocessing at scale 1, the eager model,
    unpadding, clipping, mask pasting). Every official detection must be found with its class (IoU >= 0.99),
    its box within 1e-3 px (relative to max(|coordinate|, 1)), its score within 1e-4 and, for Mask R-CNN, its
    pasted mask's pixel count and extent within 1e-3 of the image.

    Images 0 and 1 have sides that are multiples of 32. Image 2 (250 x 330) is padded to 256 x 352: its
    detections equal the official ones only because proposals and boxes are clipped to the image, not the
    canvas (the contract's image_sizes input; clipping at the canvas changed 17 of Faster R-CNN's 100)."""
    detector = Detector.from_path(convert_ok(capsys, d2[arch], tmp_path / "converted.pth", f"{arch}_R50_1x"))
    assert_official_detections(detector, arch)


@pytest.fixture(scope="module")
def golden_set(tmp_path_factory) -> tuple[Path, Path]:
    """The three golden images as a COCO-format set (lossless PNG; the 80 COCO categories; one box each, since
    parity needs annotations: what the tests below check is agreement, not the AP itself)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("golden_set")
    classes = read_classes(None)
    images, annotations = [], []
    for i, (h, w) in enumerate(GOLDEN_SIZES):
        Image.fromarray(golden_image(i)[..., ::-1].copy()).save(root / f"golden{i}.png")  # BGR -> RGB file
        images.append({"id": i + 1, "file_name": f"golden{i}.png", "height": h, "width": w})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": COCO_IDS[0], "bbox": [10, 10, 50, 60],
                            "area": 3000, "iscrowd": 0, "segmentation": [[10, 10, 60, 10, 60, 70, 10, 70]]})
    categories = [{"id": c, "name": n} for c, n in zip(classes["category_ids"], classes["names"])]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                     "categories": categories}))
    return root, root / "instances.json"


@pytest.fixture(scope="module")
def golden_onnx(d2, golden_set, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """The converted official-layout Mask R-CNN (R50, 256-wide pyramid, K = 80) exported once for the two tests
    below (an R50 export takes one to two minutes here): dynamic batch 1..2 and sides 224..352 (the golden images'
    canvases), verified in ONNX Runtime against PyTorch on two of the golden images at the 224..352 test resize.
    Returns (onnx, converted weights, the config overrides the export used)."""
    root = tmp_path_factory.mktemp("golden_onnx")
    weights = root / "converted.pth"
    assert main(["convert", "--from", "detectron2", str(d2["mask_rcnn"]), "--config-file", "mask_rcnn_R50_1x",
                 "--output", str(weights)]) == 0
    images, annotations = golden_set
    opts = ["INPUT.MIN_SIZE_TEST", "224", "INPUT.MAX_SIZE_TEST", "352",
            "DATASETS.TEST_IMAGES", str(images), "DATASETS.TEST_ANNOTATIONS", str(annotations)]
    onnx = root / "mask_rcnn.onnx"
    assert main(["export", "--config-file", "mask_rcnn_R50_1x", "--output", str(onnx), "--dynamic-batch", "2",
                 "--dynamic-size", "224", "352", "--verify-images", "2", "MODEL.WEIGHTS", str(weights), *opts]) == 0
    return onnx, weights, opts


def test_the_exported_onnx_equals_the_official_implementation(golden_onnx):
    """The same golden check on the exported ONNX graph in ONNX Runtime (the in-graph anchors, RPN, RoIAlign,
    per-image clipping, NMS and mask head). Mask R-CNN runs every step that Faster R-CNN runs, and the masks;
    RetinaNet's graph is checked against the official code by hand (docs/detectron2.md) and against PyTorch by
    export verification."""
    detector = Detector.from_path(golden_onnx[0])
    assert detector.kind == "onnxruntime"
    assert_official_detections(detector, "mask_rcnn")


def test_a_converted_model_goes_through_the_whole_pipeline(golden_onnx, tiny_synth, tmp_path):
    """convert -> export (verified in ONNX Runtime, batch 2) -> FP16 -> parity, on the golden images as a COCO set:
    the R50 backbone and BGR preprocessing that every converted model has. Mask R-CNN's graph runs every step
    Faster R-CNN's runs; RetinaNet's converted head is the module its seeded export checks (test_export.py)."""
    onnx, weights, opts = golden_onnx
    meta = json.loads(onnx.with_suffix(".meta.json").read_text())
    assert meta["verification"]["passed"] and meta["verification"]["matched"] > 0
    assert meta["preprocess"]["color"] == "BGR" and meta["preprocess"]["pixel_mean"] == [103.53, 116.28, 123.675]
    fp16 = tmp_path / "mask_rcnn.fp16.onnx"
    from siefpn_deploy.data.synth import split_paths

    # FP16's range check on two synthetic train images: quantize refuses the evaluation split
    assert main(["quantize", "--onnx", str(onnx), "--precision", "fp16", "--num-calib", "2", "--output", str(fp16),
                 "--calib-data", str(split_paths(tiny_synth, "train")[0]), "--calib-cache", str(tmp_path / "calib")]) == 0
    report = tmp_path / "parity"
    code = main(["parity", "--config-file", "mask_rcnn_R50_1x", "--artifacts", str(onnx), str(fp16),
                 "--report", str(report), "--max-images", "3", "MODEL.WEIGHTS", str(weights), *opts])
    rows = {Path(a["path"]).name: a for a in json.loads((report / "parity.json").read_text())["artifacts"]}
    assert code == 0, rows
    assert rows[onnx.name]["agreement"]["matched_fraction"] == 1.0 and rows[onnx.name]["agreement"]["matched"] > 0
    assert rows[fp16.name]["status"] == "pass"


def assert_official_detections(detector: Detector, arch: str) -> None:
    """Every official detection of the three golden images, found with the tolerances above."""
    from torchvision.ops import box_iou

    golden = json.loads(GOLDEN.read_text())["models"][arch]
    for record in golden:
        h, w = record["height"], record["width"]
        found = detector.at_size(min(h, w), max(h, w)).predict(golden_image(record["image"]), color="BGR")
        assert len(found) == record["num_detections"]
        want = torch.tensor(record["boxes"])
        iou = box_iou(want, torch.from_numpy(found.boxes)).numpy()
        ours_class = np.asarray(found.labels) - 1  # contract labels 1..C -> detectron2's contiguous 0..C-1
        used: set[int] = set()
        for i, cls in enumerate(record["classes"]):
            candidates = [j for j in np.argsort(-iou[i]) if ours_class[j] == cls and j not in used]
            assert candidates and iou[i, candidates[0]] >= 0.99, (record["image"], i)
            j = candidates[0]
            used.add(j)
            tolerance = 1e-3 * np.maximum(np.abs(want[i].numpy()), 1.0)
            assert np.all(np.abs(found.boxes[j] - want[i].numpy()) <= tolerance), (record["image"], i)
            assert abs(found.scores[j] - record["scores"][i]) <= 1e-4, (record["image"], i)
            if arch == "mask_rcnn":
                mask = found.masks[j]
                assert abs(int(mask.sum()) - record["mask_pixels"][i]) <= 1e-3 * h * w
                ys, xs = np.nonzero(mask)
                extent = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
                assert np.abs(np.subtract(extent, record["mask_bbox_xyxy_exclusive"][i])).max() <= 1
