"""`siefpn-deploy infer` on video: a file, a folder of videos, a camera or a stream -> an annotated MP4 and one
JSON record per detection with its frame index and timestamp.

Frames go to the artifact in batches (all frames of a video share one canvas, so a batch changes no frame's
detections; see `Predictor.canvas_of`). The JSON keeps every detection the model returns (its own score
threshold: COCOeval-style consumers need them all); only the drawing leaves low scores out.

When the source fails part way (a truncated or damaged file, a stream that drops or stalls past --read-timeout)
or the run is interrupted (Ctrl-C, the usual end of a camera or a live stream), what was done up to then is kept
under the names asked for: the MP4 is closed properly (a playable file holding every frame run so far, its moov
written) and the JSON holds the same frames' records; then the error is one line naming the source, the frame
and what was kept, and the exit status is 2 (130 for Ctrl-C). Any other failure (the model, the disk) leaves no
output behind, as for images.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.errors import UserError
from ..core.fileio import atomic_path, write_json
from ..core.progress import progress_bar
from ..data.video import (
    READ_TIMEOUT_S,
    VIDEO_SUFFIXES,
    Frame,
    ReadAhead,
    Video,
    VideoError,
    VideoInput,
    check_frame_options,
    import_av,
)
from ..evaluation.coco import coco_results
from .detector import Detections, Detector
from .visualize import DEFAULT_MIN_SCORE, draw, drawn_note, shown

# A video's default batch: the artifact's largest, at most this many frames (a live stream waits for a batch to
# fill, and eager PyTorch's nominal 64 full-size frames would be gigabytes); --batch goes up to the artifact's.
VIDEO_BATCH = 8
# H.264 where the FFmpeg inside PyAV has libx264 (its PyPI wheels do), else MPEG-4 part 2
ENCODERS = {"libx264": {"preset": "veryfast", "crf": "20"}, "mpeg4": {"qscale": "3"}}
TIME_BASE = Fraction(1, 90_000)  # the output's clock: any source's timestamps to 11 us
DEFAULT_FPS = Fraction(30)  # for a source that states no frame rate


class VideoWriter:
    """Annotated frames -> H.264 MP4 at `path` (the caller's temporary file). Each frame keeps its source
    timestamp, so the video matches the JSON and lasts as long as its source, also with --stride. Opened on the
    first frame, at that frame's size (made even, as 4:2:0 needs); a later frame of another size is scaled to it."""

    def __init__(self, path: Path, *, fps: Fraction | None) -> None:
        self.path, self.fps = path, fps or DEFAULT_FPS
        self.frames = 0
        self._container: Any = None
        self._last_pts = -1
        self._size: tuple[int, int] = (0, 0)  # the first frame's (height, width)

    def _open(self, height: int, width: int) -> None:
        av = import_av()
        self._av = av
        codec = next((c for c in ENCODERS if _has_encoder(av, c)), None)
        if codec is None:
            raise UserError(f"the FFmpeg in PyAV {av.__version__} has neither of the encoders {', '.join(ENCODERS)}")
        # faststart: the index goes before the frames on close, so a browser plays the file as it downloads
        self._container = av.open(str(self.path), "w", format="mp4", options={"movflags": "+faststart"})
        stream = self._container.add_stream(codec, rate=self.fps, options=ENCODERS[codec])
        self._size = (height, width)
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = TIME_BASE
        self._stream = stream

    def write(self, image: np.ndarray, time: float) -> None:
        if self._container is None:
            self._open(*image.shape[:2])
        if image.shape[:2] != self._size:  # the source changed size mid-stream
            image = np.asarray(Image.fromarray(image).resize(self._size[::-1], Image.BILINEAR))
        h, w = self._stream.height, self._stream.width
        if image.shape[:2] != (h, w):  # an odd side: its last row or column repeated
            image = np.pad(image, ((0, h - image.shape[0]), (0, w - image.shape[1]), (0, 0)), mode="edge")
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        pts = max(round(time / TIME_BASE), self._last_pts + 1)  # strictly increasing, whatever the source's clock
        frame.pts, frame.time_base = pts, TIME_BASE
        self._last_pts = pts
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and write the index: after this the file plays, whatever stopped the frames."""
        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None


def _has_encoder(av: Any, name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:  # noqa: BLE001 - UnknownCodecError, or a codec PyAV cannot open for writing
        return False
    return True


class _NothingWritten(Exception):
    """No frame reached the writer: leave no file (and any older one as it was)."""


@contextlib.contextmanager
def annotated_video(path: Path | None, fps: Fraction | None) -> Iterator[VideoWriter | None]:
    """A VideoWriter on a temporary file beside `path`, renamed onto it on leaving: also when the source failed
    (VideoError) or the run was interrupted, which then propagate after the file is in place; any other error
    leaves no file. No frame written, no file."""
    if path is None:
        yield None
        return
    failure: BaseException | None = None
    try:
        with atomic_path(path) as tmp:
            writer = VideoWriter(tmp, fps=fps)
            try:
                yield writer
            except (VideoError, KeyboardInterrupt) as e:
                failure = e
            finally:
                writer.close()
            if writer.frames == 0:
                raise _NothingWritten
    except _NothingWritten:
        pass
    if failure is not None:
        raise failure


def frame_records(source: VideoInput, frame: Frame, dets: Detections) -> list[dict[str, Any]]:
    """One JSON record per detection: the video, frame index and timestamp (seconds), then COCO's fields (bbox
    [x,y,w,h] in the frame's pixels, score, category_id, an RLE segmentation for masks) and the class name."""
    results = coco_results(0, dets.boxes, dets.scores, dets.category_ids, dets.masks)
    return [{"video": source.name, "frame_index": frame.index, "timestamp": frame.time, "class_name": name,
             **{k: v for k, v in r.items() if k != "image_id"}} for r, name in zip(results, dets.class_names)]


def vis_paths(inputs: list[VideoInput], save_vis: Path | None) -> list[Path | None]:
    """--save-vis for video: an .mp4 file for one source, else a folder of NAME.mp4."""
    if save_vis is None:
        return [None] * len(inputs)
    suffix = save_vis.suffix.lower()
    if suffix == ".mp4":
        if len(inputs) > 1:
            raise UserError(f"--save-vis {save_vis}: {len(inputs)} videos need a folder (NAME.mp4 each)")
        return [save_vis]
    if suffix in VIDEO_SUFFIXES:
        raise UserError(f"--save-vis {save_vis}: the annotated video is MP4; name an .mp4 file or a folder")
    return [save_vis / f"{source.stem}.mp4" for source in inputs]


def video_batch(detector: Detector, batch_size: int | None) -> int:
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch must be >= 1, got {batch_size}")
    return min(batch_size or VIDEO_BATCH, detector.max_batch)


@dataclass
class Progress:
    """What a video run has done so far: said in the summary, and in the error when a source fails."""

    frames: int = 0  # run through the model
    drawn: int = 0  # detections drawn
    records: list[dict[str, Any]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)  # the annotated videos in place
    warnings: list[str] = field(default_factory=list)

    def kept(self, save_json: Path | None) -> str:
        """'; the N frame(s) run before it are in A and B', for the error line; '' when no frame ran."""
        videos = ([str(self.written[0])] if len(self.written) == 1 else
                  [f"{len(self.written)} videos under {os.path.commonpath(self.written)}"] if self.written else [])
        places = videos + ([str(save_json)] if save_json is not None else [])
        if not self.frames or not places:
            return ""
        return f"; the {self.frames} frame(s) run before it are in {' and '.join(places)}"


def run_frames(video: Video, *, stride: int, max_frames: int | None, step: int, desc: str,
               handle: Callable[[list[Frame]], None]) -> None:
    """The frames of one open source in batches of `step`, to `handle`, with a progress bar in frames per second;
    read and decoded on a thread of their own, two batches ahead (`data.video.ReadAhead`). The frames decoded
    before a source failure are handled before the error propagates."""
    with progress_bar(total=video.expected_frames(stride, max_frames), desc=desc, unit="frame") as bar, \
            ReadAhead(video, stride=stride, max_frames=max_frames, depth=2 * step) as frames:
        batch: list[Frame] = []
        try:
            for frame in frames:
                batch.append(frame)
                if len(batch) == step:
                    handle(batch)
                    bar.update(len(batch))
                    batch = []
        except VideoError:
            if batch:
                handle(batch)
            raise
        if batch:
            handle(batch)
            bar.update(len(batch))


def run_video_infer(detector: Detector, inputs: list[VideoInput], *, save_vis: Path | None, save_json: Path | None,
                    batch_size: int | None = None, stride: int = 1, max_frames: int | None = None,
                    read_timeout_s: float = READ_TIMEOUT_S, options: dict[str, str] | None = None,
                    min_score: float = DEFAULT_MIN_SCORE, top: int | None = None, log=print) -> list[dict[str, Any]]:
    """`infer` over video sources (`data.video.video_inputs`): annotated MP4s (`save_vis`: a file for one source,
    else a folder) showing the detections scoring at least `min_score`, at most `top` per frame
    (`visualize.draw`); every detection in the JSON records (`frame_records`); a one-line error on a failed
    source, saying what was kept. `options`: FFmpeg's, for opening each source."""
    check_frame_options(stride, max_frames, read_timeout_s)
    outputs = vis_paths(inputs, save_vis)
    step = video_batch(detector, batch_size)
    done = Progress()
    with kept_on_failure(done, save_json, "infer", log):
        for source, out in zip(inputs, outputs):
            with Video(source, read_timeout_s=read_timeout_s, options=options) as video:
                _infer_source(detector, video, out, done, stride=stride, max_frames=max_frames, step=step,
                              vis={"min_score": min_score, "top": top})
    count = len(done.records)
    note = drawn_note(done.drawn, count, min_score=min_score, top=top, into=save_vis, per="frame") if save_vis else ""
    log(f"[infer] {count} detections in {done.frames} frames of {len(inputs)} video(s)" + note
        + (f"; JSON: {save_json}" if save_json else ""))
    return done.records


def _infer_source(detector: Detector, video: Video, out: Path | None, done: Progress, *, stride: int,
                  max_frames: int | None, step: int, vis: dict[str, Any]) -> None:
    source = video.source
    with annotated_video(out, video.fps / stride if video.fps else None) as writer:

        def handle(frames: list[Frame]) -> None:
            for frame, dets in zip(frames, detector.predict([f.image for f in frames], batch_size=step)):
                if writer is not None:
                    writer.write(np.asarray(draw(Image.fromarray(frame.image), dets, **vis)), frame.time)
                    done.drawn += len(shown(dets.scores, **vis))
                done.records += frame_records(source, frame, dets)
                done.frames += 1

        try:
            run_frames(video, stride=stride, max_frames=max_frames, step=step, desc=f"infer {source.stem}",
                       handle=handle)
        finally:
            done.warnings += video.warnings
            if writer is not None and writer.frames:
                done.written.append(out)  # in place once this block is left by a source failure or Ctrl-C


@contextlib.contextmanager
def kept_on_failure(done: Progress, save_json: Path | None, command: str, log) -> Iterator[None]:
    """Writes `done.records` to `save_json` at the end of a video run, also when a source failed or the run was
    interrupted (when any frame ran); a failed source is then re-raised as one line saying what was kept."""
    try:
        yield
    except (VideoError, KeyboardInterrupt) as e:
        if save_json is not None and done.frames:
            write_json(save_json, done.records, indent=None)
        for warning in done.warnings:
            log(f"[{command}] warning: {warning}")
        kept = done.kept(save_json)
        if isinstance(e, KeyboardInterrupt):
            log(f"[{command}] interrupted{kept}")
            raise
        raise VideoError(f"{e}{kept}") from None
    if save_json is not None:
        write_json(save_json, done.records, indent=None)
    for warning in done.warnings:
        log(f"[{command}] warning: {warning}")
