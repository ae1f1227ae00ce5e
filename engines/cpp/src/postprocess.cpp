#include "postprocess.hpp"

#include <algorithm>
#include <cmath>

namespace siefpn {

at::Tensor paste_masks(const at::Tensor& masks, const at::Tensor& boxes, int height, int width, float threshold) {
  const int64_t n = masks.size(0);
  at::Tensor out = at::zeros({n, height, width}, at::kBool);
  const at::Tensor probs = masks.to(at::kFloat), rects = boxes.to(at::kFloat);
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor box = rects[i];
    const auto* b = box.data_ptr<float>();
    const int left = std::max(static_cast<int>(std::floor(static_cast<double>(b[0]))) - 1, 0);
    const int top = std::max(static_cast<int>(std::floor(static_cast<double>(b[1]))) - 1, 0);
    const int right = std::min(static_cast<int>(std::ceil(static_cast<double>(b[2]))) + 1, width);
    const int bottom = std::min(static_cast<int>(std::ceil(static_cast<double>(b[3]))) + 1, height);
    if (right <= left || bottom <= top) continue;
    // u = (x + 0.5 - x0) / (x1 - x0) * 2 - 1 in float32 ops, as the Python expression evaluates it
    const at::Tensor xs = (at::arange(left, right, at::kFloat) + 0.5 - box[0]) / (box[2] - box[0]) * 2 - 1;
    const at::Tensor ys = (at::arange(top, bottom, at::kFloat) + 0.5 - box[1]) / (box[3] - box[1]) * 2 - 1;
    const at::Tensor grid = at::stack(at::meshgrid({xs, ys}, "xy"), -1);  // [rows, cols, 2] as (u, v)
    const at::Tensor sampled = at::grid_sampler(probs[i].unsqueeze(0).unsqueeze(0), grid.unsqueeze(0),
                                                /*bilinear*/ 0, /*zeros*/ 0, /*align_corners=*/false)[0][0];
    out[i].narrow(0, top, bottom - top).narrow(1, left, right - left).copy_(sampled >= threshold);
  }
  return out;
}

namespace {

// xyxy boxes [N,4] in canvas pixels -> image pixels (torchvision's resize_boxes), clipped (Canvas.to_image)
at::Tensor to_image(const at::Tensor& boxes, const std::array<int, 2>& resized, const std::array<int, 2>& original) {
  const double sx = static_cast<double>(original[1]) / resized[1], sy = static_cast<double>(original[0]) / resized[0];
  const at::Tensor scale = at::tensor({sx, sy, sx, sy}, at::kFloat);
  at::Tensor out = boxes * scale;
  out.select(1, 0).clamp_(0, original[1]);
  out.select(1, 2).clamp_(0, original[1]);
  out.select(1, 1).clamp_(0, original[0]);
  out.select(1, 3).clamp_(0, original[0]);
  return out;
}

}  // namespace

std::vector<ImageDetections> detections_from_outputs(const std::vector<at::Tensor>& outputs, const Canvas& canvas,
                                                     const Contract& contract) {
  std::vector<ImageDetections> results;
  const int classes = static_cast<int>(contract.class_names.size());
  for (std::size_t b = 0; b < canvas.resized.size(); ++b) {
    const int64_t n = outputs[kNumDets][b].item<int32_t>();
    if (n < 0 || n > contract.max_detections) {
      throw RuntimeFailure("the graph returned num_dets " + std::to_string(n) + " for K = " +
                           std::to_string(contract.max_detections));
    }
    at::Tensor boxes = outputs[kBoxes][b].narrow(0, 0, n).to(at::kFloat);
    at::Tensor scores = outputs[kScores][b].narrow(0, 0, n).to(at::kFloat);
    at::Tensor labels = outputs[kLabels][b].narrow(0, 0, n).to(at::kLong);
    at::Tensor masks = contract.has_masks() ? outputs[kMasks][b].narrow(0, 0, n) : at::Tensor();
    // image_rows: a class label (not the background) and a box that is not empty on the canvas
    at::Tensor keep = (labels != contract.background_label) & (boxes.select(1, 2) > boxes.select(1, 0)) &
                      (boxes.select(1, 3) > boxes.select(1, 1));
    boxes = to_image(boxes.index({keep}), canvas.resized[b], canvas.original[b]);
    scores = scores.index({keep}), labels = labels.index({keep});
    if (masks.defined()) masks = masks.index({keep});
    // detectron2's detector_postprocess: boxes empty after clipping to the image are dropped
    const at::Tensor nonempty = ((boxes.select(1, 2) - boxes.select(1, 0)) > 0) & ((boxes.select(1, 3) - boxes.select(1, 1)) > 0);
    boxes = boxes.index({nonempty}).contiguous();
    scores = scores.index({nonempty}).contiguous(), labels = labels.index({nonempty}).contiguous();
    const auto [height, width] = canvas.original[b];
    at::Tensor pasted;
    if (masks.defined()) {
      pasted = paste_masks(masks.index({nonempty}), boxes, height, width, contract.mask_threshold).to(at::kByte);
    }
    ImageDetections image{height, width, {}};
    const auto* box = boxes.data_ptr<float>();
    for (int64_t i = 0; i < boxes.size(0); ++i) {
      Detection d;
      std::copy(box + 4 * i, box + 4 * i + 4, d.box.begin());
      d.score = scores[i].item<float>();
      d.label = static_cast<int>(labels[i].item<int64_t>());
      const int index = d.label - contract.first_label;
      if (index < 0 || index >= classes) {
        throw RuntimeFailure("the graph returned label " + std::to_string(d.label) + "; labels must lie in " +
                             std::to_string(contract.first_label) + ".." + std::to_string(classes));
      }
      d.category_id = contract.category_ids[index];
      d.class_name = contract.class_names[index];
      if (pasted.defined()) {
        const at::Tensor m = pasted[i].contiguous();
        d.mask.assign(m.data_ptr<std::uint8_t>(), m.data_ptr<std::uint8_t>() + m.numel());
      }
      image.detections.push_back(std::move(d));
    }
    results.push_back(std::move(image));
  }
  return results;
}

}  // namespace siefpn
