"""Video and stream sources for `infer` (data/video.py, runtime/video.py) on videos the tests write with PyAV:
the annotated MP4 and the JSON's frame indices and timestamps, --stride and --max-frames, batches against frames
one by one, a folder of videos, a stream over HTTP (whole, dropped, stalled), and the bad inputs (truncated,
garbage, an unknown codec), each a one-line error that leaves what was written valid."""

from __future__ import annotations

import functools
import http.server
import itertools
import json
import re
import signal
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siefpn_deploy.cli import main
from siefpn_deploy.core.errors import UserError
from siefpn_deploy.core.signals import disposition_kept
from siefpn_deploy.data.synth import split_paths
from siefpn_deploy.data.video import Video, video_inputs
from siefpn_deploy.runtime import Detector
from siefpn_deploy.runtime.video import frame_records, run_video_infer

av = pytest.importorskip("av", reason="PyAV is not installed (pip install 'siefpn-deploy[video]')")

FPS = 25
FRAMES = 64
SIZE = (128, 160)  # H, W: inside the tiny exports' 64..256 range


def scene_frames(tiny_synth: Path, count: int = FRAMES, size: tuple[int, int] = SIZE) -> list[np.ndarray]:
    """A synthetic val image at SIZE panning 2 px a frame: the seeded models detect in every frame."""
    first = min(split_paths(tiny_synth, "val")[0].iterdir())
    base = np.asarray(Image.open(first).convert("RGB").resize(size[::-1]))
    return [np.roll(base, 2 * i, axis=1) for i in range(count)]


