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
#include <cstdint>
#include <cstddef>
#include <string>
#include <vector>

#include "replay_buffer/compression/codec_spec.hpp"

namespace replay_buffer::bindings {

namespace py = pybind11;

struct Field {
  std::string name;
  py::str key;                     // interned name: compared by pointer with keyword names and dict keys
  py::dtype dtype;
  std::vector<py::ssize_t> shape;  // per row
  std::size_t row_bytes = 0;
  py::handle scalar_type;          // numpy's scalar type of the dtype (np.float32, ...): a builtin, never freed
  char kind = 0;                   // numpy kind: 'b', 'i', 'u', 'f'
  int itemsize = 0;
  compression::Codec codec;        // how rows are kept (none: as they are); see codecs.hpp
  bool codec_on_frames = false;    // next_state='dedup' observation field: the codec applies to its frames

  static Field make(std::string name, py::dtype dtype, std::vector<py::ssize_t> shape);
  std::string shape_text() const;
};

using Schema = std::vector<Field>;

// The field values of one add()/add_batch() call, converted and validated, in schema order.
// Values already in the right layout are used in place (the caller's arguments outlive the call);
// converted copies are owned here. Up to kInline fields need no heap allocation.
class Columns {
 public:
  static constexpr std::size_t kInline = 8;

  explicit Columns(std::size_t fields) : fields_(fields) {
    if (fields > kInline) {
      heap_pointers_.resize(fields);
      heap_scalars_.resize(fields);
    }
  }
  Columns(const Columns&) = delete;
  Columns& operator=(const Columns&) = delete;

  const std::byte** pointers() { return fields_ > kInline ? heap_pointers_.data() : inline_pointers_.data(); }
  // Storage for a scalar converted in place, living as long as this object.
  std::byte* scalar_slot(std::size_t field_index) {
    auto& slot = fields_ > kInline ? heap_scalars_[field_index] : inline_scalars_[field_index];
    return reinterpret_cast<std::byte*>(slot.data());
  }
  void keep_alive(py::object owner) { owners_.push_back(std::move(owner)); }

 private:
  std::size_t fields_;
  std::array<const std::byte*, kInline> inline_pointers_{};
  std::array<std::array<std::uint64_t, 2>, kInline> inline_scalars_{};
  std::vector<const std::byte*> heap_pointers_;
  std::vector<std::array<std::uint64_t, 2>> heap_scalars_;
  std::vector<py::object> owners_;
};

// Arguments of a vectorcall (METH_FASTCALL | METH_KEYWORDS): borrowed, alive for the whole call.
struct CallArguments {
  PyObject* const* args;
  Py_ssize_t nargs;
  PyObject* kwnames;  // tuple of keyword names (their values follow the positional ones), or null

  Py_ssize_t num_keywords() const { return kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames); }
  PyObject* keyword_name(Py_ssize_t i) const { return PyTuple_GET_ITEM(kwnames, i); }
  PyObject* keyword_value(Py_ssize_t i) const { return args[nargs + i]; }
};

// An interned string that lives as long as the process (a handle: see numpy() in schema.cpp).
py::handle interned(const char* text);

// Keywords of a call that are options, not fields (priority=, stream=): the value of each one given
// lands in its slot of `values` (null when absent).
struct OptionKeywords {
  static constexpr std::size_t kCount = 2;
  std::array<py::handle, kCount> keys;
  std::array<PyObject*, kCount> values{};

  // Stores `value` if `name` is one of the keys; returns whether it was.
  bool take(PyObject* name, PyObject* value);
};

// Infers a schema from the values of a first add (batched: the leading axis is the batch).
Schema infer_schema(const std::vector<std::string>& names, const std::vector<py::handle>& values, bool batched);

// Parses schema= : a mapping name -> (shape, dtype) or (shape, dtype, codec) (codec specs: codecs.hpp).
Schema parse_schema(const py::handle& mapping);

// Converts one value for `field`; batched values carry a leading batch axis. Returns the row count.
std::size_t convert_value(const Field& field, py::handle value, bool batched, Columns& columns, std::size_t field_index);

// Orders positional and keyword values by schema, rejecting missing, unknown and duplicate fields.
// Option keywords are not fields: their values go to `options`.
void match_fields(const Schema& schema, const CallArguments& call, OptionKeywords& options, PyObject** values);

// Field names and values of a first call, before any schema exists (positional ones take the
// transition names state, action, reward, next_state, done).
void names_and_values(const CallArguments& call, OptionKeywords& options, std::vector<std::string>& names,
                      std::vector<py::handle>& values);

// Names for positional values when no schema exists yet: the five transition fields.
std::vector<std::string> default_names(std::size_t count);

}  // namespace replay_buffer::bindings
