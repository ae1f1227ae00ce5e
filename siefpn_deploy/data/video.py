"""Video in: the frames of a video file, a folder of videos, a camera or a stream URL, decoded by PyAV (FFmpeg).

    inputs = video_inputs("clip.mp4")            # None for an image source (`data.image` reads those)
    with Video(inputs[0]) as video:
        for frame in video.frames(stride=2, max_frames=100):
            frame.index, frame.time, frame.image  # position in the source, seconds (its pts), RGB uint8 HxWx3

Why PyAV and not OpenCV (docs/runtime.md#video-and-streams has the comparison): FFmpeg's errors and log make a
cut or damaged file an error here, where OpenCV's `read()` returns False as at a clean end; each frame's exact
pts; FFmpeg's options per source; and an H.264 writer in the wheel.

Only the demuxers in DEMUXERS are ever run, whatever a file or a server claims to be: FFmpeg otherwise probes
with every demuxer it has (a text file opens as ANSI art through its tty demuxer), and a local file may open no
other protocol (a playlist inside it cannot fetch URLs). A frame's rotation (a phone's display matrix) is
applied, as EXIF orientation is for images.

Errors: opening, and each read, raise `VideoError`, a one-line `UserError` naming the source and the frame.
A failed read comes after the frames the decoder still held. At the end of a source, an error the demuxer logged
on the way (a cut MP4's "partial file", a cut Matroska file's "File ended prematurely"), a packet the decoder
refused, or a video that ends well short of the frame count or duration its header states (a cut AVI file,
which FFmpeg reads to the cut without a word), is a `VideoError` too. Errors the decoder logged and concealed (a
few damaged macroblocks, packet loss on a live stream) are not: `warnings` counts them. MPEG-TS states no length,
so a cut .ts file reads as a shorter one.
"""

from __future__ import annotations

import itertools
import math
import queue
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ..core.errors import UserError, one_line
from .image import IMAGE_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg",
                  ".flv", ".wmv", ".asf", ".ivf", ".h264", ".264", ".h265", ".265", ".hevc", ".y4m", ".mjpeg",
                  ".mjpg")
# FFmpeg's demuxer names (one name of each): MP4/MOV, Matroska/WebM, AVI, MPEG-TS and -PS, FLV (RTMP), ASF (WMV),
# IVF (VP8/9, AV1), raw H.264/H.265/MPEG-4/MJPEG, MJPEG over HTTP (IP cameras), Y4M, HLS, RTSP, and the cameras
READABLE = "mp4/mov, mkv/webm, avi, ts, mpg, flv, wmv, ivf, y4m, raw h264/h265"
DEMUXERS = ("mov", "matroska", "avi", "mpegts", "mpeg", "flv", "asf", "ivf", "h264", "hevc", "m4v", "mjpeg",
            "mpjpeg", "yuv4mpegpipe", "hls", "rtsp", "video4linux2", "avfoundation")
READ_TIMEOUT_S = 10.0
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# a video that ends more than this short of its header's frame count or duration counts as truncated: edit lists
# and open GOPs legitimately drop a few frames at the ends
SHORT_FRAMES, SHORT_SHARE = 2, 0.02


class VideoError(UserError):
    """A source that cannot be opened or read on: one line naming it and the frame where it failed."""


@dataclass(frozen=True)
class VideoInput:
    name: str  # in messages and JSON: the path as given, the URL without its password, or "camera N"
    url: str  # what FFmpeg opens
    stem: str  # the annotated video's file name, without .mp4
    format: str | None = None  # a camera's demuxer (v4l2, avfoundation)
    local: bool = False  # a file: FFmpeg may open no other protocol from it


@dataclass
class Frame:
    index: int  # its position among the source's decoded frames, from 0 (counting the ones --stride skips)
    time: float  # seconds from the stream's first frame, from its pts (index / fps where a frame has none)
    image: np.ndarray  # RGB uint8 [H, W, 3], rotated as the stream's display matrix says


def video_inputs(source: str) -> list[VideoInput] | None:
    """What `--source` names when it is video: one input for a video file, a camera index or a URL, the videos
    below a folder (sorted), or None for an image source (an image file, a folder of images, a missing path)."""
    if URL.match(source):
        return [_url_input(source)]
    path = Path(source)
    if source.isdigit() and not path.exists():
        return [_camera_input(int(source))]
    if path.is_char_device():  # /dev/video0
        return [VideoInput(name=source, url=source, stem=path.name, format="v4l2")]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        videos = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
        if not videos:
            return None
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
            raise UserError(f"--source {path} holds both images and videos: pass a folder of one kind")
        inputs = [_file_input(p, p.relative_to(path).with_suffix("")) for p in videos]
        stems = [i.stem for i in inputs]
        clash = next((s for s in stems if stems.count(s) > 1), None)
        if clash is not None:
            raise UserError(f"--source {path} holds two videos named {clash}.*: their annotated videos would both "
                            f"be {clash}.mp4")
        return inputs
    if path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES:
        return [_file_input(path, Path(path.stem))]
    return None


