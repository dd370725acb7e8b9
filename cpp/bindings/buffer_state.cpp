// NativeBuffer's stats and state: stats(), schema/codecs, _get_state/_set_state (pickling, save, checkpoints).
#include "native_buffer.hpp"

#include <algorithm>

#include "gil.hpp"

namespace replay_buffer::bindings {

void NativeBuffer::set_collect_stats(bool enabled) {
  collect_stats_ = enabled;
  if (engine_) engine_->set_collect_stats(enabled);
}

py::dict NativeBuffer::schema() const {
  py::dict result;
  for (const Field& field : schema_) result[field.name.c_str()] = py::make_tuple(shape_tuple(field.shape), field.dtype);
  return result;
}

// The codec of each field that has one; before the schema is known, what compress= asked for.
py::dict NativeBuffer::codecs() const {
  py::dict result;
  for (const Field& field : schema_) {
    if (field.codec.enabled()) result[field.name.c_str()] = field.codec.name();
  }
  if (schema_.empty()) {
    for (const auto& [name, codec] : compress_) {
      if (codec.enabled()) result[name.c_str()] = codec.name();
    }
  }
  return result;
}

py::dict NativeBuffer::stats() const {
  core::BufferStats s;
  if (engine_) {
    s = engine_->stats();
  } else {
    s.capacity = capacity_;
  }
  py::dict d;
  d["buffer_type"] = type_name_;
  d["size"] = s.size;
  d["capacity"] = s.capacity;
  d["adds"] = s.total_adds;
  d["samples"] = s.samples;
  d["sample_calls"] = s.sample_calls;
  d["evictions"] = s.evictions;
  d["rejected"] = s.rejected;
  d["bytes_held"] = s.bytes_held;
  d["bytes_reserved"] = s.bytes_reserved;
  std::size_t row_bytes = 0;
  for (const Field& field : schema_) row_bytes += field.row_bytes;
  d["bytes_raw"] = s.size * row_bytes;  // the rows held as given: bytes_held is what they take
  if (engine_) add_compression_stats(d, *engine_, dedup_, schema_, s.size);
  d["collect_stats"] = collect_stats_;
  d["stats_enabled"] = collect_stats_;  // the former name of collect_stats, kept for readers of old dashboards
  d["add_p50_ns"] = s.add_p50_ns;
  d["add_p99_ns"] = s.add_p99_ns;
  d["sample_p50_ns"] = s.sample_p50_ns;
  d["sample_p99_ns"] = s.sample_p99_ns;
  if (next_state_ == NextState::kDedup) {
    d["frames_held"] = s.frames_held;
    d["frame_bytes"] = s.frame_bytes;
  }
  if (type_ == BufferType::kPrioritized) {
    d["priority_updates"] = s.priority_updates;
    d["stale_priority_updates"] = s.stale_priority_updates;
    d["total_priority"] = s.total_priority;
    d["min_priority"] = s.min_priority;
    d["max_priority"] = s.max_priority;
  }
  return d;
}

// Everything needed to rebuild this buffer exactly: configuration, rows (oldest first), counters,
// random state. Used by pickling; arrays are fresh copies the caller owns. With newest_rows, only
// the newest rows (at most that many), marked "newest_rows" and "size": a checkpoint increment.
// stored=True (a compressed buffer): the compressed fields come out as stored, in state["stored"]
// (see codecs.hpp), not decompressed in state["columns"]: save() and pickling carry them as they are.
py::dict NativeBuffer::get_state(bool with_rows, std::optional<std::size_t> newest_rows, bool stored) const {
  if (newest_rows && !with_rows) throw py::value_error("newest_rows needs with_rows=True");
  py::dict state;
  state["format"] = 1;
  state["capacity"] = capacity_;
  state["buffer_type"] = type_name_;
  state["seed"] = seed_;
  state["alpha"] = alpha_;
  state["beta"] = beta_;
  state["eps"] = eps_;
  state["sampling"] = option_name(sampling_, kSamplingNames);
  state["on_full"] = option_name(on_full_, kOnFullNames);
  state["collect_stats"] = collect_stats_;
  state["next_state"] = option_name(next_state_, kNextStateNames);
  state["frame_stack_axis"] = frame_stack_axis_ ? py::object(py::int_(*frame_stack_axis_)) : py::object(py::none());
  state["prefault"] = prefault_;
  state["sequence_priority_eta"] = sequence_priority_eta_;
  py::list fields;
  for (const Field& field : schema_) fields.append(py::make_tuple(field.name, shape_tuple(field.shape), py::str(field.dtype)));
  state["schema"] = fields;
  state["codecs"] = codecs();
  if (!engine_) return state;
  const std::size_t held = engine_->size();
  const std::size_t rows = std::min(newest_rows.value_or(held), held);
  py::dict columns;
  std::vector<std::byte*> destinations;
  const bool as_stored = stored && compressed_ && with_rows;
  for (const Field& field : schema_) {
    if (!with_rows) break;  // file-backed rows stay where they are
    if (as_stored && column_codec(field)) {
      destinations.push_back(nullptr);
      continue;
    }
    std::vector<py::ssize_t> shape = field.shape;
    shape.insert(shape.begin(), static_cast<py::ssize_t>(rows));
    py::array array(field.dtype, shape);
    destinations.push_back(static_cast<std::byte*>(array.mutable_data()));
    columns[field.name.c_str()] = array;
  }
  core::BufferState s;
  if (as_stored) {
    py::dict stored_columns;
    s = export_stored(*engine_, destinations.data(), rows, schema_, stored_columns);
    state["stored"] = stored_columns;
  } else {
    ReleaseGil release;
    // At most `rows`, what the arrays hold, even if an add that had released the GIL lands meanwhile.
    s = engine_->export_state(with_rows ? destinations.data() : nullptr, rows);
  }
  if (newest_rows) {
    state["newest_rows"] = rows;
    state["size"] = held;
  }
  if (with_rows) {
    state["columns"] = columns;
  } else {
    state["rows"] = rows;
    state["first_slot"] = s.first_slot;
  }
  for (const auto& [name, member] : kCounterFields) state[name] = s.counters.*member;
  state["max_priority"] = s.max_priority;
  state["random"] = py::array_t<std::uint64_t>(4, s.random.data());
  state["masses"] = py::array_t<double>(static_cast<py::ssize_t>(s.priorities.size()), s.priorities.data());
  if (dedup_ != nullptr) state["streams"] = py::array_t<std::int64_t>(static_cast<py::ssize_t>(s.streams.size()), s.streams.data());
  if (sequences_ != nullptr) {  // each row's stream, so the sequences survive a restore
    const auto streams = sequences_->export_rows(with_rows ? rows : held).streams;
    state["streams"] = py::array_t<std::int64_t>(static_cast<py::ssize_t>(streams.size()), streams.data());
  }
  return state;
}

// Restores rows and counters from get_state() into this buffer, built with the same configuration.
// A state without columns but with "rows" adopts the rows already in this buffer's files.
void NativeBuffer::set_state(const py::dict& state) {
  const bool in_place = !state.contains("columns") && state.contains("rows");
  if (!state.contains("columns") && !in_place) return;  // the buffer was saved before its first add
  if (in_place && !storage_dir_) throw py::value_error("a state without columns needs a buffer with storage_dir");
  if (!engine_) throw py::value_error("_set_state needs a buffer built with the state's schema");
  Columns converted(schema_.size());
  std::size_t rows = 0;
  const bool stored = state.contains("stored") && !in_place;
  if (stored && !compressed_) throw py::value_error("state holds stored compressed rows but this buffer has no codecs");
  std::optional<std::size_t> plain_rows;
  if (in_place) {
    rows = state["rows"].cast<std::size_t>();
  } else {
    const py::dict columns = state["columns"];
    for (std::size_t i = 0; i < schema_.size(); ++i) {
      if (stored && column_codec(schema_[i])) {
        converted.pointers()[i] = nullptr;
        continue;
      }
      if (!columns.contains(schema_[i].name.c_str())) throw py::value_error("state has no column '" + schema_[i].name + "'");
      rows = convert_value(schema_[i], columns[schema_[i].name.c_str()], true, converted, i);
      if (plain_rows && *plain_rows != rows) throw py::value_error("state columns have different lengths");
      plain_rows = rows;
    }
  }
  StoredRows stored_rows;
  if (stored) {
    stored_rows = parse_stored(state["stored"], schema_, plain_rows);
    rows = stored_rows.rows;
  }
  core::BufferState s;
  if (in_place) s.first_slot = state["first_slot"].cast<std::size_t>();
  for (const auto& [name, member] : kCounterFields) s.counters.*member = state[name].cast<std::uint64_t>();
  s.max_priority = state["max_priority"].cast<double>();
  auto random = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>::ensure(state["random"]);
  if (!random || random.size() != 4) throw py::value_error("state 'random' must hold 4 words");
  std::copy(random.data(), random.data() + 4, s.random.begin());
  auto masses = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(state["masses"]);
  s.priorities.assign(masses.data(), masses.data() + masses.size());
  if (dedup_ != nullptr && state.contains("streams")) {
    auto streams = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(state["streams"]);
    if (!streams) throw py::value_error("state 'streams' must be an integer array");
    s.streams.assign(streams.data(), streams.data() + streams.size());
  }
  py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> streams;  // (default-constructed: an empty array, not null)
  const bool with_streams = sequences_ != nullptr && state.contains("streams");
  if (with_streams) {
    streams = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(state["streams"]);
    if (!streams || static_cast<std::size_t>(streams.size()) != rows) {
      throw py::value_error("state 'streams' must hold one stream id per row (" + std::to_string(rows) + ")");
    }
  }
  if (stored) {
    import_stored(*engine_, s, converted.pointers(), stored_rows, schema_);
  } else {
    ReleaseGil release;
    engine_->import_state(s, in_place ? nullptr : converted.pointers(), rows);
  }
  // The rows' links for sequences. Over stored compressed rows the compressed columns' sources are
  // null: the links read only the episode-end fields, scalars, which never have a codec.
  if (sequences_ != nullptr) {
    ReleaseGil release;
    std::vector<std::size_t> row_bytes;
    for (const Field& field : schema_) row_bytes.push_back(field.row_bytes);
    sequences_->import_rows(*engine_, in_place ? nullptr : converted.pointers(), rows, with_streams ? streams.data() : nullptr, row_bytes);
  }
}

void NativeBuffer::add_stored_batch(const py::dict& columns, const py::handle& stored, const py::object& priorities, const py::object& streams) {
  if (!engine_ || !compressed_) throw py::value_error("rows with stored compressed fields need a buffer with a known schema and codecs on its fields");
  Columns converted(schema_.size());
  std::optional<std::size_t> rows;
  std::size_t plain = 0;
  for (std::size_t i = 0; i < schema_.size(); ++i) {
    if (column_codec(schema_[i])) {
      converted.pointers()[i] = nullptr;  // ignored: the stored rows take their place
      continue;
    }
    ++plain;
    if (!columns.contains(schema_[i].name.c_str())) throw py::value_error("rows with stored compressed fields: no column '" + schema_[i].name + "'");
    const std::size_t n = convert_value(schema_[i], columns[schema_[i].name.c_str()], true, converted, i);
    if (rows && *rows != n) throw py::value_error("batch columns have different lengths: '" + schema_[i].name + "' has " + std::to_string(n) + " rows");
    rows = n;
  }
  if (columns.size() != plain) throw py::value_error("rows with stored compressed fields: columns names a field it should not (a compressed or unknown one)");
  const StoredRows stored_rows = parse_stored(stored, schema_, rows);
  std::vector<double> priority_values;
  if (!priorities.is_none()) {
    require_prioritized("priorities");
    priority_values = convert_priorities(priorities, stored_rows.rows, "priorities");
  }
  std::vector<std::int64_t> stream_values;
  if (!streams.is_none()) stream_values = convert_streams(streams, stored_rows.rows);
  if (stored_rows.rows == 0) return;
  const double* p = priority_values.empty() ? nullptr : priority_values.data();
  const std::int64_t* s = stream_values.empty() ? nullptr : stream_values.data();
  try {
    ReleaseGil release;
    if (sequences_ != nullptr) {  // the episode ends come from the plain fields (scalars, never compressed)
      sequences_->add([&](const std::byte* const* sources, std::size_t, const double* q, const std::int64_t* t) { add_stored(*engine_, sources, stored_rows, q, t); },
                      converted.pointers(), stored_rows.rows, p, s);
    } else {
      add_stored(*engine_, converted.pointers(), stored_rows, p, s);
    }
  } catch (const std::invalid_argument& error) {
    throw_stored_error(error, schema_);
  }
}

// File-backed buffers: returns once every row added so far is in the files.
void NativeBuffer::sync_storage() const {
  if (!engine_) return;
  ReleaseGil release;
  engine_->sync_storage();
}

}  // namespace replay_buffer::bindings
