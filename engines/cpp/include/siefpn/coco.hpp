// COCO results helpers: a binary mask as the compressed RLE string that pycocotools writes and reads.
#pragma once

#include <cstdint>
#include <string>

namespace siefpn {

// mask: height * width bytes, row-major, nonzero inside. Returns pycocotools' "counts" string for
// {"size": [height, width], "counts": ...}: run lengths in column-major order, starting with a run of zeros,
// in its 6-bits-per-character delta encoding (maskApi.c rleToString).
std::string rle_counts(const std::uint8_t* mask, int height, int width);

}  // namespace siefpn