def _file_input(path: Path, stem: Path) -> VideoInput:
    # "file:" so that a name with a colon is not read as a protocol
    return VideoInput(name=str(path), url=f"file:{path.resolve()}", stem=str(stem), local=True)


def _url_input(url: str) -> VideoInput:
    parts = urlsplit(url)
    shown = url
    if parts.password is not None:  # rtsp://user:secret@camera/...: the password stays out of logs and JSON
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        shown = urlunsplit(parts._replace(netloc=netloc))
    last = Path(parts.path).stem or (parts.hostname or "stream")
    return VideoInput(name=shown, url=url, stem=re.sub(r"[^A-Za-z0-9_.-]", "_", last))


def _camera_input(index: int) -> VideoInput:
    if sys.platform.startswith("linux"):
        device = f"/dev/video{index}"
        if not Path(device).exists():
            raise UserError(f"--source {index}: no camera {device} here")
        return VideoInput(name=f"camera {index}", url=device, stem=f"camera{index}", format="v4l2")
    if sys.platform == "darwin":
        return VideoInput(name=f"camera {index}", url=f"{index}:none", stem=f"camera{index}", format="avfoundation")
    raise UserError(f"--source {index}: a camera index is read through V4L2 (Linux) or AVFoundation (macOS); "
                    "here, stream the camera (rtsp://, http://) and pass its URL")


def source_options(pairs: list[str] | None) -> dict[str, str]:
    """`--source-option KEY=VALUE` (repeated) -> FFmpeg's options for opening the source."""
    options = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--source-option takes KEY=VALUE (e.g. rtsp_transport=tcp), got {pair!r}")
        options[key.strip()] = value
    return options


