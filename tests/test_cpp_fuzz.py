"""The C++ runtime's readers on hostile input: images refused from their header as Python refuses them, and
seeded mutation fuzzing of the image path (header check, torchvision's decoders) and the meta.json parser through
`siefpn-infer --check`, which reads inputs as inference does and runs no model (tests/fuzzing.py).

Whatever the input, siefpn-infer exits 0 or 2, never by a signal, abort or hang, and refuses in one line naming
the file. A few hundred inputs per run, in a few processes: seconds. benchmarks/fuzz_cpp.py runs thousands.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import zlib

import numpy as np
import pytest
from fuzzing import (
    BAD,
    OK,
    SEED_SIZE,
    Batch,
    Mutation,
    Result,
    blank_png,
    check_mutations,
    image_mutations,
    meta_mutations,
    png_chunk,
    png_file,
    png_passes,
    run_check,
    seed_images,
    seed_meta,
)
from PIL import Image

from siefpn_deploy.core.errors import UserError
from siefpn_deploy.data.image import load_image
from siefpn_deploy.runtime.cpp import SOURCE_DIR, CppBuild, default_build_dir, infer_binary
from siefpn_deploy.serve.options import MAX_IMAGE_PIXELS

PER_KIND = 25  # mutations of each kind of each seed: 450 images and 125 meta.json files
TIMEOUT_S = 120  # a batch's limit: a hang fails the test instead of stalling the suite
# the peak memory an oversized image may add to a check of a small one; decoding 20000 x 20000 would add 1144 MiB
MAX_EXTRA_RSS_MIB = 256


@pytest.fixture(scope="module")
def build():
    CppBuild(build_dir=default_build_dir()).run(log=lambda *_: None)


def check_results(mutations: list[Mutation], results: dict[str, Result], batches: list[Batch]) -> None:
    """Every input read or refused, in a line naming it (a crash or hang names its input and mutation), and every
    process within its contract."""
    assert sorted(results) == sorted(m.name for m in mutations)
    failed = [(m.name, m.kind, results[m.name]) for m in mutations if results[m.name].status not in (OK, BAD)]
    assert not failed, failed
    refused = [(m.name, results[m.name].message) for m in mutations if results[m.name].status == BAD]
    assert all(name in message for name, message in refused), refused
    for done in batches:
        check_batch(done)


def check_batch(done: Batch) -> None:
    """A process's contract: exit 0, or 2 with one line on stderr; never a signal or a hang."""
    assert done.returncode is not None, f"siefpn-infer hung: {done.stderr[-500:]}"
    assert done.returncode in (0, 2), f"siefpn-infer exited {done.returncode}: {done.stderr[-500:]}"
    err = done.stderr.strip()
    if done.returncode == 2:
        assert len(err.splitlines()) == 1 and err.startswith("siefpn-infer: error: "), err
    else:
        assert not err, err


def run_measured(args: list[str]) -> tuple[int, str, float]:
    """siefpn-infer with args: its exit code, stdout and peak resident memory in MiB (wait4's ru_maxrss)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([str(infer_binary()), *args], stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        out.seek(0)
        return proc.returncode, out.read().decode(), usage.ru_maxrss / 1024


def result_line(stdout: str) -> tuple[str, str]:
    status, _, message = stdout.strip().split("\t")
    return status, message


def test_the_pixel_limit_default_is_the_servers():
    """One number per language: the C++ constant (its --help shows it) is serve's default."""
    header = (SOURCE_DIR / "include" / "siefpn" / "detector.hpp").read_text()
    value = re.search(r"kDefaultMaxImagePixels = ([\d']+);", header).group(1)
    assert int(value.replace("'", "")) == MAX_IMAGE_PIXELS


