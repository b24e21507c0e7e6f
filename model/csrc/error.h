// How the shim's C entry points report a C++ exception: a malloc'd copy of its message, freed by
// the Rust caller (`shim::check`). Never an exception across the FFI boundary.
#pragma once

#include <cstdlib>
#include <cstring>

namespace muninn {

inline char* error_string(const char* what) {
  char* s = static_cast<char*>(std::malloc(std::strlen(what) + 1));
  if (s) std::strcpy(s, what);
  return s;
}

}  // namespace muninn
