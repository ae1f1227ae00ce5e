// Image files in: torchvision's decoders (libjpeg-turbo, libpng, libwebp shipped in its wheel), called
// through the dispatcher. The Python runtime decodes with PIL (data/image.py: EXIF orientation applied, then
// RGB); both libraries give the same pixels for these formats (tests/test_cpp.py checks it). Before a decoder
// runs, the header is read here (image_header.cpp) and the image refused as Python refuses it: a format outside
// the allow-list, or more pixels than allowed.
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "image_header.hpp"
#include "png_check.hpp"
#include "siefpn/detector.hpp"
#include "torchvision_ops.hpp"

namespace siefpn {

void load_torchvision_library(const std::string& name) {
  static std::mutex mutex;
  static std::set<std::string> loaded;  // dlopen'ed handles stay for the process: the ops register globally
  std::lock_guard<std::mutex> lock(mutex);
  if (loaded.count(name)) return;
  if (loaded.empty()) {  // what torchvision's libraries list as needed beyond LibTorch (see CMakeLists.txt)
    std::string preload = SIEFPN_TORCHVISION_PRELOAD;
    for (std::size_t start = 0, end; start < preload.size(); start = end + 1) {
      end = std::min(preload.find(':', start), preload.size());
      const std::string lib = preload.substr(start, end - start);
      if (std::filesystem::exists(lib)) dlopen(lib.c_str(), RTLD_LAZY | RTLD_GLOBAL);  // a failure shows below
    }
    loaded.insert("");
  }
  const char* env = std::getenv("SIEFPN_TORCHVISION_DIR");
  const std::filesystem::path dir = env && *env ? env : SIEFPN_TORCHVISION_DIR;
  std::string tried;
  for (const std::string& file : {name + "_stable.so", name + ".so"}) {
    const auto path = dir / file;
    if (!std::filesystem::exists(path)) continue;
    if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) != nullptr) {
      loaded.insert(name);
      return;
    }
    tried = path.string() + ": " + dlerror();
  }
  throw RuntimeFailure("cannot load torchvision's " + name + " library from " + dir.string() +
                       (tried.empty() ? " (not found; set SIEFPN_TORCHVISION_DIR)" : " (" + tried + ")"));
}

namespace {

// "decode_jpeg, /path/to/decode_jpeg.cpp:171, Image is incomplete or truncated" -> the reason alone, one line
std::string decoder_message(const std::string& what) {
  std::string line = what.substr(0, what.find('\n'));
  const std::size_t source = line.find(".cpp:");
  if (source != std::string::npos) {
    const std::size_t comma = line.find(", ", source);
    if (comma != std::string::npos) line = line.substr(comma + 2);
  }
  return line.substr(0, line.find(". "));  // the first sentence
}

std::span<const std::uint8_t> bytes_of(const std::vector<char>& bytes) {
  return {reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()};
}

// Refuse an image the decoders should not see: not JPEG, PNG or WebP (torchvision would also decode GIF, which
// Python's allow-list leaves out, and has no BMP decoder), no size in its header, an empty side, more than
// max_pixels pixels (the message is data/image.py's), or a PNG whose pixel data libpng would fail on. A decoder
// allocates its output from the header's size before it reads the pixels, so a 20000 x 20000 PNG of a few kB
// would otherwise take 1.2 GB.
void check_before_decoding(const std::vector<char>& bytes, const std::string& path, std::int64_t max_pixels) {
  const ImageHeader header = read_image_header(bytes_of(bytes));
  if (header.format == ImageFormat::kUnknown) throw BadInput("cannot read image " + path + ": not a JPEG, PNG or WebP image");
  if (!header.sized) {
    throw BadInput("cannot read image " + path + ": its " + format_name(header.format) +
                   " header is truncated or corrupt (no image size)");
  }
  const std::string size = std::to_string(header.width) + "x" + std::to_string(header.height);
  if (header.width == 0 || header.height == 0) throw BadInput("cannot read image " + path + ": it is empty (" + size + ")");
  if (header.width > max_pixels / header.height) {  // width * height > max_pixels, without overflowing
    throw BadInput("image " + path + " is " + size + ", more than the " + std::to_string(max_pixels) +
                   " pixels allowed");
  }
  if (header.format == ImageFormat::kBmp) {
    throw BadInput("cannot read image " + path + ": BMP is not supported by the C++ runtime (torchvision has no BMP "
                   "decoder); convert it to PNG");
  }
  if (header.format == ImageFormat::kPng) {  // torchvision's PNG decoder crashes on damaged pixel data (png_check.hpp)
    if (const auto why = png_data_error(bytes_of(bytes))) {
      throw BadInput("cannot read image " + path + ": its PNG image data is damaged (" + *why + ")");
    }
  }
}

}  // namespace

