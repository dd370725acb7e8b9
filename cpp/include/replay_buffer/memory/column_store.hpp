// Columnar storage of fixed-size rows: one 64-byte-aligned array per field, `capacity` rows each.
//
// The store knows nothing of policies (which slot to write, which to read); buffers decide that.
// It is not synchronized: its owner serializes access or, like the lock-free buffer, guards each
// slot itself.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "replay_buffer/memory/aligned_array.hpp"

namespace replay_buffer::memory {

// Copies `bytes` bytes; the common small sizes become fixed-size moves the compiler inlines.
inline void copy_row(std::byte* destination, const std::byte* source, std::size_t bytes) noexcept {
  switch (bytes) {
    case 1: std::memcpy(destination, source, 1); return;
    case 4: std::memcpy(destination, source, 4); return;
    case 8: std::memcpy(destination, source, 8); return;
    case 16: std::memcpy(destination, source, 16); return;
    case 32: std::memcpy(destination, source, 32); return;
    default: std::memcpy(destination, source, bytes); return;
  }
}

class ColumnStore {
 public:
  ColumnStore(std::size_t capacity, std::vector<std::size_t> row_bytes)
      : capacity_(capacity), row_bytes_(std::move(row_bytes)) {
    if (capacity == 0) throw std::invalid_argument("capacity must be > 0");
    if (row_bytes_.empty()) throw std::invalid_argument("a buffer needs at least one field");
    columns_.reserve(row_bytes_.size());
    for (std::size_t bytes : row_bytes_) {
      if (bytes == 0) throw std::invalid_argument("a field must have at least one byte per row");
      columns_.emplace_back(capacity_ * bytes);
    }
  }

  std::size_t capacity() const noexcept { return capacity_; }
  std::size_t num_columns() const noexcept { return row_bytes_.size(); }
  std::size_t row_bytes(std::size_t column) const noexcept { return row_bytes_[column]; }
  const std::vector<std::size_t>& all_row_bytes() const noexcept { return row_bytes_; }

  std::size_t bytes_reserved() const noexcept {
    std::size_t total = 0;
    for (const auto& column : columns_) total += column.size();
    return total;
  }

  std::byte* row(std::size_t column, std::size_t slot) noexcept {
    return columns_[column].data() + slot * row_bytes_[column];
  }
  const std::byte* row(std::size_t column, std::size_t slot) const noexcept {
    return columns_[column].data() + slot * row_bytes_[column];
  }

  // Writes `count` rows into slots first, first+1, ... (mod capacity). sources[c] points at
  // `count` contiguous rows of column c. O(count * row bytes), at most two memcpy per column.
  void write_ring(std::size_t first, std::size_t count, const std::byte* const* sources) noexcept {
    for (std::size_t c = 0; c < row_bytes_.size(); ++c) {
      const std::size_t bytes = row_bytes_[c];
      std::size_t done = 0;
      std::size_t slot = first;
      while (done < count) {
        const std::size_t run = std::min(count - done, capacity_ - slot);
        std::memcpy(row(c, slot), sources[c] + done * bytes, run * bytes);
        done += run;
        slot = 0;
      }
    }
  }

  // Copies rows slots[0..count) of every column into destinations[c] (contiguous rows).
  // Random reads miss the cache, so the next rows are prefetched a few iterations ahead.
  void gather(const std::uint64_t* slots, std::size_t count, std::byte* const* destinations) const noexcept {
    constexpr std::size_t kPrefetchDistance = 8;
    for (std::size_t c = 0; c < row_bytes_.size(); ++c) {
      const std::size_t bytes = row_bytes_[c];
      const std::byte* base = columns_[c].data();
      std::byte* out = destinations[c];
      for (std::size_t i = 0; i < count; ++i) {
        if (i + kPrefetchDistance < count) __builtin_prefetch(base + slots[i + kPrefetchDistance] * bytes);
        copy_row(out + i * bytes, base + slots[i] * bytes, bytes);
      }
    }
  }

  // Copies `count` ring-ordered rows starting at slot `first` out to destinations (the inverse of write_ring).
  void read_ring(std::size_t first, std::size_t count, std::byte* const* destinations) const noexcept {
    for (std::size_t c = 0; c < row_bytes_.size(); ++c) {
      const std::size_t bytes = row_bytes_[c];
      std::size_t done = 0;
      std::size_t slot = first;
      while (done < count) {
        const std::size_t run = std::min(count - done, capacity_ - slot);
        std::memcpy(destinations[c] + done * bytes, row(c, slot), run * bytes);
        done += run;
        slot = 0;
      }
    }
  }

 private:
  std::size_t capacity_;
  std::vector<std::size_t> row_bytes_;
  std::vector<AlignedArray> columns_;
};

}  // namespace replay_buffer::memory
