"""`export --format aoti`: the deploy graph compiled by AOTInductor into NAME.pt2, run by the Python runtime.

One detector is compiled in CI (each package takes a minute or more on 2 cores): Mask R-CNN, whose graph
runs every step the other two run except RetinaNet's decoder (RPN, both RoIAligns, two kernel NMSs, the mask
head). The package NMS lowerings themselves are checked case by case in test_nms.py, compiled too.
"""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch

from siefpn_deploy.cli import main
from siefpn_deploy.core.sidecar import PACKAGE_META_KEY, read_meta
from siefpn_deploy.evaluation.agreement import Agreement
from siefpn_deploy.runtime import Detector

ARCH = "mask_rcnn"
pytestmark = pytest.mark.package


def val_images(data, n):
    from siefpn_deploy.data import CocoDetection
    from siefpn_deploy.data.synth import split_paths

    images, annotations = split_paths(data, "val")
    dataset = CocoDetection(image_dir=images, annotation_file=annotations)
    return [dataset.image(i) for i in range(n)]


def test_the_package_is_verified_and_carries_the_contract(exported):
    path = exported.package(ARCH)
    meta = read_meta(path)
    assert path.name == f"{ARCH}_aoti.pt2" and meta["package"] == path.name and "onnx" not in meta
    v = meta["verification"]
    assert v["passed"] and v["matched"] > 20 and v["unmatched"] == 0 and v["max_box_rel"] <= 1e-3
    assert meta["postprocess"]["nms"] == "kernel" and meta["postprocess"]["roi_align"]["lowering"] == "bag"
    assert meta["export"]["device"] == "cpu" and meta["export"]["compile_seconds"] > 0
    assert [i["name"] for i in meta["inputs"]] == ["images", "image_sizes"]
    # the package's own metadata holds the same contract, for a program that has only the package
    inner = json.loads(torch._inductor.aoti_load_package(str(path)).get_metadata()[PACKAGE_META_KEY])
    for key in ("schema_version", "architecture", "inputs", "outputs", "max_detections", "preprocess", "classes"):
        assert inner[key] == meta[key], key
    assert inner["inputs_order"] == ["images", "image_sizes"]


def test_a_cpu_package_runs_onednn_fused_convolutions_on_frozen_weights(exported):
    """Inductor's freezing: the package's convolutions are oneDNN's fused ops on prepacked weights. Plain aten
    convolutions (all a package compiled with grad on, or without freezing, calls) are left only inside the mask
    head's row buckets: Inductor does not freeze the weights a torch.cond branch takes as arguments (its buffers are
    named after the branch graph)."""
    path = exported.package(ARCH)
    assert read_meta(path)["export"]["inductor"] == {"freezing": True}
    with zipfile.ZipFile(path) as package:
        code = "".join(package.read(n).decode() for n in package.namelist() if n.endswith(".wrapper.cpp"))
    assert code.count("aoti_torch_cpu_mkldnn__convolution_pointwise") > 20
    plain = [line for line in code.splitlines() if "aoti_torch_cpu_convolution(" in line]
    assert all("_graph_" in line for line in plain), plain[:1]


def test_the_package_detects_what_onnx_runtime_detects(exported, tiny_synth):
    """The Python runtime on the .pt2 against the same model's ONNX graph in ONNX Runtime, through the same
    Predictor (preprocessing, image sizes, unpadding, mask pasting), on the val images at batch 2 and 1, and on
    a grey image the model detects nothing in (the package's mask head then runs on its smallest row bucket)."""
    package = Detector.from_path(exported.package(ARCH))
    onnx = Detector.from_path(exported.onnx(ARCH, "onnx"))
    assert package.kind == "aoti" and not package.backend.on_gpu
    grey = np.full((128, 128, 3), 128, np.uint8)
    assert len(onnx.predict([grey])[0]) == 0
    images = [*val_images(tiny_synth, 5), grey]
    agreement = Agreement()
    for batch in (2, 1):
        for want, got in zip(onnx.predict(images, batch_size=batch), package.predict(images, batch_size=batch)):
            rows = lambda d: {"boxes": d.boxes, "scores": d.scores, "labels": d.labels}
            agreement.add(rows(want), rows(got), min_iou=0.5, score_thresh=0.0, max_det=100)
            if len(want) and len(want) == len(got):
                order = np.argsort(-want.scores, kind="stable"), np.argsort(-got.scores, kind="stable")
                same = want.masks[order[0]] == got.masks[order[1]]
                assert same.mean() > 0.999  # pasted masks, pixel for pixel (a boundary pixel may flip)
    assert agreement.reference > 20 and agreement.unmatched == 0
    assert agreement.max_box_rel <= 1e-3 and agreement.max_score_abs <= 1e-4


