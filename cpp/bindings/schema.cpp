#include "schema.hpp"

#include "codecs.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>

namespace replay_buffer::bindings {

namespace {

const char* const kTransitionFields[] = {"state", "action", "reward", "next_state", "done"};

// Cached Python objects are held by handles, never by owning py::object statics: those would be
// released by a C++ exit handler after the interpreter is finalized, a crash at exit.
py::handle numpy() {
  static const py::handle module = py::module_::import("numpy").release();
  return module;
}

std::string shape_text(const std::vector<py::ssize_t>& shape) {
  std::ostringstream out;
  out << '(';
  for (std::size_t i = 0; i < shape.size(); ++i) out << shape[i] << (shape.size() == 1 ? "," : (i + 1 < shape.size() ? ", " : ""));
  out << ')';
  return out.str();
}

std::vector<py::ssize_t> shape_of(const py::array& array) {
  return std::vector<py::ssize_t>(array.shape(), array.shape() + array.ndim());
}

bool is_numpy_value(py::handle value) {
  static const py::handle generic = py::object(numpy().attr("generic")).release();
  return py::isinstance<py::array>(value) || py::isinstance(value, generic);
}

// A numpy scalar of exactly the field's type (np.float32 into a float32 field...), copied in place.
bool write_numpy_scalar(const Field& field, py::handle value, std::byte* out) {
  if (Py_TYPE(value.ptr()) != reinterpret_cast<PyTypeObject*>(field.scalar_type.ptr())) return false;
  Py_buffer view;
  if (PyObject_GetBuffer(value.ptr(), &view, PyBUF_SIMPLE) != 0) {
    PyErr_Clear();
    return false;
  }
  const bool fits = static_cast<std::size_t>(view.len) == static_cast<std::size_t>(field.itemsize);
  if (fits) std::memcpy(out, view.buf, static_cast<std::size_t>(field.itemsize));
  PyBuffer_Release(&view);
  return fits;
}

// Python ints, floats and bools written straight into a scalar field: the fast path of add().
bool write_python_scalar(const Field& field, py::handle value, std::byte* out) {
  PyObject* object = value.ptr();
  const bool is_bool = PyBool_Check(object);
  if (!is_bool && !PyLong_Check(object) && !PyFloat_Check(object)) return false;
  if (field.kind == 'f') {
    const double v = PyFloat_Check(object) ? PyFloat_AS_DOUBLE(object) : PyLong_AsDouble(object);
    if (v == -1.0 && PyErr_Occurred()) throw py::error_already_set();
    if (field.itemsize == 4) { const float f = static_cast<float>(v); std::memcpy(out, &f, 4); return true; }
    if (field.itemsize == 8) { std::memcpy(out, &v, 8); return true; }
    return false;  // float16: numpy converts it
  }
  if (PyFloat_Check(object)) {
    throw py::type_error("field '" + field.name + "': expected " + std::string(py::str(field.dtype)) +
                         ", got a float (cannot cast float to " + std::string(py::str(field.dtype)) + " safely)");
  }
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(object, &overflow);
  if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
  if (field.kind == 'b') {
    if (!is_bool && v != 0 && v != 1) {
      throw py::type_error("field '" + field.name + "': expected bool, got the int " + std::to_string(v));
    }
    const std::uint8_t b = v != 0;
    std::memcpy(out, &b, 1);
    return true;
  }
  const auto out_of_range = [&] {
    return py::value_error("field '" + field.name + "': " + std::string(py::str(value)) + " is out of range for " +
                           std::string(py::str(field.dtype)));
  };
  if (overflow != 0) throw out_of_range();
  if (field.kind == 'i') {
    const long long lo = field.itemsize == 8 ? std::numeric_limits<long long>::min() : -(1LL << (8 * field.itemsize - 1));
    const long long hi = field.itemsize == 8 ? std::numeric_limits<long long>::max() : (1LL << (8 * field.itemsize - 1)) - 1;
    if (v < lo || v > hi) throw out_of_range();
    switch (field.itemsize) {
      case 1: { const auto x = static_cast<std::int8_t>(v); std::memcpy(out, &x, 1); return true; }
      case 2: { const auto x = static_cast<std::int16_t>(v); std::memcpy(out, &x, 2); return true; }
      case 4: { const auto x = static_cast<std::int32_t>(v); std::memcpy(out, &x, 4); return true; }
      default: { const auto x = static_cast<std::int64_t>(v); std::memcpy(out, &x, 8); return true; }
    }
  }
  if (field.kind == 'u') {
    if (v < 0 || (field.itemsize < 8 && static_cast<unsigned long long>(v) >> (8 * field.itemsize) != 0)) throw out_of_range();
    switch (field.itemsize) {
      case 1: { const auto x = static_cast<std::uint8_t>(v); std::memcpy(out, &x, 1); return true; }
      case 2: { const auto x = static_cast<std::uint16_t>(v); std::memcpy(out, &x, 2); return true; }
      case 4: { const auto x = static_cast<std::uint32_t>(v); std::memcpy(out, &x, 4); return true; }
      default: { const auto x = static_cast<std::uint64_t>(v); std::memcpy(out, &x, 8); return true; }
    }
  }
  return false;
}

}  // namespace

py::handle interned(const char* text) {
  PyObject* key = PyUnicode_InternFromString(text);
  if (key == nullptr) throw py::error_already_set();
  return key;  // deliberately never released
}

Field Field::make(std::string name, py::dtype dtype, std::vector<py::ssize_t> shape) {
  Field field;
  field.name = std::move(name);
  field.kind = dtype.kind();
  field.itemsize = static_cast<int>(dtype.itemsize());
  if (field.kind != 'b' && field.kind != 'i' && field.kind != 'u' && field.kind != 'f') {
    throw py::type_error("field '" + field.name + "': dtype " + std::string(py::str(dtype)) +
                         " is not supported (expected bool, an integer or a float dtype)");
  }
  std::size_t count = 1;
  for (py::ssize_t extent : shape) {
    if (extent <= 0) throw py::value_error("field '" + field.name + "': every dimension of shape " + bindings::shape_text(shape) + " must be > 0");
    count *= static_cast<std::size_t>(extent);
  }
  // numpy's own descriptor of the type in native byte order: rows can be copied as they are, and
  // arrays of this dtype usually share the very same descriptor object (checked by pointer first).
  field.dtype = py::dtype(dtype.num());
  field.scalar_type = py::object(field.dtype.attr("type")).ptr();  // a builtin numpy type: the handle stays valid
  PyObject* key = PyUnicode_FromStringAndSize(field.name.data(), static_cast<Py_ssize_t>(field.name.size()));
  if (key == nullptr) throw py::error_already_set();
  PyUnicode_InternInPlace(&key);
  field.key = py::reinterpret_steal<py::str>(key);
  field.shape = std::move(shape);
  field.row_bytes = count * static_cast<std::size_t>(field.itemsize);
  return field;
}

std::string Field::shape_text() const { return bindings::shape_text(shape); }

std::vector<std::string> default_names(std::size_t count) {
  if (count > 5) {
    throw py::value_error("got " + std::to_string(count) +
                          " positional values but a transition has 5 fields (state, action, reward, next_state, done); "
                          "pass schema= for other fields");
  }
  return std::vector<std::string>(kTransitionFields, kTransitionFields + count);
}

Schema infer_schema(const std::vector<std::string>& names, const std::vector<py::handle>& values, bool batched) {
  Schema schema;
  for (std::size_t i = 0; i < names.size(); ++i) {
    py::array array = numpy().attr("asarray")(values[i]);
    py::dtype dtype = array.dtype();
    if (!is_numpy_value(values[i])) {
      // Python floats become float32 and ints int64, the dtypes RL networks train on.
      if (dtype.kind() == 'f') dtype = py::dtype("float32");
      if (dtype.kind() == 'i') dtype = py::dtype("int64");
    }
    auto shape = shape_of(array);
    if (batched) {
      if (shape.empty()) throw py::value_error("field '" + names[i] + "': add_batch expects arrays with a leading batch axis, got a scalar");
      shape.erase(shape.begin());
    }
    schema.push_back(Field::make(names[i], dtype, std::move(shape)));
  }
  return schema;
}

Schema parse_schema(const py::handle& mapping) {
  if (!py::isinstance<py::dict>(mapping) && !py::hasattr(mapping, "items")) {
    throw py::type_error("schema must be a mapping of field name -> (shape, dtype) or (shape, dtype, codec)");
  }
  Schema schema;
  for (auto item : mapping.attr("items")()) {
    auto pair = item.cast<py::tuple>();
    const auto name = pair[0].cast<std::string>();
    py::sequence spec = pair[1].cast<py::sequence>();
    if (py::len(spec) != 2 && py::len(spec) != 3) throw py::value_error("schema field '" + name + "': expected (shape, dtype) or (shape, dtype, codec)");
    std::vector<py::ssize_t> shape;
    if (py::isinstance<py::int_>(spec[0])) {
      shape.push_back(spec[0].cast<py::ssize_t>());
    } else {
      for (auto extent : spec[0].cast<py::sequence>()) shape.push_back(extent.cast<py::ssize_t>());
    }
    for (const Field& existing : schema) {
      if (existing.name == name) throw py::value_error("schema names field '" + name + "' twice");
    }
    schema.push_back(Field::make(name, py::dtype::from_args(spec[1]), std::move(shape)));
    if (py::len(spec) == 3) schema.back().codec = parse_codec(spec[2], name);
  }
  if (schema.empty()) throw py::value_error("schema must name at least one field");
  return schema;
}

std::size_t convert_value(const Field& field, py::handle value, bool batched, Columns& columns, std::size_t field_index) {
  if (value.is_none()) throw py::type_error("field '" + field.name + "': got None");
  // Fast path: a C-contiguous array of the exact dtype is used in place.
  if (py::isinstance<py::array>(value)) {
    auto array = py::reinterpret_borrow<py::array>(value);
    const py::ssize_t offset = batched ? 1 : 0;
    PyObject* descriptor = reinterpret_cast<PyObject*>(py::detail::array_proxy(array.ptr())->descr);
    if ((descriptor == field.dtype.ptr() || array.dtype().equal(field.dtype)) && (array.flags() & py::array::c_style) &&
        array.ndim() == static_cast<py::ssize_t>(field.shape.size()) + offset &&
        std::equal(field.shape.begin(), field.shape.end(), array.shape() + offset)) {
      columns.pointers()[field_index] = static_cast<const std::byte*>(array.data());
      return batched ? static_cast<std::size_t>(array.shape(0)) : 1;
    }
  } else if (!batched && field.shape.empty() &&
             (write_python_scalar(field, value, columns.scalar_slot(field_index)) ||
              write_numpy_scalar(field, value, columns.scalar_slot(field_index)))) {
    columns.pointers()[field_index] = columns.scalar_slot(field_index);
    return 1;
  }
  // General path: let numpy convert, then check kind and shape before accepting.
  py::array array;
  try {
    array = numpy().attr("asarray")(value);
  } catch (py::error_already_set& error) {
    throw py::type_error("field '" + field.name + "': cannot convert the value to an array (" + error.what() + ")");
  }
  const bool from_python = !is_numpy_value(value);
  if (!array.dtype().equal(field.dtype)) {
    const bool castable = numpy().attr("can_cast")(array.dtype(), field.dtype, "same_kind").cast<bool>() ||
                          (from_python && field.kind != 'b' && array.dtype().kind() == 'i' && field.kind != 'f');
    if (!castable) {
      throw py::type_error("field '" + field.name + "': expected dtype " + std::string(py::str(field.dtype)) + ", got " +
                           std::string(py::str(array.dtype())) + " (cannot cast safely)");
    }
  }
  const auto shape = shape_of(array);
  std::vector<py::ssize_t> expected = field.shape;
  if (batched) {
    if (shape.empty()) throw py::value_error("field '" + field.name + "': add_batch expects a leading batch axis, got a scalar");
    expected.insert(expected.begin(), shape[0]);
  }
  if (shape != expected) {
    std::string wanted = field.shape_text();
    if (batched) {
      wanted = "(batch";
      for (py::ssize_t extent : field.shape) wanted += ", " + std::to_string(extent);
      wanted += field.shape.empty() ? ",)" : ")";
    }
    throw py::value_error("field '" + field.name + "': expected shape " + wanted + ", got " + shape_text(shape));
  }
  if (from_python && array.dtype().kind() == 'i' && (field.kind == 'i' || field.kind == 'u')) {
    // Values from Python lists must fit the field's integer type.
    py::object info = numpy().attr("iinfo")(field.dtype);
    if (array.size() > 0 && (py::int_(array.attr("min")()) < info.attr("min") || py::int_(array.attr("max")()) > info.attr("max"))) {
      throw py::value_error("field '" + field.name + "': values out of range for " + std::string(py::str(field.dtype)));
    }
  }
  py::array converted = numpy().attr("ascontiguousarray")(array, field.dtype);
  columns.pointers()[field_index] = static_cast<const std::byte*>(converted.data());
  columns.keep_alive(converted);
  return batched ? static_cast<std::size_t>(shape[0]) : 1;
}

namespace {

bool same_name(PyObject* a, PyObject* b) { return a == b || PyUnicode_Compare(a, b) == 0; }

}  // namespace

bool OptionKeywords::take(PyObject* name, PyObject* value) {
  for (std::size_t i = 0; i < kCount; ++i) {
    if (keys[i] && same_name(name, keys[i].ptr())) {
      values[i] = value;
      return true;
    }
  }
  return false;
}

void match_fields(const Schema& schema, const CallArguments& call, OptionKeywords& options, PyObject** values) {
  const auto fields = static_cast<Py_ssize_t>(schema.size());
  if (call.nargs > fields) {
    throw py::value_error("got " + std::to_string(call.nargs) + " positional values but the buffer has " + std::to_string(fields) + " fields");
  }
  for (Py_ssize_t i = 0; i < fields; ++i) values[i] = i < call.nargs ? call.args[i] : nullptr;
  for (Py_ssize_t k = 0; k < call.num_keywords(); ++k) {
    PyObject* name = call.keyword_name(k);
    if (options.take(name, call.keyword_value(k))) continue;
    Py_ssize_t index = 0;
    while (index < fields && !same_name(name, schema[index].key.ptr())) ++index;
    if (index == fields) {
      std::string known;
      for (const Field& field : schema) known += (known.empty() ? "" : ", ") + field.name;
      throw py::value_error("unknown field '" + py::reinterpret_borrow<py::str>(name).cast<std::string>() +
                            "' (the buffer's fields are: " + known + ")");
    }
    if (values[index] != nullptr) throw py::type_error("field '" + schema[index].name + "' given twice");
    values[index] = call.keyword_value(k);
  }
  for (Py_ssize_t i = 0; i < fields; ++i) {
    if (values[i] == nullptr) throw py::value_error("missing field '" + schema[i].name + "'");
  }
}

void names_and_values(const CallArguments& call, OptionKeywords& options, std::vector<std::string>& names,
                      std::vector<py::handle>& values) {
  names = default_names(static_cast<std::size_t>(call.nargs));
  values.assign(call.args, call.args + call.nargs);
  for (Py_ssize_t k = 0; k < call.num_keywords(); ++k) {
    PyObject* name = call.keyword_name(k);
    if (options.take(name, call.keyword_value(k))) continue;
    names.push_back(py::reinterpret_borrow<py::str>(name).cast<std::string>());
    for (std::size_t i = 0; i + 1 < names.size(); ++i) {
      if (names[i] == names.back()) throw py::type_error("field '" + names.back() + "' given twice");
    }
    values.push_back(call.keyword_value(k));
  }
  if (names.empty()) throw py::value_error("no fields given: pass state, action, reward, next_state, done (or schema= fields)");
}

}  // namespace replay_buffer::bindings
