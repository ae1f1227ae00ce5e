// The two ways a call fails, so a program can tell its user's mistakes from the machine's.
#pragma once

#include <stdexcept>
#include <string>

namespace siefpn {

// The caller's input is wrong: a missing or corrupt file, an artifact whose meta.json does not match, a
// shape outside the exported range. siefpn-infer exits with 2. The message is one line and names the input.
class BadInput : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The input was fine but running it failed: no CUDA device for a CUDA package, a backend error. Exit 1.
class RuntimeFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace siefpn
