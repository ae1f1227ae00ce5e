"""Seeded mutation fuzzing of the C++ runtime's readers: the image header check and torchvision's decoders behind
it, and the meta.json parser, through `siefpn-infer --check` (inputs read as inference reads them, no model run).

A mutation is one seeded change to a valid input: bits flipped, the file cut short, bytes inserted, the header's
image size or a chunk's length overwritten, or, for meta.json, a value of the wrong type, a hostile number, a key
removed, the text cut short or its bytes damaged. Hundreds of inputs go to one process (`--check` reports one
line per input and goes on), so a run costs one process start per batch, not per input.

Used by tests/test_cpp_fuzz.py (a few hundred inputs) and benchmarks/fuzz_cpp.py (thousands, with a table).
"""

from __future__ import annotations

import copy
import io
import json
import random
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from siefpn_deploy.core.contract import GraphContract, PreprocessSpec
from siefpn_deploy.runtime.cpp import infer_binary

# The outcomes of one input: read (0 or 2 per batch is the exit code), or a crash or hang of the process
OK, BAD, CRASH, HANG = "ok", "bad", "crash", "hang"
IMAGE_KINDS = ("bit flips", "truncation", "insertion", "size fields", "length fields")
# Kinds for some formats only. PNG chunks carry CRCs, which stop most damage at the chunk check: "flips, CRCs
# fixed" recomputes them, so that the damage reaches the compressed stream and the row filters. "EXIF flips" stay
# inside the EXIF block (JPEG's APP1 segment, PNG's eXIf chunk), which torchvision parses with its own code.
EXTRA_KINDS = {".png": ("flips, CRCs fixed", "EXIF flips"), ".jpg": ("EXIF flips",)}
META_KINDS = ("wrong types", "numbers", "missing keys", "truncation", "byte noise")

MAX_FLIPS = 8  # bits flipped by one mutation
MAX_INSERT = 16  # bytes inserted by one mutation
# what a hostile header states as a side: empty, tiny, beyond the pixel limit, the field's largest values
SIDES = (0, 1, 20000, 65535, 2**31 - 1, 2**32 - 1)
LENGTHS = (0, 1, 2, 0xFFFF, 2**31 - 1, 2**32 - 1)  # what a hostile chunk or segment length states
# numbers a hostile meta.json states: negative, zero, beyond int32 (2**32 + 1 wraps to 1), beyond any range
NUMBERS = (-1, 0, 0.5, -0.0, 2**31, 2**32 + 1, 2**63, 2**64 + 1, 10**30, 1e300, -1e300, 1e-300, float("nan"))
WRONG_TYPES = (None, True, "x", [], {}, [1, 2, 3], {"a": 1}, 1, 1.5)

SEED_SIZE = (64, 48)  # width, height: small, so that decoding costs nothing beside the process start
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
JPEG_SOS, JPEG_APP1, JPEG_NO_LENGTH = 0xDA, 0xE1, {0x01, *range(0xD0, 0xDA)}
EXIF_ORIENTATION, ROTATED_90 = 0x0112, 6


@dataclass(frozen=True)
class Mutation:
    name: str  # the file name it is written to
    kind: str
    data: bytes
    stated: tuple[int, int] | None = None  # "size fields": the width and height the header now states


class Result(NamedTuple):
    status: str  # OK, BAD, CRASH or HANG
    message: str = ""  # what was read, or why not


# --- the seeds -------------------------------------------------------------------------------------------------

