"""`siefpn-deploy export`: every detector's graph runs in ONNX Runtime with PyTorch's detections, and a
real TensorRT builder (TensorRT-RTX, CPU-only) accepts it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from siefpn_deploy.cli import main
from siefpn_deploy.core.config import load_config
from siefpn_deploy.core.contract import GraphContract
from siefpn_deploy.core.errors import UserError
from siefpn_deploy.core.ort import ort_session
from siefpn_deploy.core.sidecar import check_input_shape, read_meta
from siefpn_deploy.data import CocoDetection
from siefpn_deploy.data.preprocess import Canvas, Preprocess
from siefpn_deploy.data.synth import split_paths
from siefpn_deploy.evaluation.agreement import match_detections
from siefpn_deploy.export import exporter, verify
from siefpn_deploy.model.checkpoint import load_trained_detector
from siefpn_deploy.model.inference import detect_on_canvas

ARCHS = ["retinanet", "faster_rcnn", "mask_rcnn"]
# The tensor-NMS lowering replaces only the post-processing; Faster R-CNN's graph is Mask R-CNN's without the
# mask branch, so RetinaNet and Mask R-CNN cover every tensor-NMS graph (each export takes ~40 s here).
TENSOR_ARCHS = ["retinanet", "mask_rcnn"]


def canvases(data: Path, shape: tuple[int, int, int, int], preprocess: Preprocess) -> Canvas:
    """`shape[0]` val images preprocessed onto a shape[2:] canvas, RGB 0..1."""
    images, annotations = split_paths(data, "val")
    dataset = CocoDetection(image_dir=images, annotation_file=annotations)
    return preprocess([dataset.image(i) for i in range(shape[0])], canvas=shape[2:])


def nonempty_rows(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    keep = (rows["boxes"][:, 2] > rows["boxes"][:, 0]) & (rows["boxes"][:, 3] > rows["boxes"][:, 1])
    return {k: v[keep] for k, v in rows.items()}


def assert_ort_matches_pytorch(path: Path, seeded, arch: str, tiny_synth: Path) -> int:
    """The graph's detections equal the detector's own eager ones at two sizes (neither the export
    example's), batch 2: the same count, each detection matched with its label (IoU >= 0.99), boxes within
    1e-3 relative, scores within 1e-4, in score order. Two detections whose scores tie to 1e-6 may trade
    places, and at the K-th place a tie may keep the other one. Returns how many were compared."""
    cfg = load_config(seeded.config(arch), ["MODEL.WEIGHTS", str(seeded.weights(arch))])
    detector, _ = load_trained_detector(cfg, config_name="test")
    session = ort_session(path)
    names = [o.name for o in session.get_outputs()]
    compared = 0
    for shape in [(2, 3, 128, 96), (2, 3, 160, 224)]:
        spec = GraphContract.from_meta(read_meta(path), source=str(path)).preprocess
        canvas = canvases(tiny_synth, shape, Preprocess(replace(spec, input_scale=1.0)))
        sizes = canvas.image_sizes  # the images do not fill these canvases: clipping happens inside them
        assert (sizes < shape[2:]).any()
        got = dict(zip(names, session.run(None, {"images": (canvas.images * 255).numpy(), "image_sizes": sizes})))
        for b, want in enumerate(detect_on_canvas(detector, canvas.images, sizes.tolist())):
            n = int(got["num_dets"][b])
            assert n == len(want["boxes"]), (shape, b)
            ref = {k: want[k].numpy() for k in ("boxes", "scores", "labels")}
            mine = {k: got[k][b, :n] for k in ("boxes", "scores", "labels")}
            h, w = sizes[b]
            assert np.all(mine["boxes"][:, 0::2] <= w) and np.all(mine["boxes"][:, 1::2] <= h)  # clipped to the image
            # boxes wholly in the padding are empty after clipping (runtimes drop them): compare the others
            ref, mine = nonempty_rows(ref), nonempty_rows(mine)
            assert len(ref["scores"]) == len(mine["scores"]), (shape, b)
            pairs = match_detections(ref, mine, min_iou=0.99)
            missed = sorted(set(range(len(ref["scores"]))) - {r for r, _ in pairs})
            kth = ref["scores"].min(initial=0) if n == got["boxes"].shape[1] else -1
            assert all(abs(ref["scores"][r] - kth) < 1e-5 for r in missed), (shape, b, missed)
            r, g = np.array([p[0] for p in pairs], int), np.array([p[1] for p in pairs], int)
            assert np.all(np.abs(mine["boxes"][g] - ref["boxes"][r]) <= 1e-3 * np.maximum(np.abs(ref["boxes"][r]), 1.0))
            assert np.abs(mine["scores"][g] - ref["scores"][r]).max(initial=0) <= 1e-4
            assert np.all(np.diff(mine["scores"]) <= 1e-6)  # ordered by score
            assert np.all(got["labels"][b, n:] == -1) and np.all(got["scores"][b, n:] == 0)  # padding
            if arch == "mask_rcnn":
                assert got["masks"].shape[1:] == (got["boxes"].shape[1], 28, 28)
                assert np.all(got["masks"][b, n:] == 0)
            compared += n
    return compared


@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_nms_graph_matches_pytorch(arch, seeded, exported, tiny_synth):
    path = exported.onnx(arch, "onnx")
    assert assert_ort_matches_pytorch(path, seeded, arch, tiny_synth) > 10  # real detections, not an empty match
    meta = read_meta(path)
    assert meta["verification"]["passed"] and meta["verification"]["matched"] == meta["verification"]["reference"] > 0
    assert {"NonMaxSuppression", "TopK"} <= op_types(path) and "Loop" not in op_types(path)


@pytest.mark.parametrize("arch", TENSOR_ARCHS)
def test_tensor_nms_graph_matches_pytorch(arch, seeded, exported, tiny_synth):
    path = exported.onnx(arch, "tensor")
    assert assert_ort_matches_pytorch(path, seeded, arch, tiny_synth) > 10
    assert "NonMaxSuppression" not in op_types(path) and "Loop" in op_types(path)


def op_types(path: Path) -> set[str]:
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    for node in model.graph.node:  # the tensor NMS's Loop body
        for attr in node.attribute:
            if attr.g is not None:
                ops |= {n.op_type for n in attr.g.node}
    return ops


def test_max_det_masks_runs_the_mask_head_on_the_best_rows_only(exported, tiny_synth):
    """export --max-det-masks 3: the same detections as the full graph, the first 3 rows' masks equal its
    masks, later rows are zeros (pasted: empty), and meta.json says so; the export's own check against eager
    PyTorch passes because the eager backend follows the same contract."""
    from siefpn_deploy.runtime import Detector

    path, full = exported.onnx("mask_rcnn", "onnx", max_det_masks=3), exported.onnx("mask_rcnn", "onnx")
    meta = read_meta(path)
    assert meta["mask_detections"] == 3 and read_meta(full)["mask_detections"] == meta["max_detections"] == 100
    assert GraphContract.from_meta(meta, source="m3").mask_rows == 3
    assert meta["verification"]["passed"] and meta["verification"]["matched"] > 3
    spec = GraphContract.from_meta(meta, source=str(path)).preprocess
    canvas = canvases(tiny_synth, (2, 3, 160, 224), Preprocess(spec))
    feeds = {"images": canvas.images.numpy(), "image_sizes": canvas.image_sizes}
    cut, whole = ({o.name: v for o, v in zip(s.get_outputs(), s.run(None, feeds))}
                  for s in (ort_session(path), ort_session(full)))
    for name in ("num_dets", "boxes", "scores", "labels"):
        np.testing.assert_allclose(cut[name], whole[name], rtol=1e-5, atol=1e-4)
    n = int(cut["num_dets"].max())
    assert n > 3  # rows beyond the cut exist, so the cut is visible
    np.testing.assert_allclose(cut["masks"][:, :3], whole["masks"][:, :3], atol=1e-5)
    assert not cut["masks"][:, 3:].any() and whole["masks"][:, 3:n].max() > 0.5
    images = [CocoDetection(image_dir=split_paths(tiny_synth, "val")[0],
                            annotation_file=split_paths(tiny_synth, "val")[1]).image(i) for i in range(2)]
    for got, want in zip(Detector.from_path(path).predict(images), Detector.from_path(full).predict(images)):
        assert len(got) == len(want) > 3 and not got.masks[3:].any() and want.masks[3:].any()
        np.testing.assert_array_equal(got.masks[:3], want.masks[:3])



def test_the_package_mask_head_runs_on_the_smallest_row_bucket_that_holds_the_detections(seeded):
    """The .pt2's mask decoder (on_detections): the head runs on the first 8, 16, 32, 64 or all 100 rows of each
    image, the first bucket that holds every image's detections, and gives the detections the masks the head gives
    them on all rows (zeros elsewhere, as the graph's padding rows have)."""
    from siefpn_deploy.export.deploy import PostprocessSettings, build_deploy_model
    from siefpn_deploy.export.nms import KernelNMS
    from siefpn_deploy.model.meta import contract_for

    cfg = load_config(seeded.config("mask_rcnn"), ["MODEL.WEIGHTS", str(seeded.weights("mask_rcnn"))])
    detector, _ = load_trained_detector(cfg, config_name="test")
    spec = contract_for(cfg).preprocess
    bucketed, whole = (build_deploy_model(detector, settings=PostprocessSettings(nms=KernelNMS, masks_on_detections=on),
                                          preprocess=spec).decoder.masks for on in (True, False))
    rows = []
    bucketed.mask_head.register_forward_hook(lambda module, inputs, output: rows.append(len(inputs[0])))
    generator = torch.Generator().manual_seed(0)
    channels = detector.backbone.out_channels
    features = [torch.randn(2, channels, 64 >> i, 64 >> i, generator=generator) for i in range(4)]  # strides 4..32
    corner = torch.rand(2, 100, 2, generator=generator) * 200
    boxes = torch.cat([corner, corner + 8 + torch.rand(2, 100, 2, generator=generator) * 40], dim=2)
    for counts, bucket in (((0, 0), 8), ((3, 8), 8), ((9, 2), 16), ((17, 0), 32), ((64, 33), 64), ((65, 1), 100),
                           ((100, 100), 100)):
        labels = torch.randint(1, 3, (2, 100), generator=generator)
        for image, count in enumerate(counts):
            labels[image, count:] = -1  # PAD_LABEL after each image's detections
        rows.clear()
        with torch.no_grad():
            got = bucketed(features, boxes, labels)
            assert rows == [2 * bucket], counts  # (the two decoders share the detector's head)
            want = whole(features, boxes, labels)
        for image, count in enumerate(counts):
            torch.testing.assert_close(got[image, :count], want[image, :count], rtol=0, atol=0)
        assert got.shape == want.shape and got.abs().sum() == sum(got[i, :bucket].abs().sum() for i in range(2))


@pytest.mark.parametrize("arch", ARCHS)
def test_graph_is_plugin_free_with_symbolic_shapes_and_an_honest_meta(arch, exported, seeded):
    path = exported.onnx(arch, "onnx")
    model = onnx.load(str(path))
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}  # no custom ops
    assert not {"NonZero", "If"} & op_types(path)  # no data-dependent shapes
    # --nms onnx uses the standard RoiAlign op (exact for detectron2's adaptive sampling); --nms tensor is plugin-free
    assert ("RoiAlign" in op_types(path)) == (arch != "retinanet")
    if arch in TENSOR_ARCHS:
        assert not {"NonZero", "If", "RoiAlign", "NonMaxSuppression"} & op_types(exported.onnx(arch, "tensor"))
    assert [i.name for i in model.graph.input] == ["images", "image_sizes"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, False, True, True]  # batch, H, W symbolic
    sizes = model.graph.input[1].type.tensor_type
    assert sizes.elem_type == onnx.TensorProto.INT32
    assert sizes.shape.dim[0].dim_param == dims[0].dim_param and sizes.shape.dim[1].dim_value == 2  # [batch, 2]
    meta = json.loads(path.with_name(path.name[:-5] + ".meta.json").read_text())
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    expected = ["num_dets", "boxes", "scores", "labels"] + (["masks"] if arch == "mask_rcnn" else [])
    assert [o["name"] for o in meta["outputs"]] == expected == [o.name for o in model.graph.output]
    assert meta["outputs"][1]["shape"] == ["batch", 100, 4]
    assert meta["shapes"]["batch"] == {"min": 1, "max": 4} and meta["shapes"]["height"] == {"min": 64, "max": 256}
    ckpt = torch.load(seeded.weights(arch), weights_only=True)
    assert meta["classes"]["names"] == ckpt["classes"]["names"]
    assert meta["classes"]["category_ids"] == [1, 3, 5, 7, 9, 11]
    cfg = load_config(seeded.config(arch))
    assert meta["postprocess"]["score_thresh"] == cfg.MODEL.SCORE_THRESH_TEST and meta["postprocess"]["iou_thresh"] == 0.5
    assert meta["preprocess"]["input_scale"] == 255.0 and meta["preprocess"]["normalized_in_graph"]
    assert {"torch", "onnx", "torchvision"} <= set(meta["versions"]) and meta["opset"] >= 18


def test_clip_boxes_clips_each_image_to_its_own_size():
    """The graph's clip (export.decode.clip_boxes) against torchvision's clip_boxes_to_image, image by image."""
    from torchvision.ops.boxes import clip_boxes_to_image

    from siefpn_deploy.export.decode import clip_boxes

    boxes = torch.randn(2, 5, 3, 4) * 80 + 40  # [B, N, classes, 4]: some outside either image
    sizes = torch.tensor([[50, 70], [64, 30]], dtype=torch.int32)
    got = clip_boxes(boxes, sizes)
    for b, (h, w) in enumerate(sizes.tolist()):
        assert torch.equal(got[b], clip_boxes_to_image(boxes[b], (h, w)))
    assert (got[1, ..., 0::2] <= 30).all() and (got[1, ..., 0::2] == 30).any()  # the bound is image 1's own


def tensorrt_backend():
    from siefpn_deploy.tensorrt.builder import load_backend

    try:
        return load_backend()
    except UserError as e:
        pytest.skip(f"no TensorRT builder installed: {e}")


@pytest.mark.parametrize("arch", TENSOR_ARCHS)
def test_tensorrt_builds_the_tensor_nms_graph_with_a_dynamic_profile(arch, exported):
    from siefpn_deploy.tensorrt.builder import (
        Profile,
        build_serialized,
        parse_onnx,
    )

    backend = tensorrt_backend()
    profile = Profile(min=(1, 3, 64, 64), opt=(2, 3, 128, 160), max=(4, 3, 256, 256))
    with parse_onnx(backend, exported.onnx(arch, "tensor"), log=lambda _: None) as parsed:
        engine = build_serialized(backend, parsed, profile=profile, log=lambda _: None)
    assert len(engine) > 1_000_000  # the weights alone are ~45 MB


@pytest.mark.parametrize("arch", ARCHS)
def test_tensorrt_parses_the_onnx_nms_graph(arch, exported):
    from siefpn_deploy.tensorrt.builder import parse_onnx

    backend = tensorrt_backend()
    if arch != "retinanet" and backend.flavour == "tensorrt-rtx":
        # the R-CNNs' standard-op graph has RoiAlign, a plugin TensorRT-RTX lacks: a one-line error naming it
        with pytest.raises(UserError, match=r"cannot parse .*RoiAlign.*ROIAlign plugin was not found"):
            parse_onnx(backend, exported.onnx(arch, "onnx"))
        return
    with parse_onnx(backend, exported.onnx(arch, "onnx")) as parsed:
        network = parsed.network
        assert [network.get_output(i).name for i in range(network.num_outputs)][:4] == [
            "num_dets", "boxes", "scores", "labels"]
        del network


def test_static_export_with_simplify_and_external_data_and_a_failed_verification_keeps_the_old_files(
        seeded, tmp_path, capsys, monkeypatch):
    """A static, simplified export whose weights exceed protobuf's 2 GB is written as NAME.onnx + NAME.onnx.data,
    verified in the staging folder and moved into place together (the tiny model stands in, with the limit
    lowered). A second export whose check fails leaves both files of the first as they were."""
    monkeypatch.setattr(exporter, "PROTOBUF_LIMIT", 1 << 20)
    out = tmp_path / "static" / "retina.onnx"
    args = ["export", "--config-file", str(seeded.config("retinanet")), "--output", str(out), "--batch", "2",
            "--imgsz", "128", "160", "--simplify", "--input-range", "1", "--max-det", "50",
            "MODEL.WEIGHTS", str(seeded.weights("retinanet"))]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "[verify] [2, 3, 128, 160]:" in text and "max score error" in text
    files = ["retina.meta.json", "retina.onnx", "retina.onnx.data"]
    assert sorted(p.name for p in out.parent.iterdir()) == files
    model = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert out.stat().st_size * 5 < out.with_name("retina.onnx.data").stat().st_size  # the weights moved out
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 128, 160]
    meta = read_meta(out)
    assert meta["preprocess"]["input_scale"] == 1.0 and meta["outputs"][1]["shape"] == ["batch", 50, 4]
    # verified in ONNX Runtime, which read the external weights
    assert meta["export"]["external_data"] is True and meta["verification"]["matched"] > 0
    # meta.json describes both files: a reader refuses a graph beside another export's weights (test_landing.py)
    assert meta["data_sha256"] == hashlib.sha256(out.with_name("retina.onnx.data").read_bytes()).hexdigest()
    before = {name: (out.parent / name).read_bytes() for name in files}

    # a check that fails: the error says so in one line, and the files from the first export stay
    monkeypatch.setattr(verify, "FP32_TOLERANCES", verify.Tolerances(score_abs=-1.0))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: verification of") and len(err.strip().splitlines()) == 1
    assert {name: (out.parent / name).read_bytes() for name in files} == before  # no temp files either
    assert sorted(p.name for p in out.parent.iterdir()) == files


