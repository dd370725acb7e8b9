// Argument conversion and option parsing for NativeBuffer (see buffer_conversion.hpp).
#include "buffer_conversion.hpp"

#include <cmath>
#include <string>

namespace replay_buffer::bindings {

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

}  // namespace replay_buffer::bindings