def seed_images() -> dict[str, bytes]:
    """Valid images to mutate, by suffix: a PNG and a JPEG that carry an EXIF orientation (so that mutations reach
    torchvision's EXIF parser) and a lossy WebP."""
    rng = np.random.default_rng(0)
    width, height = SEED_SIZE
    coarse = rng.integers(0, 256, (height // 8, width // 8, 3), np.uint8)
    image = Image.fromarray(coarse).resize(SEED_SIZE, Image.BILINEAR)  # smooth: a JPEG of a few kB
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = ROTATED_90
    seeds = {}
    for suffix, fmt, options in ((".png", "PNG", {"exif": exif}), (".jpg", "JPEG", {"exif": exif, "quality": 90}),
                                 (".webp", "WEBP", {"quality": 80})):
        out = io.BytesIO()
        image.save(out, fmt, **options)
        seeds[suffix] = out.getvalue()
    return seeds


SEED_SPEC = PreprocessSpec(min_size=800, max_size=1333, divisibility=32, pixel_mean=(103.53, 116.28, 123.675),
                           pixel_std=(57.375, 57.12, 58.395), color="BGR")


def seed_meta() -> dict[str, Any]:
    """A valid Mask R-CNN meta.json, as export writes it (the contract, shape ranges, classes): every part that
    the C++ parser reads."""
    meta = GraphContract(architecture="mask_rcnn", max_detections=100, preprocess=SEED_SPEC).as_meta()
    meta["shapes"] = {"batch": {"min": 1, "max": 4}, "height": {"min": 64, "max": 1344},
                      "width": {"min": 64, "max": 1344}}
    meta["classes"] = {"names": ["circle", "square", "triangle"], "category_ids": [1, 2, 7]}
    return meta


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))  # x0 y0 dx dy


