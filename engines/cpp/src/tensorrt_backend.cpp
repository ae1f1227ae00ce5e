// NAME.plan: a serialized TensorRT engine (siefpn-deploy build), run with the TensorRT C++ API: named I/O
// tensors, setInputShape checked against the engine's own optimization profile, enqueueV3 on a CUDA stream
// this backend owns, and every device buffer owned by an RAII wrapper. Written against the TensorRT 10 and 11
// headers (strongly typed engines; the same calls in both); compiled only when TensorRT is found.
#include <cuda_runtime_api.h>

#include <NvInferRuntime.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>

#include "backend.hpp"

namespace siefpn {
namespace {

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw RuntimeFailure(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(status));
}

// TensorRT's messages: errors are kept so that a failed call can say why, the rest are dropped.
class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
    if (severity > Severity::kERROR) return;
    std::lock_guard<std::mutex> lock(mutex_);
    last_error_ = msg;
  }
  std::string last_error() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return last_error_.empty() ? "no message" : last_error_.substr(0, last_error_.find('\n'));
  }

 private:
  mutable std::mutex mutex_;
  std::string last_error_;
};

// One cudaMalloc'ed buffer, freed with its owner; grown (never shrunk) to the largest size asked for.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  void* reserve(std::size_t bytes) {
    if (bytes > bytes_) {
      if (ptr_ != nullptr) check_cuda(cudaFree(ptr_), "cudaFree");
      ptr_ = nullptr;
      bytes_ = 0;
      check_cuda(cudaMalloc(&ptr_, bytes), "cudaMalloc");
      bytes_ = bytes;
    }
    return ptr_;
  }
  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

