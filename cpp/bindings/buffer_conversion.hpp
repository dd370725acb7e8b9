// Argument conversion and option parsing shared by NativeBuffer's files (buffer_conversion.cpp).
// Every function here throws a TypeError/ValueError naming the argument, and changes nothing.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "replay_buffer/core/buffer_interface.hpp"

namespace replay_buffer::bindings {

namespace py = pybind11;

enum class BufferType { kFifo, kUniform, kPrioritized, kLockFree };

BufferType parse_buffer_type(const std::string& name);
double check_exponent(const char* name, double value);
// Priorities as a float64 vector of `count` finite values >= 0, or a ValueError naming `name`.
std::vector<double> convert_priorities(py::handle value, std::size_t count, const char* name);
py::tuple shape_tuple(const std::vector<py::ssize_t>& shape);
std::int64_t convert_stream(PyObject* value, const char* name);
// streams= of add_batch: one int for every row, or an integer array of one stream id per row.
std::vector<std::int64_t> convert_streams(py::handle value, std::size_t rows);

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

}  // namespace replay_buffer::bindings
