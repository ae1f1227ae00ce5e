"""`siefpn-deploy serve` and `client`: a real tritonserver (nvidia-pytriton's) on loopback ports, serving the tiny
Mask R-CNN ONNX through ONNX Runtime, run as its own process the way a user runs it.

The module's server is shared by the tests in file order; the SIGTERM test stops it. The last test runs a
`triton-repo --ensemble` repository in the bundled tritonserver."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import stub_env
from PIL import Image

from siefpn_deploy.cli import main
from siefpn_deploy.core.errors import UserError
from siefpn_deploy.data.image import find_images, load_image
from siefpn_deploy.data.synth import split_paths
from siefpn_deploy.runtime.detector import Detector
from siefpn_deploy.serve import protocol
from siefpn_deploy.serve.client import DetectorClient, RequestError, ThreadClients, run_load
from siefpn_deploy.serve.launch import READY, free_loopback_ports, serve_process, tritonserver_process
from siefpn_deploy.serve.options import API_KEY_HEADER, ServeOptions
from siefpn_deploy.serve.processes import session_members
from siefpn_deploy.serve.python_env import activate_script, ensure_python_env, shared_libpython

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pytriton") is None,
    reason="nvidia-pytriton is not installed (the README's test command installs it: pip install --no-deps "
    "nvidia-pytriton==0.7.0)")

ARCH = "mask_rcnn"  # every output, masks too
MAX_PIXELS = 200 * 200  # the tiny synthetic images are at most 160x160
EXIT_TIMEOUT_S = 5
MAX_BYTES = 200_000  # the tiny images are a few KiB
KEY = "test-key-0123456789"
INSTANCES = 2  # instances run batches at once, each with its own backend


class Server:
    def __init__(self, proc: subprocess.Popen, options: ServeOptions, log: Path, onnx: Path) -> None:
        self.proc, self.options, self.log, self.onnx = proc, options, log, onnx
        self.http, self.grpc = f"127.0.0.1:{options.http_port}", f"127.0.0.1:{options.grpc_port}"

    def output(self) -> str:
        return self.log.read_text()

    def client(self, url: str | None = None, **kwargs) -> DetectorClient:
        return DetectorClient(url or self.http, api_key=KEY, **kwargs)


@pytest.fixture(scope="module")
def python_env(tmp_path_factory) -> Path:
    """The stub's numpy<2 environment: the one the demo prepares (the demo test checks it did), built here
    when this module runs first (pip, from the index or pip's cache)."""
    return ensure_python_env(stub_env(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def offline(tmp_path_factory) -> dict[str, str]:
    """An environment with no package index and an empty pip cache: serving must need neither."""
    return {"PIP_NO_INDEX": "1", "PIP_CACHE_DIR": str(tmp_path_factory.mktemp("empty-pip-cache"))}


@pytest.fixture(scope="module")
def server(exported, python_env, offline, tmp_path_factory):
    onnx = exported.onnx(ARCH, "onnx")
    work = tmp_path_factory.mktemp("serve")
    http, grpc, metrics = free_loopback_ports(3)
    # with a key, and statistics and metrics left open (the load test reads them); with no package index
    options = ServeOptions(http_port=http, grpc_port=grpc, metrics_port=metrics, max_image_pixels=MAX_PIXELS,
                           max_image_bytes=MAX_BYTES, instances=INSTANCES, api_key=KEY, open_stats=True,
                           exit_timeout_s=EXIT_TIMEOUT_S, python_env=python_env, log_file=work / "tritonserver.log")
    with serve_process(onnx, options, log=work / "serve.out", extra=["--threads", "1"], environ=offline) as proc:
        yield Server(proc, options, work / "serve.out", onnx)


@pytest.fixture(scope="module")
def val_images(tiny_synth) -> list[Path]:
    return find_images(split_paths(tiny_synth, "val")[0])


def assert_same(served, local, what: str) -> None:
    assert len(served) == len(local), what
    np.testing.assert_allclose(served.boxes, local.boxes, rtol=0, atol=1e-3, err_msg=what)
    np.testing.assert_allclose(served.scores, local.scores, rtol=0, atol=1e-5, err_msg=what)
    assert served.labels.tolist() == local.labels.tolist(), what
    assert served.category_ids == local.category_ids and served.class_names == local.class_names, what
    assert served.masks.shape == local.masks.shape and (served.masks == local.masks).all(), what


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port`, from /proc/net/tcp and tcp6 (hex, as Linux
    writes them: 0100007F is 127.0.0.1, 00000000 is 0.0.0.0)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":  # LISTEN
                found.add(address)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads Linux's /proc/net/tcp")
def test_serve_listens_on_loopback_only_by_default(server):
    for port in (server.options.http_port, server.options.grpc_port, server.options.metrics_port):
        # 127.0.0.1, as /proc/net/tcp writes it or as tcp6 writes its IPv4-mapped form
        assert listening_addresses(port) <= {"0100007F", "0000000000000000FFFF00000100007F"}, port
        assert listening_addresses(port), port


def test_serve_started_with_no_package_index_and_left_the_pip_cache_empty(server, offline):
    # the fixture's server runs with PIP_NO_INDEX=1 and an empty pip cache; it answered (below) and never ran pip
    assert server.proc.poll() is None and READY in server.output()
    assert not any(Path(offline["PIP_CACHE_DIR"]).iterdir())


def test_the_stub_environment_offline_is_a_one_line_error_naming_the_fix(offline, tmp_path, monkeypatch):
    for name, value in offline.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError) as e:
        ensure_python_env(tmp_path / "env", log=lambda _: None)
    assert "\n" not in str(e.value) and "serve --prepare-env" in str(e.value) and str(tmp_path / "env") in str(e.value)
    assert not (tmp_path / "env").exists() and list(tmp_path.iterdir()) == []  # no half-built environment left


def test_served_detections_equal_the_in_process_detector_over_http_and_grpc(server, val_images):
    # the stub runs in the numpy<2 environment (under NumPy 2 its outputs come back empty)
    env = server.options.python_env
    assert f"Using Python execution env {env}" in server.options.log_file.read_text()
    assert [p.name for p in env.glob("lib/python3.*/site-packages/numpy-1.*.dist-info")]  # NumPy 1, for the stub
    libpython = shared_libpython()
    assert libpython is None or (env / "lib" / libpython.name).resolve() == libpython.resolve()
    local = Detector.from_path(server.onnx, device="cpu", threads=1)
    expected = [local.predict(load_image(p)) for p in val_images]
    assert sum(len(d) for d in expected) > 0  # the tiny model detects: equality is not vacuous
    for url, grpc in ((server.http, False), (server.grpc, True)):
        with server.client(url, grpc=grpc) as client:
            assert client.model == "mask_rcnn_onnx_onnx"
            for path, want in zip(val_images, expected):  # one at a time: each batch is the one image
                (got,) = client.detect([path.read_bytes()], sources=[path.name])
                assert_same(got, want, f"{path.name} over {'gRPC' if grpc else 'HTTP'}")


def test_the_client_command_writes_coco_results_like_infer(server, tiny_synth, tmp_path, capsys):
    images, annotations = (str(p) for p in split_paths(tiny_synth, "val"))
    served, local = tmp_path / "served.json", tmp_path / "local.json"
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    assert main(["client", "--url", server.grpc, "--grpc", "--source", images, "--annotations", annotations,
                 "--save-json", str(served), "--api-key-file", str(key)]) == 0
    assert "p50" in capsys.readouterr().out
    assert main(["infer", "--artifact", str(server.onnx), "--source", images, "--annotations", annotations,
                 "--save-json", str(local), "--device", "cpu"]) == 0
    a, b = json.loads(served.read_text()), json.loads(local.read_text())
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x["image_id"], x["category_id"], x["segmentation"]) == (y["image_id"], y["category_id"], y["segmentation"])
        np.testing.assert_allclose(x["bbox"] + [x["score"]], y["bbox"] + [y["score"]], atol=2e-2)


def test_the_client_command_on_a_video_writes_what_infer_writes(server, tiny_synth, tmp_path, capsys):
    """A video's frames go to the server as PNG, three in flight: the JSON is infer's for the same frames (frame
    indices, timestamps, masks), in frame order whatever order the answers came in."""
    pytest.importorskip("av", reason="PyAV is not installed (pip install 'siefpn-deploy[video]')")
    from test_video import scene_frames, write_video

    clip = write_video(tmp_path / "clip.mp4", scene_frames(tiny_synth, 12))
    served, local, key = tmp_path / "served.json", tmp_path / "local.json", tmp_path / "key"
    key.write_text(KEY + "\n")
    assert main(["client", "--url", server.http, "--source", str(clip), "--stride", "2", "--concurrency", "3",
                 "--save-json", str(served), "--api-key-file", str(key)]) == 0
    assert "in 6 frames of 1 video(s)" in capsys.readouterr().out
    assert main(["infer", "--artifact", str(server.onnx), "--source", str(clip), "--stride", "2", "--save-json",
                 str(local), "--device", "cpu"]) == 0
    a, b = json.loads(served.read_text()), json.loads(local.read_text())
    assert len(a) == len(b) > 0 and {x["frame_index"] for x in a} == {0, 2, 4, 6, 8, 10}
    for x, y in zip(a, b):
        keys = ("video", "frame_index", "timestamp", "category_id", "class_name", "segmentation")
        assert [x[k] for k in keys] == [y[k] for k in keys]
        np.testing.assert_allclose(x["bbox"] + [x["score"]], y["bbox"] + [y["score"]], atol=2e-2)


def test_load_200_requests_at_concurrency_8_without_errors_and_with_merged_batches(server, val_images, capsys):
    payloads = [p.read_bytes() for p in val_images]
    with server.client() as client:
        before = client.batch_stats()
        result = run_load(server.http, payloads, requests=200, concurrency=8, timeout_s=60, api_key=KEY)
        after = client.batch_stats()
    assert result.errors == [] and len(result.seconds) == 200
    executed = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * n for size, n in executed.items()) == 200  # every image ran, once
    assert max(size for size, n in executed.items() if n) > 1, executed  # the dynamic batcher merged requests
    # Triton's health endpoints and Prometheus metrics count the same requests
    for endpoint in ("v2/health/live", "v2/health/ready", f"v2/models/{client.model}/ready"):
        assert urllib.request.urlopen(f"http://{server.http}/{endpoint}", timeout=10).status == 200
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.options.metrics_port}/metrics", timeout=10).read().decode()
    success = [ln for ln in metrics.splitlines() if ln.startswith("nv_inference_request_success{") and client.model in ln]
    assert success and float(success[0].rsplit(" ", 1)[1]) >= 200
    with capsys.disabled():
        print(f"\n[serve load] 200 requests, concurrency 8: p50 {result.p_ms(50):.1f} ms, p99 {result.p_ms(99):.1f} ms,"
              f" {result.throughput:.1f} img/s; batches executed {dict(sorted(executed.items()))}")


def test_at_concurrency_8_every_response_equals_the_detector_on_that_image_alone(server, val_images):
    """Images of several canvas sizes, 8 requests in flight and 2 instances: whatever Triton batches together,
    each answer equals the in-process Detector on the image alone."""
    rng = np.random.default_rng(1)
    payloads = [p.read_bytes() for p in val_images]
    for h, w in ((96, 192), (160, 96), (128, 128)):  # canvases the val images do not have
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
        payloads.append(buf.getvalue())
    local = Detector.from_path(server.onnx, device="cpu", threads=1)
    expected = [local.predict(Image.open(io.BytesIO(b)).convert("RGB")) for b in payloads]
    assert len({(d.masks.shape[1:]) for d in expected}) >= 4  # several sizes, so several canvases
    order = [i % len(payloads) for i in range(64)]
    clients = ThreadClients(server.http, api_key=KEY)  # a connection per thread: tritonclient's is not thread-safe
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            got = list(pool.map(lambda i: clients.get().detect([payloads[i]])[0], order))
    finally:
        clients.close()
    for n, (i, dets) in enumerate(zip(order, got)):
        assert_same(dets, expected[i], f"request {n} (image {i})")
    assert sum(len(d) for d in expected) > 0


@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
def test_inference_needs_the_key_and_health_does_not(server, val_images, grpc):
    url = server.grpc if grpc else server.http
    payload = val_images[0].read_bytes()
    for key in (None, "wrong-key"):
        with DetectorClient(url, grpc=grpc, api_key=key) as client:  # metadata and statistics: --open-stats
            with pytest.raises(RequestError) as e:
                client.detect([payload])
            assert len(str(e.value).splitlines()) == 1
    with server.client(url, grpc=grpc) as client:
        assert len(client.detect([payload])) == 1
    assert urllib.request.urlopen(f"http://{server.http}/v2/health/ready", timeout=10).status == 200


def test_malformed_json_is_refused_in_one_line_and_the_server_keeps_answering(server, val_images):
    """Triton's own HTTP front end parses the JSON, before any of this project's code. This tritonserver answers
    JSON it cannot parse or read as a request with 500 (upstream triton-inference-server/server#8762: a parse
    error reported as an internal error; the fix, PR #8773, is not released), with a one-line reason. 400 is
    accepted too, so the test keeps passing once Triton is fixed. An empty body is a request of no inputs, which
    PyTriton hands the model as one empty image: that row's error says so."""
    name = "mask_rcnn_onnx_onnx"
    for body in (b'{"inputs": 7}', b'{"inputs": [{"name": "image"}]}', b"{not json", b"\xff\xfe", b"", b"[" * 100_000):
        request = urllib.request.Request(f"http://{server.http}/v2/models/{name}/infer", data=body, method="POST",
                                         headers={"Content-Type": "application/json", API_KEY_HEADER: KEY})
        try:
            answer = urllib.request.urlopen(request, timeout=30)
        except urllib.error.HTTPError as e:
            answer = e
        data = answer.read()
        if body == b"":
            assert answer.code == 200 and data.endswith(b"cannot read image in row 0: not a JPEG, PNG, WEBP, BMP image")
            continue
        reason = json.loads(data).get("error")
        assert answer.code in (400, 500) and reason and len(reason.splitlines()) == 1, (body, answer.code, reason)
    with server.client() as client:
        assert len(client.detect([val_images[0].read_bytes()])) == 1


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_requests_get_errors_and_the_next_request_is_answered(server, val_images):
    good = val_images[0].read_bytes()
    with server.client() as client:
        (want,) = client.detect([good])
        bad = {
            "wrong dtype": lambda: client.infer_raw({protocol.IMAGE: np.zeros((1, 1), np.float32)}),
            "wrong rank": lambda: client.infer_raw({protocol.IMAGE: np.array([[[good]]], dtype=object)}),
            "wrong shape": lambda: client.infer_raw({protocol.IMAGE: np.array([[good, good]], dtype=object)}),
            "too large": lambda: client.detect([png(400, 300)]),
            "too many bytes": lambda: client.detect([good + bytes(MAX_BYTES)]),
            "not a JPEG, PNG, WEBP, BMP image": lambda: client.detect([b"GIF89a, or so it says"]),
            "empty batch": lambda: client.infer_raw({protocol.IMAGE: np.zeros((0, 1), dtype=object)}),
        }
        reasons = {}
        for what, send in bad.items():
            with pytest.raises(RequestError) as e:
                send()
            reasons[what] = str(e.value)
            assert len(reasons[what].splitlines()) == 1, reasons[what]
            (again,) = client.detect([good])  # the server still answers, and answers right
            assert_same(again, want, f"after {what}")
        assert "BYTES" in reasons["wrong dtype"] and "shape" in reasons["wrong rank"]
        assert f"more than the {MAX_BYTES} allowed" in reasons["too many bytes"]
        assert "400x300" in reasons["too large"] and "not a JPEG, PNG, WEBP, BMP image" in reasons["not a JPEG, PNG, WEBP, BMP image"]
        # one bad image in a request of several: only its row is refused
        rows = client.infer_raw({protocol.IMAGE: np.array([[good], [b"junk"], [good]], dtype=object)})
        assert [protocol.text(e) for e in rows[protocol.ERROR].reshape(-1)][1] and not rows[protocol.ERROR][0][0]
        assert_same(protocol.unpack(rows, 2), want, "the row after a bad one")


def test_a_taken_port_and_an_unreachable_server_are_one_line_errors(server, capsys):
    port = int(server.http.rsplit(":", 1)[1])
    assert main(["serve", "--artifact", str(server.onnx), "--host", "127.0.0.1", "--http-port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --http-port {port}: 127.0.0.1:{port} is already in use"
    with pytest.raises(UserError, match="cannot reach a Triton server"):
        DetectorClient(f"127.0.0.1:{free_loopback_ports(1)[0]}")


def test_sigterm_lets_requests_in_flight_finish_and_exits_0_in_time(server, val_images):
    assert server.proc.poll() is None
    payload = val_images[0].read_bytes()
    outcomes: list[str] = []
    first = threading.Event()

    def request() -> None:
        try:
            with server.client(timeout_s=60) as client:
                for _ in range(4):
                    client.detect([payload])
                    outcomes.append("ok")
                    first.set()
        except UserError as e:  # refused once the server stops taking requests: a clean error, not a hang
            outcomes.append(f"refused: {e}")

    threads = [threading.Thread(target=request) for _ in range(6)]
    for t in threads:
        t.start()
    assert first.wait(60)
    sent = time.monotonic()
    os.kill(server.proc.pid, signal.SIGTERM)
    rc = server.proc.wait(timeout=EXIT_TIMEOUT_S + 30)  # tritonserver waits up to --exit-timeout for connections
    took = time.monotonic() - sent
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    assert rc == 0, server.output()[-2000:]
    assert took < EXIT_TIMEOUT_S + 30
    # nothing the server started is left: tritonserver, its stubs, PyTriton's helpers (its session is its pid).
    # multiprocessing's resource tracker outlives the server by design: it unlinks the shared memory left behind
    # once the server has exited, then exits itself, so the session is given a moment to empty.
    deadline = time.monotonic() + 10
    while session_members(server.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session_members(server.proc.pid) == [], server.output()[-2000:]
    assert "[serve] stopped" in server.output()
    assert outcomes.count("ok") >= 1 and all(o == "ok" or o.startswith("refused") for o in outcomes), outcomes


def add_parameter(config: Path, key: str, value: str) -> None:
    config.write_text(config.read_text() + f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n')


def test_the_ensemble_runs_in_triton_and_equals_the_in_process_detector(exported, python_env, val_images,
                                                                        tmp_path):
    """`triton-repo --ensemble`, served by nvidia-pytriton's tritonserver: the pre- and postprocessing models and
    the ensemble's scheduling run as written. That server has no ONNX Runtime backend, so the model step is a
    Python-backend stand-in running the same model.onnx with ONNX Runtime (tests/triton_onnx_model.py)."""
    onnx = exported.onnx(ARCH, "onnx")
    repo = tmp_path / "repo"
    assert main(["triton-repo", "--artifacts", str(onnx), "--output", str(repo), "--instance-kind", "cpu",
                 "--ensemble", "--max-image-pixels", str(MAX_PIXELS)]) == 0
    name = "mask_rcnn_onnx_onnx"
    # Triton's Python environment with siefpn-deploy in it (a fleet installs it in its image): the stub's NumPy-1
    # environment plus this interpreter's site-packages
    env = tmp_path / "env"
    shutil.copytree(python_env, env, symlinks=True)
    (env / "bin" / "activate").write_text(activate_script(env))
    site = next(env.glob("lib/python3.*/site-packages"))
    (site / "zz_siefpn.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    model = repo / name / "config.pbtxt"
    model.write_text(model.read_text().replace('platform: "onnxruntime_onnx"', 'backend: "python"'))
    shutil.copy(Path(__file__).with_name("triton_onnx_model.py"), repo / name / "1" / "model.py")
    for folder in (name, f"{name}_preprocess", f"{name}_postprocess"):
        add_parameter(repo / folder / "config.pbtxt", "EXECUTION_ENV_PATH", str(env))
    http, grpc, metrics = free_loopback_ports(3)
    options = ServeOptions(host="127.0.0.1", http_port=http, grpc_port=grpc, metrics_port=metrics, exit_timeout_s=5)
    local = Detector.from_path(onnx, device="cpu")
    with tritonserver_process(repo, options, work=tmp_path, log=tmp_path / "tritonserver.log"), \
            DetectorClient(f"127.0.0.1:{http}", model=f"{name}_ensemble") as client:
        for path in val_images:
            (got,) = client.detect([path.read_bytes()], sources=[path.name])
            assert_same(got, local.predict(load_image(path)), f"{path.name} through the ensemble")
        for bad, why in ((b"not a JPEG, PNG, WEBP, BMP image", "not a JPEG, PNG, WEBP, BMP image"), (png(400, 300), "400x300")):
            with pytest.raises(RequestError, match=why):
                client.detect([bad])
            (again,) = client.detect([val_images[0].read_bytes()])
            assert len(again) == len(local.predict(load_image(val_images[0])))
