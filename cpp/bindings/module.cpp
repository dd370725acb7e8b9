// ray_replay._core: the private compiled module under the ray_replay package.
#include <pybind11/pybind11.h>

#include "replay_buffer/core/buffer_interface.hpp"
#include "replay_buffer/version.hpp"

namespace py = pybind11;

namespace replay_buffer::bindings {
void bind_buffer(py::module_& m);
}

PYBIND11_MODULE(_core, m) {
  m.doc() = "Native replay buffers of ray_replay (private: use the ray_replay package)";
  m.attr("__version__") = REPLAY_BUFFER_VERSION_STRING;  // from version.hpp, the one source of the version
  // The codecs this build has: none when built with REPLAY_BUFFER_WITH_COMPRESSION=OFF.
#if REPLAY_BUFFER_WITH_COMPRESSION
  m.attr("CODECS") = py::make_tuple("lz4", "zstd");
#else
  m.attr("CODECS") = py::tuple();
#endif
  py::register_exception<replay_buffer::core::BufferFullError>(m, "BufferFullError", PyExc_RuntimeError);
  replay_buffer::bindings::bind_buffer(m);
}
