"""`siefpn-deploy triton-repo`: a Triton model repository whose config.pbtxt files Triton's own ModelConfig schema
(tritonclient's protobuf) accepts, with the artifact's I/O from its meta.json."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from siefpn_deploy.cli import main
from siefpn_deploy.core.contract import GraphContract, PreprocessSpec
from siefpn_deploy.core.errors import UserError
from siefpn_deploy.core.sidecar import meta_path, read_meta
from siefpn_deploy.model.predictor import Detections
from siefpn_deploy.serve import protocol
from siefpn_deploy.serve.python_env import READY, ensure_python_env
from siefpn_deploy.serve.repository import ModelIO, RepositoryOptions, Tensor, model_config, parse_config

ARCH = "mask_rcnn"  # its ONNX has every output (masks too); test_aoti.py and test_cpp.py export it as well
DTYPES = {"float32": model_config_pb2.TYPE_FP32, "int32": model_config_pb2.TYPE_INT32}


def read_config(folder):
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_the_repository_states_the_contract_in_triton_s_schema(exported, tmp_path, capsys):
    onnx = exported.onnx(ARCH, "onnx")
    assert main(["triton-repo", "--artifacts", str(onnx), "--output", str(tmp_path / "repo"), "--instance-kind", "cpu",
                 "--instances", "2", "--dynamic-batching-delay-us", "500"]) == 0
    model = tmp_path / "repo" / "mask_rcnn_onnx_onnx"
    config = read_config(model)
    meta = read_meta(onnx)
    contract = GraphContract.from_meta(meta, source=str(onnx))
    assert config.name == model.name and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == meta["shapes"]["batch"]["max"] == 4
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("images", model_config_pb2.TYPE_FP32, [3, -1, -1]), ("image_sizes", model_config_pb2.TYPE_INT32, [2])]
    # every output of the contract, in its order, with its dtype and per-image dims (num_dets: a scalar per image)
    got = [(o.name, o.data_type, list(o.dims), list(o.reshape.shape)) for o in config.output]
    want = [(o.name, DTYPES[o.dtype], list(o.shape[1:]) or [1], []) for o in contract.outputs()]
    assert got == want and config.output[0].HasField("reshape")
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.instance_group[0].count == 2 and config.dynamic_batching.max_queue_delay_microseconds == 500
    assert (model / "1" / "model.onnx").read_bytes() == onnx.read_bytes()
    assert json.loads((model / "meta.json").read_text())["classes"] == meta["classes"]
    assert "tritonserver --model-repository" in (tmp_path / "repo" / "README.md").read_text()


def test_a_static_batch_is_served_unbatched_and_bad_configs_are_caught():
    io = ModelIO(inputs=(Tensor("images", "float32", (3, 320, 320)), Tensor("image_sizes", "int32", (2,))),
                 outputs=(Tensor("num_dets", "int32", ()), Tensor("boxes", "float32", (100, 4))), batch=(2, 2), meta={})
    config = parse_config(model_config("m", "tensorrt_plan", io, RepositoryOptions(output=None)), source="m")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [list(t.dims) for t in (*config.input, *config.output)] == [[2, 3, 320, 320], [2, 2], [2], [2, 100, 4]]
    with pytest.raises(UserError, match="not a valid Triton ModelConfig"):
        parse_config('name: "m" max_batch_size: "four"', source="m/config.pbtxt")
    with pytest.raises(UserError, match="Triton batches from 1"):
        model_config("m", "tensorrt_plan", ModelIO(io.inputs, io.outputs, (2, 4), {}), RepositoryOptions(output=None))


def test_bad_artifacts_are_one_line_and_leave_the_repository_as_it_was(exported, tmp_path, capsys):
    onnx = exported.onnx(ARCH, "onnx")
    repo = tmp_path / "repo"
    assert main(["triton-repo", "--artifacts", str(onnx), "--output", str(repo)]) == 0
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    capsys.readouterr()

    def refused(*argv: str) -> str:
        assert main(["triton-repo", *argv, "--output", str(repo)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        return err

    stale = tmp_path / "stale.onnx"
    shutil.copy(onnx, stale)
    meta = json.loads(meta_path(onnx).read_text())
    meta_path(stale).write_text(json.dumps(meta))  # its sha256 is the original's: fine; then break the file
    stale.write_bytes(b"not the exported graph")
    assert "does not match" in refused("--artifacts", str(onnx), str(stale))
    (tmp_path / "x.pt2").write_bytes(b"PK")
    assert "serve a .pt2" in refused("--artifacts", str(tmp_path / "x.pt2"))
    assert "outside" in refused("--artifacts", str(onnx), "--max-batch", "9")
    assert "not found" in refused("--artifacts", str(tmp_path / "none.onnx"))
    assert "same model twice" in refused("--artifacts", str(onnx), str(onnx))
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before  # nothing half-written


def test_a_half_built_stub_environment_is_refused_not_used(tmp_path):
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)  # a build that died before writing READY
    with pytest.raises(UserError, match=f"not a finished stub environment \\(no {READY}\\)"):
        ensure_python_env(env, log=lambda _: None)


def test_the_served_form_round_trips_detections_and_carries_refusals():
    contract = GraphContract("mask_rcnn", 10, PreprocessSpec(min_size=8, max_size=16, divisibility=32,
                                                          pixel_mean=(1.0, 2.0, 3.0), pixel_std=(1.0, 1.0, 1.0)))
    rng = np.random.default_rng(0)
    masks = rng.random((3, 7, 9)) > 0.5
    dets = Detections(boxes=rng.random((3, 4)).astype(np.float32) * 9, scores=np.float32([0.9, 0.5, 0.2]),
                      labels=np.int64([1, 2, 1]), category_ids=[5, 7, 5], class_names=["a", "b", "a"], masks=masks)
    rows = protocol.stack(contract, [protocol.pack(contract, dets, (7, 9)), protocol.pack(contract, None, (0, 0), "no")])
    assert rows[protocol.BOXES].shape == (2, contract.max_detections, 4)
    got = protocol.unpack(rows, 0)
    np.testing.assert_array_equal(got.boxes, dets.boxes)
    assert got.labels.tolist() == [1, 2, 1] and got.category_ids == [5, 7, 5] and got.class_names == ["a", "b", "a"]
    assert (got.masks == masks).all()
    with pytest.raises(protocol.RequestError, match="image 1: no"):
        protocol.unpack(rows, 1, source="image 1")


def encoded(image: np.ndarray, fmt: str = "PNG") -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def test_a_served_row_never_depends_on_its_batch_mates_and_a_bad_row_fails_alone(exported, tiny_synth):
    """What Triton hands the model in one call: requests of several rows, images of different sizes, bad rows
    among them. Each good row's answer equals the Detector on that image alone; each bad row is an error row."""
    from siefpn_deploy.data.image import decode_image, find_images
    from siefpn_deploy.data.synth import split_paths
    from siefpn_deploy.runtime import Detector
    from siefpn_deploy.serve.server import DetectorModel

    detector = Detector.from_path(exported.onnx(ARCH, "onnx"), threads=1)
    files = find_images(split_paths(tiny_synth, "val")[0])
    good = [path.read_bytes() for path in files]
    rng = np.random.default_rng(0)
    wide = encoded(rng.integers(0, 255, (96, 256, 3), dtype=np.uint8))  # another canvas than the val images'
    thin = encoded(np.zeros((1, 400, 3), np.uint8))  # a side that would resize to 0
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    heavy = good[0] + bytes(max(map(len, [*good, wide])))  # a valid image with junk after it, over the byte cap
    requests = [{protocol.IMAGE: np.array([[good[0]], [thin], [good[1]]], dtype=object)},
                {protocol.IMAGE: np.array([[wide]], dtype=object)},
                {protocol.IMAGE: np.array([[eps], [good[2]], [good[3]], [wide], [heavy]], dtype=object)}]
    model = DetectorModel(detector, max_image_pixels=10**6, max_image_bytes=len(heavy) - 1)
    responses = model(requests)
    assert [len(r[protocol.NUM_DETS]) for r in responses] == [3, 1, 5]
    expected = {0: [good[0], None, good[1]], 1: [wide], 2: [None, good[2], good[3], wide, None]}
    for r, blobs in expected.items():
        for b, blob in enumerate(blobs):
            if blob is None:
                with pytest.raises(protocol.RequestError,
                                   match=r"too thin for this model|not a JPEG, PNG, WEBP, BMP|bytes, more than the"):
                    protocol.unpack(responses[r], b)
                continue
            got, want = protocol.unpack(responses[r], b), detector.predict(decode_image(blob))
            assert len(got) == len(want) and got.labels.tolist() == want.labels.tolist(), (r, b)
            np.testing.assert_allclose(got.boxes, want.boxes, rtol=0, atol=1e-3)
            np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-5)
            assert (got.masks == want.masks).all()
    assert sum(int(r[protocol.NUM_DETS].sum()) for r in responses) > 0  # the equality is not vacuous
    assert "in row 1" in protocol.text(responses[0][protocol.ERROR][1][0])


