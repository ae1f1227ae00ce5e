// The graph contract as meta.json states it (siefpn_deploy/core/contract.py is its one definition; the
// C++ side reads every value from the artifact's meta and checks it is the major version it was built for).
#pragma once

#include <array>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "siefpn/detector.hpp"

namespace siefpn {

struct ShapeRange {
  int min = 0;
  int max = 0;
};

// The outputs in the contract's order (core/contract.py: DETECTION_OUTPUTS, then masks); meta.json lists
// them in that order, and Contract::from_meta checks each one's rank against its role.
enum Output : int { kNumDets = 0, kBoxes = 1, kScores = 2, kLabels = 3, kMasks = 4 };

struct Preprocessing {
  int min_size = 0;
  int max_size = 0;
  int divisibility = 1;
  std::array<double, 3> pixel_mean{};  // 0..255 units, in the graph's channel order
  double input_scale = 255.0;          // the graph takes 0..input_scale
  bool bgr = false;                    // the graph's channel order is BGR (detectron2's MSRA weights)
};

struct Contract {
  std::string architecture;
  int max_detections = 0;   // K
  int mask_size = 0;        // M, 0 without masks
  float mask_threshold = 0.5f;
  int first_label = 1;
  int background_label = 0;
  std::vector<std::string> input_names;   // images, image_sizes
  std::vector<std::string> output_names;  // in Output order
  Preprocessing preprocess;
  ShapeRange batch, height, width;        // the runnable range
  std::vector<std::string> class_names;   // index label - first_label
  std::vector<int> category_ids;

  bool has_masks() const { return output_names.size() > kMasks; }

  // `meta`: a model meta.json (or the "model" part of NAME.engine.json). BadInput naming `source` when it
  // is not a siefpn-deploy graph of this contract version.
  static Contract from_meta(const nlohmann::json& meta, const std::string& source);
};

// Read a JSON file; BadInput naming it when missing or malformed.
nlohmann::json read_json_file(const std::string& path, const std::string& what);

// NAME.pt2 -> NAME.meta.json; NAME.plan -> NAME.engine.json (the names core/sidecar.py and tensorrt/plan.py give).
std::string sidecar_path(const std::string& artifact, const std::string& suffix, const std::string& sidecar_suffix);

}  // namespace siefpn
