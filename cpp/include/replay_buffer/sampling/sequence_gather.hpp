// Copying the rows of a list of ids out of a ring's column store, with zero rows for padding: the
// gather behind sequence sampling (a sequence is a list of ids, padded to seq_len with kNoRow).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "replay_buffer/memory/column_store.hpp"

namespace replay_buffer::sampling {

inline constexpr std::uint64_t kNoRow = ~std::uint64_t{0};

// destinations[c] receives `count` contiguous rows of column c: the row of ids[i] (slot
// ids[i] % capacity), or zeros where ids[i] == kNoRow. The caller guarantees the ids are live.
// Runs of consecutive ids in consecutive slots (one stream written alone: the common layout of a
// sequence) are copied with one memcpy per column; other rows one by one, with the rows
// kPrefetchDistance ahead prefetched as ColumnStore::gather does. O(count * row bytes).
inline void gather_ids_or_zero(const memory::ColumnStore& store, const std::uint64_t* ids, std::size_t count,
                               std::byte* const* destinations) noexcept {
  constexpr std::size_t kPrefetchDistance = 8;
  const std::size_t columns = store.num_columns();
  const std::uint64_t capacity = store.capacity();
  const auto prefetch = [&](std::size_t i) {
    if (ids[i] != kNoRow) store.prefetch_row(static_cast<std::size_t>(ids[i] % capacity));
  };
  for (std::size_t i = 0; i < std::min(kPrefetchDistance, count); ++i) prefetch(i);
  for (std::size_t i = 0; i < count;) {
    if (ids[i] == kNoRow) {
      std::size_t end = i + 1;
      while (end < count && ids[end] == kNoRow) ++end;
      for (std::size_t c = 0; c < columns; ++c) {
        std::memset(destinations[c] + i * store.row_bytes(c), 0, (end - i) * store.row_bytes(c));
      }
      i = end;
      continue;
    }
    const auto slot = static_cast<std::size_t>(ids[i] % capacity);
    std::size_t run = 1;  // rows i, i+1, ... in slots slot, slot+1, ... (no wrap)
    while (i + run < count && ids[i + run] == ids[i] + run && slot + run < capacity) ++run;
    if (run > 1) {
      for (std::size_t c = 0; c < columns; ++c) {
        std::memcpy(destinations[c] + i * store.row_bytes(c), store.row(c, slot), run * store.row_bytes(c));
      }
      for (std::size_t j = i + run; j < std::min(i + run + kPrefetchDistance, count); ++j) prefetch(j);
    } else {
      if (i + kPrefetchDistance < count) prefetch(i + kPrefetchDistance);
      for (std::size_t c = 0; c < columns; ++c) memory::copy_row(destinations[c] + i * store.row_bytes(c), store.row(c, slot), store.row_bytes(c));
    }
    i += run;
  }
}

}  // namespace replay_buffer::sampling
