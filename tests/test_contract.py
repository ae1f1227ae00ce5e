"""The graph contract (`siefpn_deploy/core/contract.py`): one definition that every stage reads."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from siefpn_deploy.core import contract
from siefpn_deploy.core.config import load_config
from siefpn_deploy.core.contract import (
    GraphContract,
    PreprocessSpec,
    check_schema,
    graph_inputs,
    label_to_category_id,
)
from siefpn_deploy.core.errors import UserError
from siefpn_deploy.model import build_detector
from siefpn_deploy.model.meta import contract_for
from siefpn_deploy.model.torchvision_api import intermediate_layers, rpn_test_top_n, transform_skip_train_resize

PACKAGE = Path(__file__).resolve().parent.parent / "siefpn_deploy"
SPEC = PreprocessSpec(min_size=224, max_size=384, divisibility=32, pixel_mean=(127.5, 100.0, 50.0),
                      pixel_std=(64.0, 64.0, 64.0), color="BGR")


def test_outputs_of_each_architecture():
    retina = GraphContract(architecture="retinanet", max_detections=50, preprocess=SPEC)
    mask = GraphContract(architecture="mask_rcnn", max_detections=50, preprocess=SPEC)
    assert retina.output_names == ("num_dets", "boxes", "scores", "labels") and not retina.has_masks
    assert mask.output_names[-1] == "masks" and mask.has_masks
    shapes = {t.name: (t.dtype, t.shape) for t in mask.outputs()}
    assert shapes == {"num_dets": ("int32", ("batch",)), "boxes": ("float32", ("batch", 50, 4)),
                      "scores": ("float32", ("batch", 50)), "labels": ("int32", ("batch", 50)),
                      "masks": ("float32", ("batch", 50, 28, 28))}
    empty = mask.empty_outputs(3)
    assert {k: (v.shape, v.dtype) for k, v in empty.items()} == {
        "num_dets": ((3,), np.int32), "boxes": ((3, 50, 4), np.float32), "scores": ((3, 50), np.float32),
        "labels": ((3, 50), np.int32), "masks": ((3, 50, 28, 28), np.float32)}
    assert (empty["labels"] == -1).all() and not empty["num_dets"].any()


def test_inputs_and_their_feeds():
    c = GraphContract(architecture="retinanet", max_detections=50, preprocess=SPEC)
    assert [(t.name, t.dtype, t.shape) for t in c.inputs()] == [
        ("images", "float32", ("batch", 3, "height", "width")), ("image_sizes", "int32", ("batch", 2))]
    assert [i["name"] for i in c.as_meta()["inputs"]] == ["images", "image_sizes"]
    images = np.zeros((2, 3, 64, 96), np.float64)
    feeds = graph_inputs(images)  # no sizes: each image fills the canvas
    assert feeds["images"].dtype == np.float32 and feeds["image_sizes"].dtype == np.int32
    assert feeds["image_sizes"].tolist() == [[64, 96], [64, 96]]
    assert graph_inputs(images, [[50, 96], [64, 7]])["image_sizes"].tolist() == [[50, 96], [64, 7]]
    for bad in ([[65, 96], [64, 96]], [[64, 0], [64, 96]], [[64, 96]], [[64, 97], [1, 1]]):
        with pytest.raises(UserError, match=r"^image_sizes must be \[2,2\] \(height, width\) pairs within the 64x96"):
            graph_inputs(images, bad)


def test_meta_round_trip_and_refusals():
    c = GraphContract(architecture="faster_rcnn", max_detections=100, preprocess=SPEC)
    meta = c.as_meta()
    assert GraphContract.from_meta(meta, source="x.meta.json") == c
    assert meta["preprocess"]["pad_value"] == [127.5, 100.0, 50.0]  # the mean, at input_scale 255
    assert meta["preprocess"]["color"] == "BGR"
    with pytest.raises(UserError, match="channel order must be one of RGB, BGR, got 'BRG'"):
        PreprocessSpec.from_meta({**meta["preprocess"], "color": "BRG"})
    with pytest.raises(UserError, match=r"x.meta.json lists outputs .* but a faster_rcnn graph has"):
        GraphContract.from_meta({**meta, "outputs": meta["outputs"][:2]}, source="x.meta.json")
    with pytest.raises(UserError, match=r"^y.json has schema_version '3.0', but this siefpn-deploy reads 4.x"):
        check_schema({**meta, "schema_version": "3.0"}, source="y.json")  # 3.x: no image_sizes input
    check_schema({**meta, "schema_version": "4.9"}, source="y.json")  # minor versions are compatible


@pytest.mark.parametrize(("key", "value", "message"), [
    ("divisibility", 0, "divisibility must be in 1..1024, got 0"),
    ("divisibility", 4096, "divisibility must be in 1..1024, got 4096"),
    ("resize", {"min_size": 0, "max_size": 384}, "resize sides must satisfy 1 <= min_size <= max_size <= 16384"),
    ("resize", {"min_size": 224, "max_size": 10**9}, "resize sides must satisfy"),
    ("resize", {"min_size": 400, "max_size": 384}, "resize sides must satisfy"),
    ("pixel_std", [64.0, 0.0, 64.0], "pixel_std finite and > 0"),
    ("pixel_mean", [1.0, 2.0], "pixel_mean and pixel_std must hold 3 values each"),
    ("pixel_mean", [1.0, float("nan"), 2.0], "pixel_mean must be finite"),
    ("input_scale", 0, "input_scale must be finite and > 0, got 0"),
    ("divisibility", "32px", "bad or missing invalid literal"),
])
def test_a_meta_json_out_of_range_is_one_line_naming_the_file(key, value, message):
    """A damaged or hostile meta.json is refused when read, before any runtime divides by its divisibility or
    allocates from its sizes (`divisibility: 0` used to end in ZeroDivisionError)."""
    meta = GraphContract(architecture="retinanet", max_detections=100, preprocess=SPEC).as_meta()
    meta["preprocess"][key] = value
    with pytest.raises(UserError, match=r"^m\.meta\.json") as error:
        GraphContract.from_meta(meta, source="m.meta.json")
    assert message in str(error.value) and "\n" not in str(error.value)
    for k in (0, 3841):
        with pytest.raises(UserError, match=rf"^m\.meta\.json: max_detections \(K\) must be in 1..3840, got {k}$"):
            GraphContract.from_meta({**GraphContract("retinanet", 100, SPEC).as_meta(), "max_detections": k},
                                    source="m.meta.json")


def test_image_rows_keep_real_detections_only():
    outputs = GraphContract(architecture="retinanet", max_detections=4, preprocess=SPEC).empty_outputs(1)
    outputs["num_dets"][0] = 4
    outputs["labels"][0, :4] = [2, contract.BACKGROUND_LABEL, 1, 3]  # a RetinaNet head's background logit
    outputs["scores"][0, :4] = [0.9, 0.5, 0.3, 0.2]
    outputs["boxes"][0, :4] = [[0, 0, 5, 5], [1, 1, 4, 4], [2, 2, 3, 9], [64, 3, 64, 9]]  # the last: clipped empty
    rows = contract.image_rows(outputs, 0)
    assert rows["labels"].tolist() == [2, 1] and rows["scores"].tolist() == pytest.approx([0.9, 0.3])
    assert rows["labels"].dtype == np.int64 and rows["boxes"].tolist() == [[0, 0, 5, 5], [2, 2, 3, 9]]


def test_one_label_numbering_from_dataset_to_coco_json():
    category_ids = [1, 3, 5]  # a gapped COCO numbering
    assert label_to_category_id(np.array([1, 3, 2]), category_ids) == [1, 5, 3]
    assert contract.category_id_to_label([5, 1, 3]) == {1: 1, 3: 2, 5: 3}
    with pytest.raises(ValueError, match="labels must lie in 1..3"):
        label_to_category_id([0], category_ids)  # background is never a detection
    with pytest.raises(ValueError):
        label_to_category_id([contract.PAD_LABEL], category_ids)


def test_config_and_model_build_the_contract(tmp_path):
    cfg = load_config("synth_mask_rcnn_R18", ["MODEL.DETECTIONS_PER_IMAGE", "37"])  # a shipped preset, no .yaml
    c = contract_for(cfg)
    assert c.max_detections == 37 and c.has_masks and c.preprocess.divisibility == cfg.INPUT.SIZE_DIVISIBILITY
    model = build_detector(cfg, num_classes=3)
    assert model.roi_heads.mask_roi_pool.output_size * 2 == contract.MASK_SIZE
    assert model.roi_heads.detections_per_img == 37


def test_the_contract_is_defined_once():
    """Output names, K, the mask size and the label convention live in core/contract.py alone."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "contract.py":
            continue
        text = path.read_text()
        for pattern in (r'"num_dets"', r"(?<![\w.])28\b", r"DETECTIONS_PER_IMAGE: int = \d", r"labels?\W+1\b.*-1 pads"):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(PACKAGE)}: {pattern}")
    assert not offenders


