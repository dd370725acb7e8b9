// Sequence sampling for the Python-facing ring buffers ('uniform', 'prioritized'): the index of each
// stored row's stream, episode step and successor, kept beside the engine, and sample(seq_len=...) /
// per-step priority updates over it.
//
// Consistency: SequenceSupport::add performs the engine's add and the index's record under one mutex,
// and sample / mixing hold the same mutex, so the index always describes exactly the rows the engine
// holds (lock order: this mutex, then the engine's). Nothing under the mutex touches Python, so it may
// be taken with or without the GIL.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <vector>

#include "replay_buffer/core/buffer_interface.hpp"
#include "replay_buffer/sampling/sequence_index.hpp"
#include "array_pool.hpp"
#include "schema.hpp"

namespace replay_buffer::bindings {

// The fields whose nonzero value ends an episode at a row (scalar fields only).
inline constexpr const char* kEpisodeEndFields[] = {"done",      "dones",      "terminated", "terminateds", "terminal",
                                                    "terminals", "truncated",  "truncateds", "is_terminal", "timeout"};

class SequenceSupport {
 public:
  SequenceSupport(std::size_t capacity, const Schema& schema, double eta);

  // The engine's add and the index's record as one step (GIL may be released; throws only what the
  // engine's add throws, before anything changed).
  // add_rows: the engine's own add of these rows (with their streams, for observation dedup).
  using AddRows = std::function<void(const std::byte* const*, std::size_t, const double*, const std::int64_t*)>;
  void add(const AddRows& add_rows, const std::byte* const* sources, std::size_t count, const double* priorities,
           const std::int64_t* streams);

  // sample(n, seq_len=...): called with the GIL; releases it for the draws and the gather.
  py::dict sample(core::ReplayBufferInterface& engine, const Schema& schema, ArrayPool& outputs, bool prioritized, py::ssize_t batch_size,
                  py::ssize_t seq_len, std::optional<py::ssize_t> min_len, std::optional<py::ssize_t> period, double beta, bool masses);

  // Per-step errors of shape (count, L) mixed into one priority per id:
  // eta * max|e| + (1 - eta) * mean|e| over the valid steps (mask, or the steps the sequence that
  // starts at the id has now). Ids no longer held get 0 (the engine skips them as stale).
  std::vector<double> mix(const std::int64_t* ids, std::size_t count, py::handle errors, py::handle mask);

  // Persistence: the stream of each of the newest `rows` rows held, oldest first (their episode ends
  // come back from the rows' own done/truncated fields, their steps from the links).
  struct RowsState {
    std::vector<std::int64_t> streams;
  };
  RowsState export_rows(std::size_t rows) const;
  // Rebuilds the index after the engine imported `rows` rows (oldest first): sources[c] holds them, or
  // null when they were adopted in place (read back from the engine). streams null (a state saved
  // before sequences existed): every row becomes a one-row episode, as nothing can be linked safely.
  // Steps restart at 0 for an episode whose first rows were gone when the state was saved.
  void import_rows(core::ReplayBufferInterface& engine, const std::byte* const* sources, std::size_t rows, const std::int64_t* streams,
                   const std::vector<std::size_t>& row_bytes);

  double eta() const noexcept { return eta_; }

 private:
  void episode_ends(const std::byte* const* sources, std::size_t count);

  mutable std::mutex mutex_;
  sampling::SequenceIndex index_;
  double eta_;
  std::vector<std::pair<std::size_t, std::size_t>> end_columns_;  // (column, bytes per row) of the episode-end fields
  std::vector<char> kinds_;                                        // their numpy kinds
  // Scratch, reused under mutex_.
  std::vector<std::uint8_t> ends_;
};

}  // namespace replay_buffer::bindings
