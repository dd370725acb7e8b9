// NativeBuffer's configuration: the constructor parses and checks every option once (a throw builds nothing).
#include "native_buffer.hpp"

#include <limits>
#include <random>

namespace replay_buffer::bindings {

NativeBuffer::NativeBuffer(py::ssize_t capacity, const std::string& buffer_type, py::object schema, py::object seed, double alpha, double beta,
             double eps, const std::string& sampling, const std::string& on_full, bool collect_stats, const std::string& next_state,
             std::optional<py::ssize_t> frame_stack_axis, std::optional<std::string> storage_dir, bool prefault, py::object compress,
             double sequence_priority_eta)
    : type_(parse_buffer_type(buffer_type)), type_name_(buffer_type), alpha_(check_exponent("alpha", alpha)),
      beta_(check_exponent("beta", beta)), eps_(check_exponent("eps", eps)), sampling_(parse_option("sampling", sampling, kSamplingNames)),
      on_full_(parse_option("on_full", on_full, kOnFullNames)), collect_stats_(collect_stats),
      next_state_(parse_option("next_state", next_state, kNextStateNames)), frame_stack_axis_(frame_stack_axis), storage_dir_(storage_dir),
      prefault_(prefault), compress_(parse_compress(compress)) {
  if (!(sequence_priority_eta >= 0.0 && sequence_priority_eta <= 1.0)) {
    throw py::value_error("sequence_priority_eta must be in [0, 1], got " + std::to_string(sequence_priority_eta));
  }
  sequence_priority_eta_ = sequence_priority_eta;
  const bool dedup = next_state_ == NextState::kDedup;
  if (storage_dir && dedup) throw py::value_error("storage_dir does not combine with next_state='dedup' (frames live in memory)");
  if (frame_stack_axis && !dedup) {
    throw py::value_error("frame_stack_axis needs next_state='dedup' (frames are shared between state and next_state)");
  }
  if (capacity <= 0) throw py::value_error("capacity must be > 0, got " + std::to_string(capacity));
  capacity_ = static_cast<std::size_t>(capacity);
  if (seed.is_none()) {
    seed_ = (static_cast<std::uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  } else {
    if (!PyIndex_Check(seed.ptr())) throw py::type_error("seed must be an int or None");
    const py::int_ value(seed);
    if (value < py::int_(0) || value > py::int_(std::numeric_limits<std::uint64_t>::max())) {
      throw py::value_error("seed must be in [0, 2**64), got " + std::string(py::str(value)));
    }
    seed_ = value.cast<std::uint64_t>();
  }
  if (!schema.is_none()) create_engine(parse_schema(schema));
}

void NativeBuffer::require_prioritized(const char* what) const {
  if (type_ != BufferType::kPrioritized) {
    throw py::value_error(std::string(what) + " is only supported by buffer_type='prioritized' (this buffer is '" + type_name_ + "')");
  }
}

}  // namespace replay_buffer::bindings
