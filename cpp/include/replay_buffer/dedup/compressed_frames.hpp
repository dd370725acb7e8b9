// A DedupBuffer's frames kept compressed: the FrameCodec over LZ4 / Zstandard (compression/codec.hpp).
//
// Each frame is compressed once, when the dedup buffer stores it, and kept in a BlobLog; a frame that
// does not shrink is kept raw (its BlobRef's length is the frame's size), like a row of a
// CompressedBuffer. The new frames of an add call are compressed together (compress(), by a
// BatchCompressor: in parallel over frames when they hold 1 MiB or more) outside the dedup buffer's
// data lock, then appended to the log under it (commit(): a copy of the compressed bytes). Frames
// leave about in the order they came (a row's frames go when its last row goes), so the log stays
// packed. Link requirement: ReplayBuffer::Compression (liblz4, libzstd).
//
// Thread roles: see FrameCodec (frame_codec.hpp): compress() may overlap load/drop/stats (it uses the
// compressor's own contexts and staging); the DedupBuffer's data lock serializes the rest (load()
// included, which shares the one CodecContext). Costs: compress O(frame bytes) of compression; commit
// a copy of the compressed bytes; load O(frame bytes) of decompression (a copy for a raw frame).
// Measured on a loaded 2-core VM with tests/test_dedup_compression.py's 4 KiB frames (4 x 64 x 64
// stacks, one new frame a row, batches of 64): LZ4 adds about 0.7 us a row to add (Zstandard level 3
// about 10 us) and holds 1/4 of the raw frames' bytes (Zstandard 1/6); a sample row (K + 1 = 5 frames
// decoded) takes 2.4 us against 2.1 us uncompressed. Memory: the stored bytes, packed, plus 12 bytes
// per slot, plus the compressor's staging (the compressed frames of the largest add, kept for reuse).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "replay_buffer/compression/batch_compressor.hpp"
#include "replay_buffer/compression/blob_log.hpp"
#include "replay_buffer/compression/codec.hpp"
#include "replay_buffer/dedup/frame_codec.hpp"

namespace replay_buffer::dedup {

class CompressedFrames final : public FrameCodec {
 public:
  CompressedFrames(compression::Codec codec, std::size_t frame_bytes, std::size_t threads = 0)
      : codec_(codec), frame_bytes_(frame_bytes), log_(frame_bytes), compressor_({0}, {frame_bytes}, {codec}, threads) {
    if (!codec.enabled()) throw std::invalid_argument("compressed frames need a codec");
  }

  void compress(const std::byte* const* frames, std::size_t count) override {
    staged_.assign(frames, frames + count);  // a frame that does not shrink is copied from here at commit
    compressor_.compress_rows(frames, count);
  }

  void commit(const FramePool::Slot* slots, std::size_t count) override {
    for (std::size_t i = 0; i < count; ++i) {
      const FramePool::Slot slot = slots[i];
      if (slot >= refs_.size()) refs_.resize(std::max<std::size_t>(slot + 1, 2 * refs_.size()));  // slots are handed out from 0 up
      const std::size_t length = compressor_.length(0, i);
      refs_[slot] = length != 0 ? log_.append(compressor_.scratch(0, i), length) : log_.append(staged_[i], frame_bytes_);
      raw_ += length == 0;
    }
  }

  void load(FramePool::Slot slot, std::byte* out) const override {
    const compression::BlobRef& blob = refs_[slot];
    if (blob.length == frame_bytes_) {
      std::memcpy(out, log_.data(blob), frame_bytes_);
    } else if (!context_.decompress(codec_, log_.data(blob), blob.length, out, frame_bytes_)) {
      throw std::logic_error("a compressed frame failed to decompress (memory corruption?)");
    }
  }

  void drop(FramePool::Slot slot) noexcept override {
    if (slot >= refs_.size() || refs_[slot].length == 0) return;  // never committed (an add that failed)
    raw_ -= refs_[slot].length == frame_bytes_;
    log_.release(refs_[slot]);
    refs_[slot] = compression::BlobRef{};
  }

  void clear() noexcept override {
    log_.clear();
    std::fill(refs_.begin(), refs_.end(), compression::BlobRef{});
    raw_ = 0;
  }

  FrameCodecStats stats() const noexcept override {
    FrameCodecStats s;
    s.bytes_held = log_.bytes_held();
    s.bytes_reserved = log_.bytes_reserved() + refs_.capacity() * sizeof(compression::BlobRef);
    s.frames_stored_raw = raw_;
    return s;
  }

 private:
  const compression::Codec codec_;
  const std::size_t frame_bytes_;
  compression::BlobLog log_;
  std::vector<compression::BlobRef> refs_;  // per slot handed out so far (length 0: none kept)
  compression::BatchCompressor compressor_;  // compress(): its staging holds the compressed frames until commit()
  std::vector<const std::byte*> staged_;     // the frames of the last compress() (valid until its commit())
  mutable compression::CodecContext context_;
  std::size_t raw_ = 0;  // live frames stored raw
};

}  // namespace replay_buffer::dedup
