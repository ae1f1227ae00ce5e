// torchvision's compiled operators (image decoding, roi_align) registered into LibTorch's dispatcher by
// loading the installed torchvision's libraries, as `import torchvision` does in Python.
#pragma once

#include <string>

namespace siefpn {

// Load torchvision's library `name` ("image" or "_C"; the stable-ABI build "<name>_stable.so" is preferred)
// once per process. The folder is $SIEFPN_TORCHVISION_DIR, else the torchvision this library was built
// against. RuntimeFailure naming the file when it cannot be loaded.
void load_torchvision_library(const std::string& name);

}  // namespace siefpn
