// An image file's format and size, read from its first bytes before any decoder runs: a decoder allocates its
// output from the header's size, so an oversized image must be refused here (data/image.py refuses it the same
// way, from PIL's header parse, before decoding).
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace siefpn {

// The formats of Python's allow-list (data/image.py DECODERS); anything else is kUnknown.
enum class ImageFormat { kUnknown, kJpeg, kPng, kWebp, kBmp };

struct ImageHeader {
  ImageFormat format = ImageFormat::kUnknown;
  bool sized = false;  // the header was long enough to state a size (which may still be 0)
  std::int64_t width = 0;
  std::int64_t height = 0;
};

// The format from the magic bytes and the size from the header: JPEG's first SOF segment, PNG's IHDR, WebP's
// VP8X canvas or VP8 / VP8L frame header, BMP's info header. Reads only within `bytes`, and every loop
// advances, so any input ends in at most bytes.size() steps.
ImageHeader read_image_header(std::span<const std::uint8_t> bytes);

std::string format_name(ImageFormat format);

}  // namespace siefpn
