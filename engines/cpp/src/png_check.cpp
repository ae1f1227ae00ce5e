#include "png_check.hpp"

#include <array>
#include <bit>
#include <cstring>
#include <vector>

namespace siefpn {
namespace {

using Bytes = std::span<const std::uint8_t>;

// A check that failed, with libpng's or zlib's name for the problem: thrown from deep in the stream and caught
// by png_data_error.
struct Corrupt {
  std::string why;
};

std::uint32_t be32(Bytes b, std::size_t at) {
  return (std::uint32_t{b[at]} << 24) | (std::uint32_t{b[at + 1]} << 16) | (std::uint32_t{b[at + 2]} << 8) | b[at + 3];
}

// CRC-32 as PNG chunks carry it (ISO 3309, reflected polynomial 0xEDB88320).
std::uint32_t crc32(Bytes data) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t n = 0; n < t.size(); ++n) {
      std::uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  std::uint32_t c = 0xFFFFFFFFu;
  for (const std::uint8_t byte : data) c = table[(c ^ byte) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

// --- chunks -----------------------------------------------------------------------------------------------------

constexpr std::size_t kSignatureSize = 8;
constexpr std::size_t kLengthSize = 4, kTypeSize = 4, kCrcSize = 4;
constexpr std::size_t kIhdrData = kSignatureSize + kLengthSize + kTypeSize;  // IHDR is the first chunk
constexpr std::size_t kIhdrSize = 13;
constexpr std::uint8_t kLengthTopBit = 0x80;  // lengths are 31-bit: libpng refuses a header with it set

// libpng's check_chunk_name: four ASCII letters, the third (the reserved bit) upper case.
bool valid_chunk_type(Bytes b, std::size_t at) {
  for (std::size_t i = 0; i < kTypeSize; ++i) {
    const std::uint8_t c = b[at + i];
    const bool upper = c >= 'A' && c <= 'Z', lower = c >= 'a' && c <= 'z';
    if (!(upper || (lower && i != 2))) return false;
  }
  return true;
}

bool is_idat(Bytes b, std::size_t at) {
  return b[at] == 'I' && b[at + 1] == 'D' && b[at + 2] == 'A' && b[at + 3] == 'T';
}

// The chunk header at `at` (its length field) as libpng's png_read_chunk_header checks it; its data length.
std::uint32_t chunk_length(Bytes png, std::size_t at) {
  if (at + kLengthSize + kTypeSize > png.size()) throw Corrupt{"the file ends before the image data does"};
  if (png[at] >= kLengthTopBit) throw Corrupt{"bad chunk length"};
  if (!valid_chunk_type(png, at + kLengthSize)) throw Corrupt{"bad chunk type"};
  return be32(png, at);
}

// The offset of the first IDAT chunk: the chunks before it are walked as png_read_info walks them.
std::size_t first_idat(Bytes png) {
  std::size_t at = kSignatureSize;
  for (;;) {
    const std::uint64_t length = chunk_length(png, at);
    if (is_idat(png, at + kLengthSize)) return at;
    at += kLengthSize + kTypeSize + length + kCrcSize;
  }
}

// The IDAT data as one byte stream, as png_read_IDAT_data reads it: when a chunk's data is used up and more is
// needed, the next chunk must be an IDAT ("Not enough image data" otherwise). Each chunk's CRC is checked as it is
// entered: libpng checks it once the chunk is read (png_crc_finish; an IDAT is critical, so a bad CRC is an error),
// and it reads the rest of the chunk in which the stream ends.
class IdatStream {
 public:
  IdatStream(Bytes png, std::size_t first) : png_(png) {
    if (!enter(first)) throw Corrupt{ended_};
  }

  // The next byte, or false where libpng would fail to get it (ended() says why). The inflater reads ahead of
  // what it uses, so failing here is an error only once the bits are used.
  bool next(std::uint8_t& byte) {
    while (at_ == end_) {  // an empty IDAT is legal: on to the next one
      if (!ended_.empty() || !enter(end_ + kCrcSize)) return false;
    }
    byte = png_[at_++];
    return true;
  }

  // The current chunk's unread bytes, read in bulk by Bits::peek.
  std::span<const std::uint8_t> ahead() const { return png_.subspan(at_, end_ - at_); }
  void skip(std::size_t n) { at_ += n; }

  const std::string& ended() const { return ended_; }

 private:
  bool enter(std::size_t chunk) {
    try {
      const std::uint32_t length = chunk_length(png_, chunk);
      if (!is_idat(png_, chunk + kLengthSize)) throw Corrupt{"not enough image data"};
      const std::size_t data = chunk + kLengthSize + kTypeSize;
      if (data + length + kCrcSize > png_.size()) throw Corrupt{"the file ends before the image data does"};
      if (crc32(png_.subspan(chunk + kLengthSize, kTypeSize + length)) != be32(png_, data + length)) {
        throw Corrupt{"IDAT: CRC error"};
      }
      at_ = data;
      end_ = data + length;
      return true;
    } catch (const Corrupt& e) {
      ended_ = e.why;
      return false;
    }
  }

  Bytes png_;
  std::size_t at_ = 0, end_ = 0;
  std::string ended_;
};

// --- rows -------------------------------------------------------------------------------------------------------

// IHDR's fields that fix the image data's layout.
struct Layout {
  std::uint32_t width = 0, height = 0;
  int bit_depth = 0, color_type = 0;
  bool interlaced = false;
};

constexpr int kMaxFilter = 4;  // None, Sub, Up, Average, Paeth

// The bits per pixel of a valid colour type and bit depth (PNG spec, table 11.1), or 0.
int bits_per_pixel(int color_type, int bit_depth) {
  const auto depth_in = [&](std::initializer_list<int> depths) {
    for (int d : depths) {
      if (d == bit_depth) return true;
    }
    return false;
  };
  switch (color_type) {
    case 0: return depth_in({1, 2, 4, 8, 16}) ? bit_depth : 0;         // gray
    case 2: return depth_in({8, 16}) ? 3 * bit_depth : 0;              // RGB
    case 3: return depth_in({1, 2, 4, 8}) ? bit_depth : 0;             // palette
    case 4: return depth_in({8, 16}) ? 2 * bit_depth : 0;              // gray + alpha
    case 6: return depth_in({8, 16}) ? 4 * bit_depth : 0;              // RGBA
    default: return 0;
  }
}

Layout read_ihdr(Bytes png) {
  if (kIhdrData + kIhdrSize > png.size()) throw Corrupt{"IHDR is truncated"};
  const Bytes ihdr = png.subspan(kIhdrData, kIhdrSize);
  Layout l{be32(ihdr, 0), be32(ihdr, 4), ihdr[8], ihdr[9], ihdr[12] == 1};
  const int compression = ihdr[10], filter = ihdr[11], interlace = ihdr[12];
  // libpng refuses these in png_read_info (a safe error); they are refused here too, as the layout needs them
  if (bits_per_pixel(l.color_type, l.bit_depth) == 0 || compression != 0 || filter != 0 || interlace > 1) {
    throw Corrupt{"bad IHDR (bit depth, colour type, compression, filter or interlace)"};
  }
  return l;
}

// The rows libpng reads, pass by pass (one pass, or Adam7's seven), each a filter byte (0..4) and the row's bytes:
// where each filter byte falls in the decompressed data, and where the image data ends.
class Rows {
 public:
  explicit Rows(const Layout& l) {
    // Adam7: each pass's first column and row, and its steps (PNG spec, 8.2); a pass of no pixels has no rows
    constexpr std::array<std::uint32_t, 7> x0{0, 4, 0, 2, 0, 1, 0}, dx{8, 8, 4, 4, 2, 2, 1};
    constexpr std::array<std::uint32_t, 7> y0{0, 0, 4, 0, 2, 0, 1}, dy{8, 8, 8, 4, 4, 2, 2};
    const std::uint64_t bits = bits_per_pixel(l.color_type, l.bit_depth);
    for (std::size_t p = 0; p < (l.interlaced ? x0.size() : 1); ++p) {
      const std::uint64_t w = l.interlaced ? (l.width + dx[p] - 1 - x0[p]) / dx[p] : l.width;
      const std::uint64_t h = l.interlaced ? (l.height + dy[p] - 1 - y0[p]) / dy[p] : l.height;
      if (w > 0 && h > 0) passes_.push_back({h, 1 + (w * bits + 7) / 8});
    }
    for (const Pass& p : passes_) end_ += p.rows * p.row_bytes;
    next_ = passes_.empty() ? end_ : 0;
  }

  // The offset of the next byte to look at: a filter byte, or the end of the image data.
  std::uint64_t next() const { return next_; }
  bool complete(std::uint64_t total) const { return total >= end_; }

  // The byte at next(): a filter byte must be 0..4; a byte past the image data is one too many.
  void check(std::uint8_t byte) {
    if (next_ == end_) throw Corrupt{"too much image data"};
    if (byte > kMaxFilter) throw Corrupt{"bad adaptive filter value"};
    next_ += passes_[pass_].row_bytes;
    if (++row_ == passes_[pass_].rows && pass_ + 1 < passes_.size()) {
      row_ = 0;
      ++pass_;
    }
  }

 private:
  struct Pass {
    std::uint64_t rows, row_bytes;
  };
  std::vector<Pass> passes_;
  std::size_t pass_ = 0;
  std::uint64_t row_ = 0, next_ = 0, end_ = 0;
};

// --- inflate (RFC 1950 and 1951), accepting what zlib's inflate accepts as libpng drives it --------------------

constexpr int kMaxCodeBits = 15;
constexpr int kLiteralCodes = 286, kDistanceCodes = 30, kFixedLiteralCodes = 288, kCodeLengthCodes = 19;
constexpr int kEndOfBlock = 256, kFirstLength = 257;
constexpr std::uint32_t kWindowSize = 32768;
constexpr std::uint32_t kAdlerBase = 65521, kAdlerBlock = 5552;  // the most bytes before the sums can overflow

constexpr std::array<std::uint16_t, 29> kLengthBase{3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                                    31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
constexpr std::array<std::uint8_t, 29> kLengthExtra{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                                    2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
constexpr std::array<std::uint16_t, 30> kDistanceBase{1,   2,   3,   4,   5,   7,    9,    13,   17,   25,
                                                      33,  49,  65,  97,  129, 193,  257,  385,  513,  769,
                                                      1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
constexpr std::array<std::uint8_t, 30> kDistanceExtra{0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                                      6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
// the order in which a dynamic block lists the code length code's lengths
constexpr std::array<std::uint8_t, kCodeLengthCodes> kCodeLengthOrder{16, 17, 18, 0, 8,  7, 9,  6, 10, 5,
                                                                      11, 4,  12, 3, 13, 2, 14, 1, 15};

// The stream's bits, least significant first. It reads ahead (a table lookup takes kFastBits at once), padding
// with zeros past the point where libpng could read no more; using a padded bit is that error.
class Bits {
 public:
  explicit Bits(IdatStream& in) : in_(in) {}

  std::uint32_t peek(int n) {  // n <= 32
    if (count_ < n) [[unlikely]] fill(n);
    return static_cast<std::uint32_t>(buffer_ & ((std::uint64_t{1} << n) - 1));
  }

  void drop(int n) {
    if (n > count_ - padded_) [[unlikely]] throw Corrupt{in_.ended()};
    buffer_ >>= n;
    count_ -= n;
  }

  std::uint32_t take(int n) {
    const std::uint32_t value = peek(n);
    drop(n);
    return value;
  }

  void to_byte_boundary() { drop(count_ % 8); }  // padding comes in whole bytes
  std::uint8_t byte() { return static_cast<std::uint8_t>(take(8)); }  // at a byte boundary

 private:
  // At least n bits in the buffer: as many whole bytes as it holds in one load where the current chunk has 8
  // more, else (at a chunk's end, or past the data) a byte at a time. Out of line: the hot path is peek's test.
  [[gnu::noinline]] void fill(int n) {
    const auto ahead = in_.ahead();
    if (padded_ == 0 && ahead.size() >= sizeof(std::uint64_t)) {
      static_assert(std::endian::native == std::endian::little, "the first byte must land least significant");
      std::uint64_t word;
      std::memcpy(&word, ahead.data(), sizeof word);
      const int bytes = (63 - count_) / 8;
      buffer_ |= (word & ((std::uint64_t{1} << (8 * bytes)) - 1)) << count_;
      count_ += 8 * bytes;
      in_.skip(bytes);
    }
    while (count_ < n) {
      std::uint8_t byte = 0;
      if (padded_ > 0 || !in_.next(byte)) padded_ += 8;
      buffer_ |= std::uint64_t{byte} << count_;
      count_ += 8;
    }
  }

  IdatStream& in_;
  std::uint64_t buffer_ = 0;
  int count_ = 0;   // bits in buffer_
  int padded_ = 0;  // of which zeros past the readable data (the top ones)
};

constexpr int kFastBits = 9;  // codes up to this long are decoded by one table lookup
constexpr int kFastSymbolBits = 12;

// A canonical Huffman code: how many codes of each length and the symbols in code order (puff's layout, decoded
// a bit at a time), and a table of the codes up to kFastBits long, indexed by the next kFastBits bits.
struct Huffman {
  std::array<std::uint16_t, kMaxCodeBits + 1> count{};
  std::vector<std::uint16_t> symbol;
  std::array<std::uint16_t, 1 << kFastBits> fast{};  // length << kFastSymbolBits | symbol; 0: look further
  int longest = 0;
  int unused = 0;  // codes left unused: 0 complete, > 0 incomplete, < 0 over-subscribed
};

// A code's bits in stream order: deflate sends Huffman codes most significant bit first.
std::uint32_t reversed(std::uint32_t code, int length) {
  std::uint32_t out = 0;
  for (int i = 0; i < length; ++i, code >>= 1) out = (out << 1) | (code & 1);
  return out;
}

Huffman build(const std::uint8_t* lengths, int n) {
  Huffman h;
  for (int s = 0; s < n; ++s) ++h.count[lengths[s]];
  std::array<std::uint16_t, kMaxCodeBits + 2> offset{};
  std::array<std::uint32_t, kMaxCodeBits + 2> next_code{};
  int left = 1;
  for (int len = 1; len <= kMaxCodeBits; ++len) {
    left = 2 * left - h.count[len];
    if (h.count[len] > 0) h.longest = len;
    offset[len + 1] = offset[len] + h.count[len];
    next_code[len + 1] = (next_code[len] + h.count[len]) << 1;
  }
  h.unused = h.count[0] == n ? 0 : left;  // no codes at all: valid until a symbol is decoded (zlib's rule too)
  if (h.unused < 0) return h;             // over-subscribed: refused before any use
  h.symbol.resize(n);
  for (int s = 0; s < n; ++s) {
    const int len = lengths[s];
    if (len == 0) continue;
    h.symbol[offset[len]++] = static_cast<std::uint16_t>(s);
    const std::uint32_t code = next_code[len]++;
    if (len > kFastBits) continue;
    const auto entry = static_cast<std::uint16_t>(len << kFastSymbolBits | s);
    for (std::uint32_t i = reversed(code, len); i < h.fast.size(); i += 1u << len) h.fast[i] = entry;
  }
  return h;
}

// zlib's inflate_table: a literal/length or distance code may be incomplete only when it is a single 1-bit code.
bool usable(const Huffman& h) { return h.unused == 0 || (h.unused > 0 && h.longest == 1); }

// The window's bytes: a type of its own, because a store through unsigned char may alias anything, and would make
// the compiler reload the bit buffer, the sums and the counts from memory after every byte.
enum class WindowByte : std::uint8_t {};

class Inflater {
 public:
  Inflater(IdatStream& in, Rows& rows) : bits_(in), rows_(rows), window_(kWindowSize) {}

  void run() {
    zlib_header();
    for (bool last = false; !last;) {
      last = bits_.take(1) == 1;
      switch (bits_.take(2)) {
        case 0: stored(); break;
        case 1: fixed(); break;
        case 2: dynamic(); break;
        default: throw Corrupt{"invalid block type"};
      }
    }
    bits_.to_byte_boundary();
    std::uint32_t stored = 0;
    for (int i = 0; i < 4; ++i) stored = (stored << 8) | bits_.byte();
    if (stored != adler()) throw Corrupt{"incorrect data check"};
  }

  std::uint64_t total() const { return total_; }

 private:
  void zlib_header() {
    constexpr int kDeflate = 8, kMaxWindowLog = 7, kHeaderCheck = 31, kPresetDictionary = 0x20;
    const std::uint32_t cmf = bits_.byte(), flg = bits_.byte();
    if ((cmf * 256 + flg) % kHeaderCheck != 0) throw Corrupt{"incorrect header check"};
    if ((cmf & 0x0F) != kDeflate) throw Corrupt{"unknown compression method"};
    if ((cmf >> 4) > kMaxWindowLog) throw Corrupt{"invalid window size"};
    if (flg & kPresetDictionary) throw Corrupt{"needs a preset dictionary"};
    window_limit_ = 1u << ((cmf >> 4) + 8);  // libpng lets zlib take the window from this header
  }

  void stored() {
    bits_.to_byte_boundary();
    const std::uint32_t length = little_endian16(), complement = little_endian16();
    if (length != (~complement & 0xFFFF)) throw Corrupt{"invalid stored block lengths"};
    for (std::uint32_t i = 0; i < length; ++i) emit(bits_.byte());
  }

  void fixed() {
    static const auto [literals, distances] = [] {
      std::array<std::uint8_t, kFixedLiteralCodes> lit{};
      for (int s = 0; s < kFixedLiteralCodes; ++s) lit[s] = s < 144 ? 8 : s < 256 ? 9 : s < 280 ? 7 : 8;
      std::array<std::uint8_t, kDistanceCodes> dist{};
      dist.fill(5);
      return std::pair{build(lit.data(), kFixedLiteralCodes), build(dist.data(), kDistanceCodes)};
    }();
    codes(literals, distances);
  }

  void dynamic() {
    const int literal_count = bits_.take(5) + kFirstLength, distance_count = bits_.take(5) + 1;
    const int code_count = bits_.take(4) + 4;
    if (literal_count > kLiteralCodes || distance_count > kDistanceCodes) {
      throw Corrupt{"too many length or distance symbols"};
    }
    std::array<std::uint8_t, kCodeLengthCodes> code_lengths{};
    for (int i = 0; i < code_count; ++i) code_lengths[kCodeLengthOrder[i]] = bits_.take(3);
    const Huffman code_length_code = build(code_lengths.data(), kCodeLengthCodes);
    if (code_length_code.unused != 0) throw Corrupt{"invalid code lengths set"};  // it must be complete

    std::array<std::uint8_t, kLiteralCodes + kDistanceCodes> lengths{};
    for (int i = 0; i < literal_count + distance_count;) {
      const int symbol = decode(code_length_code, "invalid code lengths set");
      if (symbol < 16) {
        lengths[i++] = static_cast<std::uint8_t>(symbol);
        continue;
      }
      // 16: the previous length 3..6 times; 17: zero 3..10 times; 18: zero 11..138 times
      if (symbol == 16 && i == 0) throw Corrupt{"invalid bit length repeat"};
      const std::uint8_t repeated = symbol == 16 ? lengths[i - 1] : 0;
      const int times = symbol == 16 ? 3 + bits_.take(2) : symbol == 17 ? 3 + bits_.take(3) : 11 + bits_.take(7);
      if (i + times > literal_count + distance_count) throw Corrupt{"invalid bit length repeat"};
      for (int k = 0; k < times; ++k) lengths[i++] = repeated;
    }
    if (lengths[kEndOfBlock] == 0) throw Corrupt{"invalid code -- missing end-of-block"};
    const Huffman literals = build(lengths.data(), literal_count);
    if (!usable(literals)) throw Corrupt{"invalid literal/lengths set"};
    const Huffman distances = build(lengths.data() + literal_count, distance_count);
    if (!usable(distances)) throw Corrupt{"invalid distances set"};
    codes(literals, distances);
  }

  // One symbol: a table lookup for a short code, else a bit at a time; `unknown` when the bits match no code.
  int decode(const Huffman& h, const char* unknown) {
    const std::uint16_t entry = h.fast[bits_.peek(kFastBits)];
    if (entry == 0) [[unlikely]] return decode_slowly(h, unknown);
    bits_.drop(entry >> kFastSymbolBits);
    return entry & ((1 << kFastSymbolBits) - 1);
  }

  // puff's decode: the code's bits one at a time, against the count of codes of each length.
  [[gnu::noinline]] int decode_slowly(const Huffman& h, const char* unknown) {
    int code = 0, first = 0, index = 0;
    for (int len = 1; len <= kMaxCodeBits; ++len) {
      code |= static_cast<int>(bits_.take(1));
      const int count = h.count[len];
      if (code - count < first) return h.symbol[index + (code - first)];
      index += count;
      first = (first + count) << 1;
      code <<= 1;
    }
    throw Corrupt{unknown};
  }

  void codes(const Huffman& literals, const Huffman& distances) {
    for (;;) {
      const int symbol = decode(literals, "invalid literal/length code");
      if (symbol < kEndOfBlock) {
        emit(static_cast<std::uint8_t>(symbol));
        continue;
      }
      if (symbol == kEndOfBlock) return;
      const std::size_t l = symbol - kFirstLength;
      if (l >= kLengthBase.size()) throw Corrupt{"invalid literal/length code"};
      const std::uint32_t length = kLengthBase[l] + bits_.take(kLengthExtra[l]);
      const std::size_t d = decode(distances, "invalid distance code");
      if (d >= kDistanceBase.size()) throw Corrupt{"invalid distance code"};
      const std::uint32_t distance = kDistanceBase[d] + bits_.take(kDistanceExtra[d]);
      if (distance > total_ || distance > window_limit_) throw Corrupt{"invalid distance too far back"};
      for (std::uint32_t i = 0; i < length; ++i) emit(static_cast<std::uint8_t>(window_[(total_ - distance) % kWindowSize]));
    }
  }

  void emit(std::uint8_t byte) {
    if (total_ == rows_.next()) rows_.check(byte);
    window_[total_ % kWindowSize] = static_cast<WindowByte>(byte);
    ++total_;
    sum1_ += byte;
    sum2_ += sum1_;
    if (++pending_ == kAdlerBlock) {
      sum1_ %= kAdlerBase;
      sum2_ %= kAdlerBase;
      pending_ = 0;
    }
  }

  std::uint32_t little_endian16() {
    const std::uint32_t low = bits_.byte();
    return low | (std::uint32_t{bits_.byte()} << 8);
  }

  std::uint32_t adler() const { return ((sum2_ % kAdlerBase) << 16) | (sum1_ % kAdlerBase); }

  Bits bits_;
  Rows& rows_;
  std::vector<WindowByte> window_;
  std::uint64_t total_ = 0;
  std::uint32_t window_limit_ = kWindowSize;
  std::uint32_t sum1_ = 1, sum2_ = 0, pending_ = 0;
};

}  // namespace

std::optional<std::string> png_data_error(Bytes png) {
  try {
    Rows rows(read_ihdr(png));
    IdatStream idat(png, first_idat(png));
    Inflater inflater(idat, rows);
    inflater.run();
    if (!rows.complete(inflater.total())) throw Corrupt{"not enough image data"};
    return std::nullopt;
  } catch (const Corrupt& e) {
    return e.why;
  }
}

}  // namespace siefpn
