// The contract's preprocessing, step for step as data/image.py (to_tensor) and data/preprocess.py
// (Preprocess, Canvas) and model/predictor.py (Predictor.prepare) carry it out, with the same ATen kernels so
// the canvas is the same floats.
#pragma once

#include <array>
#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "contract.hpp"

namespace siefpn {

// A preprocessed batch: the graph's two inputs and what maps boxes back.
struct Canvas {
  at::Tensor images;       // [B,3,H,W] float32, 0..input_scale, the graph's channel order
  at::Tensor image_sizes;  // [B,2] int32, each resized image's (h, w) at the canvas's top-left
  std::vector<std::array<int, 2>> resized;   // (h, w) per image
  std::vector<std::array<int, 2>> original;  // (h, w) per image
};

// HWC uint8 in any PixelFormat -> RGB float32 [3,h,w] in 0..1 (data/image.py to_tensor).
at::Tensor to_rgb_float(const ImageView& image);

// RGB [3,h,w] images -> one canvas: `canvas` fixes (H, W), else the largest resized image padded to the
// divisibility (data/preprocess.py Preprocess.__call__).
Canvas make_canvas(const std::vector<at::Tensor>& images, const Preprocessing& spec,
                   std::optional<std::array<int, 2>> canvas = std::nullopt);

// The canvas a runnable range takes: fixed for a static range, else the batch's own, brought to the nearest
// edge of the range when outside it (model/predictor.py Predictor.prepare).
Canvas prepare_canvas(const std::vector<at::Tensor>& images, const Preprocessing& spec, const ShapeRange& height,
                      const ShapeRange& width);

}  // namespace siefpn
