// NativeReplayBuffer's registration: the pybind11 class, the guard against unconstructed buffers and
// the vectorcall plumbing of add/add_batch (the class itself: native_buffer.hpp).
#include "native_buffer.hpp"

namespace replay_buffer::bindings {

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
      .def("_set_state", &Guarded<&NativeBuffer::set_state>::call)
      .def("_add_stored_batch", &Guarded<&NativeBuffer::add_stored_batch>::call, py::arg("columns"), py::arg("stored"),
           py::arg("priorities") = py::none(), py::arg("streams") = py::none());
  m.def("compress_rows", &compress_rows, py::arg("rows"), py::arg("codec"),
        "compress_rows(rows, codec) -> (lengths, data): each row along the leading axis compressed on its own, as a buffer with "
        "that codec stores it (uint32 lengths, a row's size meaning stored raw; the bytes back to back). GIL released.");
  add_method(cls, &kAddMethod);
  add_method(cls, &kAddBatchMethod);
}

}  // namespace replay_buffer::bindings