Image read_image(const std::string& path, std::int64_t max_pixels) {
  if (max_pixels < 1) throw BadInput("the image pixel limit must be >= 1, got " + std::to_string(max_pixels));
  std::ifstream in(path, std::ios::binary);
  if (!std::filesystem::is_regular_file(path) || !in) throw BadInput("image not found: " + path);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.empty()) throw BadInput("cannot read image " + path + ": the file is empty");
  check_before_decoding(bytes, path, max_pixels);
  load_torchvision_library("image");
  static const auto decode = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("image::decode_image", "")
                                 .typed<at::Tensor(const at::Tensor&, int64_t, bool)>();
  const at::Tensor data = at::from_blob(bytes.data(), {static_cast<int64_t>(bytes.size())}, at::kByte);
  constexpr int64_t kReadRGB = 3;  // torchvision.io.ImageReadMode.RGB: gray repeated, alpha dropped
  at::Tensor chw;
  try {
    chw = decode.call(data, kReadRGB, /*apply_exif_orientation=*/true);
  } catch (const std::exception& e) {  // c10::Error, or std::runtime_error through the stable ABI
    throw BadInput("cannot read image " + path + ": " + decoder_message(e.what()));
  }
  if (chw.scalar_type() != at::kByte || chw.dim() != 3 || chw.size(0) != 3) {
    throw BadInput("cannot read image " + path + ": only 8-bit images are supported");
  }
  Image image;
  image.height = static_cast<int>(chw.size(1));
  image.width = static_cast<int>(chw.size(2));
  image.pixels.resize(chw.numel());
  at::from_blob(image.pixels.data(), {image.height, image.width, 3}, at::kByte).copy_(chw.permute({1, 2, 0}));
  return image;
}

void write_png(const std::string& path, const Image& image) {
  if (image.format != PixelFormat::RGB || image.pixels.size() != static_cast<std::size_t>(image.height) * image.width * 3) {
    throw BadInput("write_png takes an RGB image with height * width * 3 pixels");
  }
  load_torchvision_library("image");
  static const auto encode = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("image::encode_png", "")
                                 .typed<at::Tensor(const at::Tensor&, int64_t)>();
  const at::Tensor hwc = at::from_blob(const_cast<std::uint8_t*>(image.pixels.data()), {image.height, image.width, 3},
                                       at::kByte);
  const at::Tensor png = encode.call(hwc.permute({2, 0, 1}).contiguous(), /*compression_level=*/6).contiguous();
  write_file(path, std::string_view(reinterpret_cast<const char*>(png.data_ptr<std::uint8_t>()), png.numel()));
}

namespace {

// A failed write: remove the temporary file and say why in one line (errno's text: "No space left on device").
[[noreturn]] void write_failed(const std::string& what, const std::filesystem::path& tmp, int fd, int error) {
  if (fd >= 0) ::close(fd);
  ::unlink(tmp.c_str());
  throw RuntimeFailure(what + ": " + std::strerror(error));
}

}  // namespace

// Atomic: a reader sees the old file or the whole new one, never a part. The bytes go to a temporary file of a
// unique name beside the target (mkstemp: two writers never share one), every write and the close are checked
// (a full disk may only show at close), then fsync, rename over the target, and fsync of the folder so the
// rename itself survives a crash. On any failure the temporary file is removed and the target is untouched.
void write_file(const std::string& path, std::string_view bytes) {
  const std::filesystem::path target(path);
  const std::filesystem::path folder = target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
  std::error_code made;
  std::filesystem::create_directories(folder, made);
  if (made) throw RuntimeFailure("cannot write " + path + ": cannot create " + folder.string() + ": " + made.message());
  std::string pattern = (folder / ("." + target.filename().string() + ".XXXXXX")).string();
  const int fd = ::mkstemp(pattern.data());
  const std::filesystem::path tmp(pattern);
  if (fd < 0) throw RuntimeFailure("cannot write " + path + ": " + std::strerror(errno));
  for (std::size_t done = 0; done < bytes.size();) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) write_failed("cannot write " + path, tmp, fd, n < 0 ? errno : EIO);
    done += static_cast<std::size_t>(n);
  }
  if (::fchmod(fd, 0644) != 0 || ::fsync(fd) != 0) write_failed("cannot write " + path, tmp, fd, errno);
  if (::close(fd) != 0) write_failed("cannot write " + path, tmp, -1, errno);
  if (::rename(tmp.c_str(), target.c_str()) != 0) write_failed("cannot write " + path, tmp, -1, errno);
  const int dir = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY);
  if (dir >= 0) {  // best effort: some file systems refuse fsync on a folder
    ::fsync(dir);
    ::close(dir);
  }
}

}  // namespace siefpn
