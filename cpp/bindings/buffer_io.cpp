// NativeBuffer's data path: add, add_batch, sample (transitions and sequences), update_priorities.
#include "native_buffer.hpp"

#include <array>

#include "gil.hpp"

namespace replay_buffer::bindings {

// add(*fields, priority=None, **fields): one transition.
void NativeBuffer::add(const CallArguments& call) {
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
void NativeBuffer::add_batch(const CallArguments& call) {
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

py::dict NativeBuffer::sample(py::ssize_t batch_size, std::optional<double> beta, const py::object& out, bool partial, bool masses,
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

void NativeBuffer::update_priorities(const py::object& ids, const py::object& priorities, const py::object& mask) {
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

Schema NativeBuffer::infer_from(const CallArguments& call, OptionKeywords& options, bool batched) {
  std::vector<std::string> names;
  std::vector<py::handle> values;
  names_and_values(call, options, names, values);
  return infer_schema(names, values, batched);
}

// streams: null or one per row; only dedup buffers use them (elsewhere they are accepted and moot).
void NativeBuffer::add_rows(const std::byte* const* sources, std::size_t count, const double* priorities, const std::int64_t* streams) {
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

py::handle NativeBuffer::priority_key() {
  static const py::handle key = interned("priority");
  return key;
}

py::handle NativeBuffer::priorities_key() {
  static const py::handle key = interned("priorities");
  return key;
}

py::handle NativeBuffer::stream_key() {
  static const py::handle key = interned("stream");
  return key;
}

py::handle NativeBuffer::streams_key() {
  static const py::handle key = interned("streams");
  return key;
}

// sample(seq_len=...): sequences of stored rows, shaped (batch_size, seq_len, ...) (sequences.cpp).
py::dict NativeBuffer::sample_sequences(py::ssize_t batch_size, std::optional<double> beta, const py::object& out, bool partial, bool masses,
                          std::optional<py::ssize_t> seq_len, std::optional<py::ssize_t> min_len, std::optional<py::ssize_t> period) {
  if (!seq_len) throw py::value_error("min_len and period need seq_len");
  if (sequences_ == nullptr && (type_ == BufferType::kFifo || type_ == BufferType::kLockFree)) {
    throw py::value_error("seq_len is supported by buffer_type 'uniform' and 'prioritized' (this buffer is '" + type_name_ + "')");
  }
  if (!out.is_none()) throw py::value_error("out is not supported with seq_len");
  if (partial) throw py::value_error("partial is for fifo buffers, not with seq_len");
  if (!engine_ || engine_->size() == 0) throw py::value_error("cannot sample from an empty buffer");
  return sequences_->sample(*engine_, schema_, *outputs_, type_ == BufferType::kPrioritized, batch_size, *seq_len, min_len, period,
                            beta ? check_exponent("beta", *beta) : beta_, masses);
}

// A fresh array, or the caller's out= array (a dict) after checking that it fits exactly.
py::array NativeBuffer::out_array(const py::object& out, py::handle key, const py::dtype& dtype, const std::vector<py::ssize_t>& shape) {
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

}  // namespace replay_buffer::bindings
