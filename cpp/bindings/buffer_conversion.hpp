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
#include "replay_buffer/core/fifo_buffer.hpp"
#include "replay_buffer/prioritization/prioritized_selector.hpp"

namespace replay_buffer::bindings {

namespace py = pybind11;

enum class BufferType { kFifo, kUniform, kPrioritized, kLockFree };
enum class NextState { kStore, kDedup };  // next_state=: stored as given, or frames shared with state

// The string options, parsed once (in NativeBuffer's constructor) into enums; the names go back out
// in get_state(). One table per option: its accepted names, in the order the error message lists them.
template <typename E>
struct OptionName {
  const char* name;
  E value;
};
constexpr OptionName<prioritization::SamplingMode> kSamplingNames[] = {{"stratified", prioritization::SamplingMode::kStratified},
                                                                      {"proportional", prioritization::SamplingMode::kProportional}};
constexpr OptionName<core::OverflowPolicy> kOnFullNames[] = {{"error", core::OverflowPolicy::kReject},
                                                            {"evict", core::OverflowPolicy::kEvictOldest}};
constexpr OptionName<NextState> kNextStateNames[] = {{"store", NextState::kStore}, {"dedup", NextState::kDedup}};

// The value named `given`, or a ValueError "<field> must be 'a' or 'b', got '<given>'".
template <typename E, std::size_t N>
E parse_option(const char* field, const std::string& given, const OptionName<E> (&names)[N]) {
  std::string expected;
  for (std::size_t i = 0; i < N; ++i) {
    if (given == names[i].name) return names[i].value;
    expected += (i == 0 ? "'" : i + 1 == N ? " or '" : ", '") + std::string(names[i].name) + "'";
  }
  throw py::value_error(std::string(field) + " must be " + expected + ", got '" + given + "'");
}

template <typename E, std::size_t N>
const char* option_name(E value, const OptionName<E> (&names)[N]) {
  for (const auto& entry : names) {
    if (entry.value == value) return entry.name;
  }
  return "?";  // unreachable: every enumerator has a name in its table
}

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
