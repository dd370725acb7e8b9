// Variable-size row storage that does not fragment: a log of fixed-size chunks.
//
// Blobs (compressed rows, up to max_blob bytes each) are appended at the head of the newest chunk; a
// blob that does not fit in what is left of it starts a new chunk (the tail left unused is under one
// blob, so at most max_blob / chunk_bytes = 1/16 of a chunk). Each chunk counts its live blobs; when
// the last one is released and the chunk is not the head, the chunk is recycled whole. Rows leave a
// replay buffer in insertion order (ring overwrite, FIFO read, eviction), so chunks empty in the order
// they filled: live bytes stay packed in consecutive chunks whatever the sizes of the rows that come
// and go, and resident memory is the live blobs plus under two chunks, plus at most kSpareChunks
// recycled chunks kept for reuse (so a steady state touches no new page). (Released out of order, a
// chunk would stay alive while any of its blobs does: more memory, still correct.)
//
// Thread roles: none of its own; the owner serializes every call. Costs: append O(blob bytes) plus,
// once per chunk, one allocation (or a recycled chunk); release O(1).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

namespace replay_buffer::compression {

// Where a blob lives. `length` == the row's raw size marks a row stored raw (never compressed).
struct BlobRef {
  std::uint32_t chunk = 0;
  std::uint32_t offset = 0;
  std::uint32_t length = 0;
};

class BlobLog {
 public:
  static constexpr std::size_t kSpareChunks = 4;

  explicit BlobLog(std::size_t max_blob)
      : max_blob_(max_blob), chunk_bytes_(std::max<std::size_t>(std::size_t{1} << 20, round_to_page(16 * max_blob))) {
    if (max_blob == 0 || chunk_bytes_ > UINT32_MAX) throw std::invalid_argument("a blob log holds blobs of 1 byte to 256 MiB");
    spare_.reserve(kSpareChunks);
  }
  BlobLog(const BlobLog&) = delete;
  BlobLog& operator=(const BlobLog&) = delete;

  // Copies `length` (1..max_blob) bytes in; the blob holds one reference until release(). Throws
  // std::bad_alloc (nothing changed) when a new chunk cannot be had.
  BlobRef append(const std::byte* data, std::size_t length) {
    if (length == 0 || length > max_blob_) throw std::invalid_argument("blob size out of range");
    if (!has_head_ || head_offset_ + length > chunk_bytes_) open_chunk();
    Chunk& chunk = chunks_[head_];
    std::memcpy(chunk.memory.get() + head_offset_, data, length);
    const BlobRef ref{head_, static_cast<std::uint32_t>(head_offset_), static_cast<std::uint32_t>(length)};
    head_offset_ += length;
    ++chunk.live;
    bytes_held_ += length;
    return ref;
  }

  const std::byte* data(const BlobRef& ref) const noexcept { return chunks_[ref.chunk].memory.get() + ref.offset; }

  void release(const BlobRef& ref) noexcept {
    Chunk& chunk = chunks_[ref.chunk];
    --chunk.live;
    bytes_held_ -= ref.length;
    if (chunk.live == 0 && !(has_head_ && ref.chunk == head_)) recycle(ref.chunk);
  }

  // Forgets every blob (import_state). Chunks are kept for reuse, up to kSpareChunks.
  void clear() noexcept {
    for (std::uint32_t c = 0; c < chunks_.size(); ++c) {
      if (chunks_[c].memory && (chunks_[c].live != 0 || (has_head_ && c == head_))) {
        chunks_[c].live = 0;
        recycle(c);
      }
    }
    has_head_ = false;
    bytes_held_ = 0;
  }

  std::size_t bytes_held() const noexcept { return bytes_held_; }  // live blob bytes
  std::size_t bytes_reserved() const noexcept { return allocated_ * chunk_bytes_; }  // chunks allocated (live, head and spare)
  std::size_t chunk_bytes() const noexcept { return chunk_bytes_; }
  std::size_t max_blob() const noexcept { return max_blob_; }

 private:
  struct Chunk {
    std::unique_ptr<std::byte[]> memory;  // null: the index is free and holds no memory
    std::uint32_t live = 0;
    bool spare = false;
  };

  static std::size_t round_to_page(std::size_t bytes) { return (bytes + 4095) / 4096 * 4096; }

  void open_chunk() {
    std::uint32_t index;
    if (!spare_.empty()) {  // a recycled chunk: its pages are already mapped
      index = spare_.back();
      spare_.pop_back();
      chunks_[index].spare = false;
    } else {
      auto memory = std::unique_ptr<std::byte[]>(new std::byte[chunk_bytes_]);  // uninitialized: pages map as they are written
      if (!empty_.empty()) {
        index = empty_.back();
        empty_.pop_back();
      } else {
        if (chunks_.size() >= UINT32_MAX) throw std::length_error("blob log: too many chunks");
        chunks_.emplace_back();
        index = static_cast<std::uint32_t>(chunks_.size() - 1);
        empty_.reserve(chunks_.size());  // so that recycle(), noexcept, never allocates
      }
      chunks_[index].memory = std::move(memory);
      ++allocated_;
    }
    const bool previous_done = has_head_ && chunks_[head_].live == 0;
    const std::uint32_t previous = head_;
    head_ = index;
    head_offset_ = 0;
    has_head_ = true;
    if (previous_done) recycle(previous);  // the old head emptied while it was the head
  }

  void recycle(std::uint32_t index) noexcept {
    Chunk& chunk = chunks_[index];
    if (chunk.spare || !chunk.memory) return;
    if (spare_.size() < kSpareChunks) {
      chunk.spare = true;
      spare_.push_back(index);
    } else {
      chunk.memory.reset();
      --allocated_;
      empty_.push_back(index);
    }
  }

  std::size_t max_blob_;
  std::size_t chunk_bytes_;
  std::vector<Chunk> chunks_;
  std::vector<std::uint32_t> spare_;  // recycled chunks with memory, reused first
  std::vector<std::uint32_t> empty_;  // indices without memory
  std::uint32_t head_ = 0;
  bool has_head_ = false;
  std::size_t head_offset_ = 0;
  std::size_t bytes_held_ = 0;
  std::size_t allocated_ = 0;
};

}  // namespace replay_buffer::compression
