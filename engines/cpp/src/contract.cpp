#include "contract.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

namespace siefpn {
namespace {

using nlohmann::json;

// A value from meta, or BadInput naming the key: a meta.json of another tool or version fails in one line.
const json& at(const json& node, const char* key, const std::string& source) {
  if (!node.is_object() || !node.contains(key)) {
    throw BadInput(source + " does not describe a siefpn-deploy graph (missing \"" + key + "\")");
  }
  return node.at(key);
}

template <typename T>
T value(const json& node, const char* key, const std::string& source) {
  try {
    return at(node, key, source).get<T>();
  } catch (const json::exception&) {
    throw BadInput(source + ": \"" + key + "\" has the wrong type");
  }
}

// An integer in int's range. nlohmann's get<int> would wrap 4294967297 to 1, which then passes every bound, and
// cast 1e300 with undefined behaviour; a whole number written as a float (100.0) is taken, as Python's int() does.
int to_int(const json& v, const std::string& what, const std::string& source) {
  if (!v.is_number()) throw BadInput(source + ": \"" + what + "\" has the wrong type");
  const double d = v.get<double>();
  if (d != std::floor(d) || d < std::numeric_limits<int>::min() || d > std::numeric_limits<int>::max()) {
    throw BadInput(source + ": \"" + what + "\" must be a whole number of at most " +
                   std::to_string(std::numeric_limits<int>::max()) + ", got " + v.dump());
  }
  return static_cast<int>(d);
}

int integer(const json& node, const char* key, const std::string& source) {
  return to_int(at(node, key, source), key, source);
}

std::vector<int> integers(const json& node, const char* key, const std::string& source) {
  const json& list = at(node, key, source);
  if (!list.is_array()) throw BadInput(source + ": \"" + key + "\" has the wrong type");
  std::vector<int> out;
  for (const json& v : list) out.push_back(to_int(v, key, source));
  return out;
}

ShapeRange range(const json& shapes, const char* name, const std::string& source, int most) {
  const json& r = at(shapes, name, source);
  const ShapeRange got{integer(r, "min", source), integer(r, "max", source)};
  if (got.min < 1 || got.min > got.max || got.max > most) {
    throw BadInput(source + ": shapes." + name + " must satisfy 1 <= min <= max <= " + std::to_string(most) + ", got " +
                   std::to_string(got.min) + ".." + std::to_string(got.max));
  }
  return got;
}

// A damaged or hostile meta.json is a BadInput, never a division by zero or an allocation of gigabytes: the same
// bounds as the Python contract (core/contract.py, read by CMakeLists.txt).
void check_in(long long got, long long lo, long long hi, const std::string& what, const std::string& source) {
  if (got < lo || got > hi) {
    throw BadInput(source + ": " + what + " must be in " + std::to_string(lo) + ".." + std::to_string(hi) + ", got " +
                   std::to_string(got));
  }
}

}  // namespace

Contract Contract::from_meta(const json& meta, const std::string& source) {
  const std::string version = meta.is_object() && meta.contains("schema_version") && meta["schema_version"].is_string()
                                  ? meta["schema_version"].get<std::string>() : std::string("none");
  const std::string major = std::to_string(SIEFPN_SCHEMA_MAJOR);
  if (version.substr(0, version.find('.')) != major) {
    throw BadInput(source + " has schema_version " + version + ", but this siefpn runtime reads " + major +
                   ".x; re-export the model with this version");
  }
  Contract c;
  c.architecture = value<std::string>(meta, "architecture", source);
  c.max_detections = integer(meta, "max_detections", source);
  for (const auto& t : at(meta, "inputs", source)) c.input_names.push_back(value<std::string>(t, "name", source));
  // each output's rank by role: num_dets [B], boxes [B,K,4], scores [B,K], labels [B,K], masks [B,K,M,M]
  const std::array<std::size_t, 5> ranks{1, 3, 2, 2, 4};
  const json& outputs = at(meta, "outputs", source);
  if (!outputs.is_array() || outputs.size() < 4 || outputs.size() > 5) {
    throw BadInput(source + " lists " + std::to_string(outputs.size()) + " outputs; a siefpn-deploy graph has 4 or 5");
  }
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    const json& shape = at(outputs[i], "shape", source);
    if (!shape.is_array() || shape.size() != ranks[i]) {
      throw BadInput(source + ": output " + std::to_string(i) + " has a shape of rank " + std::to_string(shape.size()) +
                     ", the contract's has rank " + std::to_string(ranks[i]));
    }
    c.output_names.push_back(value<std::string>(outputs[i], "name", source));
  }
  if (c.input_names.size() != 2) throw BadInput(source + " must list 2 inputs (images, image_sizes)");
  check_in(c.max_detections, 1, SIEFPN_MAX_TOPK, "max_detections (K)", source);
  if (c.has_masks()) {
    const json& side = outputs[kMasks]["shape"][2];
    if (!side.is_number_integer()) throw BadInput(source + ": the masks output's mask side must be an integer");
    c.mask_size = to_int(side, "outputs[4].shape[2]", source);
    check_in(c.mask_size, 1, SIEFPN_MAX_MASK_SIDE, "the mask side", source);
  }