# ---------------------------------------------------------------- bad input: one line each, nothing written


def run_export(capsys, *args: str) -> str:
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_size_not_divisible_by_32(seeded, tmp_path, capsys):
    err = run_export(capsys, "--config-file", str(seeded.config("retinanet")), "--imgsz", "300", "320",
                     "--output", str(tmp_path / "m.onnx"), "MODEL.WEIGHTS", str(seeded.weights("retinanet")))
    assert "not a multiple of 32" in err and "--imgsz" in err
    err = run_export(capsys, "--config-file", str(seeded.config("retinanet")), "--dynamic-size", "32", "320",
                     "MODEL.WEIGHTS", str(seeded.weights("retinanet")))
    assert "below the smallest input, 64" in err
    assert not (tmp_path / "m.onnx").exists()


def test_weights_that_do_not_match_the_config(seeded, tmp_path, capsys):
    err = run_export(capsys, "--config-file", str(seeded.config("faster_rcnn")), "--output", str(tmp_path / "m.onnx"),
                     "MODEL.WEIGHTS", str(seeded.weights("retinanet")))
    assert "does not match the model built from" in err and str(seeded.weights("retinanet")) in err
    assert not list(tmp_path.iterdir())


def test_output_folder_not_writable(seeded, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    err = run_export(capsys, "--config-file", str(seeded.config("retinanet")), "--output", str(blocker / "m.onnx"),
                     "MODEL.WEIGHTS", str(seeded.weights("retinanet")))
    assert "cannot write to" in err and str(blocker) in err
    assert blocker.read_text() == "not a folder"


def test_other_bad_options(seeded, tmp_path, capsys):
    base = ["--config-file", str(seeded.config("retinanet")), "--output", str(tmp_path / "m.onnx")]
    weights = ["MODEL.WEIGHTS", str(seeded.weights("retinanet"))]
    masks = ["--config-file", str(seeded.config("mask_rcnn")), "--output", str(tmp_path / "m.onnx")]
    capsys.readouterr()  # the session's training, when this test is the first to need it, is not an export's error
    assert "--opset must be in 18.." in run_export(capsys, *base, "--opset", "11", *weights)
    assert "--max-det must be in 1..3840" in run_export(capsys, *base, "--max-det", "5000", *weights)
    assert "--batch / --dynamic-batch" in run_export(capsys, *base, "--batch", "0", *weights)
    assert "must come before the KEY VALUE" in run_export(capsys, *base, *weights, "--nms", "tensor")
    assert "no weights given" in run_export(capsys, *base)
    assert "checkpoint not found" in run_export(capsys, *base, "MODEL.WEIGHTS", str(tmp_path / "none.pth"))
    assert "--max-det-masks is for Mask R-CNN" in run_export(capsys, *base, "--max-det-masks", "5", *weights)
    err = run_export(capsys, *masks, "--max-det", "20", "--max-det-masks", "21", "MODEL.WEIGHTS",
                     str(seeded.weights("mask_rcnn")))
    assert "--max-det-masks 21 is more than K" in err
    assert "--max-det-masks must be at least 1" in run_export(capsys, *masks, "--max-det-masks", "0", *weights)
    assert not list(tmp_path.iterdir())


def test_a_batch_above_the_exported_maximum_is_refused(exported):
    meta = read_meta(exported.onnx("retinanet", "onnx"))
    check_input_shape(meta, (4, 3, 256, 64), source="x")  # the corners of the range are fine
    with pytest.raises(UserError, match=r"batch 5 is outside the exported range \[1, 4\]"):
        check_input_shape(meta, (5, 3, 128, 128), source="x")
    with pytest.raises(UserError, match="height 288 is outside"):
        check_input_shape(meta, (1, 3, 288, 128), source="x")
    with pytest.raises(UserError, match="multiples of 32"):
        check_input_shape(meta, (1, 3, 100, 128), source="x")
