// NativeBuffer: the Python face of every native buffer type (declaration; one file per concept:
// buffer_config.cpp parses the options, buffer_io.cpp adds and samples, buffer_state.cpp carries stats
// and state, buffer_engine.cpp builds the engines, buffer_conversion.cpp converts arguments, buffer.cpp
// registers the class and its fast-call plumbing).
//
// Each method converts and validates all its arguments while holding the GIL, then releases the GIL
// for the native work. That is safe because (1) the converted inputs are owned by a Columns object on
// this frame, so no Python object we read from can be freed meanwhile, (2) outputs are fresh arrays
// no other thread can see yet (or out= arrays the caller lent us for the call), and (3) the engines
// never call back into Python and synchronize among themselves (see core/buffer_interface.hpp).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "replay_buffer/core/buffer_interface.hpp"
#include "replay_buffer/dedup/dedup_buffer.hpp"
#include "array_pool.hpp"
#include "buffer_conversion.hpp"
#include "codecs.hpp"
#include "schema.hpp"
#include "sequences.hpp"

namespace replay_buffer::bindings {

class NativeBuffer {
 public:
  NativeBuffer(py::ssize_t capacity, const std::string& buffer_type, py::object schema, py::object seed, double alpha, double beta,
               double eps, const std::string& sampling, const std::string& on_full, bool collect_stats, const std::string& next_state,
               std::optional<py::ssize_t> frame_stack_axis, std::optional<std::string> storage_dir, bool prefault, py::object compress,
               double sequence_priority_eta);
  // add(*fields, priority=None, **fields): one transition.
  void add(const CallArguments& call);
  // add_batch(*columns, priorities=None, **columns): rows along the leading axis, validated whole first.
  void add_batch(const CallArguments& call);
  py::dict sample(py::ssize_t batch_size, std::optional<double> beta, const py::object& out, bool partial, bool masses,
                  std::optional<py::ssize_t> seq_len, std::optional<py::ssize_t> min_len, std::optional<py::ssize_t> period);
  void update_priorities(const py::object& ids, const py::object& priorities, const py::object& mask);
  std::size_t size() const { return engine_ ? engine_->size() : 0; }
  std::size_t capacity() const { return capacity_; }
  const std::string& buffer_type() const { return type_name_; }
  bool collect_stats() const { return collect_stats_; }
  void set_collect_stats(bool enabled);
  py::dict schema() const;
  // The codec of each field that has one; before the schema is known, what compress= asked for.
  py::dict codecs() const;
  py::dict stats() const;
  // Everything needed to rebuild this buffer exactly: configuration, rows (oldest first), counters,
  // random state. Used by pickling; arrays are fresh copies the caller owns. With newest_rows, only
  // the newest rows (at most that many), marked "newest_rows" and "size": a checkpoint increment.
  // stored=True (a compressed buffer): the compressed fields come out as stored, in state["stored"]
  // (see codecs.hpp), not decompressed in state["columns"]: save() and pickling carry them as they are.
  py::dict get_state(bool with_rows, std::optional<std::size_t> newest_rows, bool stored) const;
  // Restores rows and counters from get_state() into this buffer, built with the same configuration.
  // A state without columns but with "rows" adopts the rows already in this buffer's files.
  void set_state(const py::dict& state);
  // add_batch(**columns) for rows whose compressed fields arrive as stored: columns holds the other
  // fields, stored every compressed one as {"lengths", "data"} (compress_rows' form, see codecs.hpp).
  // The stored rows are checked to decode and kept as they are, not recompressed; bad input is a
  // ValueError naming the field, and nothing is added.
  void add_stored_batch(const py::dict& columns, const py::handle& stored, const py::object& priorities, const py::object& streams);
  // File-backed buffers: returns once every row added so far is in the files.
  void sync_storage() const;
  std::optional<std::string> storage_dir() const { return storage_dir_; }

 private:
  void require_prioritized(const char* what) const;
  static Schema infer_from(const CallArguments& call, OptionKeywords& options, bool batched);
  // streams: null or one per row; only dedup buffers use them (elsewhere they are accepted and moot).
  void add_rows(const std::byte* const* sources, std::size_t count, const double* priorities, const std::int64_t* streams);
  static py::handle priority_key();
  static py::handle priorities_key();
  static py::handle stream_key();
  static py::handle streams_key();
  // sample(seq_len=...): sequences of stored rows, shaped (batch_size, seq_len, ...) (sequences.cpp).
  py::dict sample_sequences(py::ssize_t batch_size, std::optional<double> beta, const py::object& out, bool partial, bool masses,
                            std::optional<py::ssize_t> seq_len, std::optional<py::ssize_t> min_len, std::optional<py::ssize_t> period);
  // A fresh array, or the caller's out= array (a dict) after checking that it fits exactly.
  py::array out_array(const py::object& out, py::handle key, const py::dtype& dtype, const std::vector<py::ssize_t>& shape);
  std::unique_ptr<core::ReplayBufferInterface> make_engine(std::vector<std::size_t> row_bytes) const;
  // next_state="dedup": the observation fields, and how frame_stack_axis cuts them into frames.
  std::pair<dedup::ObservationColumns, dedup::FrameLayout> dedup_layout(const Schema& schema) const;
  // The engine over `schema` (dedup, or a plain buffer of the type), for row_bytes (the schema's,
  // plus any columns a decorator adds after them); the dedup buffer, if any, lands in *dedup.
  std::unique_ptr<core::ReplayBufferInterface> make_base(const Schema& schema, std::vector<std::size_t> row_bytes, dedup::DedupBuffer** dedup) const;
  // Checks the codecs and builds the engine; throws (changing nothing) on a bad combination.
  void create_engine(Schema schema);

  BufferType type_;
  std::string type_name_;
  std::size_t capacity_ = 0;
  std::uint64_t seed_ = 0;
  double alpha_, beta_, eps_;
  prioritization::SamplingMode sampling_;
  core::OverflowPolicy on_full_;
  bool collect_stats_;
  NextState next_state_;
  std::optional<py::ssize_t> frame_stack_axis_;
  std::optional<std::string> storage_dir_;
  bool prefault_;
  double sequence_priority_eta_ = 0.9;
  Schema schema_;
  std::unique_ptr<core::ReplayBufferInterface> engine_;  // created with the schema (given, or inferred at the first add)
  dedup::DedupBuffer* dedup_ = nullptr;                  // engine_ itself or its inner buffer, when observations are deduplicated
  std::vector<std::pair<std::string, compression::Codec>> compress_;  // compress=, applied when the schema is known
  bool compressed_ = false;                              // engine_ is a CompressedBuffer
  std::unique_ptr<SequenceSupport> sequences_;           // uniform/prioritized without codecs: stream links of the rows, for seq_len
  std::shared_ptr<ArrayPool> outputs_ = std::make_shared<ArrayPool>();  // memory of large sample() arrays
};

}  // namespace replay_buffer::bindings
