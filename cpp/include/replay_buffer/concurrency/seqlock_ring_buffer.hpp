// A ring buffer with uniform sampling that many threads may add to and sample from at once, without
// a global lock.
//
// Thread roles: any number of writer threads (add) and reader threads (sample, stats) concurrently.
// export_state / import_state need exclusive use (no concurrent add); import_state is for a fresh buffer.
//
// How: a writer claims a run of sequence numbers with one fetch_add on `claimed_`; row `seq` goes to
// slot seq % capacity. Each slot has a sequence lock (`SlotGuard::version`):
//   0                 never written
//   2 * (seq + 1)     stable, holding row `seq`
//   odd               a writer is copying into the slot
// A writer locks the slot by CAS from an even version to version | 1, copies its row, then publishes
// 2 * (seq + 1). If the slot already holds a newer row (a faster writer lapped it), the older row is
// dropped and counted as an eviction: the newest row always wins, as in a plain ring.
// A reader copies the row, then re-reads the version; if it changed, the copy may be torn and is
// retried. So a reader never returns a torn or half-written transition.
//
// The row copy itself is a plain memcpy racing with a concurrent writer, as in every seqlock; its result
// is discarded whenever the versions disagree.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "replay_buffer/core/buffer_interface.hpp"
#include "replay_buffer/memory/column_store.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define REPLAY_BUFFER_CPU_RELAX() _mm_pause()
#else
#define REPLAY_BUFFER_CPU_RELAX() ((void)0)
#endif

#if defined(__SANITIZE_THREAD__)
#define REPLAY_BUFFER_THREAD_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define REPLAY_BUFFER_THREAD_SANITIZER 1
#endif
#endif

namespace replay_buffer::concurrency {

// Copies a row that another thread may be writing at the same time (the seqlock's intended race).
// Normal builds use plain copies, whose torn results the version check discards, ordered by the
// fences below. ThreadSanitizer builds (which support no fences) copy byte by byte with atomics
// instead: acquire loads on the reading side, release stores on the writing side, which order the
// copy against the version checks by themselves. TSan then checks everything else without
// reporting this race.
inline void racy_copy(std::byte* destination, const std::byte* source, std::size_t bytes, bool writer) noexcept {
#if defined(REPLAY_BUFFER_THREAD_SANITIZER)
  auto* out = reinterpret_cast<unsigned char*>(destination);
  auto* in = reinterpret_cast<const unsigned char*>(source);
  for (std::size_t i = 0; i < bytes; ++i) {
    if (writer) {
      __atomic_store_n(out + i, in[i], __ATOMIC_RELEASE);
    } else {
      out[i] = __atomic_load_n(in + i, __ATOMIC_ACQUIRE);
    }
  }
#else
  (void)writer;
  memory::copy_row(destination, source, bytes);
#endif
}

// The seqlock's fences (see racy_copy for ThreadSanitizer builds).
inline void seqlock_fence([[maybe_unused]] std::memory_order order) noexcept {
#if !defined(REPLAY_BUFFER_THREAD_SANITIZER)
  std::atomic_thread_fence(order);
#endif
}

// One counter per cache line, so writers bumping `claimed_` do not slow readers of other counters.
struct alignas(memory::kCacheLineBytes) PaddedCounter {
  std::atomic<std::uint64_t> value{0};
};
static_assert(sizeof(PaddedCounter) == memory::kCacheLineBytes, "a counter must own its cache line");
static_assert(alignof(PaddedCounter) == memory::kCacheLineBytes, "a counter must start a cache line");

struct SlotGuard {
  std::atomic<std::uint64_t> version{0};
};
static_assert(sizeof(SlotGuard) == 8, "slot guards are packed: padding each to a line would cost 64 B per row");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "slot guards must be lock-free atomics");

class SeqlockRingBuffer final : public core::ReplayBufferInterface {
 public:
  SeqlockRingBuffer(std::size_t capacity, std::vector<std::size_t> row_bytes, std::uint64_t seed)
      : store_(capacity, std::move(row_bytes)), guards_(new SlotGuard[capacity]), seed_(seed) {}

  void add(const std::byte* const* sources, std::size_t count, const double* /*priorities*/) override {
    if (count == 0) return;
    core::ScopedTimer timer(add_latency_, collect_stats());
    const std::size_t cap = store_.capacity();
    // relaxed: the claim only hands out numbers; the slot guards order the data.
    const std::uint64_t first = claimed_.value.fetch_add(count, std::memory_order_relaxed);
    const std::size_t skipped = count > cap ? count - cap : 0;  // lapped within this very batch
    // Evictions are counted here and published with one atomic add per batch, not one per row.
    std::uint64_t evicted = skipped;
    std::size_t slot = static_cast<std::size_t>((first + skipped) % cap);
    for (std::size_t i = skipped; i < count; ++i) {
      if (write_row(first + i, slot, sources, i) != WriteOutcome::kIntoEmptySlot) ++evicted;
      if (++slot == cap) slot = 0;
    }
    if (evicted > 0) evictions_.value.fetch_add(evicted, std::memory_order_relaxed);
    // release: a thread that sees the new count also sees the rows (used by size() and export_state).
    committed_.value.fetch_add(count, std::memory_order_release);
  }

