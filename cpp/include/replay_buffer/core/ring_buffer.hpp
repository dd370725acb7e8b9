// A ring of `capacity` rows in columnar storage, sampled by a Selector (core/selector.hpp: uniform
// here, prioritized in prioritization/; the selector chooses slots and describes them, the ring owns
// rows, ids and counters).
//
// When full, each new row overwrites the oldest (an eviction). Every row gets an id: its insertion
// sequence number. Row `id` lives in slot id % capacity, and is live exactly while
// total_adds - size <= id < total_adds, so an id sampled before its slot was overwritten is recognised
// as stale without any per-slot bookkeeping.
//
// Concurrency: one mutex serializes every public method (callers release the GIL around them, so
// Python threads do run in parallel with other work). Memory: all storage is reserved at
// construction; no method allocates per row.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "replay_buffer/core/buffer_interface.hpp"
#include "replay_buffer/core/selector.hpp"
#include "replay_buffer/memory/column_store.hpp"
#include "replay_buffer/sampling/sequence_gather.hpp"

namespace replay_buffer::core {

template <Selector S>
class RingBuffer final : public ReplayBufferInterface {
 public:
  template <class... SelectorArgs>
  RingBuffer(std::size_t capacity, std::vector<std::size_t> row_bytes, std::uint64_t seed, SelectorArgs&&... selector_args)
      : store_(capacity, std::move(row_bytes)), selector_(capacity, std::forward<SelectorArgs>(selector_args)...), rng_(seed) {}

  void add(const std::byte* const* sources, std::size_t count, const double* priorities) override {
    if (count == 0) return;
    std::lock_guard lock(mutex_);
    ScopedTimer timer(add_latency_, collect_stats());
    const std::size_t cap = store_.capacity();
    // Of a batch longer than the ring only the newest `cap` rows can survive: skip the others.
    const std::size_t skipped = count > cap ? count - cap : 0;
    const std::size_t kept = count - skipped;
    const std::uint64_t first_id = counters_.total_adds + skipped;
    const std::size_t first_slot = skipped > 0 ? static_cast<std::size_t>(first_id % cap) : next_slot_;
    if (skipped > 0) {
      offsets_.resize(store_.num_columns());
      for (std::size_t c = 0; c < store_.num_columns(); ++c) offsets_[c] = sources[c] + skipped * store_.row_bytes(c);
      store_.write_ring(first_slot, kept, offsets_.data());
    } else {
      store_.write_ring(first_slot, kept, sources);
    }
    if (priorities != nullptr && skipped > 0) {  // rows never stored still raise the default priority
      double highest = selector_.max_priority();
      for (std::size_t i = 0; i < skipped; ++i) highest = std::max(highest, priorities[i]);
      selector_.set_max_priority(highest);
    }
    selector_.insert_run(first_slot, kept, priorities != nullptr ? priorities + skipped : nullptr, cap);
    const std::size_t new_size = std::min<std::size_t>(size_ + count, cap);
    counters_.evictions += size_ + count - new_size;
    size_ = new_size;
    counters_.total_adds += count;
    next_slot_ = wrap(first_slot + kept);
  }

  std::size_t sample(const SampleRequest& request, std::byte* const* destinations) override {
    std::lock_guard lock(mutex_);
    ScopedTimer timer(sample_latency_, collect_stats());
    const std::size_t n = request.batch_size;
    if (size_ == 0) throw std::invalid_argument("cannot sample from an empty buffer");
    slots_.resize(n);
    selector_.sample(request, rng_, size_, slots_.data());
    store_.gather(slots_.data(), n, destinations);
    const std::size_t cap = store_.capacity();
    const std::uint64_t oldest = counters_.total_adds - size_;
    if (request.ids != nullptr) {
      const std::uint64_t oldest_slot = oldest % cap;
      for (std::size_t i = 0; i < n; ++i) {
        request.ids[i] = static_cast<std::int64_t>(oldest + wrap(slots_[i] + cap - oldest_slot));
      }
    }
    selector_.describe(request, slots_.data(), n);
    counters_.samples += n;
    ++counters_.sample_calls;
    return n;
  }