def test_a_large_jpeg_is_decoded_reduced_and_answered_in_its_own_pixels(exported, tiny_synth):
    """A val image enlarged 6x as a JPEG: the server decodes it at 1/4 (libjpeg's DCT scaling, at least the
    model's resize), and answers in the original's pixels, as the in-process Detector does on the full decode
    up to the different downsampling (the reduced decode averages, bilinear resizing of the full one samples)."""
    import io

    from PIL import Image

    from siefpn_deploy.core.contract import IMAGE_SIZES
    from siefpn_deploy.data.image import decode_image, decode_reduced, find_images, to_pixels
    from siefpn_deploy.data.synth import split_paths
    from siefpn_deploy.evaluation.agreement import box_iou
    from siefpn_deploy.runtime import Detector
    from siefpn_deploy.serve.ensemble import PreprocessStep
    from siefpn_deploy.serve.server import DetectorModel

    detector = Detector.from_path(exported.onnx(ARCH, "onnx"), threads=1)
    small = decode_image(find_images(split_paths(tiny_synth, "val")[0])[0].read_bytes())
    buffer = io.BytesIO()
    small.resize((small.width * 6, small.height * 6), Image.BICUBIC).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    reduced, original = decode_reduced(data, resized_to=detector.resized_size)
    assert original == (small.height * 6, small.width * 6) and reduced.width * 4 >= original[1] > reduced.width * 3
    model = DetectorModel(detector, max_image_pixels=10**7, max_image_bytes=len(data))
    response = model([{protocol.IMAGE: np.array([[data]], dtype=object)}])[0]
    got = protocol.unpack(response, 0)
    assert response[protocol.IMAGE_SIZE][0].tolist() == list(original)
    want = detector.predict(reduced, original_hw=[original])  # the same decode, in process
    np.testing.assert_allclose(got.boxes, want.boxes, rtol=0, atol=1e-3)
    assert (got.masks == want.masks).all() and got.masks.shape[1:] == original
    # the Triton ensemble's preprocessing decodes the same way
    prepared = PreprocessStep(detector.meta)(np.array([[data]], dtype=object))
    assert prepared[protocol.ORIGINAL_SIZE].tolist() == [list(original)]
    np.testing.assert_array_equal(prepared[IMAGE_SIZES], detector.prepare([to_pixels(reduced)]).image_sizes)
    full = detector.predict(decode_image(data))
    confident = full.scores > 0.5
    assert confident.any()  # the comparison is not vacuous
    matched = box_iou(full.boxes[confident], got.boxes).max(axis=1)
    assert (matched > 0.8).all(), matched


