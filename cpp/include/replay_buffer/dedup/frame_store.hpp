// The frames of a DedupBuffer: slots and reference counts in a FramePool, each frame's bytes in the
// pool or, with a FrameCodec (frame_codec.hpp), compressed there. Stacks go in and come out whole;
// FrameLayout cuts them into frames and interleaves them back.
//
// Thread roles: none of its own; the owner (DedupBuffer) serializes every call, const ones included.
// Failure contract: store_frame throws (out of memory) having stored nothing, store_stack having
// stored the frames before the one that failed (see there); assemble and restore_row throw
// std::logic_error only for a compressed frame that does not decode (memory corruption).
// Costs: see DedupBuffer and compressed_frames.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "replay_buffer/core/buffer_interface.hpp"
#include "replay_buffer/dedup/frame_codec.hpp"
#include "replay_buffer/dedup/frame_layout.hpp"
#include "replay_buffer/dedup/frame_pool.hpp"

namespace replay_buffer::dedup {

class FrameStore {
 public:
  using Slot = FramePool::Slot;

  // codec: null (frames kept in the pool) or where the frames' bytes are kept.
  FrameStore(const FrameLayout& layout, std::size_t max_frames, std::unique_ptr<FrameCodec> codec)
      : layout_(layout), k_(layout.frames()), pool_(layout.frame_bytes(), max_frames), frame_pointers_(k_),
        frame_scratch_(codec ? layout.frame_bytes() : 0), codec_(std::move(codec)), decoder_(layout) {}

  // A new slot holding frame j of `stack`. O(frame bytes), plus its compression.
  Slot store_frame(const std::byte* stack, std::size_t j) {
    const Slot slot = pool_.allocate();
    if (!codec_) {
      layout_.extract(stack, j, pool_.data(slot));
      return slot;
    }
    try {
      const std::byte* frame = stack + layout_.frame_offset(j);
      if (!layout_.frames_contiguous()) {
        layout_.extract(stack, j, frame_scratch_.data());
        frame = frame_scratch_.data();
      }
      codec_->store(slot, frame);
    } catch (...) {
      pool_.release(slot);  // the codec kept nothing
      throw;
    }
    return slot;
  }

  // refs[0..K) <- the frames of `stack`, a frame equal to the one before it stored once. On a throw
  // the refs filled so far stay held (the others untouched): the caller releases them.
  void store_stack(const std::byte* stack, Slot* refs) {
    for (std::size_t j = 0; j < k_; ++j) {
      if (j > 0 && layout_.frames_equal(stack, j, j - 1)) {
        retain(refs[j] = refs[j - 1]);
      } else {
        refs[j] = store_frame(stack, j);
      }
    }
  }

  void retain(Slot slot) noexcept { pool_.retain(slot); }
  void release(Slot slot) noexcept {
    if (pool_.release(slot) && codec_) codec_->drop(slot);
  }

  // stack <- the frames refs[0..K).
  void assemble(const Slot* refs, std::byte* stack) const {
    if (codec_) return decoder_.decode(*codec_, refs, 1, &stack);
    for (std::size_t j = 0; j < k_; ++j) frame_pointers_[j] = pool_.data(refs[j]);
    layout_.assemble(frame_pointers_.data(), stack);
  }

  // A row's state and next_state from its 2K frame references.
  void restore_row(const Slot* refs, std::byte* state, std::byte* next_state) const {
    if (!codec_) {
      assemble(refs, state);
      assemble(refs + k_, next_state);
      return;
    }
    std::byte* const stacks[2] = {state, next_state};
    decoder_.decode(*codec_, refs, 2, stacks);
  }

  // Frames sit at random slots: start a row's first cache lines of each frame early, so their misses
  // overlap the copy of the row before (the hardware prefetcher takes over within a frame).
  void prefetch_row(const Slot* refs) const noexcept {
    if (codec_) return;  // the frames' bytes are in the codec's log
    constexpr std::size_t kLines = 4;
    for (std::size_t j = 0; j < 2 * k_; ++j) {
      const std::byte* frame = pool_.data(refs[j]);
      for (std::size_t line = 0; line < kLines && line * memory::kCacheLineBytes < layout_.frame_bytes(); ++line) {
        __builtin_prefetch(frame + line * memory::kCacheLineBytes);
      }
    }
  }

  void clear() noexcept {  // forgets every frame (import_state)
    pool_.clear();
    if (codec_) codec_->clear();
  }

  // frames_held, frame_bytes, and the frames' share of bytes_held and bytes_reserved.
  void add_stats(core::BufferStats& s) const noexcept {
    s.frames_held = pool_.live();
    s.frame_bytes = layout_.frame_bytes();
    if (codec_) {  // the pool's frame storage stays untouched: only its reference counts are used
      const FrameCodecStats frames = codec_->stats();
      s.bytes_held += frames.bytes_held;
      s.bytes_reserved += frames.bytes_reserved + pool_.slots_touched() * sizeof(std::uint32_t);
    } else {
      s.bytes_held += pool_.live() * layout_.frame_bytes();
      s.bytes_reserved += pool_.bytes_touched();
    }
  }

  std::optional<FrameCodecStats> codec_stats() const noexcept {
    if (!codec_) return std::nullopt;
    FrameCodecStats s = codec_->stats();
    s.frames_held = pool_.live();
    return s;
  }

 private:
  const FrameLayout& layout_;
  const std::size_t k_;
  FramePool pool_;
  mutable std::vector<const std::byte*> frame_pointers_;
  std::vector<std::byte> frame_scratch_;     // with a codec: a frame extracted from an interleaved stack
  const std::unique_ptr<FrameCodec> codec_;  // null: frames kept in pool_
  const StackDecoder decoder_;
};

}  // namespace replay_buffer::dedup