def test_an_oversized_image_is_refused_from_its_header_as_in_python(build, tmp_path):
    """A 20000 x 20000 PNG of 48 kB is refused before decoding: no 1.2 GB output tensor (the process's peak memory
    stays that of reading a small image). An 8000 x 6000 one gets Python's message word for word; --max-image-pixels
    moves the limit, with Python's rule (more than N pixels is refused)."""
    seed = tmp_path / "seed.png"
    seed.write_bytes(seed_images()[".png"])
    code, out, small_rss = run_measured(["--check", "--source", str(seed)])
    assert code == 0 and result_line(out)[0] == OK
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(blank_png(20000, 20000))
    code, out, bomb_rss = run_measured(["--check", "--source", str(bomb)])
    refusal = f"image {bomb} is 20000x20000, more than the {MAX_IMAGE_PIXELS} pixels allowed"
    assert code == 2 and result_line(out) == (BAD, refusal)
    assert bomb_rss < small_rss + MAX_EXTRA_RSS_MIB, (bomb_rss, small_rss)
    with pytest.raises(UserError):
        load_image(bomb, max_pixels=MAX_IMAGE_PIXELS)

    photo = tmp_path / "photo.png"
    photo.write_bytes(blank_png(8000, 6000))
    with pytest.raises(UserError) as python:
        load_image(photo, max_pixels=MAX_IMAGE_PIXELS)
    done = run_check(["--source", str(photo)], TIMEOUT_S)
    check_batch(done)
    assert done.results[photo.name] == (BAD, str(python.value))

    pixels = SEED_SIZE[0] * SEED_SIZE[1]
    for limit, status in ((pixels, OK), (pixels - 1, BAD)):
        done = run_check(["--source", str(seed), "--max-image-pixels", str(limit)], TIMEOUT_S)
        check_batch(done)
        assert done.results[seed.name].status == status, done.results
    load_image(seed, max_pixels=pixels)
    with pytest.raises(UserError, match="more than the 3071 pixels allowed"):
        load_image(seed, max_pixels=pixels - 1)
    usage = subprocess.run([str(infer_binary()), "--help"], capture_output=True, text=True, check=True).stdout
    assert f"(default {MAX_IMAGE_PIXELS}, the same as siefpn-deploy serve --max-image-pixels)" in usage


def test_only_the_allow_listed_formats_are_decoded(build, tmp_path):
    """JPEG, PNG and WebP are decoded (EXIF orientation applied, as Python applies it); GIF, which torchvision would
    decode, is refused as Python's allow-list refuses it; BMP, which Python reads, is refused in one line because
    torchvision has no BMP decoder."""
    for suffix, data in seed_images().items():
        (tmp_path / f"seed{suffix}").write_bytes(data)
    Image.new("RGB", SEED_SIZE).save(tmp_path / "image.gif")
    Image.new("RGB", SEED_SIZE).save(tmp_path / "image.bmp")
    done = run_check(["--source", str(tmp_path)], TIMEOUT_S)
    check_batch(done)
    for suffix in (".png", ".jpg", ".webp"):
        with load_image(tmp_path / f"seed{suffix}") as python:
            assert done.results[f"seed{suffix}"] == (OK, f"{python.width}x{python.height}"), suffix
    assert "image.gif" not in done.results  # the folder walk takes .jpg, .jpeg, .png and .webp only
    for name, reason in (("image.gif", "not a JPEG, PNG or WebP image"), ("image.bmp", "BMP is not supported")):
        single = run_check(["--source", str(tmp_path / name)], TIMEOUT_S)
        check_batch(single)
        assert single.results[name].status == BAD and reason in single.results[name].message


# (bit depth, colour type, channels) of every PNG pixel layout (PNG spec, table 11.1)
PNG_LAYOUTS = [(1, 0, 1), (2, 0, 1), (4, 0, 1), (8, 0, 1), (16, 0, 1), (8, 2, 3), (16, 2, 3), (1, 3, 1), (2, 3, 1),
               (4, 3, 1), (8, 3, 1), (8, 4, 2), (16, 4, 2), (8, 6, 4), (16, 6, 4)]
# how the image data is stored: interlaced, zlib window bits, level (0: stored blocks), strategy, IDAT size, and
# whether an empty IDAT comes first
PNG_STORAGE = [(False, 15, 9, zlib.Z_DEFAULT_STRATEGY, None, False), (True, 9, 1, zlib.Z_FIXED, 7, False),
               (True, 12, 0, zlib.Z_DEFAULT_STRATEGY, 100, True), (False, 10, 6, zlib.Z_RLE, 50, True)]
PNG_SIZE = (19, 13)  # odd sides: Adam7's passes are uneven