  std::size_t sample(const core::SampleRequest& request, std::byte* const* destinations) override {
    core::ScopedTimer timer(sample_latency_, collect_stats());
    if (committed_.value.load(std::memory_order_acquire) == 0) throw std::invalid_argument("cannot sample from an empty buffer");
    // Each call draws from its own generator, seeded from the buffer's seed and the call's number:
    // reproducible for a single thread, no shared generator state between threads.
    core::Random rng(seed_ ^ (0x9E3779B97F4A7C15ull * (sample_calls_.value.fetch_add(1, std::memory_order_relaxed) + 1)));
    const std::size_t cap = store_.capacity();
    // Slots are drawn a chunk ahead and prefetched, so the cache misses of a chunk overlap.
    constexpr std::size_t kChunk = 32;
    std::size_t chunk_slots[kChunk];
    for (std::size_t begin = 0; begin < request.batch_size; begin += kChunk) {
      const std::size_t end = std::min(begin + kChunk, request.batch_size);
      const std::size_t live = static_cast<std::size_t>(std::min<std::uint64_t>(claimed_.value.load(std::memory_order_relaxed), cap));
      for (std::size_t i = begin; i < end; ++i) {
        const std::size_t slot = chunk_slots[i - begin] = rng.below(live);
        __builtin_prefetch(&guards_[slot]);
        store_.prefetch_row(slot);
      }
      for (std::size_t i = begin; i < end; ++i) {
        std::size_t slot = chunk_slots[i - begin];
        for (;;) {
          const std::uint64_t before = guards_[slot].version.load(std::memory_order_acquire);
          if (before == 0) {  // claimed but not yet written: draw another slot
            slot = rng.below(live);
            continue;
          }
          if (before & 1) {  // a writer is copying: wait for it
            REPLAY_BUFFER_CPU_RELAX();
            continue;
          }
          copy_out(slot, destinations, i);
          // acquire fence: the copy above completes before the version is read again (seqlock read side).
          seqlock_fence(std::memory_order_acquire);
          if (guards_[slot].version.load(std::memory_order_relaxed) == before) {
            if (request.ids != nullptr) request.ids[i] = static_cast<std::int64_t>(before / 2 - 1);
            break;
          }
        }
      }
    }
    samples_.value.fetch_add(request.batch_size, std::memory_order_relaxed);
    return request.batch_size;
  }

  std::size_t size() const override {
    return static_cast<std::size_t>(std::min<std::uint64_t>(committed_.value.load(std::memory_order_acquire), store_.capacity()));
  }
  std::size_t capacity() const override { return store_.capacity(); }

  core::BufferStats stats() const override {
    core::BufferStats s;
    fill_common(s, size(), store_, counters());
    s.bytes_reserved += store_.capacity() * sizeof(SlotGuard);
    return s;
  }

  core::BufferState export_state(std::byte* const* destinations, std::size_t newest_rows) const override {
    const std::uint64_t total = committed_.value.load(std::memory_order_acquire);
    if (claimed_.value.load(std::memory_order_relaxed) != total) {
      throw std::runtime_error("cannot snapshot a lock-free buffer while adds are in flight");
    }
    const std::size_t cap = store_.capacity();
    const std::size_t rows = static_cast<std::size_t>(std::min<std::uint64_t>(total, cap));
    const std::uint64_t oldest = total - rows;
    const std::size_t exported = std::min(newest_rows, rows);
    for (std::size_t i = 0; destinations != nullptr && i < exported; ++i) {
      const std::size_t slot = static_cast<std::size_t>((oldest + rows - exported + i) % cap);
      for (std::size_t c = 0; c < store_.num_columns(); ++c) {
        memory::copy_row(destinations[c] + i * store_.row_bytes(c), store_.row(c, slot), store_.row_bytes(c));
      }
    }
    core::BufferState state;
    state.counters = counters();
    state.first_slot = static_cast<std::size_t>(oldest % cap);
    return state;
  }