def png_passes(width: int, height: int, interlaced: bool) -> list[tuple[int, int]]:
    """The (width, height) of each pass that has pixels: the image, or Adam7's seven sub-images."""
    if not interlaced:
        return [(width, height)]
    sizes = [(-(-(width - x0) // dx), -(-(height - y0) // dy)) for x0, y0, dx, dy in ADAM7]
    return [(w, h) for w, h in sizes if w > 0 and h > 0]


def png_file(width: int, height: int, rows: bytes, *, bit_depth: int = 8, color_type: int = 0,
             interlaced: bool = False, wbits: int = 15, level: int = 9, strategy: int = zlib.Z_DEFAULT_STRATEGY,
             idat_size: int | None = None, before_idat: bytes = b"") -> bytes:
    """A PNG of the given layout whose image data is `rows` (filter bytes included), compressed as told and split
    into IDAT chunks of idat_size bytes (one chunk when None)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, wbits, 8, strategy)
    data = compressor.compress(rows) + compressor.flush()
    parts = [data] if idat_size is None else [data[i:i + idat_size] for i in range(0, len(data), idat_size)]
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, int(interlaced))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + before_idat +
            b"".join(png_chunk(b"IDAT", part) for part in parts) + png_chunk(b"IEND", b""))


def blank_png(width: int, height: int) -> bytes:
    """A 1-bit grayscale PNG of width x height zeros: a few kB however large, as a decompression bomb is."""
    return png_file(width, height, bytes(1 + (width + 7) // 8) * height, bit_depth=1)


# --- where a format keeps its size and length fields ------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    offset: int
    size: int  # bytes
    byteorder: str
    bits: int  # the value's bits within the field

    def write(self, data: bytearray, value: int) -> int:
        """Write value (cut to the field's bits, the other bits kept); the value written."""
        mask = (1 << self.bits) - 1
        old = int.from_bytes(data[self.offset:self.offset + self.size], self.byteorder)
        data[self.offset:self.offset + self.size] = ((old & ~mask) | (value & mask)).to_bytes(self.size, self.byteorder)
        return value & mask


def jpeg_segments(data: bytes) -> Iterator[tuple[int, int]]:
    """(offset of the 0xFF, marker) of each segment with a length, from SOI to SOS: a well-formed seed's."""
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker in JPEG_NO_LENGTH:
            at += 2
            continue
        yield at, marker
        if marker == JPEG_SOS:
            return
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")


def png_chunks(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(offset of the length field, type) of each chunk."""
    at = 8
    while at + 8 <= len(data):
        yield at, data[at + 4:at + 8]
        at += 12 + int.from_bytes(data[at:at + 4], "big")


def size_fields(data: bytes, suffix: str) -> tuple[Field, Field]:
    """The (width, height) fields the C++ header check reads (src/image_header.cpp)."""
    if suffix == ".png":
        return Field(16, 4, "big", 32), Field(20, 4, "big", 32)
    if suffix == ".jpg":
        sof = next(at for at, marker in jpeg_segments(data) if marker in JPEG_SOF)
        return Field(sof + 7, 2, "big", 16), Field(sof + 5, 2, "big", 16)
    assert data[12:16] == b"VP8 ", "the WebP seed is a simple lossy file"
    return Field(26, 2, "little", 14), Field(28, 2, "little", 14)


def length_fields(data: bytes, suffix: str) -> list[Field]:
    """Every chunk or segment length field (and WebP's RIFF size)."""
    if suffix == ".png":
        return [Field(at, 4, "big", 32) for at, _ in png_chunks(data)]
    if suffix == ".jpg":
        return [Field(at + 2, 2, "big", 16) for at, _ in jpeg_segments(data)]
    return [Field(4, 4, "little", 32), Field(16, 4, "little", 32)]


def fix_png_crcs(data: bytearray) -> None:
    """Recompute every whole chunk's CRC, so that libpng reads on past the CRC checks (after an overwritten IHDR
    size: goes on to allocate for it)."""
    for at, _ in png_chunks(bytes(data)):
        end = at + 8 + int.from_bytes(data[at:at + 4], "big")
        if end + 4 > len(data):
            return
        data[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(data[at + 4:end])))


# --- image mutations ---------------------------------------------------------------------------------------------

def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, MAX_FLIPS)):
        at = rng.randrange(len(out))
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(1, len(data))]


def insert_bytes(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, MAX_INSERT)) + data[at:]


def exif_span(data: bytes, suffix: str) -> tuple[int, int]:
    """(start, end) of the EXIF block's data: PNG's eXIf chunk or JPEG's APP1 "Exif" segment."""
    if suffix == ".png":
        at = next(at for at, kind in png_chunks(data) if kind == b"eXIf")
        return at + 8, at + 8 + int.from_bytes(data[at:at + 4], "big")
    at = next(at for at, marker in jpeg_segments(data) if marker == JPEG_APP1 and data[at + 4:at + 8] == b"Exif")
    return at + 4, at + 2 + int.from_bytes(data[at + 2:at + 4], "big")


def flip_exif_bits(data: bytes, suffix: str, rng: random.Random) -> bytes:
    start, end = exif_span(data, suffix)
    out = bytearray(data)
    out[start:end] = flip_bits(data[start:end], rng)
    if suffix == ".png":
        fix_png_crcs(out)
    return bytes(out)


def overwrite_size(data: bytes, suffix: str, rng: random.Random) -> tuple[bytes, tuple[int, int]]:
    out = bytearray(data)
    fields = size_fields(data, suffix)
    stated = tuple(f.write(out, rng.choice((*SIDES, rng.getrandbits(f.bits)))) for f in fields)
    if suffix == ".png":
        fix_png_crcs(out)
    return bytes(out), stated


def overwrite_length(data: bytes, suffix: str, rng: random.Random) -> bytes:
    out = bytearray(data)
    field = rng.choice(length_fields(data, suffix))
    field.write(out, rng.choice((*LENGTHS, rng.getrandbits(field.bits))))
    return bytes(out)


def image_mutations(seeds: dict[str, bytes], per_kind: int, seed: int = 0) -> list[Mutation]:
    """per_kind mutations of each kind (IMAGE_KINDS) of each seed image, from random.Random(seed)."""
    rng = random.Random(seed)
    out = []
    for suffix, data in seeds.items():
        for kind in IMAGE_KINDS + EXTRA_KINDS.get(suffix, ()):
            for i in range(per_kind):
                name = f"{suffix[1:]}_{kind.replace(',', '').replace(' ', '_')}_{i:05d}{suffix}"
                stated = None
                if kind == "bit flips":
                    mutated = flip_bits(data, rng)
                elif kind == "flips, CRCs fixed":
                    mutated = bytearray(flip_bits(data, rng))
                    fix_png_crcs(mutated)
                    mutated = bytes(mutated)
                elif kind == "EXIF flips":
                    mutated = flip_exif_bits(data, suffix, rng)
                elif kind == "truncation":
                    mutated = truncate(data, rng)
                elif kind == "insertion":
                    mutated = insert_bytes(data, rng)
                elif kind == "size fields":
                    mutated, stated = overwrite_size(data, suffix, rng)
                else:
                    mutated = overwrite_length(data, suffix, rng)
                out.append(Mutation(name, kind, mutated, stated))
    return out


# --- meta.json mutations -----------------------------------------------------------------------------------------

def node_paths(node: Any, path: tuple = ()) -> Iterator[tuple]:
    """The path (keys and indices) of every value below node."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield (*path, key)
        yield from node_paths(child, (*path, key))


def replace_at(meta: dict, path: tuple, value: Any) -> dict:
    out = copy.deepcopy(meta)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return out


def remove_at(meta: dict, path: tuple) -> dict:
    out = copy.deepcopy(meta)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return out


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def value_at(node: Any, path: tuple) -> Any:
    for key in path:
        node = node[key]
    return node


def mutate_meta(meta: dict, kind: str, rng: random.Random) -> bytes:
    paths = list(node_paths(meta))
    if kind == "wrong types":
        mutated = replace_at(meta, rng.choice(paths), rng.choice(WRONG_TYPES))
    elif kind == "numbers":
        mutated = replace_at(meta, rng.choice([p for p in paths if is_number(value_at(meta, p))]), rng.choice(NUMBERS))
    elif kind == "missing keys":
        mutated = remove_at(meta, rng.choice([p for p in paths if isinstance(p[-1], str)]))
    elif kind == "truncation":
        return truncate(json.dumps(meta).encode(), rng)
    else:
        return flip_bits(json.dumps(meta).encode(), rng)
    return json.dumps(mutated).encode()


def meta_mutations(meta: dict, per_kind: int, seed: int = 0) -> list[Mutation]:
    """per_kind mutations of each kind (META_KINDS) of meta, from random.Random(seed)."""
    rng = random.Random(seed)
    return [Mutation(f"meta_{kind.replace(' ', '_')}_{i:05d}.json", kind, mutate_meta(meta, kind, rng))
            for kind in META_KINDS for i in range(per_kind)]


# --- running siefpn-infer --check --------------------------------------------------------------------------------

@dataclass
class Batch:
    """One siefpn-infer --check process: its exit code (None: killed at the timeout), stderr and result lines."""
    returncode: int | None
    stderr: str
    results: dict[str, Result]  # by file name


def run_check(args: list[str], timeout: float) -> Batch:
    """siefpn-infer --check with args; its result lines by file name. Bytes are decoded leniently: a message may
    quote a damaged file's bytes."""
    command = [str(infer_binary()), "--check", *args]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        return Batch(None, (e.stderr or b"").decode(errors="replace"), parse_lines(e.stdout or b""))
    return Batch(done.returncode, done.stderr.decode(errors="replace"), parse_lines(done.stdout))


def parse_lines(stdout: bytes) -> dict[str, Result]:
    results = {}
    for line in stdout.decode(errors="replace").splitlines():
        status, path, message = (line.split("\t", 2) + ["", ""])[:3]
        results[Path(path).name] = Result(status, message)
    return results


def check_mutations(mutations: list[Mutation], folder: Path, *, images: bool, batch: int = 500,
                    timeout: float = 120.0, on_batch: Callable[[Batch], None] | None = None) -> dict[str, Result]:
    """Each mutation's Result, `batch` inputs per process. When a process crashes or hangs, the first input it did
    not report (results are flushed line by line, in file order) is marked CRASH or HANG and the rest are run
    again. on_batch sees every process's Batch (the exit code and stderr checks)."""
    results: dict[str, Result] = {}
    pending = sorted(mutations, key=lambda m: m.name)  # the order siefpn-infer walks a folder in
    while pending:
        chunk, pending = pending[:batch], pending[batch:]
        part = folder / f"batch_{len(results):06d}"
        part.mkdir(parents=True)
        for m in chunk:
            (part / m.name).write_bytes(m.data)
        args = ["--source", str(part)] if images else ["--meta", *(str(part / m.name) for m in chunk)]
        done = run_check(args, timeout)
        if on_batch is not None:
            on_batch(done)
        results.update({m.name: done.results[m.name] for m in chunk if m.name in done.results})
        if done.returncode is None or done.returncode not in (0, 2):
            missing = [m for m in chunk if m.name not in done.results]
            if missing:
                results[missing[0].name] = Result(HANG if done.returncode is None else CRASH, done.stderr.strip())
                pending = missing[1:] + pending
        shutil.rmtree(part)
    return results
