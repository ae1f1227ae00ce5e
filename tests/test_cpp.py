"""The C++ runtime (engines/cpp): libsiefpn's siefpn::Detector through the siefpn-infer CLI.

The README's test command builds it (`siefpn-deploy cpp build`) before pytest; the fixture re-runs that
incremental build, a no-op then. The artifact is the Mask R-CNN package test_aoti.py compiles (its graph
runs the RPN, both RoIAligns, two NMSs and the mask head), so the C++ side sees every output the contract has.
Its references are the Python runtime on the same package (the same graph: equal up to float noise) and
ONNX Runtime on the same model's ONNX export (the export tolerance).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from siefpn_deploy.cli import main
from siefpn_deploy.core.contract import image_rows
from siefpn_deploy.core.sidecar import meta_path, read_meta
from siefpn_deploy.data import CocoDetection
from siefpn_deploy.data.image import load_image, to_tensor
from siefpn_deploy.data.synth import split_paths
from siefpn_deploy.evaluation.agreement import Agreement
from siefpn_deploy.evaluation.coco import coco_eval
from siefpn_deploy.evaluation.loop import evaluate_predictor
from siefpn_deploy.export.verify import BOX_RTOL, SCORE_ATOL
from siefpn_deploy.model.heads import nonempty
from siefpn_deploy.model.masks import paste_masks
from siefpn_deploy.runtime import Detector
from siefpn_deploy.runtime.bench import run_bench
from siefpn_deploy.runtime.cpp import CppBuild, default_build_dir, run_infer_cli

ARCH = "mask_rcnn"
pytestmark = pytest.mark.package


@pytest.fixture(scope="module")
def cpp():
    CppBuild(build_dir=default_build_dir()).run(log=lambda *_: None)

    def run(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return run_infer_cli([str(a) for a in args], timeout=300, env=env)

    return run


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def val_split(data: Path, split: str = "val") -> tuple[Path, Path, list[Path]]:
    images, annotations = split_paths(data, split)
    return Path(images), Path(annotations), sorted(Path(images).glob("*.jpg"))


def cpp_detections(cpp, package: Path, data: Path, out: Path, *extra: object,
                   split: str = "val") -> tuple[list[dict], dict[str, int]]:
    images, annotations, _ = val_split(data, split)
    ok(cpp("--artifact", package, "--source", images, "--annotations", annotations, "--json", out, *extra))
    records = json.loads(out.read_text())
    ids = {info["file_name"]: info["id"] for info in json.loads(annotations.read_text())["images"]}
    return records, ids


def rows_of(records: list[dict], image_id: int) -> dict[str, np.ndarray]:
    mine = [r for r in records if r["image_id"] == image_id]
    xywh = np.array([r["bbox"] for r in mine], dtype=np.float64).reshape(-1, 4)
    return {"boxes": np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
            "scores": np.array([r["score"] for r in mine], dtype=np.float64),
            "category_ids": [r["category_id"] for r in mine],
            "masks": [mask_util.decode({"size": r["segmentation"]["size"],
                                        "counts": r["segmentation"]["counts"].encode()}) for r in mine]}


def test_cpp_detections_equal_the_python_package_runtime(cpp, exported, tiny_synth, tmp_path):
    """Same package, same images, batch 2: boxes to 1e-3 px, scores to 1e-4, the same labels and category ids, the
    same pasted masks, in the same order."""
    package = exported.package(ARCH)
    records, ids = cpp_detections(cpp, package, tiny_synth, tmp_path / "cpp.json", "--batch", 2, "--no-round")
    _, _, files = val_split(tiny_synth)
    python = Detector.from_path(package).predict([load_image(f) for f in files], batch_size=2)
    total = 0
    for path, want in zip(files, python):
        got = rows_of(records, ids[path.name])
        assert len(got["scores"]) == len(want), path.name
        total += len(want)
        if not len(want):
            continue
        assert np.abs(got["boxes"] - want.boxes).max() <= 1e-3
        assert np.abs(got["scores"] - want.scores).max() <= 1e-4
        assert got["category_ids"] == want.category_ids
        differing = sum(int((g != w).sum()) for g, w in zip(got["masks"], want.masks))
        assert differing <= 1e-4 * want.masks.size, f"{differing} mask pixels differ"
    assert total > 20 and {r["category_id"] for r in records} <= set(read_meta(package)["classes"]["category_ids"])


def test_cpp_detections_agree_with_onnx_runtime(cpp, exported, tiny_synth, tmp_path):
    """C++ on the package against ONNX Runtime on the ONNX export of the same weights: the export tolerance."""
    records, ids = cpp_detections(cpp, exported.package(ARCH), tiny_synth, tmp_path / "cpp.json", "--no-round")
    _, _, files = val_split(tiny_synth)
    onnx = Detector.from_path(exported.onnx(ARCH, "onnx"))
    agreement = Agreement()
    for path, want in zip(files, onnx.predict([load_image(f) for f in files], batch_size=1)):
        got = rows_of(records, ids[path.name])
        labels = np.array([onnx.category_ids.index(c) + 1 for c in got["category_ids"]], dtype=np.int64)
        agreement.add({"boxes": want.boxes, "scores": want.scores, "labels": want.labels},
                      {"boxes": got["boxes"], "scores": got["scores"], "labels": labels},
                      min_iou=0.5, score_thresh=0.0, max_det=100)
    assert agreement.reference > 20 and agreement.unmatched == 0
    assert agreement.max_box_rel <= BOX_RTOL and agreement.max_score_abs <= SCORE_ATOL


def test_cocoeval_on_the_cpp_json_gives_parity_s_ap(cpp, exported, tiny_synth, tmp_path):
    """The C++ results file (rounded as `siefpn-deploy infer` rounds) loads with COCO.loadRes, names the true
    image ids, and scores the AP that parity's evaluation of the same package gives (batch 1, parity's default).
    On the train images, which the 40-iteration model has seen: on val it may find nothing (AR100 0.000 on an
    AMX CPU), and equal zeros would prove nothing."""
    package = exported.package(ARCH)
    records, ids = cpp_detections(cpp, package, tiny_synth, tmp_path / "cpp.json", split="train")
    images, annotations, _ = val_split(tiny_synth, "train")
    dataset = CocoDetection(image_dir=images, annotation_file=annotations)
    assert {r["image_id"] for r in records} <= set(ids.values())
    dataset.coco.loadRes(str(tmp_path / "cpp.json"))
    parity_row = evaluate_predictor(Detector.from_path(package), dataset, batch_size=1, progress=False)
    for iou_type in ("bbox", "segm"):
        cpp_metrics = coco_eval(dataset, records, iou_type, verbose=False)
        for name in ("AP", "AP50", "AR100"):
            assert abs(cpp_metrics[name] - parity_row.metrics[iou_type][name]) < 1e-9, (iou_type, name)
    assert parity_row.metrics["bbox"]["AR100"] > 0  # the tiny model finds objects: the comparison has content


def write_inputs(folder: Path) -> dict[str, Path]:
    """Images the Python runtime reads: odd sizes, grayscale, RGBA, a transparent palette, JPEG with an EXIF
    rotation, a grayscale JPEG."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    smooth = lambda h, w, c: np.asarray(Image.fromarray(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, c), np.uint8)
                                                        .squeeze()).resize((w, h), Image.BILINEAR))
    files = {"odd.png": Image.fromarray(smooth(173, 251, 3)), "gray.png": Image.fromarray(smooth(97, 131, 1)),
             "rgba.png": Image.fromarray(np.concatenate([smooth(120, 90, 3), rng.integers(0, 256, (120, 90, 1), np.uint8)],
                                                        axis=2), "RGBA"),
             "gray.jpg": Image.fromarray(smooth(150, 110, 1))}
    palette = Image.fromarray(smooth(88, 144, 3)).convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3
    files["palette.png"] = palette
    for name, image in files.items():
        image.save(folder / name, **({"quality": 90} if name.endswith(".jpg") else {}))
    rotated = Image.fromarray(smooth(141, 203, 3))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated.save(folder / "exif6.jpg", quality=90, exif=exif)
    return {p.name: p for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("size", [None, (200, 240)], ids=["artifact-resize", "size-200-240"])
def test_cpp_preprocessing_equals_python(cpp, exported, tmp_path, size):
    """The canvas C++ feeds the graph, image by image: the same floats as the Python runtime's (decoding with
    EXIF orientation, gray and alpha handling, resize, channel order, padding, the range rule)."""
    files = write_inputs(tmp_path / "inputs")
    package = exported.package(ARCH)
    extra = ["--size", *size] if size else []
    ok(cpp("--artifact", package, "--source", tmp_path / "inputs", "--save-canvas", tmp_path / "canvas", *extra))
    python = Detector.from_path(package)
    python = python.at_size(*size) if size else python
    for k, path in enumerate(files.values()):  # siefpn-infer walks the folder in sorted order, batch 1
        got = np.load(tmp_path / "canvas" / f"canvas_{k}.npy")
        want = python.prepare([to_tensor(load_image(path))]).images.numpy()
        assert got.shape == want.shape, path.name
        assert np.abs(got - want).max() <= 1e-4, path.name
    assert np.load(tmp_path / "canvas" / f"canvas_{list(files).index('exif6.jpg')}.npy").shape[2:] != (0, 0)


def test_cpp_mask_pasting_equals_python_s(cpp, exported, tiny_synth, tmp_path):
    """Masks from the C++ JSON against model/masks.py's paste_masks applied to the package's raw outputs: the
    pasting rule itself, on every detection of the val images (including boxes at the image border)."""
    package = exported.package(ARCH)
    records, ids = cpp_detections(cpp, package, tiny_synth, tmp_path / "cpp.json", "--no-round")
    python = Detector.from_path(package)
    _, _, files = val_split(tiny_synth)
    checked = 0
    for path in files:
        canvas = python.prepare([to_tensor(load_image(path))])
        rows = image_rows(python.run_canvas(canvas), 0)  # the graph's rows, as the Python runtime selects them
        keep = nonempty(canvas.to_image(torch.from_numpy(rows["boxes"]), 0)).numpy()
        got = rows_of(records, ids[path.name])
        if not len(got["masks"]):
            continue
        boxes = torch.from_numpy(got["boxes"].astype(np.float32))  # the C++ boxes, pasted by Python's rule
        want = paste_masks(torch.from_numpy(rows["masks"][keep]), boxes, canvas.original_hw[0]).numpy()
        assert np.array_equal(np.stack(got["masks"]).astype(bool), want), path.name
        checked += len(boxes)
    assert checked > 10


def test_cpp_draws_and_benchmarks(cpp, exported, tiny_synth, tmp_path):
    package = exported.package(ARCH)
    images, _, files = val_split(tiny_synth)
    out = ok(cpp("--artifact", package, "--source", images, "--vis", tmp_path / "vis", "--json", tmp_path / "d.json"))
    assert f"in {len(files)} images" in out
    for f in files:
        with Image.open(tmp_path / "vis" / f"{f.stem}.png") as drawn:
            assert drawn.size == Image.open(f).size
    assert all("file_name" in r and "image_id" not in r for r in json.loads((tmp_path / "d.json").read_text()))
    table = ok(cpp("--artifact", package, "--bench", "--batch", 1, 2, "--size", 128, "--iters", 3, "--warmup", 1,
                   "--json", tmp_path / "bench.json"))
    assert "model p50" in table and len(table.strip().splitlines()) == 3
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert [r["batch"] for r in rows] == [1, 2] and all(len(r["model_ms"]) == 3 and min(r["e2e_ms"]) > 0 for r in rows)
    # `siefpn-deploy bench --cpp`: the package in Python and in C++, side by side
    report = run_bench([package], batches=[1], sizes=[128], warmup=0, iters=2, device="cpu", cpp=True,
                       log=lambda *_: None)
    assert [r["variant"] for r in report["rows"]] == ["aoti fp32", "c++ aoti fp32"]


def test_cpp_bad_input_is_one_line_and_exit_2(cpp, exported, tiny_synth, tmp_path):
    package = exported.package(ARCH)
    images, _, files = val_split(tiny_synth)

    def refused(*args: object, code: int = 2) -> str:
        done = cpp(*args)
        assert done.returncode == code, (args, done.returncode, done.stderr)
        err = done.stderr.strip()
        assert len(err.splitlines()) == 1 and err.startswith("siefpn-infer: "), err
        assert "terminate" not in err and "Traceback" not in err
        return err

    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all" * 10)
    assert "--source not found" in refused("--artifact", package, "--source", tmp_path / "missing")
    assert "cannot read image" in refused("--artifact", package, "--source", tmp_path / "corrupt.jpg")
    assert "no images in" in refused("--artifact", package, "--source", tmp_path / "empty")
    assert "outside the exported range" in refused("--artifact", package, "--bench", "--size", 1024)
    assert "outside the exported range" in refused("--artifact", package, "--bench", "--batch", 8, "--size", 128)
    assert "compiled for cpu" in refused("--artifact", package, "--source", files[0], "--device", "cuda")
    assert "not found" in refused("--artifact", tmp_path / "none.pt2", "--source", files[0])
    assert "unknown artifact" in refused("--artifact", exported.onnx(ARCH, "onnx"), "--source", files[0])
    assert "expected an integer" in refused("--artifact", package, "--source", files[0], "--batch", 0)
    assert "required" in refused("--source", files[0])
    # a truncated package, and a package whose meta.json describes another export
    (tmp_path / "cut.pt2").write_bytes(package.read_bytes()[:4096])
    assert "cannot load the AOTInductor package" in refused("--artifact", tmp_path / "cut.pt2", "--source", files[0])
    shutil.copy(package, tmp_path / "other.pt2")
    meta = json.loads(meta_path(package).read_text())
    meta["classes"]["names"] = [n + "_x" for n in meta["classes"]["names"]]
    meta_path(tmp_path / "other.pt2").write_text(json.dumps(meta))
    assert "does not match other.meta.json (classes differ)" in refused("--artifact", tmp_path / "other.pt2",
                                                                       "--source", files[0])
    # values out of range in a meta.json (a damaged or hostile one): refused before they are used
    for key, bad, message in ((("preprocess", "divisibility"), 0, "preprocess.divisibility must be in 1..1024, got 0"),
                              (("max_detections",), 5000, "max_detections (K) must be in 1..3840, got 5000"),
                              (("shapes", "height", "max"), 10**9, "shapes.height must satisfy 1 <= min <= max")):
        meta = json.loads(meta_path(package).read_text())
        node = meta
        for k in key[:-1]:
            node = node[k]
        node[key[-1]] = bad
        meta_path(tmp_path / "other.pt2").write_text(json.dumps(meta))
        # the package's own copy of meta.json is compared first: a changed value fails that check, or the range
        err = refused("--artifact", tmp_path / "other.pt2", "--source", files[0])
        assert message in err or "does not match other.meta.json" in err, err
    # a value of the wrong type where the runtime reads it itself (nlohmann's own type_error used to exit 1)
    meta = json.loads(meta_path(package).read_text())
    meta["export"]["device"] = 5
    meta_path(tmp_path / "other.pt2").write_text(json.dumps(meta))
    assert '"export.device" has the wrong type' in refused("--artifact", tmp_path / "other.pt2", "--source", files[0])
    # annotations that do not list the images
    (tmp_path / "ann.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert "not listed in" in refused("--artifact", package, "--source", images, "--annotations", tmp_path / "ann.json")
    assert not list(tmp_path.glob(".out.json.*")) and not (tmp_path / "out.json").exists()  # no temp file left


def test_a_runtime_failure_exits_1(cpp, exported, tiny_synth, tmp_path):
    """The input is fine but the runtime cannot run it (torchvision's operators cannot be loaded): exit 1."""
    _, _, files = val_split(tiny_synth)
    env = {"PATH": "/usr/bin:/bin", "SIEFPN_TORCHVISION_DIR": str(tmp_path)}
    done = cpp("--artifact", exported.package(ARCH), "--source", files[0], env=env)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().startswith("siefpn-infer: runtime failure: cannot load torchvision's _C library")


def test_a_failed_write_leaves_the_target_and_no_temporary_file(cpp, exported, tiny_synth, tmp_path):
    """The output is written to a unique temporary file beside it and renamed into place: when the rename fails
    (here the target is a folder), the error is one line and nothing is left behind or changed."""
    _, _, files = val_split(tiny_synth)
    target = tmp_path / "dets.json"
    target.mkdir()
    (target / "keep").write_text("x")
    done = cpp("--artifact", exported.package(ARCH), "--source", files[0], "--json", target)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.strip().startswith(f"siefpn-infer: runtime failure: cannot write {target}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dets.json"] and (target / "keep").read_text() == "x"
    ok(cpp("--artifact", exported.package(ARCH), "--source", files[0], "--json", tmp_path / "new" / "dets.json"))
    assert json.loads((tmp_path / "new" / "dets.json").read_text()) is not None
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["dets.json"]


def test_cpp_build_errors_are_one_line(tmp_path, capsys):
    """--tensorrt on where no TensorRT is installed: the configure step fails, in one line naming what is missing."""
    if any(Path(d, "NvInfer.h").is_file() for d in ("/usr/include", "/usr/include/x86_64-linux-gnu",
                                                     "/usr/local/tensorrt/include")):
        pytest.skip("TensorRT is installed here: --tensorrt on would build")
    assert main(["cpp", "build", "--build-dir", str(tmp_path / "b"), "--tensorrt", "on"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the C++ configure failed") and "TensorRT" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA package path needs a GPU")
def test_a_cuda_package_runs_in_cpp_and_python(cpp, seeded, tiny_synth, tmp_path):
    """`--device cuda`: exported (and verified) on the GPU, then run by the Python runtime (`siefpn-deploy infer`)
    and by siefpn-infer. Each step is its own process, so a native crash is a failure that names its step."""
    package = tmp_path / "cuda.pt2"
    images, annotations, _ = val_split(tiny_synth)

    def step(name: str, *argv: object) -> None:
        done = subprocess.run([sys.executable, "-m", "siefpn_deploy", *map(str, argv)], capture_output=True, text=True,
                              timeout=900, check=False)
        assert done.returncode == 0, f"{name} exited {done.returncode}: {done.stderr[-2000:]}"

    step("export", "export", "--format", "aoti", "--device", "cuda", "--config-file", seeded.config(ARCH), "--output",
         package, "--dynamic-batch", "2", "--dynamic-size", "64", "256", "--box-candidates", "1800",
         "MODEL.WEIGHTS", seeded.weights(ARCH))
    step("infer", "infer", "--artifact", package, "--source", images, "--annotations", annotations, "--save-json",
         tmp_path / "python.json")
    ok(cpp("--artifact", package, "--source", images, "--annotations", annotations, "--json", tmp_path / "cpp.json"))
    python, native = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("python", "cpp"))
    assert len(native) == len(python) > 0
    for a, b in zip(native, python):  # both rounded alike (2 decimals for boxes, 5 for scores)
        assert a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]
        assert max(abs(u - v) for u, v in zip(a["bbox"], b["bbox"])) <= 0.011
        assert abs(a["score"] - b["score"]) <= 2e-5