def check_frame_options(stride: int, max_frames: int | None, read_timeout_s: float) -> None:
    """A one-line error for an impossible --stride, --max-frames or --read-timeout."""
    if stride < 1:
        raise UserError(f"--stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise UserError(f"--max-frames must be >= 1, got {max_frames}")
    if not read_timeout_s > 0:
        raise UserError(f"--read-timeout must be > 0 seconds, got {read_timeout_s}")


def import_av() -> Any:
    try:
        import av
    except ImportError:
        raise UserError("video sources need PyAV: pip install 'siefpn-deploy[video]' (or pip install av)") from None
    return av


_OPENED = itertools.count()


class _FFmpegLog:
    """FFmpeg's error messages while a source is read, into a list (not stderr). PyAV's own level stays as it was
    after `close`; at None (its default) FFmpeg's messages are dropped and its errors carry none of them."""

    def __init__(self, av: Any) -> None:
        self._logging = av.logging
        self._previous = av.logging.get_level(), av.logging.get_skip_repeated()
        if self._previous[0] is None or self._previous[0] < av.logging.ERROR:
            av.logging.set_level(av.logging.ERROR)
        # every message, also one the same as the last (PyAV would hold it back, process-wide: a second cut file
        # would then read as whole, and its tally of repeats come out with the next source's messages)
        av.logging.set_skip_repeated(False)
        # A message PyAV held back as a repeat is let out, as its tally, when the next different one comes: let any
        # such tally out now, by a message of our own (never the same twice), so that it is not taken for this
        # source's
        with av.logging.Capture(local=False):
            av.logging.log(av.logging.FATAL, "siefpn-deploy", f"video source {next(_OPENED)} opens")
        self._capture = av.logging.Capture(local=False)  # the decoder's threads log too
        self.entries: list[tuple[int, str, str]] = self._capture.__enter__()

    def close(self) -> None:
        self._capture.__exit__(None, None, None)
        self._logging.set_level(self._previous[0])
        self._logging.set_skip_repeated(self._previous[1])


class Video:
    """One source, opened by `with` (a one-line `VideoError` when it cannot be) and closed on leaving."""

    def __init__(self, source: VideoInput, *, read_timeout_s: float = READ_TIMEOUT_S,
                 options: dict[str, str] | None = None) -> None:
        self.source, self.read_timeout_s, self.options = source, read_timeout_s, dict(options or {})
        self.warnings: list[str] = []  # concealed decoder errors, for the caller's summary
        self._container: Any = None
        self._log: _FFmpegLog | None = None

    # ------------------------------------------------------------------------------------------- opening

    def __enter__(self) -> Self:
        av = import_av()
        self._av = av
        self._log = _FFmpegLog(av)
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def abandon(self) -> None:
        """Leave the container open for good (`close` then releases only the log): a thread is still reading it."""
        self._container = None

    def _open(self) -> None:
        av, src = self._av, self.source
        options = {"format_whitelist": ",".join(DEMUXERS), **self.options}
        if src.local:
            options["protocol_whitelist"] = "file"
        try:
            self._container = av.open(src.url, format=src.format, container_options=options,
                                      timeout=(self.read_timeout_s, self.read_timeout_s))
        except (av.FFmpegError, OSError) as e:
            raise VideoError(f"cannot open video {src.name}: {self._reason(e)}") from None
        streams = self._container.streams.video
        if not streams:
            raise VideoError(f"cannot read video {src.name}: it has no video stream")
        stream = streams[0]
        if stream.codec_context is None:
            raise VideoError(f"cannot read video {src.name}: FFmpeg (in PyAV {av.__version__}) has no decoder for "
                             "its video codec")
        stream.thread_type = "AUTO"  # frame and slice threads
        self._stream = stream
        self.fps: Fraction | None = stream.average_rate or stream.guessed_rate or None
        self.frame_count: int | None = stream.frames or None  # as the header states it (MP4, AVI)
        if stream.duration and stream.time_base:
            self.duration_s: float | None = float(stream.duration * stream.time_base)
        elif self._container.duration:
            self.duration_s = self._container.duration / 1e6  # microseconds (av.time_base)
        else:
            self.duration_s = None
        self._start = stream.start_time or 0

    def expected_frames(self, stride: int = 1, max_frames: int | None = None) -> int | None:
        """How many frames `frames(stride, max_frames)` yields if the source is what its header says (a progress
        bar's total); None for a live stream."""
        total = self.frame_count
        if total is None and self.duration_s and self.fps:
            total = round(self.duration_s * self.fps)
        if total is None:
            return max_frames
        return min(math.ceil(total / stride), max_frames or sys.maxsize)

    # ------------------------------------------------------------------------------------------- reading

    def frames(self, *, stride: int = 1, max_frames: int | None = None) -> Iterator[Frame]:
        """Frames 0, stride, 2*stride, ... up to max_frames of them. Every frame is decoded (each depends on the
        ones before it); only the ones yielded are converted to RGB."""
        av, src = self._av, self.source
        decoded = self._decode()
        index, taken, last_time = -1, 0, 0.0
        logged, seen = self._log.entries, 0  # FFmpeg's messages, and how many were looked at
        damage: tuple[int, str] | None = None  # the first sign of missing or damaged data: (frame, what)
        concealed: list[tuple[int, str]] = []  # the decoder's own messages: it went on
        while max_frames is None or taken < max_frames:
            try:
                item = next(decoded, None)
            except (av.FFmpegError, OSError) as e:
                raise VideoError(f"video {src.name} failed at frame {index + 1} (after {last_time:.2f} s): "
                                 f"{self._reason(e)}") from None
            for level, name, message in logged[seen:]:  # what FFmpeg logged on the way to this frame
                if level <= av.logging.ERROR:
                    text = f"[{name}] {message.strip()}"
                    if name == self._stream.codec_context.name:
                        concealed.append((index + 1, text))
                    else:  # the demuxer, the network: data is missing
                        damage = damage or (index + 1, text)
            seen = len(logged)
            if item is None:
                break
            if isinstance(item, Exception):  # a packet the decoder refused
                damage = damage or (index + 1, self._reason(item))
                continue
            index += 1
            last_time = self._time(item, index)
            if index % stride == 0:
                taken += 1
                yield Frame(index, last_time, self._rgb(item))
        if concealed:
            at, text = concealed[0]
            self.warnings.append(f"the decoder reported {len(concealed)} error(s) in {src.name} (first at frame "
                                 f"{at}: {text})")
        if max_frames is not None and taken >= max_frames:
            return  # stopped before the end: whatever follows is not ours to judge
        if damage is not None:
            raise VideoError(f"video {src.name} is damaged at frame {damage[0]}: {damage[1]}; it ended after "
                             f"{index + 1} frames")
        self._check_length(index + 1, last_time)

    def _decode(self) -> Iterator[Any]:
        """The stream's frames in order, with the error of each packet the decoder refused in its place (decoding
        goes on with the next packet, as FFmpeg's own tools do). When reading fails, the frames the decoder still
        holds come first, then the error is raised."""
        av, stream = self._av, self._stream
        packets = self._container.demux(stream)
        failure: BaseException | None = None
        while failure is None:
            try:
                packet = next(packets, None)  # PyAV ends each stream with an empty packet: the decoder's flush
            except (av.FFmpegError, OSError) as e:
                failure, packet = e, None
            if packet is None and failure is None:
                return
            try:
                frames = packet.decode() if packet is not None else stream.decode(None)
            except av.FFmpegError as e:
                yield e
                continue
            yield from frames
        raise failure

    def _check_length(self, decoded: int, last_time: float) -> None:
        """A video that ends well short of what its header states was cut (FFmpeg reads a cut AVI file to the cut
        without an error)."""
        name = self.source.name
        if self.frame_count and decoded < self.frame_count - max(SHORT_FRAMES, SHORT_SHARE * self.frame_count):
            raise VideoError(f"video {name} ended at frame {decoded} of the {self.frame_count} its header lists "
                             "(truncated?)")
        if self.duration_s and self.fps and decoded:
            end = last_time + 1 / float(self.fps)
            if end < self.duration_s - max(SHORT_FRAMES / float(self.fps), SHORT_SHARE * self.duration_s):
                raise VideoError(f"video {name} ended at frame {decoded} ({end:.2f} s) of the {self.duration_s:.2f} s "
                                 "its header states (truncated?)")

    def _time(self, frame: Any, index: int) -> float:
        if frame.pts is not None and frame.time_base:
            return round(float((frame.pts - self._start) * frame.time_base), 6)
        return round(index / float(self.fps), 6) if self.fps else 0.0

    def _rgb(self, frame: Any) -> np.ndarray:
        image = frame.to_ndarray(format="rgb24")  # in the frame's own colour space and range
        turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise quarter turns to display it upright
        return np.ascontiguousarray(np.rot90(image, turns)) if turns else image

    def _reason(self, e: BaseException) -> str:
        """An FFmpeg error as one line: its message and what FFmpeg logged about it."""
        av = self._av
        if isinstance(e, av.ExitError):  # PyAV's timeout interrupted the read
            return f"no data for {self.read_timeout_s:g} s (--read-timeout)"
        text = getattr(e, "strerror", None) or one_line(e)
        log = getattr(e, "log", None)
        if log and len(log) == 3 and log[2].strip():
            message = log[2].strip()
            if message.startswith("Format not on whitelist"):
                return (f"not a video this reads (FFmpeg probed it as '{log[1]}'; it reads {READABLE}, and "
                        f"images are {', '.join(IMAGE_SUFFIXES)})")
            text = f"{text} ([{log[1]}] {message})"
        if isinstance(e, FileNotFoundError) or getattr(e, "errno", None) == 2:
            text = "no such file"
        return one_line(Exception(text))


class ReadAhead:
    """`Video.frames` on a thread of its own, up to `depth` frames ahead of their consumer: decoding overlaps the
    model, a live stream is read on while the model runs, and Ctrl-C lands at once (PyAV holds a signal that
    arrives during a blocking read until the read returns, and then loses it). The frames, then the error that
    ended them, come out in order. Leaving the `with` stops the thread after the read in progress (at most the
    read timeout; a further Ctrl-C meanwhile is ignored)."""

    _END = object()

    def __init__(self, video: Video, *, stride: int = 1, max_frames: int | None = None, depth: int = 8) -> None:
        self._video = video
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        frames = video.frames(stride=stride, max_frames=max_frames)
        self._thread = threading.Thread(target=self._read, args=(frames,), name="siefpn-video-read", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __iter__(self) -> Iterator[Frame]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _read(self, frames: Iterator[Frame]) -> None:
        try:
            for frame in frames:
                if not self._put(frame):
                    return
            self._put(self._END)
        except BaseException as e:  # noqa: BLE001 - the VideoError, or whatever else: raised to the consumer
            self._put(e)
        finally:
            frames.close()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        deadline = time.monotonic() + self._video.read_timeout_s + 5
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:
                self._thread.join(timeout=0.1)
            except KeyboardInterrupt:
                continue  # already stopping
        if self._thread.is_alive():  # still inside FFmpeg: closing the container under it would crash the process
            self._video.abandon()
