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

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "replay_buffer/memory/aligned_array.hpp"

namespace replay_buffer::memory {

// Copies one row of `bytes` bytes. Rows of up to 64 bytes are moved in at most four fixed-size
// pieces, the last ones overlapping the first when the size is not a multiple (as libc's memcpy does
// for small sizes, but inlined: the call costs more than such a row). No loop, on purpose: GCC turns
// a loop of 8-byte pieces into `rep movsq`, whose start-up cost made a 32-byte row take ~10 ns.
// Longer rows use memcpy.
inline void copy_row(std::byte* destination, const std::byte* source, std::size_t bytes) noexcept {
  const auto piece = [&](std::size_t offset, auto size) {
    std::memcpy(destination + offset, source + offset, decltype(size)::value);
  };
  using B16 = std::integral_constant<std::size_t, 16>;
  using B8 = std::integral_constant<std::size_t, 8>;
  using B4 = std::integral_constant<std::size_t, 4>;
  using B2 = std::integral_constant<std::size_t, 2>;
  if (bytes > 32) {
    if (bytes > kCacheLineBytes) {
      std::memcpy(destination, source, bytes);
      return;
    }
    piece(0, B16{}); piece(16, B16{}); piece(bytes - 32, B16{}); piece(bytes - 16, B16{});
  } else if (bytes >= 16) {
    piece(0, B16{}); piece(bytes - 16, B16{});
  } else if (bytes >= 8) {
    piece(0, B8{}); piece(bytes - 8, B8{});
  } else if (bytes >= 4) {
    piece(0, B4{}); piece(bytes - 4, B4{});
  } else if (bytes >= 2) {
    piece(0, B2{}); piece(bytes - 2, B2{});
  } else if (bytes == 1) {
    *destination = *source;
  }
}

// Copies a large block into the ring with non-temporal (streaming) stores: rows just added are rarely
// read again soon, and bypassing the cache halves the cost of filling a buffer far larger than it
// (measured: a 77 KB batch into a 77 MB ring, 8.2 us with memcpy, 4.3 us streamed). Small blocks
// use copy_row (a single row: inlined). The closing sfence orders the streamed stores before whatever publishes them (the
// buffer's mutex release or a version store).
inline void stream_copy(std::byte* destination, const std::byte* source, std::size_t bytes) noexcept {
#if defined(__SSE2__)
  constexpr std::size_t kStreamThreshold = 4096;
  if (bytes < kStreamThreshold) {
    copy_row(destination, source, bytes);
    return;
  }
  const std::size_t head = (16 - reinterpret_cast<std::uintptr_t>(destination) % 16) % 16;
  std::memcpy(destination, source, head);
  destination += head;
  source += head;
  bytes -= head;
  for (; bytes >= 64; bytes -= 64, destination += 64, source += 64) {
    const auto* in = reinterpret_cast<const __m128i*>(source);
    auto* out = reinterpret_cast<__m128i*>(destination);
    const __m128i a = _mm_loadu_si128(in), b = _mm_loadu_si128(in + 1), c = _mm_loadu_si128(in + 2), d = _mm_loadu_si128(in + 3);
    _mm_stream_si128(out, a);
    _mm_stream_si128(out + 1, b);
    _mm_stream_si128(out + 2, c);
    _mm_stream_si128(out + 3, d);
  }
  std::memcpy(destination, source, bytes);
  _mm_sfence();
#else
  copy_row(destination, source, bytes);
#endif
}

// Where a store keeps its columns.
struct StorageOptions {
  // Empty: anonymous memory. Otherwise one file per column, memory-mapped (MAP_SHARED): capacity
  // beyond RAM, and contents that outlive the process (files named by column_files, in this folder).
  std::string directory;
  std::vector<std::string> column_files;
  bool prefault = false;  // map every page at construction instead of on first write
};

class ColumnStore {
 public:
  ColumnStore(std::size_t capacity, std::vector<std::size_t> row_bytes, const StorageOptions& storage = {})
      : capacity_(capacity), row_bytes_(std::move(row_bytes)) {
    if (capacity == 0) throw std::invalid_argument("capacity must be > 0");
    if (row_bytes_.empty()) throw std::invalid_argument("a buffer needs at least one field");
    if (!storage.directory.empty() && storage.column_files.size() != row_bytes_.size()) {
      throw std::invalid_argument("file-backed storage needs one file name per column");
    }
    columns_.reserve(row_bytes_.size());
    for (std::size_t c = 0; c < row_bytes_.size(); ++c) {
      if (row_bytes_[c] == 0) throw std::invalid_argument("a field must have at least one byte per row");
      if (storage.directory.empty()) {
        columns_.emplace_back(capacity_ * row_bytes_[c]);
      } else {
        columns_.push_back(AlignedArray::map_file(storage.directory + "/" + storage.column_files[c], capacity_ * row_bytes_[c]));
      }
      if (storage.prefault) columns_.back().prefault();
    }
  }

  // Waits until file-backed columns are on disk (no-op for memory).
  void sync() const {
    for (const auto& column : columns_) column.sync();
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
    for_each_run(first, count, [&](std::size_t c, std::size_t slot, std::size_t done, std::size_t bytes) {
      stream_copy(row(c, slot), sources[c] + done * row_bytes_[c], bytes);
    });
  }

  // Copies rows slots[0..count) of every column into destinations[c] (contiguous rows).
  // Random reads miss the cache, so every column of the row kPrefetchDistance ahead is prefetched:
  // row-major order keeps about that many rows' misses in flight at once (measured on a 1M-row
  // buffer: 15 us for 256 rows of 5 columns, against 25 us column by column).
  void gather(const std::uint64_t* slots, std::size_t count, std::byte* const* destinations) const noexcept {
    constexpr std::size_t kPrefetchDistance = 8;
    const std::size_t columns = row_bytes_.size();
    for (std::size_t i = 0; i < std::min(kPrefetchDistance, count); ++i) prefetch_row(slots[i]);
    for (std::size_t i = 0; i < count; ++i) {
      if (i + kPrefetchDistance < count) prefetch_row(slots[i + kPrefetchDistance]);
      for (std::size_t c = 0; c < columns; ++c) {
        copy_row(destinations[c] + i * row_bytes_[c], row(c, slots[i]), row_bytes_[c]);
      }
    }
  }

  void prefetch_row(std::size_t slot) const noexcept {
    for (std::size_t c = 0; c < row_bytes_.size(); ++c) __builtin_prefetch(row(c, slot));
  }

  // Copies `count` ring-ordered rows starting at slot `first` out to destinations (the inverse of write_ring).
  void read_ring(std::size_t first, std::size_t count, std::byte* const* destinations) const noexcept {
    for_each_run(first, count, [&](std::size_t c, std::size_t slot, std::size_t done, std::size_t bytes) {
      std::memcpy(destinations[c] + done * row_bytes_[c], row(c, slot), bytes);
    });
  }

 private:
  // Calls copy(column, first slot, rows done, bytes) for each contiguous run of `count` rows from
  // slot `first` on: one run, or two where the ring wraps.
  template <class Copy>
  void for_each_run(std::size_t first, std::size_t count, Copy&& copy) const noexcept {
    for (std::size_t c = 0; c < row_bytes_.size(); ++c) {
      for (std::size_t done = 0, slot = first; done < count; slot = 0) {
        const std::size_t run = std::min(count - done, capacity_ - slot);
        copy(c, slot, done, run * row_bytes_[c]);
        done += run;
      }
    }
  }

  std::size_t capacity_;
  std::vector<std::size_t> row_bytes_;
  std::vector<AlignedArray> columns_;
};

}  // namespace replay_buffer::memory
