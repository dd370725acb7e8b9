// Which codec a column uses: a plain value, usable without the codec libraries (codec.hpp has the
// code that needs liblz4 and libzstd).
#pragma once

#include <cstdint>
#include <string>

namespace replay_buffer::compression {

enum class CodecKind : std::uint8_t { kNone = 0, kLz4 = 1, kZstd = 2 };

struct Codec {
  static constexpr int kDefaultZstdLevel = 3;  // Zstandard's own default
  static constexpr int kMinZstdLevel = 1;      // the levels accepted here (negative "fast" levels are not offered)
  static constexpr int kMaxZstdLevel = 22;

  CodecKind kind = CodecKind::kNone;
  int level = 0;  // Zstandard only: kMinZstdLevel .. kMaxZstdLevel

  bool enabled() const noexcept { return kind != CodecKind::kNone; }

  // "lz4" or "zstd:<level>": the form get_state() and the file header carry.
  std::string name() const {
    switch (kind) {
      case CodecKind::kLz4: return "lz4";
      case CodecKind::kZstd: return "zstd:" + std::to_string(level);
      case CodecKind::kNone: break;
    }
    return "none";
  }

  friend bool operator==(const Codec& a, const Codec& b) noexcept { return a.kind == b.kind && a.level == b.level; }
};

}  // namespace replay_buffer::compression