  const json& labels = at(meta, "labels", source);
  c.first_label = integer(labels, "first", source);
  if (c.first_label != 1) throw BadInput(source + ": labels.first must be 1 (the contract's classes are 1..C), got " +
                                         std::to_string(c.first_label));
  c.background_label = c.first_label - 1;  // the contract: 0 is torchvision's background, classes are 1..C
  const double mask_threshold = value<double>(labels, "mask_threshold", source);
  // a probability threshold; a value out of float's range would be cast with undefined behaviour
  if (!(mask_threshold >= 0 && mask_threshold <= 1)) throw BadInput(source + ": labels.mask_threshold must be in 0..1");
  c.mask_threshold = static_cast<float>(mask_threshold);

  const json& pre = at(meta, "preprocess", source);
  const json& resize = at(pre, "resize", source);
  c.preprocess.min_size = integer(resize, "min_size", source);
  c.preprocess.max_size = integer(resize, "max_size", source);
  c.preprocess.divisibility = integer(pre, "divisibility", source);
  const json& mean = at(pre, "pixel_mean", source);
  // nlohmann reads the first 3 of a longer list and ignores the rest; Python refuses it (PreprocessSpec)
  if (!mean.is_array() || mean.size() != 3) throw BadInput(source + ": preprocess.pixel_mean must hold 3 values");
  c.preprocess.pixel_mean = value<std::array<double, 3>>(pre, "pixel_mean", source);
  c.preprocess.input_scale = value<double>(pre, "input_scale", source);
  check_in(c.preprocess.divisibility, 1, SIEFPN_MAX_DIVISIBILITY, "preprocess.divisibility", source);
  check_in(c.preprocess.max_size, 1, SIEFPN_MAX_RESIZE_SIDE, "preprocess.resize.max_size", source);
  check_in(c.preprocess.min_size, 1, c.preprocess.max_size, "preprocess.resize.min_size (up to max_size)", source);
  if (!(std::isfinite(c.preprocess.input_scale) && c.preprocess.input_scale > 0)) {
    throw BadInput(source + ": preprocess.input_scale must be finite and > 0");
  }
  for (double v : c.preprocess.pixel_mean) {
    if (!std::isfinite(v)) throw BadInput(source + ": preprocess.pixel_mean must be finite");
  }
  const std::string color = value<std::string>(pre, "color", source);
  if (color != "RGB" && color != "BGR") throw BadInput(source + ": preprocess color must be RGB or BGR, got " + color);
  c.preprocess.bgr = color == "BGR";
  if (value<std::string>(pre, "placement", source) != "top-left" || value<std::string>(pre, "layout", source) != "NCHW") {
    throw BadInput(source + ": only NCHW canvases with images at the top-left are supported");
  }

  const json& shapes = at(meta, "shapes", source);
  c.batch = range(shapes, "batch", source, SIEFPN_MAX_BATCH);
  // the canvas sides: the resize's longest side, padded up to the divisibility
  const int side = SIEFPN_MAX_RESIZE_SIDE + SIEFPN_MAX_DIVISIBILITY;
  c.height = range(shapes, "height", source, side);
  c.width = range(shapes, "width", source, side);

  const json& classes = at(meta, "classes", source);
  c.class_names = value<std::vector<std::string>>(classes, "names", source);
  c.category_ids = integers(classes, "category_ids", source);
  if (c.class_names.size() != c.category_ids.size() || c.class_names.empty()) {
    throw BadInput(source + ": classes.names and classes.category_ids must be non-empty lists of one length");
  }
  return c;
}

json read_json_file(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw BadInput(what + " not found: " + path);
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw BadInput("cannot read " + what + " " + path + ": not valid JSON (" + e.what() + ")");
  }
}

std::string check_meta_file(const std::string& path) {
  return Contract::from_meta(read_json_file(path, "meta.json"), path).architecture;
}

std::string sidecar_path(const std::string& artifact, const std::string& suffix, const std::string& sidecar_suffix) {
  const std::filesystem::path p(artifact);
  std::string name = p.filename().string();
  if (name.size() > suffix.size() && name.ends_with(suffix)) name.resize(name.size() - suffix.size());
  return (p.parent_path() / (name + sidecar_suffix)).string();
}

}  // namespace siefpn