def test_valid_pngs_of_every_layout_are_read(build, tmp_path):
    """The check of a PNG's image data before torchvision decodes it (src/png_check.cpp) refuses no valid file:
    every colour type and bit depth, interlaced or not, stored, fixed and dynamic deflate blocks, small zlib
    windows, many IDAT chunks, an empty one. Each is read at PIL's size (16-bit ones are decoded, then refused)."""
    rng = np.random.default_rng(0)
    width, height = PNG_SIZE
    palette = png_chunk(b"PLTE", bytes(range(256)) * 3)
    for depth, color, channels in PNG_LAYOUTS:
        for k, (interlaced, wbits, level, strategy, idat_size, empty_first) in enumerate(PNG_STORAGE):
            rows = b"".join(bytes([rng.integers(0, 5)]) + rng.bytes(-(-w * depth * channels // 8))
                            for w, h in png_passes(width, height, interlaced) for _ in range(h))
            before = (palette if color == 3 else b"") + (png_chunk(b"IDAT", b"") if empty_first else b"")
            data = png_file(width, height, rows, bit_depth=depth, color_type=color, interlaced=interlaced,
                            wbits=wbits, level=level, strategy=strategy, idat_size=idat_size, before_idat=before)
            (tmp_path / f"layout_{depth}_{color}_{k}.png").write_bytes(data)
    done = run_check(["--source", str(tmp_path)], TIMEOUT_S)
    check_batch(done)
    assert len(done.results) == len(PNG_LAYOUTS) * len(PNG_STORAGE)
    for name, got in done.results.items():
        with Image.open(tmp_path / name) as python:
            python.load()
            assert python.size == PNG_SIZE
        eight_bit = int(name.split("_")[1]) <= 8
        refused = f"cannot read image {tmp_path / name}: only 8-bit images are supported"
        assert got == ((OK, f"{width}x{height}") if eight_bit else (BAD, refused)), name


def test_mutated_images_never_crash_the_reader(build, tmp_path):
    """Bit flips (also with PNG's CRCs recomputed, and inside the EXIF block), truncations, inserted bytes, and
    overwritten size and length fields of a PNG, a JPEG and a WebP: each is read or refused in one line naming it. A
    header that states more pixels than the limit, or an empty side, is refused from the header."""
    mutations, batches = image_mutations(seed_images(), PER_KIND, seed=0), []
    results = check_mutations(mutations, tmp_path, images=True, timeout=TIMEOUT_S, on_batch=batches.append)
    check_results(mutations, results, batches)
    for m in mutations:
        got = results[m.name]
        if m.stated is not None and (0 in m.stated or m.stated[0] * m.stated[1] > MAX_IMAGE_PIXELS):
            width, height = m.stated
            expected = "it is empty" if 0 in m.stated else f"is {width}x{height}, more than the"
            assert got.status == BAD and expected in got.message, (m.name, m.stated, got)
    for suffix in (".png", ".jpg", ".webp"):  # the mutations reach past the header checks, into the decoders
        statuses = {results[m.name].status for m in mutations if m.name.endswith(suffix)}
        assert statuses == {OK, BAD}, suffix


def test_mutated_meta_json_never_crashes_the_parser(build, tmp_path):
    """Values of the wrong type, hostile numbers (negative, zero, 2**32 + 1, 1e300, NaN), keys removed, the text cut
    short or its bytes damaged: each meta.json is read or refused in one line naming it."""
    (tmp_path / "seed.meta.json").write_text(json.dumps(seed_meta()))
    seed = run_check(["--meta", str(tmp_path / "seed.meta.json")], TIMEOUT_S)
    assert seed.results["seed.meta.json"].status == OK, seed.results
    mutations, batches = meta_mutations(seed_meta(), PER_KIND, seed=0), []
    results = check_mutations(mutations, tmp_path / "mutations", images=False, timeout=TIMEOUT_S,
                              on_batch=batches.append)
    check_results(mutations, results, batches)
    assert {results[m.name].status for m in mutations} == {OK, BAD}


HOSTILE_VALUES = [  # (where, value, the refusal's words)
    (("max_detections",), 2**32 + 1, '"max_detections" must be a whole number of at most 2147483647, got 4294967297'),
    (("max_detections",), 100.5, '"max_detections" must be a whole number'),
    (("shapes", "batch", "max"), 1e300, '"max" must be a whole number'),
    (("classes", "category_ids"), [1, 2, 2**40], '"category_ids" must be a whole number'),
    (("labels", "first"), 0, "labels.first must be 1"),
    (("labels", "mask_threshold"), 1e300, "labels.mask_threshold must be in 0..1"),
    (("preprocess", "pixel_mean"), [1.0, 2.0, 3.0, 4.0], "preprocess.pixel_mean must hold 3 values"),
]


def test_hostile_meta_values_are_refused_not_wrapped(build, tmp_path):
    """nlohmann's get<int> wraps 2**32 + 1 to 1 (which then passes every bound) and casts 1e300 with undefined
    behaviour; the parser reads whole numbers in int's range only. A whole float (100.0) is taken, as Python's int()
    takes it."""
    files = []
    for i, (path, value, _) in enumerate(HOSTILE_VALUES):
        meta = seed_meta()
        node = meta
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        files.append(tmp_path / f"hostile_{i}.meta.json")
        files[-1].write_text(json.dumps(meta))
    (tmp_path / "whole.meta.json").write_text(json.dumps(seed_meta() | {"max_detections": 100.0}))
    done = run_check(["--meta", *map(str, files), str(tmp_path / "whole.meta.json")], TIMEOUT_S)
    check_batch(done)
    for file, (_, _, message) in zip(files, HOSTILE_VALUES):
        assert done.results[file.name].status == BAD and message in done.results[file.name].message, done.results
    assert done.results["whole.meta.json"].status == OK
