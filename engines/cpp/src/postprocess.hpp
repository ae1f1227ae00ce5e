// The padded graph outputs -> each image's detections in its own pixels, as model/predictor.py
// (Predictor.postprocess), core/contract.py (image_rows) and model/masks.py (paste_masks) do it.
#pragma once

#include <vector>

#include <ATen/ATen.h>

#include "contract.hpp"
#include "preprocess.hpp"

namespace siefpn {

// masks [N,M,M] probabilities, boxes [N,4] xyxy in image pixels -> bool [N,H,W]: each image pixel samples its
// box's mask bilinearly at pixel centres (detectron2's paste rule, model/masks.py), within the box plus a
// one-pixel margin.
at::Tensor paste_masks(const at::Tensor& masks, const at::Tensor& boxes, int height, int width, float threshold);

// outputs in the contract's order (CPU tensors, batch = canvas's) -> per-image detections.
std::vector<ImageDetections> detections_from_outputs(const std::vector<at::Tensor>& outputs, const Canvas& canvas,
                                                     const Contract& contract);

}  // namespace siefpn
