// Reference-counted storage of fixed-size frames, addressed by slot number.
//
// Thread roles: none of its own; the owner (DedupBuffer) serializes every call.
//
// Freed slots are reused (most recently freed first) before any untouched slot is handed out, so the
// touched part of the reservation (resident memory) stays at the peak number of live frames even
// though the reservation covers the worst case.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "replay_buffer/memory/aligned_array.hpp"
#include "replay_buffer/memory/reserved_array.hpp"

namespace replay_buffer::dedup {

class FramePool {
 public:
  using Slot = std::uint32_t;

  FramePool(std::size_t frame_bytes, std::size_t max_frames)
      : frame_bytes_(frame_bytes),
        stride_(memory::round_up(frame_bytes, memory::kCacheLineBytes)),
        max_frames_(max_frames),
        storage_(stride_ * max_frames),
        references_(max_frames * sizeof(std::uint32_t)) {
    if (max_frames > UINT32_MAX) throw std::invalid_argument("a frame pool holds at most 2^32 - 1 frames");
    free_.reserve(max_frames);
  }

  // A slot holding one reference, for the caller to fill through data(). O(1).
  Slot allocate() {
    Slot slot;
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
    } else {
      if (touched_ == max_frames_) throw std::length_error("frame pool exhausted");  // sized so this cannot happen
      slot = static_cast<Slot>(touched_++);
    }
    references()[slot] = 1;
    ++live_;
    return slot;
  }

  void retain(Slot slot) noexcept { ++references()[slot]; }  // O(1)

  // Drops one reference; the last one frees the slot (and returns true). O(1).
  bool release(Slot slot) noexcept {
    if (--references()[slot] != 0) return false;
    free_.push_back(slot);
    --live_;
    return true;
  }

  // Forgets every frame (for import_state).
  void clear() noexcept {
    free_.clear();
    std::fill(references(), references() + touched_, 0u);
    for (std::size_t slot = touched_; slot-- > 0;) free_.push_back(static_cast<Slot>(slot));  // lowest slot on top
    live_ = 0;
  }

  std::byte* data(Slot slot) noexcept { return storage_.data() + slot * stride_; }
  const std::byte* data(Slot slot) const noexcept { return storage_.data() + slot * stride_; }

  std::size_t frame_bytes() const noexcept { return frame_bytes_; }
  std::size_t live() const noexcept { return live_; }
  std::size_t bytes_touched() const noexcept { return touched_ * stride_; }
  std::size_t slots_touched() const noexcept { return touched_; }

 private:
  std::uint32_t* references() noexcept { return reinterpret_cast<std::uint32_t*>(references_.data()); }

  std::size_t frame_bytes_, stride_, max_frames_;
  memory::ReservedArray storage_;
  memory::ReservedArray references_;  // per slot; zero pages until touched, like the frames
  std::vector<Slot> free_;   // freed slots; reused before untouched ones
  std::size_t touched_ = 0;  // slots [0, touched_) have been handed out at least once
  std::size_t live_ = 0;
};

}  // namespace replay_buffer::dedup