// The stream every copy and the engine's work are queued on.
class Stream {
 public:
  Stream() { check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate"); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() { cudaStreamDestroy(stream_); }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

at::ScalarType scalar_type(nvinfer1::DataType type, const std::string& name) {
  switch (type) {
    case nvinfer1::DataType::kFLOAT: return at::kFloat;
    case nvinfer1::DataType::kHALF: return at::kHalf;
    case nvinfer1::DataType::kINT32: return at::kInt;
    case nvinfer1::DataType::kINT64: return at::kLong;
    case nvinfer1::DataType::kBOOL: return at::kBool;
    case nvinfer1::DataType::kUINT8: return at::kByte;
    default: throw BadInput("engine tensor " + name + " has a data type this runtime does not read");
  }
}

std::vector<int64_t> dims(const nvinfer1::Dims& d) { return std::vector<int64_t>(d.d, d.d + d.nbDims); }

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

class TensorRTBackend final : public Backend {
 public:
  TensorRTBackend(const std::string& path, const LoadOptions& options) : path_(path) {
    if (!std::filesystem::is_regular_file(path)) throw BadInput("engine not found: " + path);
    if (options.device == "cpu") throw BadInput(path + " is a TensorRT engine; it runs on CUDA, not --device cpu");
    const std::string sidecar = sidecar_path(path, SIEFPN_ENGINE_SUFFIX, SIEFPN_ENGINE_META_SUFFIX);
    if (!std::filesystem::exists(sidecar)) {
      throw BadInput(path + " has no " + std::filesystem::path(sidecar).filename().string() +
                     " beside it; rebuild it with `siefpn-deploy build`");
    }
    const nlohmann::json engine_meta = read_json_file(sidecar, "engine.json");
    if (!engine_meta.is_object() || !engine_meta.contains("model") || !engine_meta.contains("profile")) {
      throw BadInput(sidecar + " is not a siefpn-deploy engine.json (missing model or profile)");
    }
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
      throw RuntimeFailure("cannot run the TensorRT engine " + path + " here: no CUDA device");
    }
    std::ifstream in(path, std::ios::binary);
    const std::vector<char> blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw RuntimeFailure("cannot create a TensorRT runtime: " + logger_.last_error());
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_) {
      throw BadInput("TensorRT cannot deserialize " + path + " (built with another TensorRT version or for another "
                     "GPU?): " + logger_.last_error());
    }
    context_.reset(engine_->createExecutionContext());
    stream_ = std::make_unique<Stream>();
    if (!context_) throw RuntimeFailure("cannot create a TensorRT execution context: " + logger_.last_error());

    // the contract from the sidecar's model meta, its runnable range from the engine's own profile 0
    nlohmann::json meta = engine_meta["model"];
    contract_ = Contract::from_meta(meta, sidecar);
    const std::string& images = contract_.input_names.at(0);
    const auto lo = dims(engine_->getProfileShape(images.c_str(), 0, nvinfer1::OptProfileSelector::kMIN));
    const auto hi = dims(engine_->getProfileShape(images.c_str(), 0, nvinfer1::OptProfileSelector::kMAX));
    if (lo.size() != 4 || hi.size() != 4) throw BadInput(path + ": the engine's " + images + " input is not [B,3,H,W]");
    contract_.batch = {static_cast<int>(lo[0]), static_cast<int>(hi[0])};
    contract_.height = {static_cast<int>(lo[2]), static_cast<int>(hi[2])};
    contract_.width = {static_cast<int>(lo[3]), static_cast<int>(hi[3])};
    if (engine_meta["profile"].value("min", std::vector<int64_t>{}) != lo ||
        engine_meta["profile"].value("max", std::vector<int64_t>{}) != hi) {
      throw BadInput(path + " does not match " + std::filesystem::path(sidecar).filename().string() +
                     " (the optimization profile differs); rebuild it with `siefpn-deploy build`");
    }
    // the engine's named I/O must be the contract's
    std::vector<std::string> inputs, outputs;
    for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* name = engine_->getIOTensorName(i);
      (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? inputs : outputs).push_back(name);
      types_[name] = scalar_type(engine_->getTensorDataType(name), name);
    }
    if (inputs != contract_.input_names || outputs != contract_.output_names) {
      throw BadInput(path + ": the engine's inputs and outputs are not the contract's " +
                     std::to_string(contract_.input_names.size()) + " inputs and " +
                     std::to_string(contract_.output_names.size()) + " outputs; rebuild it from this version's export");
    }
  }

  std::vector<at::Tensor> run(const at::Tensor& images, const at::Tensor& image_sizes) override {
    const std::vector<at::Tensor> feeds{images.to(types_.at(contract_.input_names[0])).contiguous(),
                                        image_sizes.to(types_.at(contract_.input_names[1])).contiguous()};
    for (std::size_t i = 0; i < feeds.size(); ++i) {
      const std::string& name = contract_.input_names[i];
      const auto shape = feeds[i].sizes().vec();
      if (i == 0) check_profile(shape);
      nvinfer1::Dims d{};
      d.nbDims = static_cast<int32_t>(shape.size());
      std::copy(shape.begin(), shape.end(), d.d);
      if (!context_->setInputShape(name.c_str(), d)) {
        throw BadInput(path_ + ": TensorRT refused the " + name + " shape " + shape_text(shape) + ": " +
                       logger_.last_error());
      }
      void* device = buffers_[name].reserve(feeds[i].nbytes());
      check_cuda(cudaMemcpyAsync(device, feeds[i].data_ptr(), feeds[i].nbytes(), cudaMemcpyHostToDevice, stream_->get()),
                 "cudaMemcpyAsync");
      context_->setTensorAddress(name.c_str(), device);
    }
    std::vector<at::Tensor> outputs;
    for (const std::string& name : contract_.output_names) {
      const auto shape = dims(context_->getTensorShape(name.c_str()));
      outputs.push_back(at::empty(shape, types_.at(name)));
      context_->setTensorAddress(name.c_str(), buffers_[name].reserve(std::max<std::size_t>(outputs.back().nbytes(), 1)));
    }
    if (!context_->enqueueV3(stream_->get())) throw RuntimeFailure(path_ + ": TensorRT execution failed: " + logger_.last_error());
    for (std::size_t i = 0; i < outputs.size(); ++i) {
      check_cuda(cudaMemcpyAsync(outputs[i].data_ptr(), buffers_.at(contract_.output_names[i]).get(),
                                 outputs[i].nbytes(), cudaMemcpyDeviceToHost, stream_->get()),
                 "cudaMemcpyAsync");
    }
    check_cuda(cudaStreamSynchronize(stream_->get()), "cudaStreamSynchronize");
    return outputs;
  }

  const Contract& contract() const override { return contract_; }
  std::string kind() const override { return "tensorrt"; }
  std::string device() const override { return "cuda"; }

 private:
  void check_profile(const std::vector<int64_t>& shape) const {
    const bool inside = shape.size() == 4 && shape[0] >= contract_.batch.min && shape[0] <= contract_.batch.max &&
                        shape[2] >= contract_.height.min && shape[2] <= contract_.height.max &&
                        shape[3] >= contract_.width.min && shape[3] <= contract_.width.max;
    if (!inside) {
      throw BadInput(path_ + ": input " + shape_text(shape) + " is outside the engine's profile (batch " +
                     std::to_string(contract_.batch.min) + ".." + std::to_string(contract_.batch.max) + ", height " +
                     std::to_string(contract_.height.min) + ".." + std::to_string(contract_.height.max) + ", width " +
                     std::to_string(contract_.width.min) + ".." + std::to_string(contract_.width.max) + ")");
    }
  }

  std::string path_;
  Logger logger_;  // declared first: the runtime, engine and context below are destroyed before it
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  std::unique_ptr<Stream> stream_;  // created once a device is known to be there
  std::map<std::string, DeviceBuffer> buffers_;  // one per I/O tensor, by name
  std::map<std::string, at::ScalarType> types_;
  Contract contract_;
};

}  // namespace

std::unique_ptr<Backend> load_tensorrt_backend(const std::string& path, const LoadOptions& options) {
  return std::make_unique<TensorRTBackend>(path, options);
}

}  // namespace siefpn
