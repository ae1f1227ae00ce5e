"""Images in: decoding files and the one conversion of any image to the tensor every stage uses.

`to_tensor` is the only place an image becomes RGB float [3,H,W] in 0..1: the dataset, calibration,
export verification, the runtime and the benchmarks all call it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.contract import COLOR_ORDERS
from ..core.errors import UserError, one_line

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# The only decoders ever run, whatever a file claims to be: the formats detection data and cameras use, with
# mature, fuzzed decoders. Pillow would otherwise try every plugin it has, EPS among them, which hands the
# client's PostScript to Ghostscript wherever that is installed; TIFF's many codecs are left out too.
DECODERS = ("JPEG", "PNG", "WEBP", "BMP")


def find_images(folder: str | Path) -> list[Path]:
    """The images below `folder` (recursively), sorted; a one-line error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"no images in {folder} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def load_image(path: str | Path, *, max_pixels: int | None = None) -> Image.Image:
    """Decode an image file as RGB, EXIF orientation applied first (see `decode_image`)."""
    return _decode(path, str(path), max_pixels)[0]


def decode_image(data: bytes, *, name: str = "image", max_pixels: int | None = None) -> Image.Image:
    """Decode an encoded image (JPEG, PNG, WebP, ... as bytes) as RGB, EXIF orientation applied first. An image of
    more than `max_pixels` pixels is refused from its header, before it is decoded (a server's memory bound)."""
    return _decode(io.BytesIO(data), name, max_pixels)[0]


# (height, width) from the header -> the (height, width) the image will be resized to, or None (no reduction)
ResizeTarget = Callable[[int, int], "tuple[int, int] | None"]


def decode_reduced(data: bytes, *, name: str = "image", max_pixels: int | None = None,
                   resized_to: ResizeTarget) -> tuple[Image.Image, tuple[int, int]]:
    """`decode_image` for a consumer that will shrink the image anyway (a server): a JPEG is decoded at 1/2, 1/4
    or 1/8 scale by libjpeg's DCT scaling (Pillow's draft mode), the largest reduction that still leaves it at
    least the size `resized_to` names, so a 5000x5000 photo for an 800-pixel model is decoded at 1250x1250 (6 MB
    of RGB instead of 75 MB, and faster). Other formats have no reduced decoding and come at full size.
    Returns (image, original (height, width) after the EXIF rotation): detections go back to the original's
    pixels by the ratio of the two sizes, which is within (reduction - 1) px of libjpeg's exact scale at the far
    edge (its reduced size is rounded up)."""
    return _decode(io.BytesIO(data), name, max_pixels, resized_to)


def _decode(source: str | Path | io.BytesIO, name: str, max_pixels: int | None,
            resized_to: ResizeTarget | None = None) -> tuple[Image.Image, tuple[int, int]]:
    try:
        with Image.open(source, formats=DECODERS) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise UserError(f"image {name} is {img.width}x{img.height}, more than the {max_pixels} pixels "
                                "allowed")
            height, width = img.height, img.width
            if _swaps_sides(img):
                height, width = width, height
            target = resized_to(img.height, img.width) if resized_to is not None and img.format == "JPEG" else None
            if target is not None:
                img.draft("RGB", (target[1], target[0]))  # (w, h): at least this size
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")  # converting such a palette straight to RGB makes PIL warn
            return img.convert("RGB"), (height, width)
    except UnidentifiedImageError:  # its message names a BytesIO object for bytes
        raise UserError(f"cannot read image {name}: not a {', '.join(DECODERS)} image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {name}: {one_line(e)}") from None


ORIENTATION = 0x0112  # the EXIF orientation tag; 5..8 are the transposes and quarter turns (width <-> height)


def _swaps_sides(img: Image.Image) -> bool:
    return img.getexif().get(ORIENTATION) in (5, 6, 7, 8)


def to_pixels(image: Any, color: str = "RGB") -> torch.Tensor:
    """A path, a PIL image, an HWC numpy array (uint8 0..255 or float 0..1; `color` says RGB or BGR) or a
    CHW tensor (uint8 or float 0..1) -> RGB [3,H,W]: uint8 stays uint8 (a quarter of float32's memory at full
    size; `Preprocess` makes each image float only as it resizes it), anything else float32 0..1."""
    if color not in COLOR_ORDERS:
        raise UserError(f"color must be RGB or BGR, got {color!r}")
    if isinstance(image, (str, Path)):
        image = load_image(image)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
        color = "RGB"
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] not in (1, 3):
            raise UserError(f"a numpy image must be HWC with 1 or 3 channels, got shape {list(image.shape)}")
        array = image if image.dtype == np.uint8 else image.astype(np.float32)
        array = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array
        array = array[..., ::-1] if color == "BGR" else array
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))  # [3,H,W]
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise UserError(f"a tensor image must be CHW with 3 channels, got shape {list(image.shape)}")
        return image.cpu() if image.dtype == torch.uint8 else image.float().cpu()
    raise UserError(f"cannot read an image from a {type(image).__name__}; pass a path, an HWC array or a CHW tensor")


def as_float(pixels: torch.Tensor) -> torch.Tensor:
    """`to_pixels`' [3,H,W] -> float32 0..1 (uint8 / 255, the one rounding every path shares)."""
    return pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()


def to_tensor(image: Any, color: str = "RGB") -> torch.Tensor:
    """Any image `to_pixels` takes -> RGB float32 [3,H,W] in 0..1."""
    return as_float(to_pixels(image, color))


def in_channel_order(image: torch.Tensor, color: str) -> torch.Tensor:
    """An RGB image [..., 3, H, W] (what `to_tensor` gives) in a model's channel order (config INPUT.FORMAT,
    the contract's `color`): detectron2's MSRA ResNets take BGR."""
    if color not in COLOR_ORDERS:
        raise UserError(f"channel order must be one of {', '.join(COLOR_ORDERS)}, got {color!r}")
    return image.flip(-3) if color == "BGR" else image
