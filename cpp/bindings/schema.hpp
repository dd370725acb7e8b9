// Fields of a Python-facing buffer, and the conversion of Python values into rows of those fields.
//
// Conversion rules (documented in the package README):
//   - numpy arrays convert to the field's dtype under numpy's "same_kind" casting (float64 -> float32
//     is fine, float -> int is a TypeError); any strides or memory order are accepted (copied as needed);
//   - Python scalars and nested lists convert by value: a bool or int fits any numeric field it is in
//     range of, a float needs a float field;
//   - the shape must match exactly (no broadcasting): a mismatch is a ValueError naming the field.
// Every check happens before anything is written; the converted columns stay alive in the Columns
// object, so the GIL can be released while native code copies from them.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <array>
#include <cstddef>
#include <string>
#include <vector>

namespace replay_buffer::bindings {

namespace py = pybind11;

struct Field {
  std::string name;
  py::dtype dtype;
  std::vector<py::ssize_t> shape;  // per row
  std::size_t row_bytes = 0;
  char kind = 0;                   // numpy kind: 'b', 'i', 'u', 'f'
  int itemsize = 0;

  static Field make(std::string name, py::dtype dtype, std::vector<py::ssize_t> shape);
  std::string shape_text() const;
};

using Schema = std::vector<Field>;

// The field values of one add()/add_batch() call, converted and validated, in schema order.
class Columns {
 public:
  std::size_t rows = 0;
  std::vector<const std::byte*> pointers;  // one per field: `rows` contiguous rows

  void reserve(std::size_t fields);
  // For a scalar converted in place: storage that lives as long as this object.
  std::byte* scalar_slot(std::size_t field_index);
  void keep_alive(py::object owner) { owners_.push_back(std::move(owner)); }

 private:
  std::vector<std::array<std::uint64_t, 2>> scalars_;
  std::vector<py::object> owners_;
};

// Infers a schema from the values of a first add (batched: the leading axis is the batch).
Schema infer_schema(const std::vector<std::string>& names, const std::vector<py::handle>& values, bool batched);

// Parses schema= : a mapping name -> (shape, dtype).
Schema parse_schema(const py::handle& mapping);

// Converts one value for `field`; batched values carry a leading batch axis. Returns the row count.
std::size_t convert_value(const Field& field, py::handle value, bool batched, Columns& columns, std::size_t field_index);

// Orders positional and keyword values by schema, rejecting missing, unknown and duplicate fields.
std::vector<py::handle> match_fields(const Schema& schema, const py::args& args, const py::kwargs& kwargs, const char* priority_key);

// Names for positional values when no schema exists yet: the five transition fields.
std::vector<std::string> default_names(std::size_t count);

}  // namespace replay_buffer::bindings
