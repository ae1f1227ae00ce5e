#include "preprocess.hpp"

#include <algorithm>
#include <cmath>

namespace siefpn {

at::Tensor to_rgb_float(const ImageView& image) {
  if (image.data == nullptr || image.height < 1 || image.width < 1) {
    throw BadInput("an image must have pixels, got " + std::to_string(image.height) + "x" + std::to_string(image.width));
  }
  const int channels = image.format == PixelFormat::GRAY ? 1
                       : (image.format == PixelFormat::RGBA || image.format == PixelFormat::BGRA) ? 4 : 3;
  at::Tensor hwc = at::from_blob(const_cast<std::uint8_t*>(image.data), {image.height, image.width, channels}, at::kByte);
  if (channels == 4) hwc = hwc.narrow(2, 0, 3);  // alpha dropped, as PIL's convert("RGB")
  // float32 / 255 as numpy's `astype(np.float32) / 255.0`
  at::Tensor rgb = hwc.to(at::kFloat) / 255.0;
  if (channels == 1) rgb = rgb.expand({image.height, image.width, 3});
  if (image.format == PixelFormat::BGR || image.format == PixelFormat::BGRA) rgb = rgb.flip({2});
  return rgb.permute({2, 0, 1}).contiguous();  // [3,h,w]
}

namespace {

// torchvision's _resize_image_and_masks arithmetic in doubles, then F.interpolate(scale_factor=...,
// recompute_scale_factor=True): the output size is int(side * factor) and the kernel scales by in/out.
at::Tensor resize(const at::Tensor& image, const Preprocessing& spec, std::optional<std::array<int, 2>> canvas) {
  const double h = static_cast<double>(image.size(1)), w = static_cast<double>(image.size(2));
  double factor = std::min(spec.min_size / std::min(h, w), spec.max_size / std::max(h, w));
  if (canvas && (std::floor(h * factor) > (*canvas)[0] || std::floor(w * factor) > (*canvas)[1])) {
    factor = std::min((*canvas)[0] / h, (*canvas)[1] / w);
  }
  const auto out_h = static_cast<int64_t>(h * factor), out_w = static_cast<int64_t>(w * factor);
  return at::upsample_bilinear2d(image.unsqueeze(0), {out_h, out_w}, /*align_corners=*/false)[0];
}

int round_up(int value, int multiple) { return (value + multiple - 1) / multiple * multiple; }

}  // namespace

Canvas make_canvas(const std::vector<at::Tensor>& images, const Preprocessing& spec,
                   std::optional<std::array<int, 2>> canvas) {
  Canvas out;
  std::vector<at::Tensor> resized;
  for (const at::Tensor& image : images) {
    at::Tensor r = resize(image, spec, canvas);
    resized.push_back(spec.bgr ? r.flip({0}) : r);
    out.resized.push_back({static_cast<int>(r.size(1)), static_cast<int>(r.size(2))});
    out.original.push_back({static_cast<int>(image.size(1)), static_cast<int>(image.size(2))});
  }
  if (!canvas) {
    int h = 0, w = 0;
    for (const auto& [rh, rw] : out.resized) h = std::max(h, rh), w = std::max(w, rw);
    canvas = std::array<int, 2>{round_up(h, spec.divisibility), round_up(w, spec.divisibility)};
  }
  const auto batch = static_cast<int64_t>(images.size());
  // filled with the pixel mean (in 0..1), so the graph's normalisation turns the padding into zeros
  const at::Tensor fill = at::tensor({spec.pixel_mean[0] / 255.0, spec.pixel_mean[1] / 255.0, spec.pixel_mean[2] / 255.0},
                                     at::kFloat);
  at::Tensor canvas_images = fill.view({1, 3, 1, 1}).repeat({batch, 1, (*canvas)[0], (*canvas)[1]});
  for (int64_t b = 0; b < batch; ++b) {
    const at::Tensor& r = resized[b];
    canvas_images[b].narrow(1, 0, r.size(1)).narrow(2, 0, r.size(2)).copy_(r);
  }
  out.images = spec.input_scale != 1.0 ? canvas_images * spec.input_scale : canvas_images;
  out.image_sizes = at::empty({batch, 2}, at::kInt);
  for (int64_t b = 0; b < batch; ++b) {
    out.image_sizes[b][0] = out.resized[b][0];
    out.image_sizes[b][1] = out.resized[b][1];
  }
  return out;
}

Canvas prepare_canvas(const std::vector<at::Tensor>& images, const Preprocessing& spec, const ShapeRange& height,
                      const ShapeRange& width) {
  const bool fixed = height.min == height.max && width.min == width.max;
  Canvas canvas = make_canvas(images, spec, fixed ? std::optional<std::array<int, 2>>({height.max, width.max})
                                                  : std::nullopt);
  const int ch = static_cast<int>(canvas.images.size(2)), cw = static_cast<int>(canvas.images.size(3));
  if (!fixed && (ch > height.max || cw > width.max || ch < height.min || cw < width.min)) {
    const std::array<int, 2> target{std::clamp(ch, height.min, height.max), std::clamp(cw, width.min, width.max)};
    canvas = make_canvas(images, spec, target);
  }
  return canvas;
}

}  // namespace siefpn