  void import_state(const core::BufferState& state, const std::byte* const* sources, std::size_t rows) override {
    const std::size_t cap = store_.capacity();
    if (rows != std::min<std::uint64_t>(state.counters.total_adds, cap)) {
      throw std::invalid_argument("state holds " + std::to_string(rows) + " rows but its add count implies " +
                                  std::to_string(std::min<std::uint64_t>(state.counters.total_adds, cap)));
    }
    const std::uint64_t oldest = state.counters.total_adds - rows;
    if (sources == nullptr && state.first_slot != oldest % cap) {
      throw std::invalid_argument("stored rows start at slot " + std::to_string(state.first_slot) + ", expected " + std::to_string(oldest % cap));
    }
    if (sources != nullptr) store_.write_ring(static_cast<std::size_t>(oldest % cap), rows, sources);
    for (std::size_t slot = 0; slot < cap; ++slot) guards_[slot].version.store(0, std::memory_order_relaxed);
    for (std::uint64_t seq = oldest; seq < state.counters.total_adds; ++seq) {
      guards_[seq % cap].version.store(2 * (seq + 1), std::memory_order_relaxed);
    }
    samples_.value.store(state.counters.samples, std::memory_order_relaxed);
    sample_calls_.value.store(state.counters.sample_calls, std::memory_order_relaxed);
    evictions_.value.store(state.counters.evictions, std::memory_order_relaxed);
    claimed_.value.store(state.counters.total_adds, std::memory_order_relaxed);
    committed_.value.store(state.counters.total_adds, std::memory_order_release);  // publishes everything above
  }

  // Like import_state, for a fresh buffer only (no concurrent use).
  void configure_storage(const memory::StorageOptions& storage) override {
    if (claimed_.value.load(std::memory_order_relaxed) != 0) throw std::logic_error("storage can only be configured before the first add");
    store_ = memory::ColumnStore(store_.capacity(), store_.all_row_bytes(), storage);
  }

  void sync_storage() const override { store_.sync(); }

 private:
  core::BufferCounters counters() const noexcept {
    core::BufferCounters counters;
    counters.total_adds = committed_.value.load(std::memory_order_relaxed);
    counters.samples = samples_.value.load(std::memory_order_relaxed);
    counters.sample_calls = sample_calls_.value.load(std::memory_order_relaxed);
    counters.evictions = evictions_.value.load(std::memory_order_relaxed);
    return counters;
  }

  enum class WriteOutcome {
    kIntoEmptySlot,  // written into a slot never written before
    kOverOlderRow,   // written, evicting the older row the slot held
    kLapped,         // not written: a newer row already holds the slot (this row is the one evicted)
  };

  // Writes row `index` of the batch as sequence number `seq` into its slot (seq % capacity).
  WriteOutcome write_row(std::uint64_t seq, std::size_t slot, const std::byte* const* sources, std::size_t index) noexcept {
    std::atomic<std::uint64_t>& version = guards_[slot].version;
    const std::uint64_t published = 2 * (seq + 1);
    std::uint64_t current = version.load(std::memory_order_relaxed);
    for (;;) {
      if (current & 1) {  // another writer holds the slot
        REPLAY_BUFFER_CPU_RELAX();
        current = version.load(std::memory_order_relaxed);
        continue;
      }
      if (current > published) return WriteOutcome::kLapped;
      // acquire: our copy must not start before we own the slot.
      if (version.compare_exchange_weak(current, current | 1, std::memory_order_acquire, std::memory_order_relaxed)) break;
    }
    // release fence: the odd version is visible before any byte of the new row (seqlock write side).
    seqlock_fence(std::memory_order_release);
    copy_in(slot, sources, index);
    // release: readers that see the new version see the whole row.
    version.store(published, std::memory_order_release);
    return current == 0 ? WriteOutcome::kIntoEmptySlot : WriteOutcome::kOverOlderRow;
  }

  void copy_in(std::size_t slot, const std::byte* const* sources, std::size_t index) noexcept {
    for (std::size_t c = 0; c < store_.num_columns(); ++c) {
      racy_copy(store_.row(c, slot), sources[c] + index * store_.row_bytes(c), store_.row_bytes(c), /*writer=*/true);
    }
  }
  void copy_out(std::size_t slot, std::byte* const* destinations, std::size_t index) const noexcept {
    for (std::size_t c = 0; c < store_.num_columns(); ++c) {
      racy_copy(destinations[c] + index * store_.row_bytes(c), store_.row(c, slot), store_.row_bytes(c), /*writer=*/false);
    }
  }

  memory::ColumnStore store_;
  std::unique_ptr<SlotGuard[]> guards_;
  std::uint64_t seed_;
  PaddedCounter claimed_;     // sequence numbers handed to writers
  PaddedCounter committed_;   // rows whose write has finished (or was dropped as lapped)
  PaddedCounter evictions_;
  PaddedCounter samples_;
  PaddedCounter sample_calls_;
};

}  // namespace replay_buffer::concurrency