  PriorityUpdateResult update_priorities(const std::int64_t* ids, const double* priorities, std::size_t count) override {
    if constexpr (!S::kUpdatable) {
      return ReplayBufferInterface::update_priorities(ids, priorities, count);
    } else {
      std::lock_guard lock(mutex_);
      check_ids_issued_locked(ids, count);
      slots_.clear();
      priorities_.clear();
      const std::uint64_t oldest = counters_.total_adds - size_;
      for (std::size_t i = 0; i < count; ++i) {
        const auto id = static_cast<std::uint64_t>(ids[i]);
        if (id < oldest) continue;  // its slot has been overwritten since it was sampled
        slots_.push_back(id % store_.capacity());
        priorities_.push_back(priorities[i]);
      }
      selector_.update(slots_.data(), priorities_.data(), slots_.size());
      PriorityUpdateResult result{slots_.size(), count - slots_.size()};
      counters_.priority_updates += result.applied;
      counters_.stale_priority_updates += result.stale;
      return result;
    }
  }

  void gather_ids(const std::uint64_t* ids, std::size_t count, std::byte* const* destinations) const override {
    std::lock_guard lock(mutex_);
    sampling::gather_ids_or_zero(store_, ids, count, destinations);
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
    selector_.fill_stats(s);
    return s;
  }

  BufferState export_state(std::byte* const* destinations, std::size_t newest_rows) const override {
    std::lock_guard lock(mutex_);
    const std::size_t cap = store_.capacity();
    const std::uint64_t oldest = counters_.total_adds - size_;
    const std::size_t exported = std::min(newest_rows, size_);
    if (destinations != nullptr) store_.read_ring(static_cast<std::size_t>((oldest + size_ - exported) % cap), exported, destinations);
    BufferState state{counters_, selector_.max_priority(), rng_.state(), {}, {}, static_cast<std::size_t>(oldest % cap)};
    if constexpr (S::kUpdatable) {  // (an increment copies them all: keep it a copy)
      state.priorities.resize(size_);
      selector_.export_masses(static_cast<std::size_t>(oldest % cap), size_, cap, state.priorities.data());
    }
    return state;
  }

  // state.priorities, when prioritized, holds masses (p^alpha) as export_state wrote them.
  void import_state(const BufferState& state, const std::byte* const* sources, std::size_t rows) override {
    const std::size_t cap = store_.capacity();
    if (rows != std::min<std::uint64_t>(state.counters.total_adds, cap)) {
      throw std::invalid_argument("state holds " + std::to_string(rows) + " rows but its add count implies " +
                                  std::to_string(std::min<std::uint64_t>(state.counters.total_adds, cap)));
    }
    if (S::kUpdatable && state.priorities.size() != rows) {
      throw std::invalid_argument("state must hold one priority per row");
    }
    const std::uint64_t oldest = state.counters.total_adds - rows;
    if (sources == nullptr && state.first_slot != oldest % cap) {
      throw std::invalid_argument("stored rows start at slot " + std::to_string(state.first_slot) + ", expected " + std::to_string(oldest % cap));
    }
    std::lock_guard lock(mutex_);
    if (sources != nullptr) store_.write_ring(static_cast<std::size_t>(oldest % cap), rows, sources);
    if constexpr (S::kUpdatable) selector_.import_masses(static_cast<std::size_t>(oldest % cap), rows, cap, state.priorities.data());
    size_ = rows;
    counters_ = state.counters;
    next_slot_ = static_cast<std::size_t>(counters_.total_adds % cap);
    selector_.set_max_priority(state.max_priority);
    rng_.set_state(state.random);
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
  // x % capacity for x < 2 * capacity, without a division (one costs ~15 ns, as much as a whole row).
  std::size_t wrap(std::size_t x) const noexcept { return x >= store_.capacity() ? x - store_.capacity() : x; }

  void check_ids_issued_locked(const std::int64_t* ids, std::size_t count) const {
    for (std::size_t i = 0; i < count; ++i) {
      if (ids[i] < 0 || static_cast<std::uint64_t>(ids[i]) >= counters_.total_adds) {
        throw std::invalid_argument("ids[" + std::to_string(i) + "] = " + std::to_string(ids[i]) +
                                    " was never issued by this buffer");
      }
    }
  }

  mutable std::mutex mutex_;
  memory::ColumnStore store_;
  S selector_;
  Random rng_;
  std::size_t size_ = 0;
  std::size_t next_slot_ = 0;  // total_adds % capacity, kept so that an add divides by nothing
  BufferCounters counters_;
  // Scratch space reused across calls (guarded by mutex_), so steady-state calls do not allocate.
  std::vector<std::uint64_t> slots_;
  std::vector<double> priorities_;
  std::vector<const std::byte*> offsets_;
};

using UniformBuffer = RingBuffer<UniformSelector>;
// (PrioritizedBuffer, RingBuffer<prioritization::PrioritizedSelector>, is declared in
// prioritization/prioritized_selector.hpp, under this namespace's name: core includes nothing of
// prioritization/.)

}  // namespace replay_buffer::core
