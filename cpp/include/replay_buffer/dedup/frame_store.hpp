// The frames of a DedupBuffer: slots and reference counts in a FramePool, each frame's bytes in the
// pool or, with a FrameCodec (frame_codec.hpp), compressed there. Stacks go in and come out whole;
// FrameLayout cuts them into frames and interleaves them back.
//
// With a codec, a new frame's slot is handed out at once and its bytes follow in two steps, so that
// the compression runs outside the owner's data lock: store_frame records the frame (where it sits in
// the caller's stack) as pending, compress_pending compresses every pending frame, and commit_pending
// makes them the slots' bytes. Until then no row that refers to them may be read (the owner adds such
// rows to its inner buffer only after the commit).
//
// Thread roles: none of its own. The owner (DedupBuffer) serializes every call under its data lock,
// const ones included, except compress_pending, which it runs under its writers' lock alone: it
// touches only the pending list and the codec's staging, which nothing else reads.
// Failure contract: store_frame throws (out of memory) having stored nothing, store_stack having
// stored the frames before the one that failed (see there); compress_pending and commit_pending
// throw (out of memory) leaving the pending slots allocated, some of them empty: the owner releases
// the rows that hold them (release() of an empty slot frees it) and calls discard_pending. assemble
// and restore_row throw std::logic_error only for a compressed frame that does not decode (memory
// corruption).
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
        codec_(std::move(codec)), decoder_(layout) {}

  // A new slot for frame j of `stack`: without a codec the frame is copied in (O(frame bytes)); with
  // one it is pending (O(1)) until commit_pending, and `stack` must stay valid until then.
  Slot store_frame(const std::byte* stack, std::size_t j) {
    const Slot slot = pool_.allocate();
    if (!codec_) {
      layout_.extract(stack, j, pool_.data(slot));
      return slot;
    }
    try {
      pending_.push_back({slot, stack, j});
    } catch (...) {
      pool_.release(slot);
      throw;
    }
    return slot;
  }

  bool has_pending() const noexcept { return !pending_.empty(); }

  // Compresses the pending frames (outside the owner's data lock). O(their bytes) of codec work, plus a
  // copy of each frame that is not a contiguous block of its stack.
  void compress_pending() {
    const std::size_t n = pending_.size(), frame_bytes = layout_.frame_bytes();
    pending_frames_.resize(n);
    if (!layout_.frames_contiguous() && frame_scratch_.size() < n * frame_bytes) frame_scratch_.resize(n * frame_bytes);
    for (std::size_t i = 0; i < n; ++i) {
      const Pending& p = pending_[i];
      if (layout_.frames_contiguous()) {
        pending_frames_[i] = p.stack + layout_.frame_offset(p.j);
      } else {
        layout_.extract(p.stack, p.j, frame_scratch_.data() + i * frame_bytes);
        pending_frames_[i] = frame_scratch_.data() + i * frame_bytes;
      }
    }
    codec_->compress(pending_frames_.data(), n);
  }

  // The compressed pending frames become their slots' bytes (under the data lock).
  void commit_pending() {
    pending_slots_.resize(pending_.size());
    for (std::size_t i = 0; i < pending_.size(); ++i) pending_slots_[i] = pending_[i].slot;
    codec_->commit(pending_slots_.data(), pending_slots_.size());
    pending_.clear();
  }

  void discard_pending() noexcept { pending_.clear(); }

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
  struct Pending {
    Slot slot;
    const std::byte* stack;  // in the caller's input
    std::size_t j;           // which frame of it
  };

  const FrameLayout& layout_;
  const std::size_t k_;
  FramePool pool_;
  mutable std::vector<const std::byte*> frame_pointers_;
  std::vector<std::byte> frame_scratch_;     // with a codec: pending frames extracted from interleaved stacks
  std::vector<Pending> pending_;             // with a codec: new frames not yet compressed and committed
  std::vector<const std::byte*> pending_frames_;
  std::vector<Slot> pending_slots_;
  const std::unique_ptr<FrameCodec> codec_;  // null: frames kept in pool_
  const StackDecoder decoder_;
};

}  // namespace replay_buffer::dedup
