// A bounded queue of rows: sample(n) returns the n oldest rows in insertion order and removes them
// (the on-policy pattern: each row is consumed once).
//
// Nothing unread is lost silently. When an add does not fit, the overflow policy decides:
//   kReject (default): the whole add fails with BufferFullError, nothing is written, `rejected` counts it;
//   kEvictOldest: the oldest unread rows are dropped to make room, counted in `evictions`.
// sample(n) with fewer than n rows fails (nothing removed) unless allow_partial is set, in which case
// it returns what is there.
//
// Concurrency: one mutex serializes every public method.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "replay_buffer/core/buffer_interface.hpp"
#include "replay_buffer/memory/column_store.hpp"

namespace replay_buffer::core {

enum class OverflowPolicy { kReject, kEvictOldest };

class FifoBuffer final : public ReplayBufferInterface {
 public:
  FifoBuffer(std::size_t capacity, std::vector<std::size_t> row_bytes, OverflowPolicy overflow = OverflowPolicy::kReject)
      : store_(capacity, std::move(row_bytes)), overflow_(overflow) {}

  void add(const std::byte* const* sources, std::size_t count, const double* /*priorities*/) override {
    if (count == 0) return;
    std::lock_guard lock(mutex_);
    ScopedTimer timer(add_latency_, collect_stats());
    const std::size_t cap = store_.capacity();
    const std::size_t free_rows = cap - size_;
    if (count > free_rows && overflow_ == OverflowPolicy::kReject) {
      counters_.rejected += count;
      throw BufferFullError("fifo buffer is full: " + std::to_string(count) + " rows do not fit in the " +
                            std::to_string(free_rows) + " free rows of capacity " + std::to_string(cap) +
                            " (sample to consume rows, or construct with on_full=\"evict\")");
    }
    const std::size_t skipped = count > cap ? count - cap : 0;  // rows of this batch that cannot fit at all
    const std::size_t kept = count - skipped;
    const std::size_t dropped = size_ + kept > cap ? size_ + kept - cap : 0;
    head_ = (head_ + dropped) % cap;
    size_ -= dropped;
    counters_.evictions += dropped + skipped;
    offsets_.resize(store_.num_columns());
    for (std::size_t c = 0; c < store_.num_columns(); ++c) offsets_[c] = sources[c] + skipped * store_.row_bytes(c);
    store_.write_ring((head_ + size_) % cap, kept, offsets_.data());
    size_ += kept;
    counters_.total_adds += count;
  }

  std::size_t sample(const SampleRequest& request, std::byte* const* destinations) override {
    std::lock_guard lock(mutex_);
    ScopedTimer timer(sample_latency_, collect_stats());
    if (size_ == 0) throw std::invalid_argument("cannot sample from an empty buffer");
    if (request.batch_size > size_ && !request.allow_partial) {
      throw std::invalid_argument("batch_size " + std::to_string(request.batch_size) + " exceeds the " +
                                  std::to_string(size_) + " rows in the fifo buffer (pass partial=True to take them all)");
    }
    const std::size_t n = std::min(request.batch_size, size_);
    store_.read_ring(head_, n, destinations);
    head_ = (head_ + n) % store_.capacity();
    size_ -= n;
    counters_.samples += n;
    ++counters_.sample_calls;
    return n;
  }

  std::size_t size() const override {
    std::lock_guard lock(mutex_);
    return size_;
  }
  std::size_t capacity() const override { return store_.capacity(); }

  BufferStats stats() const override {
    std::lock_guard lock(mutex_);
    BufferStats s;
    fill_common(s, size_, store_, counters_);
    return s;
  }

  BufferState export_state(std::byte* const* destinations, std::size_t newest_rows) const override {
    std::lock_guard lock(mutex_);
    const std::size_t exported = std::min(newest_rows, size_);
    if (destinations != nullptr) store_.read_ring((head_ + size_ - exported) % store_.capacity(), exported, destinations);
    BufferState state;
    state.counters = counters_;
    state.first_slot = head_;
    return state;
  }

  void import_state(const BufferState& state, const std::byte* const* sources, std::size_t rows) override {
    if (rows > store_.capacity()) throw std::invalid_argument("state holds more rows than the capacity");
    if (sources == nullptr && state.first_slot >= store_.capacity()) throw std::invalid_argument("stored rows start beyond the capacity");
    std::lock_guard lock(mutex_);
    if (sources != nullptr) store_.write_ring(0, rows, sources);
    head_ = sources != nullptr ? 0 : state.first_slot;
    size_ = rows;
    counters_ = state.counters;
  }

  void configure_storage(const memory::StorageOptions& storage) override {
    std::lock_guard lock(mutex_);
    if (counters_.total_adds != 0) throw std::logic_error("storage can only be configured before the first add");
    store_ = memory::ColumnStore(store_.capacity(), store_.all_row_bytes(), storage);
  }

  void sync_storage() const override {
    std::lock_guard lock(mutex_);
    store_.sync();
  }

 private:
  mutable std::mutex mutex_;
  memory::ColumnStore store_;
  OverflowPolicy overflow_;
  std::size_t head_ = 0;  // slot of the oldest unread row
  std::size_t size_ = 0;
  BufferCounters counters_;
  std::vector<const std::byte*> offsets_;
};

}  // namespace replay_buffer::core