def test_package_options_and_files_refused_in_one_line(exported, seeded, tmp_path, capsys):
    config, weights = str(seeded.config(ARCH)), str(seeded.weights(ARCH))
    onnx_source, package = exported.onnx(ARCH, "onnx"), exported.package(ARCH)
    capsys.readouterr()  # the fixtures' training and export output

    def refused(*argv: str) -> str:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        return err

    base = ["export", "--format", "aoti", "--config-file", config]
    assert "--output must end in .pt2 for --format aoti" in refused(*base, "--output", str(tmp_path / "x.onnx"),
                                                                    "MODEL.WEIGHTS", weights)
    assert "--nms must be one of kernel, loop for --format aoti" in refused(*base, "--nms", "onnx", "--output",
                                                                    str(tmp_path / "x.pt2"), "MODEL.WEIGHTS", weights)
    assert "ONNX options" in refused(*base, "--simplify", "--output", str(tmp_path / "x.pt2"), "MODEL.WEIGHTS", weights)
    # NAME.onnx and NAME.pt2 would share NAME.meta.json: the second export is refused before any work
    onnx = tmp_path / "m.onnx"
    shutil.copy(onnx_source, onnx)
    shutil.copy(onnx_source.with_suffix(".meta.json"), tmp_path / "m.meta.json")
    err = refused(*base, "--output", str(tmp_path / "m.pt2"), "MODEL.WEIGHTS", weights)
    assert "m.meta.json describes mask_rcnn_onnx.onnx; writing m.pt2 would replace it" in err
    assert not (tmp_path / "m.pt2").exists()
    # a damaged package is a one-line error from the runtime
    broken = tmp_path / "b.pt2"
    broken.write_bytes(package.read_bytes()[:4096])
    meta = read_meta(package)
    from siefpn_deploy.core.sidecar import write_meta

    write_meta(broken, {k: v for k, v in meta.items() if k not in ("format", "package", "sha256")})
    err = refused("infer", "--artifact", str(broken), "--source", str(tmp_path))
    assert "cannot load the AOTInductor package" in err and "b.pt2" in err


def test_infer_and_parity_take_the_package(exported, seeded, tiny_synth, tmp_path, capsys):
    from siefpn_deploy.data.synth import split_paths

    package = exported.package(ARCH)
    images, annotations = split_paths(tiny_synth, "val")
    out = tmp_path / "dets.json"
    assert main(["infer", "--artifact", str(package), "--source", str(images), "--save-json", str(out),
                 "--annotations", str(annotations)]) == 0
    detections = json.loads(out.read_text())
    ids = {im["id"] for im in json.loads(annotations.read_text())["images"]}
    assert detections and {d["image_id"] for d in detections} <= ids
    report = tmp_path / "parity"
    code = main(["parity", "--config-file", str(seeded.config(ARCH)), "--artifacts", str(package),
                 "--report", str(report), "MODEL.WEIGHTS", str(seeded.weights(ARCH))])
    rows = {a["kind"]: a for a in json.loads((report / "parity.json").read_text())["artifacts"]}
    assert code == 0, rows
    assert rows["aoti"]["status"] == "pass" and rows["aoti"]["agreement"]["matched_fraction"] == 1.0
