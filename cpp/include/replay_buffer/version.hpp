// The version of ray_replay and of its C++ library: the one place it is written.
//
// Everything else reads it from here: CMake's project(VERSION) and the installed
// ReplayBufferConfigVersion.cmake (CMakeLists.txt parses the three macros below), the wheel's metadata
// (pyproject.toml: scikit-build-core's regex metadata provider reads the same three lines), and
// ray_replay.__version__ (ray_replay._core.__version__, compiled from REPLAY_BUFFER_VERSION_STRING).
// tests/test_version.py checks that they agree. Bump the three numbers, nothing else, and add the
// release to docs/CHANGELOG.md.
#pragma once

#define REPLAY_BUFFER_VERSION_MAJOR 0
#define REPLAY_BUFFER_VERSION_MINOR 1
#define REPLAY_BUFFER_VERSION_PATCH 0

#define REPLAY_BUFFER_VERSION_STRINGIFY_(x) #x
#define REPLAY_BUFFER_VERSION_STRINGIFY(x) REPLAY_BUFFER_VERSION_STRINGIFY_(x)
// "MAJOR.MINOR.PATCH"
#define REPLAY_BUFFER_VERSION_STRING                             \
  REPLAY_BUFFER_VERSION_STRINGIFY(REPLAY_BUFFER_VERSION_MAJOR) "." \
  REPLAY_BUFFER_VERSION_STRINGIFY(REPLAY_BUFFER_VERSION_MINOR) "." \
  REPLAY_BUFFER_VERSION_STRINGIFY(REPLAY_BUFFER_VERSION_PATCH)
// MAJOR * 10000 + MINOR * 100 + PATCH, for #if comparisons: #if REPLAY_BUFFER_VERSION >= 200 (0.2.0)
#define REPLAY_BUFFER_VERSION \
  (REPLAY_BUFFER_VERSION_MAJOR * 10000 + REPLAY_BUFFER_VERSION_MINOR * 100 + REPLAY_BUFFER_VERSION_PATCH)

namespace replay_buffer {

struct Version {
  int major;
  int minor;
  int patch;
};

inline constexpr Version kVersion{REPLAY_BUFFER_VERSION_MAJOR, REPLAY_BUFFER_VERSION_MINOR, REPLAY_BUFFER_VERSION_PATCH};
inline constexpr const char* kVersionString = REPLAY_BUFFER_VERSION_STRING;

}  // namespace replay_buffer
