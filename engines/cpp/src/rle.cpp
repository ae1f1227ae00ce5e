// pycocotools' compressed RLE, written from its documented format (maskApi.c: rleEncode, rleToString).
#include "siefpn/coco.hpp"

#include <vector>

namespace siefpn {

std::string rle_counts(const std::uint8_t* mask, int height, int width) {
  // run lengths over the mask in column-major (Fortran) order, the first run counting zeros
  std::vector<long> counts;
  std::uint8_t previous = 0;
  long run = 0;
  for (int x = 0; x < width; ++x) {
    for (int y = 0; y < height; ++y) {
      const std::uint8_t v = mask[static_cast<std::size_t>(y) * width + x] != 0;
      if (v != previous) {
        counts.push_back(run);
        run = 0;
        previous = v;
      }
      ++run;
    }
  }
  counts.push_back(run);
  // each count (minus the count two before it, from the third on) in 5-bit groups, low first; 0x20 marks
  // "more groups follow"; characters from '0' (48)
  std::string out;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    long x = counts[i] - (i > 2 ? counts[i - 2] : 0);
    bool more = true;
    while (more) {
      char c = static_cast<char>(x & 0x1f);
      x >>= 5;
      more = (c & 0x10) ? x != -1 : x != 0;
      if (more) c |= 0x20;
      out.push_back(static_cast<char>(c + 48));
    }
  }
  return out;
}

}  // namespace siefpn
