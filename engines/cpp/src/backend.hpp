// A backend runs the graph: a canvas and its image sizes in, the contract's padded outputs out. The rest
// of a detection (preprocessing, mapping boxes back, mask pasting) is backend-independent (detector.cpp).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "contract.hpp"

namespace siefpn {

class Backend {
 public:
  virtual ~Backend() = default;
  // images [B,3,H,W] float32 and image_sizes [B,2] int32 on the CPU -> the outputs in the contract's order, on
  // the CPU. Shapes have been checked against contract() before the call.
  virtual std::vector<at::Tensor> run(const at::Tensor& images, const at::Tensor& image_sizes) = 0;
  virtual const Contract& contract() const = 0;  // the artifact's, its runnable range included
  virtual std::string kind() const = 0;
  virtual std::string device() const = 0;
};

// NAME.pt2, through LibTorch's AOTInductor runtime (aoti_backend.cpp).
std::unique_ptr<Backend> load_aoti_backend(const std::string& path, const LoadOptions& options);

// NAME.plan with NAME.engine.json, through the TensorRT C++ API (tensorrt_backend.cpp); a RuntimeFailure
// when this library was built without TensorRT.
std::unique_ptr<Backend> load_tensorrt_backend(const std::string& path, const LoadOptions& options);

}  // namespace siefpn