def write_video(path: Path, frames: list[np.ndarray], *, fps: int = FPS, codec: str = "libx264",
                container_format: str | None = None, options: dict[str, str] | None = None,
                rotation: int | None = None) -> Path:
    with av.open(str(path), "w", format=container_format, options=options or {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def decoded(path: Path) -> tuple[list[np.ndarray], list[float], str]:
    """Every frame of a video as RGB, its timestamps (seconds from the first) and its codec, read by PyAV alone."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        start = stream.start_time or 0
        pairs = [(f.to_ndarray(format="rgb24"), round(float((f.pts - start) * f.time_base), 6)) for f in c.decode(stream)]
        return [p[0] for p in pairs], [p[1] for p in pairs], stream.codec_context.name


def refused(capsys, *args: str) -> str:
    """The command fails with exit code 2 and one error line (progress-bar lines aside)."""
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not re.match(r"^infer [^:]*: +(\d+%\||\d+frame)", ln)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if "siefpn-tmp" in p.name]


@pytest.fixture(scope="module")
def clip(tiny_synth, tmp_path_factory) -> Path:
    """64 frames of 160x128 at 25 fps, H.264 in MP4 (moov first, so that a cut copy still opens)."""
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", scene_frames(tiny_synth),
                       options={"movflags": "+faststart"})


@pytest.fixture(scope="module")
def onnx_path(exported) -> str:
    return str(exported.onnx("retinanet", "onnx"))


def test_infer_on_a_generated_mp4_writes_an_annotated_mp4_and_json_with_frame_indices(onnx_path, clip, tmp_path,
                                                                                       capsys):
    out, dets = tmp_path / "out" / "clip.mp4", tmp_path / "dets.json"
    assert main(["infer", "--artifact", onnx_path, "--source", str(clip), "--save-vis", str(out), "--save-json",
                 str(dets), "--vis-score", "0"]) == 0
    assert f"in {FRAMES} frames of 1 video(s)" in capsys.readouterr().out
    source, source_times, _ = decoded(clip)
    drawn, drawn_times, codec = decoded(out)
    assert codec == "h264" and len(drawn) == FRAMES and drawn[0].shape == (*SIZE, 3)
    assert drawn_times == source_times == [round(i / FPS, 6) for i in range(FRAMES)]
    records = json.loads(dets.read_text())
    assert set(records[0]) == {"video", "frame_index", "timestamp", "class_name", "category_id", "bbox", "score"}
    assert {r["video"] for r in records} == {str(clip)}
    assert {r["frame_index"] for r in records} == set(range(FRAMES))  # the seeded model detects in every frame
    assert all(r["timestamp"] == source_times[r["frame_index"]] for r in records)
    assert min(r["score"] for r in records) < 0.5  # every detection, not just those drawn
    # the boxes are drawn: frames differ from the source by far more than the encoder's loss
    assert np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(drawn, source)]) > 3 * np.abs(
        decoded(write_video(tmp_path / "again.mp4", source))[0][0].astype(int) - source[0]).mean()
    assert no_temporary_files(tmp_path)


def test_batches_of_frames_detect_what_the_frames_do_one_by_one(onnx_path, clip):
    """Frames of one video share a canvas, so a batch of 4 changes no frame's detections. The JSON rounds boxes to
    0.01 px and scores to 1e-5; ONNX Runtime's kernels may sum in another order for another batch size, so the
    two may land a rounding step apart (raw values agree within 1e-4, well below it)."""
    detector = Detector.from_path(onnx_path)
    assert detector.max_batch == 4
    sizes = []
    predict = detector.predict

    def spy(images, **kwargs):
        sizes.append(len(images))
        return predict(images, **kwargs)

    detector.predict = spy
    inputs = video_inputs(str(clip))
    batched = run_video_infer(detector, inputs, save_vis=None, save_json=None, max_frames=30, log=lambda *a: None)
    assert sizes == [4] * 7 + [2]  # the default: the artifact's largest batch; the last one partial
    alone = []
    with Video(inputs[0]) as video:
        for frame in video.frames(max_frames=30):
            alone += frame_records(inputs[0], frame, predict(frame.image, batch_size=1))
    assert len(batched) == len(alone) > 30
    for a, b in zip(batched, alone):
        assert (a["frame_index"], a["timestamp"], a["category_id"]) == (b["frame_index"], b["timestamp"],
                                                                       b["category_id"])
        np.testing.assert_allclose(a["bbox"], b["bbox"], rtol=0, atol=0.0100001)
        assert abs(a["score"] - b["score"]) <= 1.00001e-5


def test_stride_and_max_frames_bound_the_frames_run(onnx_path, clip, tmp_path, capsys):
    out, dets = tmp_path / "out.mp4", tmp_path / "dets.json"
    assert main(["infer", "--artifact", onnx_path, "--source", str(clip), "--save-vis", str(out), "--save-json",
                 str(dets), "--stride", "3", "--max-frames", "5"]) == 0
    want = [0, 3, 6, 9, 12]
    assert sorted({r["frame_index"] for r in json.loads(dets.read_text())}) == want
    _, times, _ = decoded(out)
    assert times == [i / FPS for i in want]  # the source's clock: the video lasts as its frames did
    assert main(["infer", "--artifact", onnx_path, "--source", str(clip), "--save-json", str(dets), "--stride",
                 "20"]) == 0
    assert sorted({r["frame_index"] for r in json.loads(dets.read_text())}) == [0, 20, 40, 60]
    assert "in 4 frames" in capsys.readouterr().out


@pytest.mark.parametrize(("kind", "codec", "says"), [
    ("mp4", "libx264", "[mov,mp4,m4a,3gp,3g2,mj2] stream 0, offset"),  # FFmpeg's demuxer: "partial file"
    ("mkv", "libx264", "[matroska,webm] File ended prematurely"),
    ("avi", "mpeg4", "of the 64 its header lists (truncated?)"),  # FFmpeg says nothing: the header's frame count
])
def test_a_truncated_video_is_one_line_and_leaves_a_valid_partial_output(kind, codec, says, onnx_path, tiny_synth,
                                                                         tmp_path, capsys):
    """A file cut at 60%: exit 2, one line naming the video, the frame and why, and an MP4 and a JSON that hold the
    same frames, all that were run (the frames the decoder held when reading failed included)."""
    whole = write_video(tmp_path / f"whole.{kind}", scene_frames(tiny_synth), codec=codec,
                        options={"movflags": "+faststart"} if kind == "mp4" else None)
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    out, dets = tmp_path / "out" / "cut.mp4", tmp_path / "dets.json"
    err = refused(capsys, "infer", "--artifact", onnx_path, "--source", str(cut), "--save-vis", str(out),
                  "--save-json", str(dets))
    assert f"video {cut}" in err and says in err and f"are in {out} and {dets}" in err, err
    ran = int(re.search(r"the (\d+) frame\(s\) run before it", err).group(1))
    assert 5 < ran < FRAMES
    # the frames the reader decodes from the cut file, each at its source time. Not always i / FPS: x264 stores a
    # B-frame after the frame it refers to, so a cut can take a B-frame's data and keep the later frame's
    held = []
    with pytest.raises(UserError, match=re.escape(f"video {cut} ")), Video(video_inputs(str(cut))[0]) as video:
        held.extend(frame.time for frame in video.frames())
    assert held[0] == 0 and all(a < b for a, b in itertools.pairwise(held)) and held[-1] < FRAMES / FPS
    assert all(abs(t * FPS - round(t * FPS)) < 1e-6 for t in held)  # each one of the source's frames
    frames, times, _ = decoded(out)
    assert len(frames) == ran == len(held) and times == held
    records = json.loads(dets.read_text())
    assert {r["frame_index"] for r in records} == set(range(ran))
    assert all(r["timestamp"] == held[r["frame_index"]] for r in records)
    assert no_temporary_files(tmp_path)


def test_the_same_damage_twice_in_one_process_is_reported_twice(tiny_synth, tmp_path):
    """PyAV holds back a log message that repeats the one before it, process-wide: a second cut file would then
    read as a whole one, and the held message come out later, blamed on another source."""
    whole = write_video(tmp_path / "whole.mkv", scene_frames(tiny_synth, 24))
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 3 // 5])
    for _ in range(2):
        with pytest.raises(UserError, match=r"is damaged at frame \d+: \[matroska,webm\] File ended prematurely"), \
                Video(video_inputs(str(cut))[0]) as video:
            list(video.frames())
    with Video(video_inputs(str(whole))[0]) as video:  # and nothing of theirs lands on the next source
        assert len(list(video.frames())) == 24


def test_bad_files_are_one_line_errors_that_write_nothing(onnx_path, clip, tiny_synth, tmp_path, capsys):
    moov_last = write_video(tmp_path / "moov_last.mp4", scene_frames(tiny_synth, 16))  # the index is written last
    cut = tmp_path / "cut_index.mp4"
    cut.write_bytes(moov_last.read_bytes()[: moov_last.stat().st_size // 2])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(bytes(range(256)) * 64)
    text = tmp_path / "notes.txt"  # FFmpeg's tty demuxer would play it as ANSI art
    text.write_text("not a video\n" * 100)
    unknown = tmp_path / "unknown_codec.mp4"  # the sample entry's fourcc renamed: no decoder knows it
    unknown.write_bytes(clip.read_bytes().replace(b"avc1", b"zzzz"))
    out, dets = tmp_path / "out" / "vis.mp4", tmp_path / "out" / "dets.json"
    expected = {cut: "moov atom not found", garbage: "Invalid data found", text: "FFmpeg probed it as 'tty'",
                unknown: "has no decoder for its video codec"}
    for path, reason in expected.items():
        err = refused(capsys, "infer", "--artifact", onnx_path, "--source", str(path), "--save-vis", str(out),
                      "--save-json", str(dets))
        assert str(path) in err and reason in err, err
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_folder_of_videos_gives_an_annotated_mp4_each(onnx_path, tiny_synth, tmp_path, capsys):
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    frames = scene_frames(tiny_synth, 12)
    write_video(folder / "a.mp4", frames[:8])
    write_video(folder / "sub" / "b.mkv", frames, container_format="matroska", fps=10)
    out, dets = tmp_path / "vis", tmp_path / "dets.json"
    assert main(["infer", "--artifact", onnx_path, "--source", str(folder), "--save-vis", str(out), "--save-json",
                 str(dets)]) == 0
    assert "in 20 frames of 2 video(s)" in capsys.readouterr().out
    assert len(decoded(out / "a.mp4")[0]) == 8
    assert decoded(out / "sub" / "b.mp4")[1] == [i / 10 for i in range(12)]
    records = json.loads(dets.read_text())
    assert {r["video"] for r in records} == {str(folder / "a.mp4"), str(folder / "sub" / "b.mkv")}
    assert "2 videos need a folder" in refused(capsys, "infer", "--artifact", onnx_path, "--source", str(folder),
                                               "--save-vis", str(tmp_path / "one.mp4"))


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; under /drop/ 3/4 of a file, then the connection closes; under /stall/ 3/4, then silence
    for STALL_S seconds."""

    STALL_S = 4.0
    stalled: threading.Event | None = None  # set when a /stall/ response goes silent (a test's own Event)

    def log_message(self, *args) -> None:
        pass

    def copyfile(self, source, destination) -> None:
        data = source.read()
        if self.path.startswith(("/drop/", "/stall/")):
            destination.write(data[: len(data) * 3 // 4])
            destination.flush()
            if self.path.startswith("/stall/"):
                if self.stalled is not None:
                    self.stalled.set()
                time.sleep(self.STALL_S)
            return
        destination.write(data)

    def translate_path(self, path: str) -> str:
        return super().translate_path(re.sub(r"^/(drop|stall)/", "/", path))


@pytest.fixture
def http_server(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_stream_over_http_whole_dropped_and_stalled(onnx_path, tiny_synth, http_server, tmp_path, capsys):
    """FFmpeg's http protocol reads a stream as it arrives (Matroska: no seeking). A server that closes half way is
    a drop, one that goes silent is a stall past --read-timeout: one line each, what was run kept."""
    write_video(tmp_path / "live.mkv", scene_frames(tiny_synth, 32), container_format="matroska")
    out, dets = tmp_path / "out.mp4", tmp_path / "dets.json"
    assert main(["infer", "--artifact", onnx_path, "--source", f"{http_server}/live.mkv", "--save-json",
                 str(dets)]) == 0
    assert {r["frame_index"] for r in json.loads(dets.read_text())} == set(range(32))
    for how, reason in (("drop", "Stream ends prematurely"), ("stall", "no data for 1 s (--read-timeout)")):
        url = f"{http_server}/{how}/live.mkv"
        started = time.monotonic()
        err = refused(capsys, "infer", "--artifact", onnx_path, "--source", url, "--save-vis", str(out),
                      "--save-json", str(dets), "--read-timeout", "1")
        assert f"video {url} failed at frame" in err and reason in err, err
        assert time.monotonic() - started < 30
        ran = int(re.search(r"the (\d+) frame\(s\) run before it", err).group(1))
        assert 0 < ran < 32 and len(decoded(out)[0]) == ran
        assert {r["frame_index"] for r in json.loads(dets.read_text())} == set(range(ran))


def test_ctrl_c_during_a_stalled_read_stops_the_run_and_keeps_it(onnx_path, tiny_synth, http_server, tmp_path,
                                                                  monkeypatch):
    """PyAV holds a Ctrl-C that lands in a blocking read until the read returns, then loses it. Frames are read on
    a thread of their own, so Ctrl-C stops the run at once; it ends once the read returns (--read-timeout)."""
    stalled, predicted, interrupted = threading.Event(), threading.Event(), []
    monkeypatch.setattr(_Handler, "STALL_S", 8.0)
    monkeypatch.setattr(_Handler, "stalled", stalled)
    write_video(tmp_path / "live.mkv", scene_frames(tiny_synth, 32), container_format="matroska")
    detector = Detector.from_path(onnx_path)
    predict = detector.predict

    def noted_predict(images, **kwargs):
        try:
            return predict(images, **kwargs)
        finally:
            predicted.set()

    detector.predict = noted_predict

    def ctrl_c_once_stalled() -> None:
        # the run is past its start (a batch ran) and the server has gone silent: the reader is in, or about to
        # be in, the stalled read. Waiting on events, not a fixed delay, keeps this true on a loaded machine.
        if stalled.wait(60) and predicted.wait(60):
            time.sleep(0.5)
            interrupted.append(time.monotonic())
            signal.raise_signal(signal.SIGINT)

    out, dets, lines = tmp_path / "out.mp4", tmp_path / "dets.json", []
    timer = threading.Thread(target=ctrl_c_once_stalled, daemon=True)
    timer.start()
    # Ctrl-C as at a terminal: a suite started in the background by a non-interactive shell inherits SIGINT
    # ignored, and Python then leaves it so
    with pytest.raises(KeyboardInterrupt), disposition_kept(signal.SIGINT, signal.default_int_handler):
        run_video_infer(detector, video_inputs(f"{http_server}/stall/live.mkv"), save_vis=out, save_json=dets,
                        read_timeout_s=4, log=lines.append)
    ended = time.monotonic()
    # the Ctrl-C, then at most the read's own timeout: not the stall's end (8 s)
    assert interrupted and ended - interrupted[0] < 4 + 2.5
    ran = len(decoded(out)[0])
    assert 0 < ran < 32 and {r["frame_index"] for r in json.loads(dets.read_text())} == set(range(ran))
    assert lines == [f"[infer] interrupted; the {ran} frame(s) run before it are in {out} and {dets}"]


def test_ctrl_c_keeps_the_frames_run_so_far(onnx_path, clip, tmp_path):
    """Ctrl-C is how a camera or live stream ends: the MP4 and JSON hold the frames run, then it propagates."""
    detector = Detector.from_path(onnx_path)
    calls = []
    predict = detector.predict

    def interrupted_third_batch(images, **kwargs):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return predict(images, **kwargs)

    detector.predict = interrupted_third_batch
    out, dets, lines = tmp_path / "out.mp4", tmp_path / "dets.json", []
    with pytest.raises(KeyboardInterrupt):
        run_video_infer(detector, video_inputs(str(clip)), save_vis=out, save_json=dets, log=lines.append)
    assert len(decoded(out)[0]) == 8 and {r["frame_index"] for r in json.loads(dets.read_text())} == set(range(8))
    assert lines == [f"[infer] interrupted; the 8 frame(s) run before it are in {out} and {dets}"]


def test_a_display_rotation_is_applied_as_exif_orientation_is(tiny_synth, tmp_path):
    """A phone's portrait video: frames stored landscape with a display matrix saying turn them a quarter."""
    image = np.zeros((64, 96, 3), np.uint8)
    image[:, 48:] = (230, 30, 30)  # right half red
    path = write_video(tmp_path / "rotated.mp4", [image] * 4, rotation=90)
    with Video(video_inputs(str(path))[0]) as video:
        frames = list(video.frames())
    assert len(frames) == 4 and frames[0].image.shape == (96, 64, 3)
    top, bottom = frames[0].image[:40].mean(axis=(0, 1)), frames[0].image[-40:].mean(axis=(0, 1))
    assert top[0] > 200 and bottom[0] < 40  # turned counter-clockwise: the right half is on top


def test_video_inputs_name_files_folders_cameras_and_urls(tiny_synth, tmp_path):
    images = split_paths(tiny_synth, "val")[0]
    assert video_inputs(str(images)) is None and video_inputs(str(min(images.iterdir()))) is None
    assert video_inputs(str(tmp_path / "missing.mp4")) is None  # not found: the image path says so
    (url,) = video_inputs("rtsp://admin:secret@10.0.0.5:554/stream1")
    assert url.name == "rtsp://admin:***@10.0.0.5:554/stream1" and url.stem == "stream1" and not url.local
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.mp4").write_bytes(b"")
    (mixed / "b.png").write_bytes(b"")
    with pytest.raises(UserError, match="both images and videos"):
        video_inputs(str(mixed))
    if not Path("/dev/video7").exists():
        with pytest.raises(UserError, match="camera"):
            video_inputs("7")


def test_video_options_are_checked_before_the_model_loads(clip, tiny_synth, tmp_path, capsys):
    images = str(split_paths(tiny_synth, "val")[0])
    missing = str(tmp_path / "nothing.onnx")  # never opened: each refusal comes first
    assert "--stride: for a video source" in refused(capsys, "infer", "--artifact", missing, "--source", images,
                                                     "--stride", "2")
    assert "--stride must be >= 1" in refused(capsys, "infer", "--artifact", missing, "--source", str(clip),
                                              "--stride", "0")
    assert "KEY=VALUE" in refused(capsys, "infer", "--artifact", missing, "--source", str(clip), "--source-option",
                                  "tcp")
    assert "--annotations lists images" in refused(capsys, "infer", "--artifact", missing, "--source", str(clip),
                                                   "--annotations", str(tmp_path / "a.json"))


def test_the_writer_keeps_odd_sizes_and_source_timestamps(tmp_path):
    """A 4:2:0 H.264 frame has even sides: an odd one gets its last row and column repeated, and the timestamps
    (here of a --stride 3 run of a 30 fps source) are kept to the output's 1/90000 s clock."""
    from siefpn_deploy.runtime.video import VideoWriter

    writer = VideoWriter(tmp_path / "odd.mp4", fps=Fraction(10))
    times = [0.0, 0.1, 0.2, 0.3]
    for t in times:
        writer.write(np.full((101, 75, 3), 128, np.uint8), t)
    writer.close()
    frames, got, _ = decoded(tmp_path / "odd.mp4")
    assert got == times and frames[0].shape == (102, 76, 3)

