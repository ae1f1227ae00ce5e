// NAME.pt2: an AOTInductor package run by LibTorch (torch::inductor::AOTIModelPackageLoader). The package's
// own metadata holds its meta.json (export/aoti.py), so the package alone is enough; a NAME.meta.json beside
// it must agree with it.
#include <filesystem>
#include <fstream>

#include <ATen/Context.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include "backend.hpp"
#include "torchvision_ops.hpp"

namespace siefpn {
namespace {

bool is_zip(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  return in.gcount() == 4 && magic[0] == 'P' && magic[1] == 'K' && magic[2] == 3 && magic[3] == 4;
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// A meta's export.device, or `fallback` where it states none. A BadInput naming `source` when it is not a string:
// nlohmann's value() would throw its own type_error there, which would end as a runtime failure (exit 1).
std::string export_device(const nlohmann::json& meta, const std::string& fallback, const std::string& source) {
  if (!meta.is_object() || !meta.contains("export") || !meta["export"].is_object() || !meta["export"].contains("device")) {
    return fallback;
  }
  const nlohmann::json& device = meta["export"]["device"];
  if (!device.is_string()) throw BadInput(source + ": \"export.device\" has the wrong type");
  return device.get<std::string>();
}

class AotiBackend final : public Backend {
 public:
  AotiBackend(const std::string& path, const LoadOptions& options) {
    if (!std::filesystem::is_regular_file(path)) throw BadInput("AOTInductor package not found: " + path);
    if (!is_zip(path)) {
      throw BadInput("cannot load the AOTInductor package " + path + ": not a zip archive (truncated, or not a .pt2)");
    }
    load_torchvision_library("_C");  // the R-CNN packages call torchvision::roi_align through the dispatcher
    try {
      loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path);
    } catch (const std::exception& e) {
      throw BadInput("cannot load the AOTInductor package " + path + ": " + first_line(e.what()));
    }
    const auto metadata = loader_->get_metadata();
    const auto found = metadata.find(SIEFPN_PACKAGE_META_KEY);
    if (found == metadata.end()) {
      throw BadInput(path + " holds no siefpn-deploy metadata (" SIEFPN_PACKAGE_META_KEY "); export it with "
                     "`siefpn-deploy export --format aoti`");
    }
    nlohmann::json meta;
    try {
      meta = nlohmann::json::parse(found->second);
    } catch (const nlohmann::json::exception& e) {
      throw BadInput(path + ": its " SIEFPN_PACKAGE_META_KEY " metadata is not JSON (" + e.what() + ")");
    }
    if (!meta.is_object()) throw BadInput(path + ": its " SIEFPN_PACKAGE_META_KEY " metadata is not a JSON object");
    check_sidecar(path, meta);
    contract_ = Contract::from_meta(meta, path);
    device_ = export_device(meta, "cpu", path);
    if (device_ != "cpu" && device_ != "cuda") throw BadInput(path + ": export.device must be cpu or cuda, got " + device_);
    if (options.device != "auto" && options.device != device_) {
      throw BadInput(path + " was compiled for " + device_ + "; it cannot run on --device " + options.device);
    }
    if (device_ == "cuda" && !at::globalContext().hasCUDA()) {
      throw RuntimeFailure(path + " was compiled for CUDA and there is no CUDA device here; export a CPU package "
                           "with --format aoti --device cpu");
    }
  }

  std::vector<at::Tensor> run(const at::Tensor& images, const at::Tensor& image_sizes) override {
    const at::Device target = device_ == "cuda" ? at::Device(at::kCUDA) : at::Device(at::kCPU);
    // no autograd bookkeeping on the ops the package calls through the dispatcher (as Python's inference_mode)
    c10::InferenceMode no_autograd;
    std::vector<at::Tensor> outputs;
    try {
      outputs = loader_->run({images.to(target), image_sizes.to(target)});
    } catch (const std::exception& e) {
      throw RuntimeFailure("the AOTInductor package failed: " + first_line(e.what()));
    }
    if (outputs.size() != contract_.output_names.size()) {
      throw RuntimeFailure("the package returned " + std::to_string(outputs.size()) + " outputs; its contract lists " +
                           std::to_string(contract_.output_names.size()));
    }
    for (auto& t : outputs) t = t.cpu();
    return outputs;
  }

  const Contract& contract() const override { return contract_; }
  std::string kind() const override { return "aoti"; }
  std::string device() const override { return device_; }

 private:
  // NAME.meta.json, where present, must state what the package's metadata states (it is the same text plus
  // the file's name and sha256); a sidecar of another export is a BadInput.
  static void check_sidecar(const std::string& path, const nlohmann::json& meta) {
    const std::string sidecar = sidecar_path(path, SIEFPN_PACKAGE_SUFFIX, ".meta.json");
    if (!std::filesystem::exists(sidecar)) return;
    const nlohmann::json beside = read_json_file(sidecar, "meta.json");
    std::string differs;
    for (const auto& [key, value] : meta.items()) {
      // the package's own entry, and "export", which meta.json completes with the compile times (compared below)
      if (key == "inputs_order" || key == "export") continue;
      if (!beside.is_object() || !beside.contains(key) || beside[key] != value) differs += (differs.empty() ? "" : ", ") + key;
    }
    if (meta.contains("export") && export_device(beside, "", sidecar) != export_device(meta, "", path)) {
      differs += std::string(differs.empty() ? "" : ", ") + "export.device";
    }
    if (!differs.empty()) {
      throw BadInput(path + " does not match " + std::filesystem::path(sidecar).filename().string() + " (" + differs +
                     " differ); re-export it, or remove the stale meta.json");
    }
  }

  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
  Contract contract_;
  std::string device_;
};

}  // namespace

std::unique_ptr<Backend> load_aoti_backend(const std::string& path, const LoadOptions& options) {
  return std::make_unique<AotiBackend>(path, options);
}

}  // namespace siefpn
