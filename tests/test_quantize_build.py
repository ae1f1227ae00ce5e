"""`siefpn-deploy quantize` (FP16 AutoCast, INT8 explicit Q/DQ) and `siefpn-deploy build` (strongly typed
TensorRT; TensorRT-RTX builds on this CPU-only machine)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import FP32_AP_FLOOR, SMALL_SET_BUDGETS, broken_int8

from siefpn_deploy.cli import main
from siefpn_deploy.core.contract import GraphContract
from siefpn_deploy.core.errors import UserError
from siefpn_deploy.core.sidecar import read_meta
from siefpn_deploy.data import CocoDetection
from siefpn_deploy.data.synth import split_paths
from siefpn_deploy.model.predictor import Predictor
from siefpn_deploy.quantize.precision import DEFAULT_EXCLUDES
from siefpn_deploy.runtime import Detector
from siefpn_deploy.runtime.backends import check_profile
from siefpn_deploy.runtime.detector import engine_model_meta
from siefpn_deploy.tensorrt.plan import engine_meta_path, read_engine_meta

# Quantization, engine builds and parity do not branch on the box head: Mask R-CNN's graph is Faster R-CNN's with
# the mask branch, so these two cover both (test_export.py exports and checks all three)
QUANTIZED_ARCHS = ["retinanet", "mask_rcnn"]


def val_images(data: Path, n: int) -> list[torch.Tensor]:
    images, annotations = split_paths(data, "val")
    dataset = CocoDetection(image_dir=images, annotation_file=annotations)
    return [dataset.image(i) for i in range(n)]


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


@pytest.mark.parametrize("arch", QUANTIZED_ARCHS)
def test_fp16_is_finite_and_keeps_attention_and_decoding_in_fp32(arch, quantized, tiny_synth):
    path = quantized.onnx(arch, "fp16")
    model = onnx.load(str(path))
    types = tensor_types(model)
    low = [n for n in model.graph.node if any(types.get(i) == onnx.TensorProto.FLOAT16 for i in n.input)]
    assert len(low) > 20, "the backbone and heads should run in FP16"
    kept = [n for n in model.graph.node if any(re.match(p, n.name) for p in DEFAULT_EXCLUDES.values())]
    gau = [n for n in kept if n.name.startswith("/backbone/neck/gau/") and n.op_type in ("MatMul", "Softmax")]
    assert len(gau) >= 4, "both GAU MatMuls and the softmax of every GAU call"  # 2 or 3 GAU calls
    for node in kept:
        assert all(types.get(i) != onnx.TensorProto.FLOAT16 for i in node.input if i), node.name
    detector = Detector.from_path(path)
    outputs = detector.run_canvas(detector.prepare(val_images(tiny_synth, 2)))
    assert all(np.isfinite(v).all() for v in outputs.values())
    meta = read_meta(path)
    assert meta["precision"] == "fp16" and meta["quantization"]["excludes"] == list(DEFAULT_EXCLUDES.values())


@pytest.mark.parametrize("arch", QUANTIZED_ARCHS)
def test_int8_has_qdq_differs_from_fp32_and_records_its_calibration(arch, quantized, tiny_synth):
    path = quantized.onnx(arch, "int8")
    model = onnx.load(str(path))
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    assert qdq > 0
    int8, fp32 = Detector.from_path(path), Detector.from_path(quantized.onnx(arch, "fp32"))
    canvas = fp32.prepare(val_images(tiny_synth, 2))
    a, b = int8.run_canvas(canvas), fp32.run_canvas(canvas)
    assert not np.array_equal(a["scores"], b["scores"]), "INT8 outputs equal FP32's: nothing was quantized"
    assert all(np.isfinite(v).all() for v in a.values())
    q = read_meta(path)["quantization"]
    assert q["calibration"]["method"] == "entropy" and q["calibration"]["images"] == 8 and q["qdq_nodes"] == qdq
    assert "/train" in q["calibration"]["source"] and q["source_sha256"] == read_meta(quantized.onnx(arch, "fp32"))["sha256"]
    # nothing the exclusions name got a Q/DQ pair on its inputs
    produced_by = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if re.match(DEFAULT_EXCLUDES["gau_attention"], node.name):
            assert all(produced_by.get(i) is None or produced_by[i].op_type != "DequantizeLinear" for i in node.input)


@pytest.mark.parametrize("arch", QUANTIZED_ARCHS)
def test_cpu_int8_is_laid_out_for_onnx_runtime_s_integer_kernels(arch, quantized, tiny_synth, capsys):
    path = quantized.onnx(arch, "int8-cpu")
    model = onnx.load(str(path))
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    produced_by = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized_convs = [n for n in convs if produced_by.get(n.input[0]) is not None
                       and produced_by[n.input[0]].op_type == "DequantizeLinear"]
    assert len(quantized_convs) > 20, "the backbone, neck and heads should run as integer convolutions"
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    int8_gemms = [n.name for n in gemms if getattr(produced_by.get(n.input[1]), "op_type", None) == "DequantizeLinear"]
    # int8 fully connected layers: the R-CNN box head's fc6, fc7, class and box; the neck's SE layers stay FP32
    assert len(int8_gemms) == (0 if arch == "retinanet" else 4) and len(gemms) > len(int8_gemms)
    assert all(name.startswith("/decoder/boxes/") for name in int8_gemms)
    for conv in quantized_convs:
        activation, weight = produced_by[conv.input[0]], produced_by.get(conv.input[1])
        assert init[activation.input[2]].dtype == np.uint8  # uint8 activations (zero point's type)
        assert weight is not None and weight.op_type == "DequantizeLinear"
        assert init[weight.input[0]].dtype == np.int8  # int8 weights, one scale per output channel
        assert init[weight.input[1]].shape == (init[weight.input[0]].shape[0],)
    # the exclusions hold here too: no quantized input to the GAU attention, scores or decoding
    for node in model.graph.node:
        if any(re.match(p, node.name) for p in DEFAULT_EXCLUDES.values()):
            assert all(produced_by.get(i) is None or produced_by[i].op_type != "DequantizeLinear" for i in node.input)
    q = read_meta(path)["quantization"]
    assert (q["target"], q["tool"], q["calibration"]["method"]) == ("ort-cpu", "onnxruntime.quantization.quantize_static", "max")
    int8, fp32 = Detector.from_path(path), Detector.from_path(quantized.onnx(arch, "fp32"))
    canvas = fp32.prepare(val_images(tiny_synth, 2))
    a, b = int8.run_canvas(canvas), fp32.run_canvas(canvas)
    assert not np.array_equal(a["scores"], b["scores"]) and all(np.isfinite(v).all() for v in a.values())
    # TensorRT does not take uint8 activations: `build` says which model to build instead
    assert main(["build", "--onnx", str(path)]) == 2
    assert "build the `quantize --target tensorrt` model" in capsys.readouterr().err


def test_budget_gates_pass_fp16_and_calibrated_int8_and_fail_a_broken_int8(detecting, tmp_path, capsys):
    fp32, fp16, int8, cpu_int8 = (detecting.onnx(p) for p in ("fp32", "fp16", "int8", "int8-cpu"))
    broken = tmp_path / "broken.int8.onnx"
    broken_int8(int8, broken)
    code = main(["parity", "--config-file", str(detecting.config), "--artifacts", str(fp32), str(fp16), str(int8),
                 str(cpu_int8), str(broken), "--budget", *SMALL_SET_BUDGETS, "--report", str(tmp_path / "r"),
                 "MODEL.WEIGHTS", str(detecting.weights)])
    print(capsys.readouterr().out)
    report = json.loads((tmp_path / "r" / "parity.json").read_text())
    reference, *rows = report["artifacts"]
    assert 100 * reference["metrics"]["bbox"]["AP"] >= FP32_AP_FLOOR, "the gate needs a model that detects"
    assert [(r["precision"], r["status"]) for r in rows] == [("fp32", "pass"), ("fp16", "pass"), ("int8", "pass"),
                                                             ("int8", "pass"), ("int8", "fail")]
    assert [r.get("int8_target") for r in rows] == [None, None, "tensorrt", "ort-cpu", "tensorrt"]
    assert rows[0]["delta"]["bbox"] == pytest.approx(0, abs=0.1) and rows[1]["delta"]["bbox"] >= -0.5
    assert -2.0 <= rows[2]["delta"]["bbox"] and -2.0 <= rows[3]["delta"]["bbox"] and rows[4]["delta"]["bbox"] < -2.0
    assert code == 1 and not report["passed"]


@pytest.mark.parametrize("arch", QUANTIZED_ARCHS)
def test_every_precision_builds_with_a_matching_sidecar(arch, quantized, tmp_path, capsys):
    pytest.importorskip("tensorrt_rtx_bindings", reason="no TensorRT builder installed (pip install '.[tensorrt-rtx]')")
    for precision in ("fp32", "fp16", "int8"):
        source = quantized.onnx(arch, precision)
        engine = tmp_path / f"{arch}.{precision}.plan"
        assert main(["build", "--onnx", str(source), "--engine", str(engine), "--min-shape", "1,3,64,64",
                     "--opt-shape", "1,3,128,128", "--max-shape", "2,3,128,160",
                     "--timing-cache", str(tmp_path / "timing.cache")]) == 0
        assert "[build] Building engine" in capsys.readouterr().out  # the progress monitor reported
        meta = read_engine_meta(engine)
        onnx_meta = read_meta(source)
        assert meta["precision"] == precision and meta["onnx_sha256"] == onnx_meta["sha256"]
        assert meta["profile"] == {"min": [1, 3, 64, 64], "opt": [1, 3, 128, 128], "max": [2, 3, 128, 160]}
        assert meta["tensorrt"]["flavour"] in ("tensorrt", "tensorrt-rtx") and meta["tensorrt"]["strongly_typed"]
        io = {t["name"]: t for t in meta["io"]}
        assert [t["name"] for t in meta["io"] if t["mode"] == "output"] == [o["name"] for o in onnx_meta["outputs"]]
        assert io["images"]["dtype"] == "float32" and io["images"]["shape"] == [-1, 3, -1, -1]
        assert io["boxes"]["shape"] == [-1, 100, 4] and io["num_dets"]["dtype"] == "int32"
        assert meta["model"]["classes"] == onnx_meta["classes"]
        if meta["tensorrt"]["flavour"] == "tensorrt":
            assert (tmp_path / "timing.cache").is_file() and meta["build"]["timing_cache"]
        else:  # TensorRT-RTX's timing-cache calls are no-ops: none is written or claimed
            assert not (tmp_path / "timing.cache").exists() and meta["build"]["timing_cache"] is None


def test_the_runtime_runs_an_engine_within_its_own_profile(quantized, tmp_path):
    """An engine built with a narrower profile than the ONNX's exported range: the runtime takes its batch and
    size ranges from the engine's sidecar, and a shape outside them is a one-line error before it runs."""
    pytest.importorskip("tensorrt_rtx_bindings", reason="no TensorRT builder installed (pip install '.[tensorrt-rtx]')")
    source = quantized.onnx("retinanet", "fp32")  # exported for batch 1..4 and 64..256 px
    engine = tmp_path / "narrow.plan"
    assert main(["build", "--onnx", str(source), "--engine", str(engine), "--min-shape", "1,3,64,64",
                 "--opt-shape", "1,3,128,128", "--max-shape", "2,3,128,160", "--timing-cache", ""]) == 0
    profile = read_engine_meta(engine)["profile"]
    meta = engine_model_meta(read_engine_meta(engine))
    assert read_meta(source)["shapes"]["batch"]["max"] == 4
    assert meta["shapes"] == {"batch": {"min": 1, "max": 2}, "height": {"min": 64, "max": 128},
                              "width": {"min": 64, "max": 160}}
    fed = []

    class ProfileCheckingBackend:  # stands in for the GPU: checks what the engine would be given
        kind, on_gpu, computes_in_torch = "tensorrt", True, False

        def run(self, images: np.ndarray, image_sizes: np.ndarray) -> dict[str, np.ndarray]:
            check_profile(profile, images.shape, source=str(engine))
            assert image_sizes.shape == (len(images), 2) and (image_sizes <= images.shape[2:]).all()
            fed.append(images.shape)
            return GraphContract.from_meta(meta, source=str(engine)).empty_outputs(len(images))

    predictor = Predictor(ProfileCheckingBackend(), meta, engine)
    assert len(predictor.predict([torch.rand(3, 300, 200)] * 5)) == 5  # larger images, more of them
    assert fed and all(b <= 2 and h <= 128 and w <= 160 for b, _, h, w in fed)
    with pytest.raises(UserError, match=r"narrow.plan: input \[4, 3, 128, 128\] is outside the engine's profile"):
        check_profile(profile, (4, 3, 128, 128), source=str(engine))
    # a profile whose smallest batch is 2: one image (or an odd leftover) is padded up to it, then sliced back
    profile = {**profile, "min": [2, 3, 64, 64]}
    fed.clear()
    pair = Predictor(ProfileCheckingBackend(), {**meta, "shapes": {**meta["shapes"], "batch": {"min": 2, "max": 2}}},
                     engine)
    assert len(pair.predict([torch.rand(3, 100, 120)] * 3)) == 3 and [s[0] for s in fed] == [2, 2]


