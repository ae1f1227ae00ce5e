"""The server's reduced JPEG decoding (`data.image.decode_reduced`) against a full decode: the decoder's time and
the process's peak memory, for camera-sized JPEGs and two model sizes.

    python benchmarks/decode_reduced.py
    python benchmarks/decode_reduced.py --sides 4000x3000 6000x4000 --repeats 5

Each measurement runs in a fresh Python process (its peak RSS is the decode's: the process imports the project's
image module and Pillow, decodes once to warm up at a small size, then decodes the image `--repeats` times; the
figure is the median time, and the median growth of the process's resident memory while it holds the decoded
image: Pillow allocates large images with mmap, so that is the image and what the decoder kept). A model's resize is the demo's rule:
shortest side to MIN, longest at most MAX. Writes --report (.md and .json) with date, machine and commit.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from siefpn_deploy.core.reporting import markdown_table, write_benchmark_report

# runs in the child: decodes FILE full or reduced for the model's (MIN, MAX) resize; prints JSON
CHILD = r"""
import io, json, math, resource, statistics, sys, time
from siefpn_deploy.data.image import decode_image, decode_reduced
path, mode, lo, hi, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
data = open(path, "rb").read()
def target(h, w):
    f = min(lo / min(h, w), hi / max(h, w))
    return math.floor(h * f), math.floor(w * f)
def decode():
    if mode == "full":
        image = decode_image(data)
        return image, (image.height, image.width)
    return decode_reduced(data, resized_to=target)
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
times, held = [], []
for _ in range(repeats):
    before = rss_mib()
    t0 = time.perf_counter()
    image, original = decode()
    times.append(time.perf_counter() - t0)
    held.append(rss_mib() - before)
    del image
print(json.dumps({"ms": 1000 * statistics.median(times), "mib": statistics.median(held),
                  "size": list(decode()[0].size), "original": list(original)}))
"""


def camera_like(w: int, h: int) -> bytes:
    """A JPEG (quality 90) of gradients and shapes: what a camera's photo compresses like, not noise."""
    y, x = np.mgrid[0:h, 0:w]
    array = np.stack([x * 255 // w, y * 255 // h, (x * y) % 251], axis=2).astype(np.uint8)
    image = Image.fromarray(array)
    draw = ImageDraw.Draw(image)
    for i in range(12):
        draw.rectangle((w * i // 13, h // 3, w * i // 13 + w // 20, h * 2 // 3), fill=(20 * i, 240 - 20 * i, 90))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def measure(path: Path, mode: str, size: tuple[int, int], repeats: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), mode, str(size[0]), str(size[1]), str(repeats)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", nargs="+", default=["4000x3000", "6000x4000"], help="WxH of the test JPEGs")
    parser.add_argument("--models", nargs="+", default=["384x640", "800x1333"],
                        help="the models' resize, MINxMAX (the demo's 384, detectron2's 800)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--report", default="benchmarks/results/decode_reduced.md")
    args = parser.parse_args()
    header = ["JPEG", "bytes", "model resize", "decode", "decoded size", "time (median)", "memory held"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sides in args.sides:
            w, h = map(int, sides.split("x"))
            path = Path(tmp) / f"{sides}.jpg"
            path.write_bytes(camera_like(w, h))
            for model in args.models:
                size = tuple(map(int, model.split("x")))
                for mode in ("full", "reduced"):
                    r = measure(path, mode, size, args.repeats)
                    rows.append([sides, path.stat().st_size, f"{size[0]}..{size[1]}", mode,
                                 "x".join(map(str, r["size"])), f"{r['ms']:.0f} ms", f"{r['mib']:.0f} MiB"])
                    print(" | ".join(map(str, rows[-1])), flush=True)
    body = ("What `serve` (and the Triton ensemble's preprocessing) gains from decoding a JPEG at 1/2, 1/4 or 1/8 "
            "scale (libjpeg's DCT scaling through Pillow's draft mode), the largest reduction that still leaves the "
            "image at least the size the model resizes it to. `infer`, parity and training decode at full size: "
            "their pixels are the ones the model's AP is measured on.\n\n" + markdown_table(header, rows))
    write_benchmark_report(args.report, title="Reduced JPEG decoding in the server", body=body,
                           data={"header": header, "rows": rows},
                           command=f"python benchmarks/decode_reduced.py {' '.join(sys.argv[1:])}".strip())


if __name__ == "__main__":
    main()
