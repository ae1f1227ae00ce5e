// siefpn::Detector: load a deployed Dual SIE-FPN detector (.pt2 AOTInductor package, or .plan TensorRT
// engine) and run it on decoded images.
//
//   auto det = siefpn::Detector::load("export/demo.pt2");
//   siefpn::Image img = siefpn::read_image("a.jpg");              // RGB, EXIF orientation applied
//   auto results = det.detect({img.view()});                      // per image, in its own pixels
//   for (const auto& d : results[0].detections) use(d.box, d.score, d.label, d.category_id, d.mask);
//
// The graph contract (input and output names, K, mask size, label numbering, preprocessing, classes) is read
// from the artifact's meta (the package's own metadata, or NAME.engine.json), never restated here. Results
// equal the Python runtime's (`siefpn_deploy.runtime.Detector`): the same resize, canvas and channel order,
// boxes mapped back and clipped the same way, masks pasted with the same rule.
//
// Errors are siefpn::BadInput (the input's fault) or siefpn::RuntimeFailure, each with a one-line message.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "siefpn/error.hpp"

namespace siefpn {

// The channel order of an interleaved uint8 buffer. Alpha is dropped, gray is repeated, as PIL's convert("RGB").
enum class PixelFormat { RGB, BGR, RGBA, BGRA, GRAY };

// A decoded image the caller owns: HWC uint8, rows packed (stride = width * channels).
struct ImageView {
  const std::uint8_t* data = nullptr;
  int height = 0;
  int width = 0;
  PixelFormat format = PixelFormat::RGB;
};

// A decoded image that owns its pixels (what read_image returns).
struct Image {
  std::vector<std::uint8_t> pixels;  // HWC
  int height = 0;
  int width = 0;
  PixelFormat format = PixelFormat::RGB;
  ImageView view() const { return {pixels.data(), height, width, format}; }
};

// The most pixels (width * height) read_image decodes unless told otherwise: the same default as
// `siefpn-deploy serve --max-image-pixels` (siefpn_deploy/serve/options.py MAX_IMAGE_PIXELS; tests/test_cpp_fuzz.py
// checks that the two agree). 40 MP decode to 120 MB of RGB.
inline constexpr std::int64_t kDefaultMaxImagePixels = 40'000'000;

// Decode a JPEG, PNG or WebP file to RGB with its EXIF orientation applied (torchvision's decoders). The header
// is read first: an image of more than max_pixels pixels, or of another format, is refused before decoding.
// A missing, unreadable, corrupt, unsupported or oversized file is a BadInput naming it.
Image read_image(const std::string& path, std::int64_t max_pixels = kDefaultMaxImagePixels);

// Read a meta.json and check it as loading an artifact checks the meta it carries: the contract's major version,
// its structure and the bounds of its values. Returns the architecture; a BadInput naming the file when it fails.
std::string check_meta_file(const std::string& path);

// Encode an RGB image as PNG (torchvision's encoder) and write it with write_file.
void write_png(const std::string& path, const Image& image);

// Write `bytes` to `path` atomically: a temporary file beside it, renamed onto it (parent folders are made).
void write_file(const std::string& path, std::string_view bytes);

struct Detection {
  std::array<float, 4> box{};     // xyxy in the original image's pixels
  float score = 0;
  int label = 0;                  // the contract's label, 1..C
  int category_id = 0;            // the dataset's COCO category id of that label
  std::string class_name;
  std::vector<std::uint8_t> mask; // Mask R-CNN: height * width bytes, 1 inside the instance; else empty
};

struct ImageDetections {
  int height = 0;  // the original image's size, which boxes and masks refer to
  int width = 0;
  std::vector<Detection> detections;  // ordered by score
};

struct LoadOptions {
  std::string device = "auto";  // auto, cpu or cuda; a .pt2 runs where it was compiled for
  int threads = 0;               // intra-op threads for CPU work; 0 keeps LibTorch's default
};

// One preprocessed canvas (Detector::prepare) and one backend run's padded outputs (Detector::infer).
class PreparedBatch;
class RawOutputs;

class Detector {
 public:
  static Detector load(const std::string& path, const LoadOptions& options = {});
  Detector(Detector&&) noexcept;
  Detector& operator=(Detector&&) noexcept;
  ~Detector();

  // Detections for each image; images are run in batches of at most max_batch() on shared canvases.
  std::vector<ImageDetections> detect(std::span<const ImageView> images, int batch_size = 0);

  // The three steps of detect for one batch (at most max_batch() images), for timing and inspection.
  PreparedBatch prepare(std::span<const ImageView> images) const;
  RawOutputs infer(const PreparedBatch& batch);
  std::vector<ImageDetections> postprocess(const RawOutputs& outputs, const PreparedBatch& batch) const;

  // The test-time resize (shortest side to min_size, longest at most max_size); 0 keeps the artifact's.
  void set_resize(int min_size, int max_size = 0);

  std::string backend() const;       // "aoti" or "tensorrt"
  std::string device() const;        // "cpu" or "cuda"
  std::string architecture() const;  // retinanet, faster_rcnn, mask_rcnn
  int min_batch() const;
  int max_batch() const;
  std::array<int, 2> height_range() const;
  std::array<int, 2> width_range() const;
  std::array<int, 2> resize() const;  // (min_size, max_size)

 private:
  struct Impl;
  explicit Detector(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class PreparedBatch {
 public:
  PreparedBatch(PreparedBatch&&) noexcept;
  ~PreparedBatch();
  std::array<int, 4> shape() const;      // [B,3,H,W]
  const float* data() const;             // the canvas, B*3*H*W floats, NCHW
  std::vector<std::array<int, 2>> image_sizes() const;     // each resized image's (h, w) on the canvas
  std::vector<std::array<int, 2>> original_sizes() const;  // each image's (h, w)

 private:
  friend class Detector;
  struct Impl;
  explicit PreparedBatch(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class RawOutputs {
 public:
  RawOutputs(RawOutputs&&) noexcept;
  ~RawOutputs();

 private:
  friend class Detector;
  struct Impl;
  explicit RawOutputs(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace siefpn