def test_torchvision_private_apis():
    """Each private torchvision API behind model/torchvision_api.py, exercised: a torchvision release that
    moves or changes one fails here, naming it."""
    resnet = torchvision.models.resnet18(weights=None)
    body = intermediate_layers(resnet, {"layer2": "c3", "layer4": "c5"})  # torchvision.models._utils
    features = body(torch.rand(1, 3, 64, 96))
    assert list(features) == ["c3", "c5"] and features["c5"].shape == (1, 512, 2, 3), "IntermediateLayerGetter"

    transform = GeneralizedRCNNTransform(min_size=32, max_size=64, image_mean=[0.5] * 3, image_std=[0.25] * 3,
                                         **transform_skip_train_resize())
    target = {"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0]]), "labels": torch.tensor([1])}
    images, _ = transform.train()([torch.rand(3, 100, 150)], [target])
    assert images.image_sizes == [(100, 150)], "GeneralizedRCNNTransform(_skip_resize=True) resized in training"
    images, _ = transform.eval()([torch.rand(3, 100, 150)])
    assert images.image_sizes == [(32, 48)]

    cfg = load_config("synth_faster_rcnn_R18", [])
    rpn = build_detector(cfg, num_classes=2).rpn
    assert rpn_test_top_n(rpn) == (1000, 1000), "RegionProposalNetwork._pre_nms_top_n / _post_nms_top_n"
