// Releases the GIL for the scope. pybind11's gil_scoped_release also looks up its internals on every
// use, which costs more than the single-row copies of add(); this is the bare CPython pair.
#pragma once

#include <Python.h>

namespace replay_buffer::bindings {

class ReleaseGil {
 public:
  explicit ReleaseGil(bool release = true) noexcept : state_(release ? PyEval_SaveThread() : nullptr) {}
  ~ReleaseGil() {
    if (state_ != nullptr) PyEval_RestoreThread(state_);
  }
  ReleaseGil(const ReleaseGil&) = delete;
  ReleaseGil& operator=(const ReleaseGil&) = delete;

 private:
  PyThreadState* state_;
};

}  // namespace replay_buffer::bindings
