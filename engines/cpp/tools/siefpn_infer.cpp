// siefpn-infer: a deployed Dual SIE-FPN detector over images, from C++ (libsiefpn).
//
//   siefpn-infer --artifact export/demo.pt2 --source images/ --annotations instances.json --json out.json
//   siefpn-infer --artifact export/demo.pt2 --bench --batch 1 4 --size 384
//   siefpn-infer --check --source images/ --meta export/demo.meta.json     # read the inputs, run no model
//
// Exit codes: 0 success, 2 bad input (a missing or corrupt file, a mismatched meta.json, a shape outside the
// exported range, an empty folder, a bad argument), 1 a runtime failure. Errors are one line on stderr.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "siefpn/coco.hpp"
#include "siefpn/detector.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// --help; the pixel limit's default is filled in from its one definition (siefpn/detector.hpp)
std::string usage() {
  return R"(usage: siefpn-infer --artifact NAME.pt2|NAME.plan --source FILE|DIR [--annotations instances.json]
                    [--json OUT.json] [--vis DIR] [--batch N] [--size MIN [MAX]] [--device auto|cpu|cuda]
                    [--threads N] [--save-canvas DIR] [--max-image-pixels N]
       siefpn-infer --artifact NAME.pt2|NAME.plan --bench [--batch N [N ...]] [--size S] [--iters N]
                    [--warmup N] [--source DIR] [--json OUT.json]
       siefpn-infer --check [--source FILE|DIR] [--meta FILE [FILE ...]] [--artifact PATH] [--max-image-pixels N]

Run a deployed Dual SIE-FPN detector from C++: the AOTInductor package (siefpn-deploy export --format aoti)
or a TensorRT engine (siefpn-deploy build). The graph contract (names, K, classes, preprocessing) is read from
the artifact; detections equal the Python runtime's (siefpn-deploy infer).

inference:
  --artifact PATH     NAME.pt2 (its meta is inside it; a NAME.meta.json beside it must agree) or NAME.plan
                      (with NAME.engine.json beside it)
  --source FILE|DIR   a JPEG, PNG or WebP image, or a folder searched recursively for them (BMP, which
                      siefpn-deploy infer reads, is refused: torchvision has no BMP decoder)
  --annotations FILE  a COCO instances file listing the images: the JSON then carries their image_id and
                      is a COCO results file (COCO.loadRes takes it); else records carry file_name
  --json OUT          write the detections as COCO results (bbox [x,y,w,h] in image pixels, score,
                      category_id; Mask R-CNN adds an RLE segmentation), atomically
  --vis DIR           draw each image's detections into DIR/<name>.png
  --batch N           images per canvas (default 1; at most the artifact's largest batch)
  --size MIN [MAX]    the test-time resize: shortest side to MIN, longest at most MAX (default: the artifact's)
  --device D          auto (default), cpu or cuda: a .pt2 runs on the device it was compiled for
  --threads N         CPU threads (default: LibTorch's, one per core)
  --save-canvas DIR   also write each batch's preprocessed canvas as DIR/canvas_<k>.npy (float32 [B,3,H,W])
  --no-round          write boxes and scores unrounded (default: 2 and 5 decimals, as siefpn-deploy infer)
  --max-image-pixels N
                      refuse an image of more than N pixels (width x height) from its header, before it is
                      decoded (default )" + std::to_string(siefpn::kDefaultMaxImagePixels) + R"(, the same as siefpn-deploy serve --max-image-pixels)

benchmark (--bench):
  --batch N [N ...]   batch sizes to time (default 1)
  --size S            a square S x S input, resized to fill an S x S canvas (default: the artifact's largest)
  --iters N           timed runs per setting (default 20), after --warmup N runs (default 3)
  --source DIR        time on these images (the first N per batch, repeated if fewer); default: a
                      deterministic noise image
  --json OUT          also write the figures as JSON
  Prints p50/p90/p99 in ms of the model alone (one canvas through the backend) and end to end
  (decoded images in, detections in image pixels out).

check (--check): read inputs as inference reads them, and run no model
  --source FILE|DIR   decode each image (header checks and --max-image-pixels included)
  --meta FILE ...     read each file as a meta.json: the contract's version, structure and bounds
  --artifact PATH     load the artifact (its meta, and a meta.json beside it)
  Prints one line per input, tab-separated: "ok", the path and what was read (the image's size, the
  architecture, the backend), or "bad", the path and why; exits 2 when any input is bad.

exit codes: 0 success; 2 bad input (one line naming it); 1 runtime failure.
)";
}

const std::vector<std::string> kImageSuffixes = {".jpg", ".jpeg", ".png", ".webp"};

struct Args {
  std::string artifact, source, annotations, json_out, vis, save_canvas, device = "auto";
  std::vector<std::string> metas;
  std::vector<int> batches;
  std::vector<int> size;
  int threads = 0, iters = 20, warmup = 3;
  long long max_image_pixels = siefpn::kDefaultMaxImagePixels;
  bool bench = false;
  bool check = false;
  bool round = true;
};

long long to_integer(const std::string& flag, const std::string& text, long long min, long long max) {
  try {
    std::size_t used = 0;
    const long long v = std::stoll(text, &used);
    if (used == text.size() && v >= min && v <= max) return v;
  } catch (const std::exception&) {
  }
  throw siefpn::BadInput("argument " + flag + ": expected an integer in " + std::to_string(min) + ".." +
                         std::to_string(max) + ", got '" + text + "'");
}

int to_int(const std::string& flag, const std::string& text, int min) {
  return static_cast<int>(to_integer(flag, text, min, std::numeric_limits<int>::max()));
}

Args parse(int argc, char** argv) {
  Args a;
  std::vector<std::string> v(argv + 1, argv + argc);
  auto value = [&](std::size_t& i) -> std::string {
    if (i + 1 >= v.size() || v[i + 1].starts_with("--")) throw siefpn::BadInput("argument " + v[i] + ": expected a value");
    return v[++i];
  };
  auto values = [&](std::size_t& i) {  // one or more values
    std::vector<std::string> out{value(i)};
    while (i + 1 < v.size() && !v[i + 1].starts_with("--")) out.push_back(v[++i]);
    return out;
  };
  auto ints = [&](std::size_t& i, int min) {  // one or more integers
    const std::string flag = v[i];
    std::vector<int> out{to_int(flag, value(i), min)};
    while (i + 1 < v.size() && !v[i + 1].starts_with("--")) {
      ++i;
      out.push_back(to_int(flag, v[i], min));
    }
    return out;
  };
  for (std::size_t i = 0; i < v.size(); ++i) {
    const std::string& f = v[i];
    if (f == "-h" || f == "--help") {
      std::cout << usage();
      std::exit(0);
    } else if (f == "--artifact") a.artifact = value(i);
    else if (f == "--source") a.source = value(i);
    else if (f == "--annotations") a.annotations = value(i);
    else if (f == "--json") a.json_out = value(i);
    else if (f == "--vis") a.vis = value(i);
    else if (f == "--save-canvas") a.save_canvas = value(i);
    else if (f == "--device") a.device = value(i);
    else if (f == "--batch") a.batches = ints(i, 1);
    else if (f == "--size") a.size = ints(i, 1);
    else if (f == "--threads") a.threads = to_int(f, value(i), 1);
    else if (f == "--iters") a.iters = to_int(f, value(i), 1);
    else if (f == "--warmup") a.warmup = to_int(f, value(i), 0);
    else if (f == "--max-image-pixels") a.max_image_pixels = to_integer(f, value(i), 1, std::numeric_limits<long long>::max());
    else if (f == "--meta") a.metas = values(i);
    else if (f == "--bench") a.bench = true;
    else if (f == "--check") a.check = true;
    else if (f == "--no-round") a.round = false;
    else throw siefpn::BadInput("unrecognized argument " + f + " (see --help)");
  }
  if (a.check) {
    if (a.bench) throw siefpn::BadInput("--check and --bench cannot be combined");
    if (a.source.empty() && a.metas.empty() && a.artifact.empty()) {
      throw siefpn::BadInput("--check needs something to read: --source, --meta or --artifact (see --help)");
    }
    return a;
  }
  if (!a.metas.empty()) throw siefpn::BadInput("--meta is read by --check only (an artifact's meta is read from it)");
  if (a.artifact.empty()) throw siefpn::BadInput("the following argument is required: --artifact (see --help)");
  if (!a.bench && a.source.empty()) throw siefpn::BadInput("--source is required unless --bench (see --help)");
  if (a.size.size() > (a.bench ? 1u : 2u)) throw siefpn::BadInput("argument --size: too many values");
  if (!a.bench && a.batches.size() > 1) throw siefpn::BadInput("argument --batch: one value unless --bench");
  if (a.batches.empty()) a.batches = {1};
  return a;
}

bool is_image(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return std::find(kImageSuffixes.begin(), kImageSuffixes.end(), ext) != kImageSuffixes.end();
}

std::vector<fs::path> image_files(const std::string& source) {
  const fs::path root(source);
  if (fs::is_regular_file(root)) return {root};
  if (!fs::exists(root)) throw siefpn::BadInput("--source not found: " + source);
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    if (entry.is_regular_file() && is_image(entry.path())) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) throw siefpn::BadInput("no images in " + source + " (looked for .jpg, .jpeg, .png, .webp)");
  return files;
}

// The decoders inside torchvision print to stderr themselves: libjpeg its warnings ("Corrupt JPEG data: 3
// extraneous bytes before marker 0xd9"), libpng its warnings and errors ("libpng error: IHDR: CRC error"), which
// read_image then reports in its one line. While an image is decoded, stderr points to /dev/null, so that this
// tool's stderr holds its one line and nothing else (the tool decodes on one thread).
class QuietStderr {
 public:
  QuietStderr() : saved_(::dup(STDERR_FILENO)) {
    const int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (saved_ >= 0 && null >= 0) ::dup2(null, STDERR_FILENO);
    if (null >= 0) ::close(null);
  }
  ~QuietStderr() {
    if (saved_ < 0) return;
    ::dup2(saved_, STDERR_FILENO);
    ::close(saved_);
  }
  QuietStderr(const QuietStderr&) = delete;
  QuietStderr& operator=(const QuietStderr&) = delete;

 private:
  int saved_;
};

siefpn::Image read_image(const fs::path& file, long long max_pixels) {
  const QuietStderr quiet;
  return siefpn::read_image(file.string(), max_pixels);
}

// Each file's COCO image id, matched on its path below the source folder (or its name) against file_name.
std::map<fs::path, long long> image_ids(const std::string& annotations, const std::vector<fs::path>& files,
                                        const std::string& source) {
  std::ifstream in(annotations);
  if (!in) throw siefpn::BadInput("--annotations not found: " + annotations);
  json coco;
  try {
    coco = json::parse(in);
  } catch (const json::exception& e) {
    throw siefpn::BadInput("cannot read --annotations " + annotations + ": not valid JSON (" + e.what() + ")");
  }
  std::map<std::string, long long> ids;
  try {
    for (const auto& img : coco.at("images")) ids[img.at("file_name").get<std::string>()] = img.at("id").get<long long>();
  } catch (const json::exception&) {
    throw siefpn::BadInput("--annotations " + annotations + " is not a COCO instances file (images[].file_name, id)");
  }
  std::map<fs::path, long long> found;
  std::vector<std::string> missing;
  const bool folder = fs::is_directory(source);
  for (const auto& path : files) {
    const std::string key = folder ? fs::relative(path, source).string() : path.filename().string();
    auto it = ids.find(key);
    if (it == ids.end()) it = ids.find(path.filename().string());
    if (it == ids.end()) missing.push_back(key);
    else found[path] = it->second;
  }
  if (!missing.empty()) {
    throw siefpn::BadInput(std::to_string(missing.size()) + " of " + std::to_string(files.size()) + " images are not listed in " +
                           annotations + " (--annotations), first: " + missing[0]);
  }
  return found;
}

double round_to(double v, int digits) {
  const double scale = std::pow(10.0, digits);
  return std::nearbyint(v * scale) / scale;
}

json coco_records(const siefpn::ImageDetections& image, const json& name, bool round) {
  json out = json::array();
  for (const auto& d : image.detections) {
    json r = name;
    r["category_id"] = d.category_id;
    const double x0 = d.box[0], y0 = d.box[1];  // widths in doubles, as evaluation/coco.py computes them
    const auto digits = [round](double v, int n) { return round ? round_to(v, n) : v; };
    r["bbox"] = {digits(x0, 2), digits(y0, 2), digits(d.box[2] - x0, 2), digits(d.box[3] - y0, 2)};
    r["score"] = digits(d.score, 5);
    if (!d.mask.empty()) {
      r["segmentation"] = {{"size", {image.height, image.width}},
                           {"counts", siefpn::rle_counts(d.mask.data(), image.height, image.width)}};
    }
    out.push_back(std::move(r));
  }
  return out;
}

// A canvas as a .npy file (format 1.0, little-endian float32, C order) for comparison with Python.
void write_npy(const fs::path& path, const siefpn::PreparedBatch& batch) {
  const auto s = batch.shape();
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(s[0]) + ", " +
                       std::to_string(s[1]) + ", " + std::to_string(s[2]) + ", " + std::to_string(s[3]) + "), }";
  header.append(63 - (10 + header.size()) % 64, ' ');  // pad so that the data starts at a multiple of 64
  header.push_back('\n');
  std::string bytes = "\x93NUMPY\x01";
  bytes.push_back('\0');
  bytes.push_back(static_cast<char>(header.size() & 0xff));
  bytes.push_back(static_cast<char>(header.size() >> 8));
  bytes += header;
  bytes.append(reinterpret_cast<const char*>(batch.data()), sizeof(float) * s[0] * s[1] * s[2] * s[3]);
  siefpn::write_file(path, bytes);
}

// Boxes (2 px outlines) and masks (half-blended) in a colour per label, onto a copy of the image.
siefpn::Image draw(const siefpn::Image& image, const siefpn::ImageDetections& dets) {
  siefpn::Image out = image;
  const int h = out.height, w = out.width;
  for (const auto& d : dets.detections) {
    const std::uint8_t color[3] = {static_cast<std::uint8_t>(37 * d.label % 256),
                                   static_cast<std::uint8_t>(255 - 61 * d.label % 256),
                                   static_cast<std::uint8_t>(97 * d.label % 256)};
    auto px = [&](int y, int x, double alpha) {
      if (y < 0 || y >= h || x < 0 || x >= w) return;
      std::uint8_t* p = &out.pixels[(static_cast<std::size_t>(y) * w + x) * 3];
      for (int c = 0; c < 3; ++c) p[c] = static_cast<std::uint8_t>(p[c] * (1 - alpha) + color[c] * alpha);
    };
    if (!d.mask.empty()) {
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
          if (d.mask[static_cast<std::size_t>(y) * w + x]) px(y, x, 0.5);
    }
    const int x0 = static_cast<int>(d.box[0]), y0 = static_cast<int>(d.box[1]);
    const int x1 = static_cast<int>(d.box[2]), y1 = static_cast<int>(d.box[3]);
    for (int t = 0; t < 2; ++t) {
      for (int x = x0; x <= x1; ++x) px(y0 + t, x, 1.0), px(y1 - t, x, 1.0);
      for (int y = y0; y <= y1; ++y) px(y, x0 + t, 1.0), px(y, x1 - t, 1.0);
    }
  }
  return out;
}

void progress(std::size_t done, std::size_t total, const std::string& what) {
  if (!isatty(STDERR_FILENO)) return;
  std::fprintf(stderr, "\r%s %zu/%zu images", what.c_str(), done, total);
  if (done == total) std::fprintf(stderr, "\n");
}

int run_infer(const Args& a, siefpn::Detector& det) {
  const std::vector<fs::path> files = image_files(a.source);
  std::optional<std::map<fs::path, long long>> ids;
  if (!a.annotations.empty()) ids = image_ids(a.annotations, files, a.source);
  const int step = std::min(a.batches[0], det.max_batch());
  const bool folder = fs::is_directory(a.source);
  json records = json::array();
  std::size_t count = 0;
  for (std::size_t start = 0, k = 0; start < files.size(); start += step, ++k) {
    const std::size_t end = std::min(files.size(), start + step);
    std::vector<siefpn::Image> images;
    std::vector<siefpn::ImageView> views;
    for (std::size_t i = start; i < end; ++i) images.push_back(read_image(files[i], a.max_image_pixels));
    for (const auto& im : images) views.push_back(im.view());
    const siefpn::PreparedBatch batch = det.prepare(views);
    if (!a.save_canvas.empty()) write_npy(fs::path(a.save_canvas) / ("canvas_" + std::to_string(k) + ".npy"), batch);
    const auto results = det.postprocess(det.infer(batch), batch);
    for (std::size_t i = start; i < end; ++i) {
      const auto& dets = results[i - start];
      count += dets.detections.size();
      const json name = ids ? json{{"image_id", ids->at(files[i])}} : json{{"file_name", files[i].string()}};
      for (auto& r : coco_records(dets, name, a.round)) records.push_back(std::move(r));
      if (!a.vis.empty()) {
        fs::path rel = folder ? fs::relative(files[i], a.source) : files[i].filename();
        siefpn::write_png((fs::path(a.vis) / rel.replace_extension(".png")).string(), draw(images[i - start], dets));
      }
    }
    progress(end, files.size(), "[siefpn-infer]");
  }
  if (!a.json_out.empty()) siefpn::write_file(a.json_out, records.dump());
  std::cout << "[siefpn-infer] " << count << " detections in " << files.size() << " images ("
            << det.backend() << ", " << det.device() << ")" << (a.json_out.empty() ? "" : "; JSON: " + a.json_out)
            << (a.vis.empty() ? "" : "; drawn into " + a.vis) << "\n";
  return 0;
}

// The nearest-rank percentile of core/timing.py (Latency.percentile), in ms.
double percentile(std::vector<double> runs, double q) {
  std::sort(runs.begin(), runs.end());
  const auto i = static_cast<std::size_t>(std::nearbyint(q / 100 * (runs.size() - 1)));
  return runs[std::min(runs.size() - 1, i)];
}

double peak_rss_mib() {  // VmHWM: this process's peak resident memory
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.starts_with("VmHWM:")) return std::stod(line.substr(6)) / 1024.0;
  }
  return 0.0;
}

