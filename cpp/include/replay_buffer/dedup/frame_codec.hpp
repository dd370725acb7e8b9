// Where a DedupBuffer keeps its frames' bytes when they are compressed, and how it rebuilds stacks
// from them.
//
// FrameCodec is the interface (compressed_frames.hpp implements it over the codecs, which need liblz4
// and libzstd; this header does not, so DedupBuffer stays header-only without them). The FramePool
// still hands out the slots and counts their references; the codec holds each live slot's bytes.
//
// StackDecoder rebuilds the stacks of one row from coded frames: each distinct frame of the row is
// decoded once (a row's state and next_state share K - 1 frames, an episode start repeats one), and
// where a frame is a contiguous block of its stack (stacked on the first axis, or not stacked) it is
// decoded straight into the output row; otherwise into scratch, then interleaved (FrameLayout::assemble).
//
// Thread roles: none of their own. The owner (DedupBuffer) runs compress() under its writers' lock only,
// so it may overlap load, drop, stats and clear (it touches none of their state: the frames' bytes come
// from the caller, the result stays in the codec's staging until commit); every other call, commit
// included, runs under the owner's data lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "replay_buffer/dedup/frame_layout.hpp"
#include "replay_buffer/dedup/frame_pool.hpp"

namespace replay_buffer::dedup {

struct FrameCodecStats {
  std::size_t frames_held = 0;        // live frames
  std::size_t bytes_held = 0;         // their stored bytes (compressed, or raw where that did not pay)
  std::size_t bytes_reserved = 0;     // memory the codec holds for them (chunks, refs)
  std::size_t frames_stored_raw = 0;  // live frames that did not shrink
};

class FrameCodec {
 public:
  virtual ~FrameCodec() = default;
  // Compresses frames[0..count) (frame_bytes each) into the codec's staging, in parallel where the
  // batch is large. Throws (out of memory) having kept nothing.
  virtual void compress(const std::byte* const* frames, std::size_t count) = 0;
  // Keeps staged frame i of the last compress() as slots[i]'s bytes, for i < count. Throws (out of
  // memory) having kept slots[0..m) only; the others stay empty, and drop() is a no-op for them.
  virtual void commit(const FramePool::Slot* slots, std::size_t count) = 0;
  // Writes `slot`'s bytes to out; throws std::logic_error if they do not decode (memory corruption).
  virtual void load(FramePool::Slot slot, std::byte* out) const = 0;
  virtual void drop(FramePool::Slot slot) noexcept = 0;  // the slot's last reference went
  virtual void clear() noexcept = 0;                     // every slot went (import_state)
  virtual FrameCodecStats stats() const noexcept = 0;
};

class StackDecoder {
 public:
  explicit StackDecoder(const FrameLayout& layout) : layout_(layout), where_(0) {}

  // out[s] <- the stack of frames refs[s K .. (s + 1) K), for s < stacks.
  void decode(const FrameCodec& codec, const FramePool::Slot* refs, std::size_t stacks, std::byte* const* out) const {
    const std::size_t k = layout_.frames(), n = stacks * k, frame_bytes = layout_.frame_bytes();
    const bool contiguous = layout_.frames_contiguous();
    where_.resize(n);
    if (!contiguous && scratch_.size() < n * frame_bytes) scratch_.resize(n * frame_bytes);
    for (std::size_t p = 0; p < n; ++p) {
      std::size_t q = 0;
      while (q < p && refs[q] != refs[p]) ++q;  // n is 2K: a linear search beats a map
      if (contiguous) {
        where_[p] = out[p / k] + layout_.frame_offset(p % k);
        if (q < p) {
          std::memcpy(where_[p], where_[q], frame_bytes);
        } else {
          codec.load(refs[p], where_[p]);
        }
      } else if (q < p) {
        where_[p] = where_[q];
      } else {
        where_[p] = scratch_.data() + p * frame_bytes;
        codec.load(refs[p], where_[p]);
      }
    }
    if (contiguous) return;
    for (std::size_t s = 0; s < stacks; ++s) layout_.assemble(where_.data() + s * k, out[s]);
  }

 private:
  const FrameLayout& layout_;
  mutable std::vector<std::byte*> where_;  // per frame of the row: where its bytes are
  mutable std::vector<std::byte> scratch_;
};

}  // namespace replay_buffer::dedup