# ------------------------------------------------------------------ bad input: one line each


def run(capsys, *args: str) -> str:
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_quantizing_a_quantized_model(quantized, capsys):
    err = run(capsys, "quantize", "--onnx", str(quantized.onnx("retinanet", "int8")), "--precision", "fp16")
    assert "already quantized (int8)" in err


def test_calibration_folder_without_images_and_too_few_images(exported, tmp_path, capsys):
    source = str(exported.onnx("retinanet", "tensor"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    assert "no images in" in run(capsys, "quantize", "--onnx", source, "--precision", "int8", "--calib-data",
                                 str(empty), "--calib-cache", str(tmp_path / "c"))
    three = tmp_path / "three"
    three.mkdir()
    for image in sorted(split_paths(exported.seeded.data, "train")[0].iterdir())[:3]:
        shutil.copy(image, three / image.name)
    err = run(capsys, "quantize", "--onnx", source, "--precision", "int8", "--calib-data", str(three),
              "--calib-batch", "4", "--calib-cache", str(tmp_path / "c"))
    assert "3 calibration images are fewer than the calibration batch 4" in err
    assert not list(Path(source).parent.glob("*.int8.onnx"))


def test_calibrating_on_the_evaluation_split_is_refused(exported, capsys):
    source = exported.onnx("retinanet", "tensor")
    val = read_meta(source)["datasets"]["test_images"]
    assert "is the evaluation split" in run(capsys, "quantize", "--onnx", str(source), "--precision", "int8",
                                            "--calib-data", val)


def test_a_corrupt_onnx(exported, tmp_path, capsys):
    source = exported.onnx("retinanet", "tensor")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(source.read_bytes()[: 5000])
    meta = json.loads(source.with_name(source.name[:-5] + ".meta.json").read_text())
    assert "bad.onnx has no bad.meta.json" in run(capsys, "quantize", "--onnx", str(bad), "--precision", "fp16")
    (tmp_path / "bad.meta.json").write_text(json.dumps(meta))  # a sidecar, but of other bytes
    assert "does not match bad.meta.json" in run(capsys, "quantize", "--onnx", str(bad), "--precision", "fp16")
    assert "does not match bad.meta.json" in run(capsys, "build", "--onnx", str(bad))
    import hashlib

    meta["sha256"] = hashlib.sha256(bad.read_bytes()).hexdigest()  # a matching sidecar, a truncated model
    (tmp_path / "bad.meta.json").write_text(json.dumps(meta))
    assert "cannot read ONNX model" in run(capsys, "quantize", "--onnx", str(bad), "--precision", "fp16")
    pytest.importorskip("tensorrt_rtx_bindings", reason="no TensorRT builder installed")
    err = run(capsys, "build", "--onnx", str(bad), "--engine", str(tmp_path / "bad.plan"))
    assert "cannot parse" in err and not (tmp_path / "bad.plan").exists()


def test_a_shape_outside_the_profile(exported, tmp_path, capsys):
    source = str(exported.onnx("retinanet", "tensor"))
    err = run(capsys, "build", "--onnx", source, "--max-shape", "8,3,256,256", "--engine", str(tmp_path / "x.plan"))
    assert "--max-shape 8,3,256,256 is outside the exported range 1,3,64,64 .. 4,3,256,256 (batch)" in err
    err = run(capsys, "build", "--onnx", source, "--opt-shape", "1,3,100,128", "--engine", str(tmp_path / "x.plan"))
    assert "multiples of 32" in err
    err = run(capsys, "build", "--onnx", source, "--min-shape", "2,3,128,128", "--opt-shape", "1,3,128,128",
              "--engine", str(tmp_path / "x.plan"))
    assert "min <= opt <= max" in err
    assert "must be B,3,H,W" in run(capsys, "build", "--onnx", source, "--max-shape", "4,3,256")
    assert not list(tmp_path.iterdir())


def test_calibration_cache_is_reused_and_keyed(exported, tmp_path, capsys):
    from siefpn_deploy.quantize.quantizer import QuantizeOptions, quantize_model

    options = QuantizeOptions(onnx=exported.onnx("retinanet", "tensor"), precision="fp16", num_calib=4,
                              calib_size=(96, 128), calib_cache=tmp_path / "calib", output=tmp_path / "a.onnx")
    quantize_model(options)
    assert "cached 4 preprocessed calibration images" in capsys.readouterr().out
    quantize_model(options)
    assert "reusing 4 cached calibration images" in capsys.readouterr().out
    quantize_model(QuantizeOptions(**{**vars(options), "calib_size": (128, 128)}))  # other preprocessing
    assert "cached 4 preprocessed" in capsys.readouterr().out
    assert len(list((tmp_path / "calib").glob("calib-*.sizes.npy"))) == 2
    assert len(list((tmp_path / "calib").glob("calib-*.npy"))) == 4  # each set: its tensors and its image sizes
    with pytest.raises(UserError, match="would overwrite the source"):
        quantize_model(QuantizeOptions(**{**vars(options), "output": options.onnx}))
    assert engine_meta_path("engines/x.int8.plan").name == "x.int8.engine.json"
    # without a cache folder the preprocessed images live in a temporary folder for the call only
    quantize_model(QuantizeOptions(**{**vars(options), "calib_cache": None, "output": tmp_path / "b.onnx"}))
    assert "cached 4 preprocessed" in capsys.readouterr().out and read_meta(tmp_path / "b.onnx")["quantization"][
        "calibration"]["cache"] is None


# load_or_build of 4 images (4 x 3 x 128 x 160 float32, 960 KiB) into argv[2], in a process of its own: the
# process may die (SIGBUS) or hit a file-size limit (argv[3], bytes) without touching the test's
FULL_DISK_SCRIPT = """
import os, resource, sys
from pathlib import Path
from siefpn_deploy.core.contract import PreprocessSpec
from siefpn_deploy.core.errors import UserError
from siefpn_deploy.data.image import find_images
from siefpn_deploy.data.preprocess import Preprocess
from siefpn_deploy.quantize.calibration import load_or_build

images, cache, limit = find_images(Path(sys.argv[1]))[:4], Path(sys.argv[2]), int(sys.argv[3])
preprocess = Preprocess(PreprocessSpec(min_size=96, max_size=160, divisibility=32, pixel_mean=(0.0, 0.0, 0.0),
                                       pixel_std=(1.0, 1.0, 1.0), color="BGR"))
if limit:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
try:
    load_or_build(images, preprocess=preprocess, canvas=(128, 160), onnx_sha256="0" * 64, cache_dir=cache, log=print)
except UserError as e:
    print(f"error: {e}")  # stdout: stderr has the progress bar
print("left:", sorted(os.listdir(cache)))
"""


def tmpfs_command(folder: Path, command: list[str]) -> list[str]:
    """`command` with a 256 KiB tmpfs mounted on `folder`, in a mount namespace of its own (unshare -rm); skips
    where this machine allows no such namespace."""
    probe = ["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", str(folder)]
    if shutil.which("unshare") is None or subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        pytest.skip("no tmpfs in a mount namespace here (unshare -rm)")
    return ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=256k tmpfs "$0" && exec "$@"', str(folder), *command]


@pytest.mark.parametrize("full", ["tmpfs", "file-size limit"])
def test_a_full_disk_while_caching_calibration_images_is_one_line_and_leaves_no_file(full, tiny_synth, tmp_path):
    """A real full file system (a 256 KiB tmpfs), or a file-size limit: one line naming the file and the cause, and
    no temporary file left. Through a writable memory map, the full tmpfs killed the process with SIGBUS, with no
    message and the sparse temporary file left behind."""
    cache = tmp_path / "calib"
    cache.mkdir()
    command = [sys.executable, "-c", FULL_DISK_SCRIPT, split_paths(tiny_synth, "train")[0], str(cache),
               str(256 << 10 if full == "file-size limit" else 0)]
    done = subprocess.run(tmpfs_command(cache, command) if full == "tmpfs" else command, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"  # SIGBUS: -7
    cause = "No space left on device" if full == "tmpfs" else "File too large"
    error, left = done.stdout.splitlines()
    assert error.startswith(f"error: cannot write {cache}/calib-") and error.endswith(f".npy: {cause}"), error
    assert left == "left: []"  # no temporary file, no half cache


def test_the_calibration_cache_keeps_each_images_size_and_feeds_both_inputs(tiny_synth, tmp_path):
    """The cached set holds each image's size on the canvas (the graph's image_sizes) beside its tensor; a rerun
    with the same key reuses both, and the reader feeds both inputs batch by batch."""
    from siefpn_deploy.core.contract import PreprocessSpec
    from siefpn_deploy.data.image import find_images, to_tensor
    from siefpn_deploy.data.preprocess import Preprocess
    from siefpn_deploy.quantize.calibration import BatchReader, load_or_build

    preprocess = Preprocess(PreprocessSpec(min_size=96, max_size=160, divisibility=32,
                                           pixel_mean=(103.53, 116.28, 123.675), pixel_std=(1.0, 1.0, 1.0), color="BGR"))
    images = find_images(split_paths(tiny_synth, "train")[0])[:4]
    build = lambda: load_or_build(images, preprocess=preprocess, canvas=(128, 160), onnx_sha256="0" * 64,
                                  cache_dir=tmp_path, log=lambda _: None)
    first, again = build(), build()
    assert not first.reused and again.reused
    want = np.array([preprocess([to_tensor(p)], canvas=(128, 160)).resized_hw[0] for p in images], np.int32)
    assert (want <= [128, 160]).all() and (want < [128, 160]).any()  # real sizes, not the canvas
    assert np.array_equal(first.image_sizes, want) and np.array_equal(again.image_sizes, want)
    assert np.array_equal(np.asarray(again.tensors), np.asarray(first.tensors))
    reader = BatchReader(again.tensors, again.image_sizes, batch=2)
    feeds = [reader.get_next() for _ in range(3)]
    assert feeds[2] is None
    assert [f["image_sizes"].tolist() for f in feeds[:2]] == [want[:2].tolist(), want[2:].tolist()]
    assert feeds[1]["images"].shape == (2, 3, 128, 160) and feeds[1]["images"].dtype == np.float32