@pytest.mark.parametrize("step", ["preprocess", "postprocess"])
def test_the_ensemble_s_steps_run_pytorch_on_one_thread(step, exported, tmp_path, monkeypatch):
    """Each ensemble step is a Triton Python-backend process of its own that only pre- or postprocesses while
    the model step computes: its initialize puts PyTorch on one thread (`Predictor.torch_threads`)."""
    import sys
    import types

    import torch

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("triton_step_model", Path(__file__).parents[1]
                                                  / "siefpn_deploy" / "serve" / "triton_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shutil.copyfile(meta_path(exported.onnx(ARCH, "onnx")), tmp_path / "meta.json")
    config = {"parameters": {"step": {"string_value": step}}}
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        module.TritonPythonModel().initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path)})
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_each_instance_runs_its_own_backend(exported):
    """--instances N: N loads, N backends (OpenVINO's infer request and TensorRT's context are not shareable)."""
    from siefpn_deploy.runtime import Detector
    from siefpn_deploy.serve.options import ServeOptions
    from siefpn_deploy.serve.server import DetectorServer

    onnx = exported.onnx(ARCH, "onnx")
    server = DetectorServer(lambda: Detector.from_path(onnx, runtime="openvino", threads=1), ServeOptions(instances=3))
    assert len({id(d.backend.request) for d in server.detectors}) == 3
    assert server.detector is server.detectors[0] and server.name == "mask_rcnn_onnx_onnx"


