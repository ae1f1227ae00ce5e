// siefpn::Detector: the artifact's backend plus the backend-independent steps (preprocess.cpp,
// postprocess.cpp), the C++ counterpart of siefpn_deploy.runtime.Detector.
#include "siefpn/detector.hpp"

#include <filesystem>

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include "backend.hpp"
#include "postprocess.hpp"
#include "preprocess.hpp"

namespace siefpn {

struct Detector::Impl {
  std::unique_ptr<Backend> backend;
  Preprocessing preprocess;  // the contract's, with the test resize set_resize may change
};
struct PreparedBatch::Impl {
  Canvas canvas;
};
struct RawOutputs::Impl {
  std::vector<at::Tensor> outputs;
};

Detector::Detector(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Detector::Detector(Detector&&) noexcept = default;
Detector& Detector::operator=(Detector&&) noexcept = default;
Detector::~Detector() = default;
PreparedBatch::PreparedBatch(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PreparedBatch::PreparedBatch(PreparedBatch&&) noexcept = default;
PreparedBatch::~PreparedBatch() = default;
RawOutputs::RawOutputs(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RawOutputs::RawOutputs(RawOutputs&&) noexcept = default;
RawOutputs::~RawOutputs() = default;

Detector Detector::load(const std::string& path, const LoadOptions& options) {
  if (options.device != "auto" && options.device != "cpu" && options.device != "cuda") {
    throw BadInput("device must be auto, cpu or cuda, got " + options.device);
  }
  if (options.threads > 0) at::set_num_threads(options.threads);
  const std::string suffix = std::filesystem::path(path).extension().string();
  auto impl = std::make_unique<Impl>();
  if (suffix == SIEFPN_PACKAGE_SUFFIX) {
    impl->backend = load_aoti_backend(path, options);
  } else if (suffix == SIEFPN_ENGINE_SUFFIX) {
    impl->backend = load_tensorrt_backend(path, options);
  } else {
    throw BadInput("unknown artifact " + path + ": expected an AOTInductor package (" SIEFPN_PACKAGE_SUFFIX
                   ") or a TensorRT engine (" SIEFPN_ENGINE_SUFFIX "); export one with siefpn-deploy");
  }
  impl->preprocess = impl->backend->contract().preprocess;
  return Detector(std::move(impl));
}

PreparedBatch Detector::prepare(std::span<const ImageView> images) const {
  c10::InferenceMode no_autograd;
  const Contract& c = impl_->backend->contract();
  if (images.empty()) throw BadInput("no images to prepare");
  if (static_cast<int>(images.size()) > c.batch.max) {
    throw BadInput("a batch of " + std::to_string(images.size()) + " images is outside the exported range [" +
                   std::to_string(c.batch.min) + ", " + std::to_string(c.batch.max) + "]");
  }
  std::vector<at::Tensor> rgb;
  for (const ImageView& image : images) rgb.push_back(to_rgb_float(image));
  auto impl = std::make_unique<PreparedBatch::Impl>();
  impl->canvas = prepare_canvas(rgb, impl_->preprocess, c.height, c.width);
  return PreparedBatch(std::move(impl));
}

RawOutputs Detector::infer(const PreparedBatch& batch) {
  c10::InferenceMode no_autograd;
  const Contract& c = impl_->backend->contract();
  at::Tensor images = batch.impl_->canvas.images, sizes = batch.impl_->canvas.image_sizes;
  const int64_t real = images.size(0);
  if (real < c.batch.min) {  // padded with copies of the last image up to the smallest batch it takes
    images = at::cat({images, images.narrow(0, real - 1, 1).expand({c.batch.min - real, -1, -1, -1})});
    sizes = at::cat({sizes, sizes.narrow(0, real - 1, 1).expand({c.batch.min - real, -1})});
  }
  auto impl = std::make_unique<RawOutputs::Impl>();
  impl->outputs = impl_->backend->run(images.contiguous(), sizes.contiguous());
  for (auto& t : impl->outputs) t = t.narrow(0, 0, real);
  return RawOutputs(std::move(impl));
}

std::vector<ImageDetections> Detector::postprocess(const RawOutputs& outputs, const PreparedBatch& batch) const {
  c10::InferenceMode no_autograd;
  return detections_from_outputs(outputs.impl_->outputs, batch.impl_->canvas, impl_->backend->contract());
}

std::vector<ImageDetections> Detector::detect(std::span<const ImageView> images, int batch_size) {
  const int step = std::min(batch_size > 0 ? batch_size : max_batch(), max_batch());
  std::vector<ImageDetections> results;
  for (std::size_t start = 0; start < images.size(); start += step) {
    const auto chunk = images.subspan(start, std::min<std::size_t>(step, images.size() - start));
    const PreparedBatch batch = prepare(chunk);
    for (auto& r : postprocess(infer(batch), batch)) results.push_back(std::move(r));
  }
  return results;
}

void Detector::set_resize(int min_size, int max_size) {
  if (min_size < 0 || max_size < 0) throw BadInput("the resize sizes must be positive");
  const Preprocessing& spec = impl_->backend->contract().preprocess;
  impl_->preprocess.min_size = min_size > 0 ? min_size : spec.min_size;
  impl_->preprocess.max_size = max_size > 0 ? max_size : (min_size > 0 ? min_size : spec.max_size);
}

std::string Detector::backend() const { return impl_->backend->kind(); }
std::string Detector::device() const { return impl_->backend->device(); }
std::string Detector::architecture() const { return impl_->backend->contract().architecture; }
int Detector::min_batch() const { return impl_->backend->contract().batch.min; }
int Detector::max_batch() const { return impl_->backend->contract().batch.max; }
std::array<int, 2> Detector::height_range() const {
  const auto& r = impl_->backend->contract().height;
  return {r.min, r.max};
}
std::array<int, 2> Detector::width_range() const {
  const auto& r = impl_->backend->contract().width;
  return {r.min, r.max};
}
std::array<int, 2> Detector::resize() const { return {impl_->preprocess.min_size, impl_->preprocess.max_size}; }

std::array<int, 4> PreparedBatch::shape() const {
  const auto& t = impl_->canvas.images;
  return {static_cast<int>(t.size(0)), 3, static_cast<int>(t.size(2)), static_cast<int>(t.size(3))};
}
const float* PreparedBatch::data() const { return impl_->canvas.images.data_ptr<float>(); }
std::vector<std::array<int, 2>> PreparedBatch::image_sizes() const { return impl_->canvas.resized; }
std::vector<std::array<int, 2>> PreparedBatch::original_sizes() const { return impl_->canvas.original; }

#ifndef SIEFPN_WITH_TENSORRT
std::unique_ptr<Backend> load_tensorrt_backend(const std::string& path, const LoadOptions&) {
  throw RuntimeFailure("cannot run " + path + ": this siefpn library was built without TensorRT (configure with "
                       "-DSIEFPN_WITH_TENSORRT=ON and TENSORRT_ROOT)");
}
#endif

}  // namespace siefpn
