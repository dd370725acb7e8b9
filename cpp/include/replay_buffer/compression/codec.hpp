// Per-field codecs over the well-kept C libraries: LZ4 (fast) and Zstandard (dense, with a level).
//
// Link requirement: this header (and every header under compression/) needs liblz4 and libzstd:
// link the CMake target ReplayBuffer::Compression (exported by find_package(ReplayBuffer) when the
// package was built with REPLAY_BUFFER_WITH_COMPRESSION). The rest of the core stays header-only
// without them.
//
// Contract: compress() stores a row only when it shrinks (the result is < the row's size); otherwise
// it reports 0 and the caller keeps the row raw. decompress() never writes past the row and never
// reads past the input, whatever the input holds (both libraries' "safe" decoders), and reports
// whether it produced exactly the row's bytes: hostile data can fail, never crash.
//
// Thread roles: a CodecContext is used by one thread at a time (it holds Zstandard's reusable
// contexts); codecs themselves are plain values.
#pragma once

#include <lz4.h>
#include <zstd.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "replay_buffer/compression/codec_spec.hpp"

namespace replay_buffer::compression {

// Reusable per-thread state of the codecs. Not copyable; movable.
class CodecContext {
 public:
  CodecContext() = default;
  CodecContext(const CodecContext&) = delete;
  CodecContext& operator=(const CodecContext&) = delete;
  CodecContext(CodecContext&& other) noexcept : cctx_(other.cctx_), dctx_(other.dctx_) { other.cctx_ = nullptr; other.dctx_ = nullptr; }
  CodecContext& operator=(CodecContext&& other) noexcept {
    std::swap(cctx_, other.cctx_);
    std::swap(dctx_, other.dctx_);
    return *this;
  }
  ~CodecContext() {
    ZSTD_freeCCtx(cctx_);
    ZSTD_freeDCtx(dctx_);
  }

  // Compresses `bytes` bytes into out (room for bytes - 1). Returns the compressed size, or 0 when
  // the row does not shrink (keep it raw). O(bytes).
  std::size_t compress(const Codec& codec, const std::byte* row, std::size_t bytes, std::byte* out) {
    if (bytes < 2 || bytes > static_cast<std::size_t>(LZ4_MAX_INPUT_SIZE)) return 0;
    const std::size_t room = bytes - 1;
    switch (codec.kind) {
      case CodecKind::kLz4: {
        const int written = LZ4_compress_default(reinterpret_cast<const char*>(row), reinterpret_cast<char*>(out), static_cast<int>(bytes),
                                                 static_cast<int>(room));
        return written > 0 ? static_cast<std::size_t>(written) : 0;
      }
      case CodecKind::kZstd: {
        if (cctx_ == nullptr && (cctx_ = ZSTD_createCCtx()) == nullptr) throw std::bad_alloc();
        const std::size_t written = ZSTD_compressCCtx(cctx_, out, room, row, bytes, codec.level);
        return ZSTD_isError(written) ? 0 : written;
      }
      case CodecKind::kNone: break;
    }
    return 0;
  }

  // Decodes `length` bytes of `codec` output into exactly `bytes` bytes at out. Returns false (out
  // holds garbage then) when the input is not a valid encoding of a `bytes`-byte row. O(bytes).
  bool decompress(const Codec& codec, const std::byte* data, std::size_t length, std::byte* out, std::size_t bytes) {
    if (length == 0 || length >= bytes || bytes > static_cast<std::size_t>(std::numeric_limits<int>::max())) return false;
    switch (codec.kind) {
      case CodecKind::kLz4: {
        const int produced = LZ4_decompress_safe(reinterpret_cast<const char*>(data), reinterpret_cast<char*>(out), static_cast<int>(length),
                                                 static_cast<int>(bytes));
        return produced >= 0 && static_cast<std::size_t>(produced) == bytes;
      }
      case CodecKind::kZstd: {
        if (dctx_ == nullptr && (dctx_ = ZSTD_createDCtx()) == nullptr) throw std::bad_alloc();
        const std::size_t produced = ZSTD_decompressDCtx(dctx_, out, bytes, data, length);
        return !ZSTD_isError(produced) && produced == bytes;
      }
      case CodecKind::kNone: break;
    }
    return false;
  }

 private:
  ZSTD_CCtx* cctx_ = nullptr;
  ZSTD_DCtx* dctx_ = nullptr;
};

}  // namespace replay_buffer::compression
