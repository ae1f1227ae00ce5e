#include "image_header.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>

namespace siefpn {
namespace {

using Bytes = std::span<const std::uint8_t>;

struct Size {
  std::int64_t width = 0;
  std::int64_t height = 0;
};

bool starts_with(Bytes b, std::size_t at, const char* magic) {
  const std::size_t n = std::strlen(magic);
  return at + n <= b.size() && std::memcmp(b.data() + at, magic, n) == 0;
}

// Multi-byte fields; callers check that they lie within the bytes.
std::uint32_t be16(Bytes b, std::size_t at) { return (b[at] << 8) | b[at + 1]; }
std::uint32_t le16(Bytes b, std::size_t at) { return b[at] | (b[at + 1] << 8); }
std::uint32_t be32(Bytes b, std::size_t at) { return (be16(b, at) << 16) | be16(b, at + 2); }
std::uint32_t le24(Bytes b, std::size_t at) { return le16(b, at) | (b[at + 2] << 16); }
std::uint32_t le32(Bytes b, std::size_t at) { return le16(b, at) | (le16(b, at + 2) << 16); }

// --- JPEG: segments from SOI on, each 0xFF, a marker byte and (for most markers) a big-endian length that counts
// itself; the first start-of-frame segment holds precision (1 byte), height and width (2 bytes each).
constexpr std::size_t kJpegSoiLength = 2;
constexpr std::uint8_t kJpegMarkerPrefix = 0xFF;
constexpr std::size_t kJpegSofHeightOffset = 3;  // from the segment's length field: length (2), precision (1)
constexpr std::size_t kJpegSofWidthOffset = 5;

bool is_start_of_frame(std::uint8_t marker) {  // SOF0..SOF15, less DHT (C4), JPG (C8) and DAC (CC)
  return marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
}

bool has_no_length(std::uint8_t marker) {  // TEM, RST0..RST7, SOI
  return marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8);
}

std::optional<Size> jpeg_size(Bytes b) {
  std::size_t at = kJpegSoiLength;
  while (at + 1 < b.size()) {
    // bytes between segments, fill bytes (0xFF 0xFF) and a stuffed 0xFF 0x00 are skipped, as libjpeg skips them:
    // so the segment found here is the one the decoder takes its size from
    if (b[at] != kJpegMarkerPrefix || b[at + 1] == kJpegMarkerPrefix || b[at + 1] == 0x00) {
      ++at;
      continue;
    }
    const std::uint8_t marker = b[at + 1];
    at += 2;
    if (has_no_length(marker)) continue;
    if (marker == 0xD9 || marker == 0xDA) return std::nullopt;  // EOI or SOS before any frame header: no size
    if (at + 2 > b.size()) return std::nullopt;
    const std::size_t length = be16(b, at);
    if (is_start_of_frame(marker)) {
      if (at + kJpegSofWidthOffset + 2 > b.size()) return std::nullopt;
      return Size{be16(b, at + kJpegSofWidthOffset), be16(b, at + kJpegSofHeightOffset)};
    }
    // a length counts its own 2 bytes; libjpeg skips max(length - 2, 0) bytes of data, then looks for a marker
    at += std::max<std::size_t>(length, 2);
  }
  return std::nullopt;
}

// --- PNG: the 8-byte signature, then the IHDR chunk (length, "IHDR", width and height as big-endian 32-bit).
constexpr const char* kPngSignature = "\x89PNG\r\n\x1a\n";
constexpr std::size_t kPngIhdrType = 12;
constexpr std::size_t kPngWidth = 16;
constexpr std::size_t kPngHeight = 20;

std::optional<Size> png_size(Bytes b) {
  if (!starts_with(b, kPngIhdrType, "IHDR") || kPngHeight + 4 > b.size()) return std::nullopt;
  return Size{be32(b, kPngWidth), be32(b, kPngHeight)};
}

// --- WebP: "RIFF", a size, "WEBP", then the first chunk's fourcc and size (its data from offset 20). libwebp
// takes its size from a VP8X chunk's canvas when there is one (a still image's frame must then match it), else
// from the VP8 (lossy) or VP8L (lossless) frame header.
constexpr std::size_t kWebpFourcc = 8;
constexpr std::size_t kWebpChunk = 12;
constexpr std::size_t kWebpData = 20;
constexpr std::size_t kVp8xCanvas = kWebpData + 4;  // after flags (1 byte) and 3 reserved bytes: width - 1, height - 1 (24 bits)
constexpr std::size_t kVp8StartCode = kWebpData + 3;  // after the 3-byte frame tag: 9D 01 2A, then width, height (14 bits)
constexpr std::uint8_t kVp8lSignature = 0x2F;
constexpr std::uint32_t kFourteenBits = 0x3FFF;

std::optional<Size> webp_size(Bytes b) {
  if (starts_with(b, kWebpChunk, "VP8X") && kVp8xCanvas + 6 <= b.size()) {
    return Size{le24(b, kVp8xCanvas) + std::int64_t{1}, le24(b, kVp8xCanvas + 3) + std::int64_t{1}};
  }
  if (starts_with(b, kWebpChunk, "VP8 ") && kVp8StartCode + 7 <= b.size()) {
    if (!starts_with(b, kVp8StartCode, "\x9d\x01\x2a")) return std::nullopt;
    return Size{le16(b, kVp8StartCode + 3) & kFourteenBits, le16(b, kVp8StartCode + 5) & kFourteenBits};
  }
  if (starts_with(b, kWebpChunk, "VP8L") && kWebpData + 5 <= b.size()) {
    if (b[kWebpData] != kVp8lSignature) return std::nullopt;
    const std::uint32_t bits = le32(b, kWebpData + 1);
    return Size{(bits & kFourteenBits) + std::int64_t{1}, ((bits >> 14) & kFourteenBits) + std::int64_t{1}};
  }
  return std::nullopt;
}

// --- BMP: "BM", the file header (14 bytes), then the info header's size; a 12-byte core header has 16-bit sides,
// the others signed 32-bit ones (a negative height is a top-down image).
constexpr std::size_t kBmpInfoSize = 14;
constexpr std::size_t kBmpWidth = 18;
constexpr std::uint32_t kBmpCoreHeaderSize = 12;

std::optional<Size> bmp_size(Bytes b) {
  if (kBmpInfoSize + 4 > b.size()) return std::nullopt;
  if (le32(b, kBmpInfoSize) == kBmpCoreHeaderSize) {
    if (kBmpWidth + 4 > b.size()) return std::nullopt;
    return Size{le16(b, kBmpWidth), le16(b, kBmpWidth + 2)};
  }
  if (kBmpWidth + 8 > b.size()) return std::nullopt;
  const auto side = [&](std::size_t at) { return std::llabs(static_cast<std::int32_t>(le32(b, at))); };
  return Size{side(kBmpWidth), side(kBmpWidth + 4)};
}

ImageFormat sniff(Bytes b) {
  if (starts_with(b, 0, "\xff\xd8\xff")) return ImageFormat::kJpeg;
  if (starts_with(b, 0, kPngSignature)) return ImageFormat::kPng;
  if (starts_with(b, 0, "RIFF") && starts_with(b, kWebpFourcc, "WEBP")) return ImageFormat::kWebp;
  if (starts_with(b, 0, "BM")) return ImageFormat::kBmp;
  return ImageFormat::kUnknown;
}

}  // namespace

ImageHeader read_image_header(Bytes bytes) {
  ImageHeader header;
  header.format = sniff(bytes);
  std::optional<Size> size;
  switch (header.format) {
    case ImageFormat::kJpeg: size = jpeg_size(bytes); break;
    case ImageFormat::kPng: size = png_size(bytes); break;
    case ImageFormat::kWebp: size = webp_size(bytes); break;
    case ImageFormat::kBmp: size = bmp_size(bytes); break;
    case ImageFormat::kUnknown: break;
  }
  if (size) {
    header.sized = true;
    header.width = size->width;
    header.height = size->height;
  }
  return header;
}

std::string format_name(ImageFormat format) {
  switch (format) {
    case ImageFormat::kJpeg: return "JPEG";
    case ImageFormat::kPng: return "PNG";
    case ImageFormat::kWebp: return "WebP";
    case ImageFormat::kBmp: return "BMP";
    case ImageFormat::kUnknown: break;
  }
  return "unknown";
}

}  // namespace siefpn
