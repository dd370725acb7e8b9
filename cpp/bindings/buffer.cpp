// NativeReplayBuffer: the Python face of every native buffer type.
//
// Each method converts and validates all its arguments while holding the GIL, then releases the GIL
// for the native work. That is safe because (1) the converted inputs are owned by a Columns object on
// this frame, so no Python object we read from can be freed meanwhile, (2) outputs are fresh arrays
// no other thread can see yet (or out= arrays the caller lent us for the call), and (3) the engines
// never call back into Python and synchronize among themselves (see core/buffer_interface.hpp).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>

#include "replay_buffer/concurrency/seqlock_ring_buffer.hpp"
#include "replay_buffer/core/fifo_buffer.hpp"
#include "replay_buffer/core/ring_buffer.hpp"
#include "replay_buffer/prioritization/prioritized_ring.hpp"
#include "replay_buffer/dedup/dedup_buffer.hpp"
#include "array_pool.hpp"
#include "codecs.hpp"
#include "gil.hpp"
#include "schema.hpp"
#include "sequences.hpp"

namespace replay_buffer::bindings {

namespace {

enum class BufferType { kFifo, kUniform, kPrioritized, kLockFree };

BufferType parse_buffer_type(const std::string& name) {
  if (name == "fifo") return BufferType::kFifo;
  if (name == "uniform") return BufferType::kUniform;
  if (name == "prioritized") return BufferType::kPrioritized;
  if (name == "lockfree") return BufferType::kLockFree;
  throw py::value_error("buffer_type must be one of 'fifo', 'uniform', 'prioritized', 'lockfree'; got '" + name + "'");
}

double check_exponent(const char* name, double value) {
  if (!std::isfinite(value) || value < 0.0) throw py::value_error(std::string(name) + " must be a finite number >= 0, got " + std::to_string(value));
  return value;
}

// Priorities as a float64 vector of `count` finite values >= 0, or a ValueError naming `name`.
std::vector<double> convert_priorities(py::handle value, std::size_t count, const char* name) {
  py::array_t<double, py::array::c_style | py::array::forcecast> array;
  try {
    array = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(value);
  } catch (py::error_already_set&) {
  }
  if (!array) throw py::type_error(std::string(name) + " must be an array of numbers");
  if (array.ndim() > 1 || static_cast<std::size_t>(array.size()) != count) {
    throw py::value_error(std::string(name) + ": expected " + std::to_string(count) + " values, got shape " +
                          std::string(py::str(py::tuple(py::cast(std::vector<py::ssize_t>(array.shape(), array.shape() + array.ndim()))))));
  }
  std::vector<double> priorities(array.data(), array.data() + count);
  for (std::size_t i = 0; i < count; ++i) {
    if (!std::isfinite(priorities[i]) || priorities[i] < 0.0) {
      throw py::value_error(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(priorities[i]) + ": priorities must be finite and >= 0");
    }
  }
  return priorities;
}

py::tuple shape_tuple(const std::vector<py::ssize_t>& shape) { return py::tuple(py::cast(shape)); }

std::int64_t convert_stream(PyObject* value, const char* name) {
  // An ndarray passes PyIndex_Check whatever its dtype and size; its __index__ may still refuse.
  py::object index;
  if (!PyBool_Check(value) && PyIndex_Check(value)) index = py::reinterpret_steal<py::object>(PyNumber_Index(value));
  if (!index) {
    PyErr_Clear();
    throw py::type_error(std::string(name) + " must be an int (a stream id), got " + std::string(py::str(py::type::of(py::handle(value)))));
  }
  int overflow = 0;
  const long long stream = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (overflow != 0) throw py::value_error(std::string(name) + " must fit in int64");
  return stream;
}

// streams= of add_batch: one int for every row, or an integer array of one stream id per row.
std::vector<std::int64_t> convert_streams(py::handle value, std::size_t rows) {
  if (!py::isinstance<py::array>(value) && PyIndex_Check(value.ptr())) return std::vector<std::int64_t>(rows, convert_stream(value.ptr(), "streams"));
  py::array array = py::array::ensure(value);
  if (!array || (array.dtype().kind() != 'i' && array.dtype().kind() != 'u')) {
    throw py::type_error("streams must be an int or an integer array of one stream id per row, got " +
                         std::string(array ? std::string(py::str(array.dtype())) : std::string(py::str(py::type::of(value)))));
  }
  if (array.ndim() != 1 || static_cast<std::size_t>(array.size()) != rows) {
    throw py::value_error("streams: expected " + std::to_string(rows) + " stream ids, got shape " +
                          std::string(py::str(py::tuple(py::cast(std::vector<py::ssize_t>(array.shape(), array.shape() + array.ndim()))))));
  }
  auto ids = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(array);
  return std::vector<std::int64_t>(ids.data(), ids.data() + rows);
}

// The counters of a buffer state, by their key in get_state().
constexpr std::pair<const char*, std::uint64_t core::BufferCounters::*> kCounterFields[] = {
    {"total_adds", &core::BufferCounters::total_adds},
    {"samples", &core::BufferCounters::samples},
    {"sample_calls", &core::BufferCounters::sample_calls},
    {"evictions", &core::BufferCounters::evictions},
    {"rejected", &core::BufferCounters::rejected},
    {"priority_updates", &core::BufferCounters::priority_updates},
    {"stale_priority_updates", &core::BufferCounters::stale_priority_updates},
};



}  // namespace

class NativeBuffer;

namespace {

// The buffer inside a Python object, or a TypeError if its __init__ never completed (pybind11 would
// otherwise hand methods a null object: a crash, e.g. when a traceback reprs a half-built buffer).
NativeBuffer& self_of(PyObject* self);

// Binds a member function through self_of, so no method can run on an unconstructed buffer.
template <auto Method>
struct Guarded;
template <class R, class... Args, R (NativeBuffer::*Method)(Args...)>
struct Guarded<Method> {
  static R call(py::handle self, Args... args) { return (self_of(self.ptr()).*Method)(std::forward<Args>(args)...); }
};
template <class R, class... Args, R (NativeBuffer::*Method)(Args...) const>
struct Guarded<Method> {
  static R call(py::handle self, Args... args) { return (self_of(self.ptr()).*Method)(std::forward<Args>(args)...); }
};

}  // namespace

class NativeBuffer {
 public:
  NativeBuffer(py::ssize_t capacity, const std::string& buffer_type, py::object schema, py::object seed, double alpha, double beta,
               double eps, const std::string& sampling, const std::string& on_full, bool collect_stats, const std::string& next_state,
               std::optional<py::ssize_t> frame_stack_axis, std::optional<std::string> storage_dir, bool prefault, py::object compress,
               double sequence_priority_eta)
      : type_(parse_buffer_type(buffer_type)), type_name_(buffer_type), alpha_(check_exponent("alpha", alpha)),
        beta_(check_exponent("beta", beta)), eps_(check_exponent("eps", eps)), sampling_(sampling), on_full_(on_full),
        collect_stats_(collect_stats), next_state_(next_state), frame_stack_axis_(frame_stack_axis), storage_dir_(storage_dir),
        prefault_(prefault), compress_(parse_compress(compress)) {
    if (!(sequence_priority_eta >= 0.0 && sequence_priority_eta <= 1.0)) {
      throw py::value_error("sequence_priority_eta must be in [0, 1], got " + std::to_string(sequence_priority_eta));
    }
    sequence_priority_eta_ = sequence_priority_eta;
    if (storage_dir && next_state == "dedup") throw py::value_error("storage_dir does not combine with next_state='dedup' (frames live in memory)");
    if (next_state != "store" && next_state != "dedup") throw py::value_error("next_state must be 'store' or 'dedup', got '" + next_state + "'");
    if (frame_stack_axis && next_state != "dedup") {
      throw py::value_error("frame_stack_axis needs next_state='dedup' (frames are shared between state and next_state)");
    }
    if (capacity <= 0) throw py::value_error("capacity must be > 0, got " + std::to_string(capacity));
    capacity_ = static_cast<std::size_t>(capacity);
    if (sampling != "stratified" && sampling != "proportional") {
      throw py::value_error("sampling must be 'stratified' or 'proportional', got '" + sampling + "'");
    }
    if (on_full != "error" && on_full != "evict") throw py::value_error("on_full must be 'error' or 'evict', got '" + on_full + "'");
    if (seed.is_none()) {
      seed_ = (static_cast<std::uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
    } else {
      if (!PyIndex_Check(seed.ptr())) throw py::type_error("seed must be an int or None");
      const py::int_ value(seed);
      if (value < py::int_(0) || value > py::int_(std::numeric_limits<std::uint64_t>::max())) {
        throw py::value_error("seed must be in [0, 2**64), got " + std::string(py::str(value)));
      }
      seed_ = value.cast<std::uint64_t>();
    }
    if (!schema.is_none()) create_engine(parse_schema(schema));
  }

  // add(*fields, priority=None, **fields): one transition.
  void add(const CallArguments& call) {
    OptionKeywords options{{priority_key(), stream_key()}};
    Schema inferred;
    if (!engine_) inferred = infer_from(call, options, false);
    const Schema& fields = engine_ ? schema_ : inferred;
    Columns columns(fields.size());
    std::array<PyObject*, Columns::kInline> inline_values;
    std::vector<PyObject*> heap_values(fields.size() > Columns::kInline ? fields.size() : 0);
    PyObject** values = fields.size() > Columns::kInline ? heap_values.data() : inline_values.data();
    match_fields(fields, call, options, values);
    for (std::size_t i = 0; i < fields.size(); ++i) convert_value(fields[i], values[i], false, columns, i);
    double priority_value = 0.0;
    const double* priority = nullptr;
    if (PyObject* priority_arg = options.values[0]; priority_arg != nullptr && priority_arg != Py_None) {
      require_prioritized("priority");
      priority_value = convert_priorities(priority_arg, 1, "priority")[0];
      priority = &priority_value;
    }
    PyObject* stream_arg = options.values[1];
    const std::int64_t stream = stream_arg != nullptr && stream_arg != Py_None ? convert_stream(stream_arg, "stream") : 0;
    if (!engine_) create_engine(std::move(inferred));
    // Releasing the GIL costs ~80 ns, several times a single-row copy under the buffer's mutex, so
    // only the lock-free buffer (built for many threads adding at once) and the dedup buffer (whose
    // rows are whole observations) release it for one row.
    ReleaseGil release(type_ == BufferType::kLockFree || dedup_ != nullptr || compressed_);
    add_rows(columns.pointers(), 1, priority, &stream);
  }

  // add_batch(*columns, priorities=None, **columns): rows along the leading axis, validated whole first.
  void add_batch(const CallArguments& call) {
    OptionKeywords options{{priorities_key(), streams_key()}};
    Schema inferred;
    if (!engine_) inferred = infer_from(call, options, true);
    const Schema& fields = engine_ ? schema_ : inferred;
    Columns columns(fields.size());
    std::vector<PyObject*> values(fields.size());
    match_fields(fields, call, options, values.data());
    std::size_t rows = 0;
    for (std::size_t i = 0; i < fields.size(); ++i) {
      const std::size_t n = convert_value(fields[i], values[i], true, columns, i);
      if (i == 0) {
        rows = n;
      } else if (n != rows) {
        throw py::value_error("batch columns have different lengths: '" + fields[0].name + "' has " + std::to_string(rows) +
                              " rows but '" + fields[i].name + "' has " + std::to_string(n));
      }
    }
    std::vector<double> priorities;
    if (PyObject* priorities_arg = options.values[0]; priorities_arg != nullptr && priorities_arg != Py_None) {
      require_prioritized("priorities");
      priorities = convert_priorities(priorities_arg, rows, "priorities");
    }
    std::vector<std::int64_t> streams;
    if (options.values[1] != nullptr && options.values[1] != Py_None) streams = convert_streams(options.values[1], rows);
    if (!engine_) create_engine(std::move(inferred));
    if (rows == 0) return;
    ReleaseGil release;
    add_rows(columns.pointers(), rows, priorities.empty() ? nullptr : priorities.data(), streams.empty() ? nullptr : streams.data());
  }

  py::dict sample(py::ssize_t batch_size, std::optional<double> beta, const py::object& out, bool partial, bool masses,
                  std::optional<py::ssize_t> seq_len, std::optional<py::ssize_t> min_len, std::optional<py::ssize_t> period) {
    if (batch_size <= 0) throw py::value_error("batch_size must be > 0, got " + std::to_string(batch_size));
    if (seq_len || min_len || period) return sample_sequences(batch_size, beta, out, partial, masses, seq_len, min_len, period);
    // Uniform, prioritized and lock-free sampling is with replacement: any batch_size >= 1 (as numpy,
    // cpprb, TorchRL, RLlib and Reverb allow). A fifo read keeps its queue contract (checked by the engine).
    if (!engine_ || engine_->size() == 0) throw py::value_error("cannot sample from an empty buffer");
    const auto n = static_cast<std::size_t>(batch_size);
    core::SampleRequest request;
    request.batch_size = n;
    request.allow_partial = partial;
    request.beta = beta ? check_exponent("beta", *beta) : beta_;

    py::dict result;
    std::vector<std::byte*> destinations(schema_.size());
    for (std::size_t i = 0; i < schema_.size(); ++i) {
      std::vector<py::ssize_t> shape = schema_[i].shape;
      shape.insert(shape.begin(), batch_size);
      py::array array = out_array(out, schema_[i].key, schema_[i].dtype, shape);
      destinations[i] = static_cast<std::byte*>(array.mutable_data());
      result[schema_[i].key] = array;
    }
    if (type_ == BufferType::kPrioritized) {
      static const py::handle weights_key = interned("weights"), ids_key = interned("ids"), probabilities_key = interned("probabilities");
      py::array weights = out_array(out, weights_key, py::dtype::of<float>(), {batch_size});
      py::array ids = out_array(out, ids_key, py::dtype::of<std::int64_t>(), {batch_size});
      py::array probabilities = out_array(out, probabilities_key, py::dtype::of<double>(), {batch_size});
      request.weights = static_cast<float*>(weights.mutable_data());
      request.ids = static_cast<std::int64_t*>(ids.mutable_data());
      request.probabilities = static_cast<double*>(probabilities.mutable_data());
      result[weights_key] = weights;
      result[ids_key] = ids;
      result[probabilities_key] = probabilities;
      if (masses) {  // p_i^alpha as read under the same lock as the draw: for callers that renormalize over shards
        static const py::handle masses_key = interned("masses");
        py::array mass_array = out_array(out, masses_key, py::dtype::of<double>(), {batch_size});
        request.masses = static_cast<double*>(mass_array.mutable_data());
        result[masses_key] = mass_array;
      }
    }
    std::size_t produced = 0;
    {
      ReleaseGil release;
      produced = engine_->sample(request, destinations.data());
    }
    if (produced == n) return result;
    py::dict partial_result;  // a partial FIFO read: hand back only the rows read
    for (auto item : result) partial_result[item.first] = item.second[py::slice(0, static_cast<py::ssize_t>(produced), 1)];
    return partial_result;
  }

  void update_priorities(const py::object& ids, const py::object& priorities, const py::object& mask) {
    require_prioritized("update_priorities");
    py::array id_array = py::array::ensure(ids);
    if (!id_array || (id_array.dtype().kind() != 'i' && id_array.dtype().kind() != 'u')) {
      throw py::type_error("ids must be an integer array (the \"ids\" of a sample), got " +
                           std::string(id_array ? std::string(py::str(id_array.dtype())) : std::string(py::str(py::type::of(ids)))));
    }
    if (id_array.ndim() != 1) throw py::value_error("ids must be one-dimensional, got " + std::to_string(id_array.ndim()) + " dimensions");
    const auto count = static_cast<std::size_t>(id_array.size());
    auto id_values = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(id_array);
    if (!engine_) throw py::value_error("ids[0] was never issued by this buffer (it is empty)");
    // (n, seq_len) per-step errors of a sequence sample are mixed into one priority per sequence.
    const py::array as_array = py::array::ensure(priorities);
    if (!as_array) PyErr_Clear();
    const bool per_step = sequences_ != nullptr && (!mask.is_none() || (as_array && as_array.ndim() == 2));
    if (!mask.is_none() && sequences_ == nullptr) throw py::value_error("mask is for the per-step priorities of a sequence sample");
    const auto priority_values =
        per_step ? sequences_->mix(id_values.data(), count, priorities, mask) : convert_priorities(priorities, count, "priorities");
    ReleaseGil release;
    engine_->update_priorities(id_values.data(), priority_values.data(), count);
  }

  std::size_t size() const { return engine_ ? engine_->size() : 0; }
  std::size_t capacity() const { return capacity_; }
  const std::string& buffer_type() const { return type_name_; }
  bool collect_stats() const { return collect_stats_; }
  void set_collect_stats(bool enabled) {
    collect_stats_ = enabled;
    if (engine_) engine_->set_monitoring(enabled);
  }

  py::dict schema() const {
    py::dict result;
    for (const Field& field : schema_) result[field.name.c_str()] = py::make_tuple(shape_tuple(field.shape), field.dtype);
    return result;
  }

  // The codec of each field that has one; before the schema is known, what compress= asked for.
  py::dict codecs() const {
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

  py::dict stats() const {
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
    if (engine_) add_compression_stats(d, *engine_, schema_, s.size);
    d["stats_enabled"] = collect_stats_;
    d["add_p50_ns"] = s.add_p50_ns;
    d["add_p99_ns"] = s.add_p99_ns;
    d["sample_p50_ns"] = s.sample_p50_ns;
    d["sample_p99_ns"] = s.sample_p99_ns;
    if (next_state_ == "dedup") {
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
  py::dict get_state(bool with_rows, std::optional<std::size_t> newest_rows, bool stored) const {
    if (newest_rows && !with_rows) throw py::value_error("newest_rows needs with_rows=True");
    py::dict state;
    state["format"] = 1;
    state["capacity"] = capacity_;
    state["buffer_type"] = type_name_;
    state["seed"] = seed_;
    state["alpha"] = alpha_;
    state["beta"] = beta_;
    state["eps"] = eps_;
    state["sampling"] = sampling_;
    state["on_full"] = on_full_;
    state["collect_stats"] = collect_stats_;
    state["next_state"] = next_state_;
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
      if (as_stored && field.codec.enabled()) {
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
  void set_state(const py::dict& state) {
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
        if (stored && schema_[i].codec.enabled()) {
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
    if (stored) {
      import_stored(*engine_, s, converted.pointers(), stored_rows);
      return;
    }
    py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> streams;  // (default-constructed: an empty array, not null)
    const bool with_streams = sequences_ != nullptr && state.contains("streams");
    if (with_streams) {
      streams = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(state["streams"]);
      if (!streams || static_cast<std::size_t>(streams.size()) != rows) {
        throw py::value_error("state 'streams' must hold one stream id per row (" + std::to_string(rows) + ")");
      }
    }
    ReleaseGil release;
    engine_->import_state(s, in_place ? nullptr : converted.pointers(), rows);
    if (sequences_ != nullptr) {
      std::vector<std::size_t> row_bytes;
      for (const Field& field : schema_) row_bytes.push_back(field.row_bytes);
      sequences_->import_rows(*engine_, in_place ? nullptr : converted.pointers(), rows, with_streams ? streams.data() : nullptr, row_bytes);
    }
  }

  // File-backed buffers: returns once every row added so far is in the files.
  void sync_storage() const {
    if (!engine_) return;
    ReleaseGil release;
    engine_->sync_storage();
  }

  std::optional<std::string> storage_dir() const { return storage_dir_; }

 private:
  void require_prioritized(const char* what) const {
    if (type_ != BufferType::kPrioritized) {
      throw py::value_error(std::string(what) + " is only supported by buffer_type='prioritized' (this buffer is '" + type_name_ + "')");
    }
  }

  static Schema infer_from(const CallArguments& call, OptionKeywords& options, bool batched) {
    std::vector<std::string> names;
    std::vector<py::handle> values;
    names_and_values(call, options, names, values);
    return infer_schema(names, values, batched);
  }

  // streams: null or one per row; only dedup buffers use them (elsewhere they are accepted and moot).
  void add_rows(const std::byte* const* sources, std::size_t count, const double* priorities, const std::int64_t* streams) {
    if (sequences_ != nullptr) {
      sequences_->add(
          [this](const std::byte* const* rows, std::size_t n, const double* p, const std::int64_t* s) {
            engine_->add_with_streams(rows, n, p, s);  // (dedup links a row to its stream's previous one)
          },
          sources, count, priorities, streams);
    } else if (streams != nullptr) {
      engine_->add_with_streams(sources, count, priorities, streams);
    } else {
      engine_->add(sources, count, priorities);
    }
  }

  static py::handle priority_key() {
    static const py::handle key = interned("priority");
    return key;
  }
  static py::handle priorities_key() {
    static const py::handle key = interned("priorities");
    return key;
  }
  static py::handle stream_key() {
    static const py::handle key = interned("stream");
    return key;
  }
  static py::handle streams_key() {
    static const py::handle key = interned("streams");
    return key;
  }

  // sample(seq_len=...): sequences of stored rows, shaped (batch_size, seq_len, ...) (sequences.cpp).
  py::dict sample_sequences(py::ssize_t batch_size, std::optional<double> beta, const py::object& out, bool partial, bool masses,
                            std::optional<py::ssize_t> seq_len, std::optional<py::ssize_t> min_len, std::optional<py::ssize_t> period) {
    if (!seq_len) throw py::value_error("min_len and period need seq_len");
    if (sequences_ == nullptr && (type_ == BufferType::kFifo || type_ == BufferType::kLockFree)) {
      throw py::value_error("seq_len is supported by buffer_type 'uniform' and 'prioritized' (this buffer is '" + type_name_ + "')");
    }
    if (sequences_ == nullptr && compressed_) {
      throw py::value_error("seq_len is not supported on a buffer with compressed fields yet (sample transitions, or store the fields without a codec)");
    }
    if (!out.is_none()) throw py::value_error("out is not supported with seq_len");
    if (partial) throw py::value_error("partial is for fifo buffers, not with seq_len");
    if (!engine_ || engine_->size() == 0) throw py::value_error("cannot sample from an empty buffer");
    return sequences_->sample(*engine_, schema_, *outputs_, type_ == BufferType::kPrioritized, batch_size, *seq_len, min_len, period,
                              beta ? check_exponent("beta", *beta) : beta_, masses);
  }

  // A fresh array, or the caller's out= array (a dict) after checking that it fits exactly.
  py::array out_array(const py::object& out, py::handle key, const py::dtype& dtype, const std::vector<py::ssize_t>& shape) {
    if (out.is_none()) return outputs_->make(dtype, shape);
    if (!PyDict_Check(out.ptr())) throw py::type_error("out must be a dict of numpy arrays");
    PyObject* given = PyDict_GetItemWithError(out.ptr(), key.ptr());  // borrowed
    if (given == nullptr) {
      if (PyErr_Occurred()) throw py::error_already_set();
      return outputs_->make(dtype, shape);
    }
    const std::string name = py::reinterpret_borrow<py::str>(key);
    if (!py::isinstance<py::array>(given)) throw py::type_error("out['" + name + "'] must be a numpy array");
    auto array = py::reinterpret_borrow<py::array>(given);
    const std::vector<py::ssize_t> actual(array.shape(), array.shape() + array.ndim());
    if (!array.dtype().equal(dtype) || actual != shape || !(array.flags() & py::array::c_style) || !array.writeable()) {
      throw py::value_error("out['" + name + "'] must be a writeable C-contiguous " + std::string(py::str(dtype)) + " array of shape " +
                            std::string(py::str(shape_tuple(shape))) + ", got " + std::string(py::str(array.dtype())) + " " +
                            std::string(py::str(shape_tuple(actual))));
    }
    return array;
  }

  std::unique_ptr<core::ReplayBufferInterface> make_engine(std::vector<std::size_t> row_bytes) const {
    switch (type_) {
      case BufferType::kFifo:
        return std::make_unique<core::FifoBuffer>(capacity_, std::move(row_bytes),
                                                  on_full_ == "evict" ? core::OverflowPolicy::kEvictOldest : core::OverflowPolicy::kReject);
      case BufferType::kUniform:
        return std::make_unique<core::UniformBuffer>(capacity_, std::move(row_bytes), seed_);
      case BufferType::kPrioritized:
        return std::make_unique<core::PrioritizedBuffer>(
            capacity_, std::move(row_bytes), seed_,
            prioritization::PriorityOptions{alpha_, eps_, sampling_ == "stratified" ? prioritization::SamplingMode::kStratified
                                                                                       : prioritization::SamplingMode::kProportional});
      case BufferType::kLockFree:
        return std::make_unique<concurrency::SeqlockRingBuffer>(capacity_, std::move(row_bytes), seed_);
    }
    throw std::logic_error("unknown buffer type");
  }

  // next_state="dedup": the observation fields, and how frame_stack_axis cuts them into frames.
  std::pair<dedup::ObservationColumns, dedup::FrameLayout> dedup_layout(const Schema& schema) const {
    std::optional<std::size_t> state, next;
    std::string known;
    for (std::size_t i = 0; i < schema.size(); ++i) {
      if (schema[i].name == "state") state = i;
      if (schema[i].name == "next_state") next = i;
      known += (known.empty() ? "" : ", ") + schema[i].name;
    }
    if (!state || !next) throw py::value_error("next_state='dedup' needs fields 'state' and 'next_state' (the buffer's fields are: " + known + ")");
    const Field& observation = schema[*state];
    const Field& next_observation = schema[*next];
    if (observation.shape != next_observation.shape || !observation.dtype.equal(next_observation.dtype)) {
      throw py::value_error("next_state='dedup' needs 'state' and 'next_state' of one shape and dtype, got " + observation.shape_text() + " " +
                            std::string(py::str(observation.dtype)) + " and " + next_observation.shape_text() + " " +
                            std::string(py::str(next_observation.dtype)));
    }
    std::size_t outer = 1, frames = 1, inner = observation.row_bytes;
    if (frame_stack_axis_) {
      const auto ndim = static_cast<py::ssize_t>(observation.shape.size());
      const py::ssize_t axis = *frame_stack_axis_ < 0 ? *frame_stack_axis_ + ndim : *frame_stack_axis_;
      if (axis < 0 || axis >= ndim) {
        throw py::value_error("frame_stack_axis " + std::to_string(*frame_stack_axis_) + " is out of range for observations of shape " +
                              observation.shape_text());
      }
      frames = static_cast<std::size_t>(observation.shape[axis]);
      for (py::ssize_t d = 0; d < axis; ++d) outer *= static_cast<std::size_t>(observation.shape[d]);
      inner = observation.row_bytes / outer / frames;
    }
    return {dedup::ObservationColumns{*state, *next}, dedup::FrameLayout(outer, frames, inner)};
  }

  // The engine over `schema` (dedup, or a plain buffer of the type), for row_bytes (the schema's,
  // plus any columns a decorator adds after them); the dedup buffer, if any, lands in *dedup.
  std::unique_ptr<core::ReplayBufferInterface> make_base(const Schema& schema, std::vector<std::size_t> row_bytes, dedup::DedupBuffer** dedup) const {
    if (next_state_ != "dedup") return make_engine(std::move(row_bytes));
    auto [observations, layout] = dedup_layout(schema);
    auto buffer = std::make_unique<dedup::DedupBuffer>(capacity_, row_bytes, observations, std::move(layout),
                                                       [this](std::vector<std::size_t> inner) { return make_engine(std::move(inner)); });
    *dedup = buffer.get();
    return buffer;
  }

  // Checks the codecs and builds the engine; throws (changing nothing) on a bad combination.
  void create_engine(Schema schema) {
    const auto codecs = resolve_codecs(schema, compress_, next_state_ == "dedup", storage_dir_.has_value());
    for (std::size_t i = 0; i < schema.size(); ++i) schema[i].codec = codecs[i];
    std::vector<std::size_t> row_bytes;
    for (const Field& field : schema) row_bytes.push_back(field.row_bytes);
    std::unique_ptr<core::ReplayBufferInterface> engine;
    dedup::DedupBuffer* dedup = nullptr;
    const bool compressed = any_codec(codecs);
    if (compressed) {
      Schema plain;  // the fields the inner buffer keeps as they are (then a sequence column)
      for (const Field& field : schema) {
        if (!field.codec.enabled()) plain.push_back(field);
      }
      engine = make_compressed(capacity_, row_bytes, codecs,
                               [&](std::vector<std::size_t> inner) { return make_base(plain, std::move(inner), &dedup); });
    } else {
      engine = make_base(schema, std::move(row_bytes), &dedup);
    }
    if (storage_dir_ || prefault_) {
      memory::StorageOptions storage{storage_dir_.value_or(""), {}, prefault_};
      if (storage_dir_) {
        for (std::size_t i = 0; i < schema.size(); ++i) storage.column_files.push_back("column-" + std::to_string(i) + ".bin");
      }
      ReleaseGil release;  // prefaulting touches the whole reservation
      engine->configure_storage(storage);
    }
    engine->set_monitoring(collect_stats_);
    // dedup too: it reads rows by id; not over compressed fields (the decorator does not read rows by id yet)
    if ((type_ == BufferType::kUniform || type_ == BufferType::kPrioritized) && !compressed) {
      sequences_ = std::make_unique<SequenceSupport>(capacity_, schema, sequence_priority_eta_);
    }
    schema_ = std::move(schema);
    engine_ = std::move(engine);
    dedup_ = dedup;
    compressed_ = compressed;
  }

  BufferType type_;
  std::string type_name_;
  std::size_t capacity_ = 0;
  std::uint64_t seed_ = 0;
  double alpha_, beta_, eps_;
  std::string sampling_, on_full_;
  bool collect_stats_;
  std::string next_state_;
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

namespace {

NativeBuffer& self_of(PyObject* self) {
  auto* instance = reinterpret_cast<py::detail::instance*>(self);
  auto value_and_holder = instance->get_value_and_holder();
  if (!value_and_holder.holder_constructed()) throw py::type_error("NativeReplayBuffer.__init__ was not called");
  return *value_and_holder.value_ptr<NativeBuffer>();
}

// add and add_batch are the per-transition hot path, so they bypass pybind11's dispatcher (which
// builds an args tuple and a kwargs dict per call) and take CPython's vectorcall arguments as they are.
template <void (NativeBuffer::*Method)(const CallArguments&)>
PyObject* fastcall(PyObject* self, PyObject* const* args, Py_ssize_t nargsf, PyObject* kwnames) {
  try {
    (self_of(self).*Method)(CallArguments{args, PyVectorcall_NARGS(nargsf), kwnames});
    Py_RETURN_NONE;
  } catch (py::error_already_set& error) {
    error.restore();
  } catch (...) {
    py::detail::try_translate_exceptions();
  }
  return nullptr;
}

PyMethodDef kAddMethod = {
    "add", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fastcall<&NativeBuffer::add>)), METH_FASTCALL | METH_KEYWORDS,
    "add(*fields, priority=None, stream=0, **fields)\n\nAppends one transition (positional values in schema order, or by name)."};
PyMethodDef kAddBatchMethod = {
    "add_batch", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fastcall<&NativeBuffer::add_batch>)),
    METH_FASTCALL | METH_KEYWORDS,
    "add_batch(*columns, priorities=None, streams=None, **columns)\n\nAppends rows along the leading axis; validated whole before any is written."};

void add_method(py::handle cls, PyMethodDef* definition) {
  py::object descriptor = py::reinterpret_steal<py::object>(PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(cls.ptr()), definition));
  if (!descriptor) throw py::error_already_set();
  py::setattr(cls, definition->ml_name, descriptor);
}

}  // namespace

void bind_buffer(py::module_& m) {
  auto cls = py::class_<NativeBuffer>(m, "NativeReplayBuffer")
      .def(py::init<py::ssize_t, const std::string&, py::object, py::object, double, double, double, const std::string&, const std::string&, bool,
                    const std::string&, std::optional<py::ssize_t>, std::optional<std::string>, bool, py::object, double>(),
           py::arg("capacity"), py::arg("buffer_type") = "uniform", py::kw_only(), py::arg("schema") = py::none(),
           py::arg("seed") = py::none(), py::arg("alpha") = 0.6, py::arg("beta") = 0.4, py::arg("eps") = 1e-6,
           py::arg("sampling") = "stratified", py::arg("on_full") = "error", py::arg("collect_stats") = true,
           py::arg("next_state") = "store", py::arg("frame_stack_axis") = py::none(), py::arg("storage_dir") = py::none(),
           py::arg("prefault") = false, py::arg("compress") = py::none(), py::arg("sequence_priority_eta") = 0.9)
      .def("sample", &Guarded<&NativeBuffer::sample>::call, py::arg("batch_size"), py::kw_only(), py::arg("beta") = py::none(),
           py::arg("out") = py::none(), py::arg("partial") = false, py::arg("masses") = false, py::arg("seq_len") = py::none(),
           py::arg("min_len") = py::none(), py::arg("period") = py::none())
      .def("update_priorities", &Guarded<&NativeBuffer::update_priorities>::call, py::arg("ids"), py::arg("priorities"), py::kw_only(),
           py::arg("mask") = py::none())
      .def("__len__", &Guarded<&NativeBuffer::size>::call)
      .def_property_readonly("capacity", &Guarded<&NativeBuffer::capacity>::call)
      .def_property_readonly("buffer_type", &Guarded<&NativeBuffer::buffer_type>::call)
      .def_property_readonly("schema", &Guarded<&NativeBuffer::schema>::call)
      .def_property_readonly("codecs", &Guarded<&NativeBuffer::codecs>::call)
      .def_property("collect_stats", &Guarded<&NativeBuffer::collect_stats>::call, &Guarded<&NativeBuffer::set_collect_stats>::call)
      .def("stats", &Guarded<&NativeBuffer::stats>::call)
      .def("_get_state", &Guarded<&NativeBuffer::get_state>::call, py::arg("with_rows") = true, py::arg("newest_rows") = py::none(),
           py::arg("stored") = false)
      .def("_sync_storage", &Guarded<&NativeBuffer::sync_storage>::call)
      .def_property_readonly("storage_dir", &Guarded<&NativeBuffer::storage_dir>::call)
      .def("_set_state", &Guarded<&NativeBuffer::set_state>::call);
  add_method(cls, &kAddMethod);
  add_method(cls, &kAddBatchMethod);
}

}  // namespace replay_buffer::bindings
