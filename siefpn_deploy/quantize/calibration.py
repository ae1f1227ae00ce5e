"""Calibration images: chosen from the train split, preprocessed by the runtime's own preprocessing,
cached in calib/ and streamed to the calibrator in batches with a progress bar.

The cache key is the ONNX sha256, the image list and the preprocessing, so a rerun with the same
three reuses the tensors and anything else recomputes them. The tensors are written with ordinary writes, never
through a writable memory map: a memory-mapped page that finds the disk full kills the process with SIGBUS,
with no message and the temporary file left behind, where a write() fails with ENOSPC, which `atomic_path`
turns into one line, removing the temporary file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ..core.contract import graph_inputs
from ..core.errors import UserError
from ..core.fileio import atomic_path, read_json, write_json
from ..core.progress import progress_bar
from ..core.staging import remove_stale
from ..data.coco import load_coco
from ..data.image import find_images, to_tensor
from ..data.preprocess import Preprocess


def images_of_annotations(annotation_file: Path, image_dir: Path | None) -> list[Path]:
    """Images listed in a COCO instances file; their folder is `image_dir`, else COCO's layout:
    annotations/instances_train2017.json -> train2017/."""
    if image_dir is None:
        image_dir = annotation_file.parent.parent / annotation_file.stem.removeprefix("instances_")
    if not image_dir.is_dir():
        raise UserError(f"image folder of {annotation_file} not found: {image_dir} (give it with --calib-image-dir)")
    coco = load_coco(annotation_file)
    return [image_dir / coco.imgs[i]["file_name"] for i in sorted(coco.imgs)]


def list_images(source: Path, image_dir: Path | None = None) -> list[Path]:
    """A folder's images (recursively, sorted), or the images of an instances JSON."""
    if source.suffix == ".json":
        if not source.is_file():
            raise UserError(f"calibration annotations not found: {source}")
        paths = images_of_annotations(source, image_dir)
        if not paths:
            raise UserError(f"{source} lists no images")
        return paths
    if not source.is_dir():
        raise UserError(f"calibration data not found: {source} (a folder of images or an instances JSON)")
    return find_images(source)


def choose(paths: list[Path], count: int) -> list[Path]:
    """`count` images spread evenly over the (sorted) list: the same choice on every rerun."""
    if count >= len(paths):
        return list(paths)
    return [paths[i * len(paths) // count] for i in range(count)]


@dataclass(frozen=True)
class CalibrationSet:
    """Preprocessed calibration images [N,3,H,W] float32, memory-mapped from the cache, and their image sizes
    [N,2] int32 (the graph's second input)."""

    path: Path
    images: list[Path]
    tensors: np.ndarray
    image_sizes: np.ndarray
    reused: bool

    @property
    def sizes_path(self) -> Path:
        """Where `image_sizes` is stored, beside `path`."""
        return self.path.with_name(self.path.name.removesuffix(".npy") + ".sizes.npy")


def cache_key(onnx_sha256: str, images: list[Path], preprocess: Preprocess, canvas: tuple[int, int]) -> dict[str, Any]:
    files = [[str(p.resolve()), p.stat().st_size, int(p.stat().st_mtime)] for p in images]
    return {"onnx_sha256": onnx_sha256, "images": files, "preprocess": preprocess.spec.as_meta(), "canvas": list(canvas)}


def load_or_build(images: list[Path], *, preprocess: Preprocess, canvas: tuple[int, int], onnx_sha256: str,
                  cache_dir: Path, log=print) -> CalibrationSet:
    """The preprocessed tensors of `images` on a fixed canvas, from calib/<key>.npy when the key matches."""
    key = cache_key(onnx_sha256, images, preprocess, canvas)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    npy, sidecar = cache_dir / f"calib-{digest}.npy", cache_dir / f"calib-{digest}.json"
    sizes_npy = cache_dir / f"calib-{digest}.sizes.npy"  # CalibrationSet.sizes_path
    # the sidecar is written last: its presence with the same key means both arrays are complete
    if npy.is_file() and sizes_npy.is_file() and sidecar.is_file() and read_json(sidecar, "calibration cache index") == key:
        log(f"[calib] reusing {len(images)} cached calibration images: {npy}")
        return CalibrationSet(npy, images, np.load(npy, mmap_mode="r"), np.load(sizes_npy), reused=True)
    remove_stale(cache_dir, log=log, stage="calib")  # what a killed run left half-written
    sizes = np.zeros((len(images), 2), np.int32)

    def rows() -> Iterable[np.ndarray]:
        for i, path in enumerate(progress_bar(images, desc="preprocess calibration images", unit="img")):
            one = preprocess([to_tensor(path)], canvas=canvas)
            sizes[i] = one.image_sizes[0]
            yield one.images[0].numpy()

    with atomic_path(npy) as tmp:
        write_npy(tmp, (len(images), 3, *canvas), rows())
    with atomic_path(sizes_npy) as tmp, tmp.open("wb") as f:
        np.save(f, sizes)
    write_json(sidecar, key)
    log(f"[calib] cached {len(images)} preprocessed calibration images ({npy.stat().st_size / 2**20:.0f} MiB): {npy}")
    return CalibrationSet(npy, images, np.load(npy, mmap_mode="r"), sizes, reused=False)


def write_npy(path: Path, shape: tuple[int, ...], rows: Iterable[np.ndarray]) -> None:
    """A float32 .npy of `shape` from its rows [shape[1:]], in order, with ordinary writes (why: the module's
    docstring)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": shape}
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for row in rows:
            f.write(np.ascontiguousarray(row, dtype=np.float32).reshape(shape[1:]).data)


def check_batch(count: int, batch: int) -> None:
    """Calibration runs whole batches: fewer images than one batch is a one-line error."""
    if count < batch:
        raise UserError(f"{count} calibration images are fewer than the calibration batch {batch}; "
                        "add images or lower --calib-batch")


class BatchReader(CalibrationDataReader):
    """An onnxruntime CalibrationDataReader over the cached tensors: the graph's feeds ({"images": [b,3,H,W],
    "image_sizes": [b,2]}) per call, with a progress bar per calibration pass."""

    def __init__(self, tensors: np.ndarray, image_sizes: np.ndarray, *, batch: int, desc: str = "calibrate") -> None:
        check_batch(len(tensors), batch)
        super().__init__()
        self.tensors, self.image_sizes, self.batch, self.desc = tensors, image_sizes, batch, desc
        self.starts = list(range(0, len(tensors) - batch + 1, batch))  # whole batches only
        self.position = 0
        self.bar = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position == 0:
            self.bar = progress_bar(total=len(self.starts) * self.batch, desc=self.desc, unit="img")
        if self.position >= len(self.starts):
            if self.bar is not None:
                self.bar.close()
            return None
        start = self.starts[self.position]
        self.position += 1
        self.bar.update(self.batch)
        return self.feeds(start)

    def get_first(self) -> dict[str, np.ndarray]:  # ModelOpt's extension: peek without advancing
        return self.feeds(self.starts[0])

    def feeds(self, start: int) -> dict[str, np.ndarray]:
        stop = start + self.batch
        return graph_inputs(self.tensors[start:stop], self.image_sizes[start:stop])

    def rewind(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.position = 0

    def set_range(self, start_index: int, end_index: int) -> None:  # part of ORT's reader interface
        self.starts = [s for s in self.starts if start_index <= s < end_index]