template <typename F>
std::vector<double> time_runs(F&& fn, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return ms;
}

int run_bench(const Args& a, siefpn::Detector& det) {
  const int size = a.size.empty() ? std::min(det.height_range()[1], det.width_range()[1]) : a.size[0];
  const auto hr = det.height_range(), wr = det.width_range();
  if (size < hr[0] || size > hr[1] || size < wr[0] || size > wr[1]) {
    throw siefpn::BadInput("--size " + std::to_string(size) + " is outside the exported range (height " +
                           std::to_string(hr[0]) + ".." + std::to_string(hr[1]) + ", width " + std::to_string(wr[0]) +
                           ".." + std::to_string(wr[1]) + ")");
  }
  for (int b : a.batches) {
    if (b < det.min_batch() || b > det.max_batch()) {
      throw siefpn::BadInput("--batch " + std::to_string(b) + " is outside the exported range [" +
                             std::to_string(det.min_batch()) + ", " + std::to_string(det.max_batch()) + "]");
    }
  }
  det.set_resize(size, size);
  std::vector<siefpn::Image> pool;
  if (!a.source.empty()) {
    for (const auto& f : image_files(a.source)) pool.push_back(read_image(f, a.max_image_pixels));
  } else {  // a deterministic noise image, size x size
    siefpn::Image noise;
    noise.height = noise.width = size;
    noise.pixels.resize(static_cast<std::size_t>(size) * size * 3);
    std::mt19937 rng(0);
    for (auto& p : noise.pixels) p = static_cast<std::uint8_t>(rng() & 0xff);
    pool.push_back(std::move(noise));
  }
  json rows = json::array();
  std::printf("%-10s %-6s %-9s %9s %9s %9s %9s %9s %9s\n", "backend", "batch", "input", "model p50", "p90", "p99",
              "e2e p50", "p90", "p99");
  for (int b : a.batches) {
    std::vector<siefpn::ImageView> views;
    for (int i = 0; i < b; ++i) views.push_back(pool[i % pool.size()].view());
    const siefpn::PreparedBatch batch = det.prepare(views);
    const auto model = time_runs([&] { det.infer(batch); }, a.warmup, a.iters);
    const auto e2e = time_runs([&] { det.detect(views, b); }, a.warmup, a.iters);
    const std::string input = std::to_string(size) + "x" + std::to_string(size);
    std::printf("%-10s %-6d %-9s %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f\n", det.backend().c_str(), b, input.c_str(),
                percentile(model, 50), percentile(model, 90), percentile(model, 99), percentile(e2e, 50),
                percentile(e2e, 90), percentile(e2e, 99));
    rows.push_back({{"backend", det.backend()}, {"device", det.device()}, {"batch", b}, {"size", size},
                    {"model_ms", model}, {"e2e_ms", e2e}, {"peak_rss_mib", peak_rss_mib()}});
  }
  if (!a.json_out.empty()) siefpn::write_file(a.json_out, rows.dump(1));
  return 0;
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// --check: each input read as inference reads it, one result line per input, and on to the next after a bad
// one, so that one process checks a whole batch of inputs (tests/test_cpp_fuzz.py sends hundreds per process).
class Checker {
 public:
  template <typename Read>
  void check(const std::string& path, Read&& read) {
    ++total_;
    try {
      const std::string found = read();
      std::cout << "ok\t" << path << "\t" << found << std::endl;  // flushed: a crash shows after which input
    } catch (const siefpn::BadInput& e) {
      const std::string why = first_line(e.what());
      if (bad_++ == 0) first_ = why;
      std::cout << "bad\t" << path << "\t" << why << std::endl;
    }
  }

  int finish() const {
    if (bad_ == 0) return 0;
    throw siefpn::BadInput(std::to_string(bad_) + " of " + std::to_string(total_) + " inputs are bad; the first: " + first_);
  }

 private:
  std::size_t total_ = 0, bad_ = 0;
  std::string first_;
};

int run_check(const Args& a) {
  Checker checker;
  if (!a.artifact.empty()) {
    checker.check(a.artifact, [&] {
      const siefpn::Detector det = siefpn::Detector::load(a.artifact, {a.device, a.threads});
      return det.architecture() + " (" + det.backend() + ", " + det.device() + ")";
    });
  }
  for (const std::string& meta : a.metas) checker.check(meta, [&] { return siefpn::check_meta_file(meta); });
  if (!a.source.empty()) {
    for (const fs::path& file : image_files(a.source)) {
      checker.check(file.string(), [&] {
        const siefpn::Image image = read_image(file, a.max_image_pixels);
        return std::to_string(image.width) + "x" + std::to_string(image.height);
      });
    }
  }
  return checker.finish();
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args = parse(argc, argv);
    if (args.check) return run_check(args);
    siefpn::Detector det = siefpn::Detector::load(args.artifact, {args.device, args.threads});
    if (!args.bench && !args.size.empty()) det.set_resize(args.size[0], args.size.size() > 1 ? args.size[1] : 0);
    return args.bench ? run_bench(args, det) : run_infer(args, det);
  } catch (const siefpn::BadInput& e) {
    std::cerr << "siefpn-infer: error: " << first_line(e.what()) << "\n";
    return 2;
  } catch (const fs::filesystem_error& e) {
    std::cerr << "siefpn-infer: error: " << first_line(e.what()) << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "siefpn-infer: runtime failure: " << first_line(e.what()) << "\n";
    return 1;
  }
}
