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
// O(count * row bytes); rows kPrefetchDistance ahead are prefetched, as ColumnStore::gather does.
inline void gather_ids_or_zero(const memory::ColumnStore& store, const std::uint64_t* ids, std::size_t count,
                               std::byte* const* destinations) noexcept {
  constexpr std::size_t kPrefetchDistance = 8;
  const std::size_t columns = store.num_columns();
  const std::uint64_t capacity = store.capacity();
  const auto prefetch = [&](std::size_t i) {
    if (ids[i] != kNoRow) store.prefetch_row(static_cast<std::size_t>(ids[i] % capacity));
  };
  for (std::size_t i = 0; i < std::min(kPrefetchDistance, count); ++i) prefetch(i);
  for (std::size_t i = 0; i < count; ++i) {
    if (i + kPrefetchDistance < count) prefetch(i + kPrefetchDistance);
    if (ids[i] == kNoRow) {
      for (std::size_t c = 0; c < columns; ++c) std::memset(destinations[c] + i * store.row_bytes(c), 0, store.row_bytes(c));
      continue;
    }
    const auto slot = static_cast<std::size_t>(ids[i] % capacity);
    for (std::size_t c = 0; c < columns; ++c) memory::copy_row(destinations[c] + i * store.row_bytes(c), store.row(c, slot), store.row_bytes(c));
  }
}

}  // namespace replay_buffer::sampling