def test_the_api_key_closes_inference_and_reading_unless_asked(tmp_path):
    from siefpn_deploy.serve.options import API_KEY_ENV, API_KEY_HEADER, GRPC_API_KEY_HEADER, ServeOptions, read_api_key
    from siefpn_deploy.serve.server import check_options, restricted_endpoints

    if importlib.util.find_spec("pytriton") is not None:  # the headers PyTriton's own clients send
        from pytriton.client.auth import create_auth_headers

        assert create_auth_headers("k", "http") == {API_KEY_HEADER: "k"}
        assert create_auth_headers("k", "grpc") == {GRPC_API_KEY_HEADER: "k"}
    admin = ["shared-memory", "model-repository", "statistics", "trace", "logging"]  # PyTriton's own list
    assert "inference" not in restricted_endpoints(ServeOptions(), admin)
    assert "statistics" not in restricted_endpoints(ServeOptions(), admin)
    keyed = restricted_endpoints(ServeOptions(api_key="k"), admin)
    assert {"inference", "metadata", "model-config", "statistics", "model-repository"} <= set(keyed)
    assert "health" not in keyed  # load balancers probe without a key
    opened = restricted_endpoints(ServeOptions(api_key="k", open_stats=True), admin)
    assert "inference" in opened and not {"metadata", "model-config", "statistics"} & set(opened)
    with pytest.raises(UserError, match="--open-stats"):
        check_options(ServeOptions(open_stats=True))
    # beside a key (no --open-stats) the metrics port is never opened, so a taken one does not stop the server
    import socket

    with socket.socket() as taken, socket.socket() as a, socket.socket() as b:
        for s in (taken, a, b):
            s.bind(("127.0.0.1", 0))
        taken.listen()
        free = [a.getsockname()[1], b.getsockname()[1]]
        a.close()
        b.close()
        ports = {"http_port": free[0], "grpc_port": free[1], "metrics_port": taken.getsockname()[1]}
        check_options(ServeOptions(api_key="k", **ports))
        with pytest.raises(UserError, match="--metrics-port .* is already in use"):
            check_options(ServeOptions(**ports))
        with pytest.raises(UserError, match="--metrics-port .* is already in use"):
            check_options(ServeOptions(api_key="k", open_stats=True, **ports))

    key = tmp_path / "key"
    key.write_text("s3cret-key\n")
    assert read_api_key(key, {}) == "s3cret-key"
    assert read_api_key(None, {API_KEY_ENV: "from-env"}) == "from-env" and read_api_key(None, {}) is None
    for bad in ("", "\n", "two words\n"):
        key.write_text(bad)
        with pytest.raises(UserError, match="--api-key-file"):
            read_api_key(key, {})
    with pytest.raises(UserError, match="--api-key-file .*missing"):
        read_api_key(tmp_path / "missing", {})


def test_the_processes_a_server_started_are_ended_even_when_they_ignore_sigterm(tmp_path):
    """A child that ignores SIGTERM and a grandchild orphaned when its parent exits: both found while they run,
    both gone after `end_processes` (what DetectorServer does with tritonserver's stubs)."""
    import os
    import subprocess
    import sys

    from siefpn_deploy.serve.processes import end_processes, process_tree, still_running

    if not Path("/proc/self/stat").is_file():
        pytest.skip("reads Linux's /proc")
    ready = tmp_path / "ready"
    script = (f"import os, signal, subprocess, sys, time\n"
              f"signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              f"subprocess.Popen([sys.executable, '-c', 'import signal, time; "
              f"signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
              f"open({str(ready)!r}, 'w').close()\ntime.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 30
        while not (ready.exists() and process_tree(child.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        # the child and its subtree only: this process has other children (the tests' background worker)
        tree = {child.pid: process_tree(os.getpid())[child.pid], **process_tree(child.pid)}
        assert len(tree) == 2, tree
        ended = end_processes(tree, grace_s=0.5)
        child.wait(timeout=10)
        assert sorted(ended) == sorted(tree) and still_running(tree) == []
    finally:
        if child.poll() is None:
            child.kill()
