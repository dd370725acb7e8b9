// Sequence sampling of the Python-facing ring buffers: see sequences.hpp for the contract.
#include "sequences.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include <pybind11/stl.h>

#include "replay_buffer/sampling/sequence_gather.hpp"
#include "gil.hpp"

namespace replay_buffer::bindings {

namespace {

std::size_t elements(const Field& field) {
  std::size_t count = 1;
  for (py::ssize_t extent : field.shape) count *= static_cast<std::size_t>(extent);
  return count;
}

// A nonzero value (of any numeric dtype; -0.0 counts as zero).
bool nonzero(const std::byte* value, char kind, int itemsize) {
  if (kind == 'f' && itemsize == 4) {
    float x;
    std::memcpy(&x, value, 4);
    return x != 0.0f;
  }
  if (kind == 'f' && itemsize == 8) {
    double x;
    std::memcpy(&x, value, 8);
    return x != 0.0;
  }
  for (int b = 0; b < itemsize; ++b) {
    std::byte byte = value[b];
    if (kind == 'f' && b == itemsize - 1) byte &= std::byte{0x7f};  // float16: ignore the sign (little-endian)
    if (byte != std::byte{0}) return true;
  }
  return false;
}

std::string shape_text(const py::array& array) {
  return std::string(py::str(py::tuple(py::cast(std::vector<py::ssize_t>(array.shape(), array.shape() + array.ndim())))));
}

}  // namespace

SequenceSupport::SequenceSupport(std::size_t capacity, const Schema& schema, double eta) : index_(capacity), eta_(eta) {
  for (std::size_t c = 0; c < schema.size(); ++c) {
    const Field& field = schema[c];
    if (elements(field) != 1) continue;
    for (const char* name : kEpisodeEndFields) {
      if (field.name == name) end_columns_.emplace_back(c, static_cast<std::size_t>(field.itemsize));
    }
  }
  kinds_.reserve(end_columns_.size());
  for (const auto& [column, bytes] : end_columns_) kinds_.push_back(schema[column].kind);
}

void SequenceSupport::episode_ends(const std::byte* const* sources, std::size_t count) {
  ends_.assign(count, 0);
  for (std::size_t e = 0; e < end_columns_.size(); ++e) {
    const auto [column, bytes] = end_columns_[e];
    const std::byte* values = sources[column];
    if (bytes == 1) {  // bool, int8, uint8: the common done flag, a loop the compiler vectorizes
      for (std::size_t i = 0; i < count; ++i) ends_[i] |= static_cast<std::uint8_t>(values[i] != std::byte{0});
      continue;
    }
    for (std::size_t i = 0; i < count; ++i) {
      if (nonzero(values + i * bytes, kinds_[e], static_cast<int>(bytes))) ends_[i] = 1;
    }
  }
}

void SequenceSupport::add(const AddRows& add_rows, const std::byte* const* sources, std::size_t count, const double* priorities,
                          const std::int64_t* streams) {
  std::lock_guard lock(mutex_);
  episode_ends(sources, count);
  add_rows(sources, count, priorities, streams);
  index_.record(count, streams, ends_.data());
}

py::dict SequenceSupport::sample(core::ReplayBufferInterface& engine, const Schema& schema, ArrayPool& outputs, bool prioritized,
                                 py::ssize_t batch_size, py::ssize_t seq_len, std::optional<py::ssize_t> min_len,
                                 std::optional<py::ssize_t> period, double beta, bool masses) {
  if (seq_len <= 0) throw py::value_error("seq_len must be > 0, got " + std::to_string(seq_len));
  const py::ssize_t minimum = min_len.value_or(1);
  if (minimum < 1 || minimum > seq_len) {
    throw py::value_error("min_len must be in [1, seq_len=" + std::to_string(seq_len) + "], got " + std::to_string(minimum));
  }
  const py::ssize_t every = period.value_or(1);
  if (every < 1) throw py::value_error("period must be >= 1, got " + std::to_string(every));
  const auto n = static_cast<std::size_t>(batch_size);
  const auto length = static_cast<std::size_t>(seq_len);

  py::dict result;
  std::vector<std::byte*> destinations(schema.size());
  std::vector<std::vector<std::byte>> starts(schema.size());  // the engine's copy of each start row (unused)
  std::vector<std::byte*> start_pointers(schema.size());
  for (std::size_t i = 0; i < schema.size(); ++i) {
    std::vector<py::ssize_t> shape = schema[i].shape;
    shape.insert(shape.begin(), {batch_size, seq_len});
    py::array array = outputs.make(schema[i].dtype, shape);
    destinations[i] = static_cast<std::byte*>(array.mutable_data());
    result[schema[i].key] = array;
    starts[i].resize(n * schema[i].row_bytes);
    start_pointers[i] = starts[i].data();
  }
  py::array_t<bool> mask({batch_size, seq_len});
  py::array_t<std::int64_t> ids(batch_size);
  result["mask"] = mask;
  result["ids"] = ids;
  py::array_t<float> weights;
  py::array_t<double> probabilities, mass_array;
  if (prioritized) {
    weights = py::array_t<float>(batch_size);
    probabilities = py::array_t<double>(batch_size);
    result["weights"] = weights;
    result["probabilities"] = probabilities;
    if (masses) {
      mass_array = py::array_t<double>(batch_size);
      result["masses"] = mass_array;
    }
  }
  bool* mask_out = mask.mutable_data();
  std::int64_t* ids_out = ids.mutable_data();
  float* weights_out = prioritized ? weights.mutable_data() : nullptr;
  double* probabilities_out = prioritized ? probabilities.mutable_data() : nullptr;
  double* masses_out = prioritized && masses ? mass_array.mutable_data() : nullptr;

  std::vector<std::uint64_t> flat(n * length, sampling::kNoRow);
  std::vector<std::int64_t> draw_ids(n);
  std::vector<float> draw_weights(n);
  std::vector<double> draw_probabilities(n), draw_masses(n);
  std::fill(mask_out, mask_out + n * length, false);
  // Starts that fail min_len or period are drawn again: the accepted starts then follow the
  // sampler's distribution restricted to the eligible starts. Bounded, so a buffer without enough
  // eligible starts fails instead of spinning.
  const std::uint64_t max_draws = static_cast<std::uint64_t>(n) * 256 * static_cast<std::uint64_t>(every);
  {
    ReleaseGil release;
    std::lock_guard lock(mutex_);
    std::size_t accepted = 0;
    std::uint64_t draws = 0;
    while (accepted < n) {
      if (draws >= max_draws) {
        throw std::invalid_argument("sample(seq_len=" + std::to_string(seq_len) + ", min_len=" + std::to_string(minimum) + ", period=" +
                                    std::to_string(every) + "): found only " + std::to_string(accepted) + " of " + std::to_string(n) +
                                    " eligible starts in " + std::to_string(draws) + " draws (too few rows start a long enough sequence)");
      }
      const std::size_t need = n - accepted;
      core::SampleRequest request;
      request.batch_size = need;
      request.beta = beta;
      request.ids = draw_ids.data();
      if (prioritized) {
        request.weights = draw_weights.data();
        request.probabilities = draw_probabilities.data();
        request.masses = draw_masses.data();
      }
      engine.sample(request, start_pointers.data());
      draws += need;
      for (std::size_t j = 0; j < need; ++j) index_.prefetch(static_cast<std::uint64_t>(draw_ids[j]));
      for (std::size_t j = 0; j < need; ++j) {
        const auto start = static_cast<std::uint64_t>(draw_ids[j]);
        std::uint64_t* sequence = flat.data() + accepted * length;
        const std::size_t valid = index_.walk(start, length, sequence);
        if (valid < static_cast<std::size_t>(minimum) || index_.step(start) % static_cast<std::uint64_t>(every) != 0) {
          std::fill(sequence, sequence + valid, sampling::kNoRow);
          continue;
        }
        std::fill(mask_out + accepted * length, mask_out + accepted * length + valid, true);
        ids_out[accepted] = draw_ids[j];
        if (prioritized) {
          weights_out[accepted] = draw_weights[j];
          probabilities_out[accepted] = draw_probabilities[j];
          if (masses_out != nullptr) masses_out[accepted] = draw_masses[j];
        }
        ++accepted;
      }
    }
    engine.gather_ids(flat.data(), flat.size(), destinations.data());
  }
  return result;
}

std::vector<double> SequenceSupport::mix(const std::int64_t* ids, std::size_t count, py::handle errors, py::handle mask) {
  auto values = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(errors);
  if (!values) throw py::type_error("priorities must be an array of numbers");
  if (values.ndim() != 2 || static_cast<std::size_t>(values.shape(0)) != count || values.shape(1) < 1) {
    throw py::value_error("priorities: expected shape (" + std::to_string(count) + ",) or (" + std::to_string(count) +
                          ", seq_len), got shape " + shape_text(values));
  }
  const auto length = static_cast<std::size_t>(values.shape(1));
  std::vector<std::uint8_t> valid(count * length, 0);
  if (!mask.is_none()) {
    py::array given = py::array::ensure(mask);
    if (!given || given.dtype().kind() != 'b') throw py::type_error("mask must be a bool array (the \"mask\" of the sample)");
    if (given.ndim() != 2 || static_cast<std::size_t>(given.shape(0)) != count || static_cast<std::size_t>(given.shape(1)) != length) {
      throw py::value_error("mask: expected shape (" + std::to_string(count) + ", " + std::to_string(length) + ") like priorities, got shape " +
                            shape_text(given));
    }
    auto flags = py::array_t<bool, py::array::c_style | py::array::forcecast>::ensure(given);
    for (std::size_t k = 0; k < count * length; ++k) valid[k] = flags.data()[k] ? 1 : 0;
    for (std::size_t i = 0; i < count; ++i) {
      if (std::none_of(valid.begin() + i * length, valid.begin() + (i + 1) * length, [](std::uint8_t v) { return v != 0; })) {
        throw py::value_error("mask[" + std::to_string(i) + "] has no valid step");
      }
    }
  } else {
    std::vector<std::uint64_t> walked(length);
    std::lock_guard lock(mutex_);
    for (std::size_t i = 0; i < count; ++i) {
      const std::size_t steps = ids[i] < 0 ? 0 : index_.walk(static_cast<std::uint64_t>(ids[i]), length, walked.data());
      std::fill(valid.begin() + i * length, valid.begin() + i * length + steps, 1);
    }
  }
  std::vector<double> mixed(count, 0.0);
  const double* data = values.data();
  for (std::size_t i = 0; i < count; ++i) {
    double largest = 0.0, sum = 0.0;
    std::size_t steps = 0;
    for (std::size_t j = 0; j < length; ++j) {
      if (valid[i * length + j] == 0) continue;
      const double e = data[i * length + j];
      if (!std::isfinite(e)) {
        throw py::value_error("priorities[" + std::to_string(i) + ", " + std::to_string(j) + "] = " + std::to_string(e) +
                              ": per-step errors must be finite on the valid steps");
      }
      largest = std::max(largest, std::abs(e));
      sum += std::abs(e);
      ++steps;
    }
    if (steps > 0) mixed[i] = eta_ * largest + (1.0 - eta_) * sum / static_cast<double>(steps);
  }
  return mixed;
}

SequenceSupport::RowsState SequenceSupport::export_rows(std::size_t rows) const {
  std::lock_guard lock(mutex_);
  const std::uint64_t total = index_.total();
  const std::size_t held = static_cast<std::size_t>(total - index_.oldest());
  rows = std::min(rows, held);
  RowsState state;
  state.streams.resize(rows);
  for (std::size_t i = 0; i < rows; ++i) state.streams[i] = index_.stream(total - rows + i);
  return state;
}

void SequenceSupport::import_rows(core::ReplayBufferInterface& engine, const std::byte* const* sources, std::size_t rows,
                                  const std::int64_t* streams, const std::vector<std::size_t>& row_bytes) {
  std::lock_guard lock(mutex_);
  const std::uint64_t total = engine.stats().total_adds;
  index_.reset(total - rows);
  std::vector<std::vector<std::byte>> chunk_columns;
  std::vector<const std::byte*> chunk_sources(row_bytes.size());
  constexpr std::size_t kChunk = 4096;
  for (std::size_t done = 0; done < rows;) {
    const std::size_t count = std::min(kChunk, rows - done);
    if (sources != nullptr) {
      for (std::size_t c = 0; c < row_bytes.size(); ++c) {  // null: a column only held compressed (never an end field)
        chunk_sources[c] = sources[c] == nullptr ? nullptr : sources[c] + done * row_bytes[c];
      }
    } else {  // rows adopted in place (storage_dir): read them back from the engine
      chunk_columns.resize(row_bytes.size());
      std::vector<std::byte*> targets(row_bytes.size());
      for (std::size_t c = 0; c < row_bytes.size(); ++c) {
        chunk_columns[c].resize(count * row_bytes[c]);
        targets[c] = chunk_columns[c].data();
        chunk_sources[c] = chunk_columns[c].data();
      }
      std::vector<std::uint64_t> ids(count);
      for (std::size_t i = 0; i < count; ++i) ids[i] = total - rows + done + i;
      engine.gather_ids(ids.data(), count, targets.data());
    }
    episode_ends(chunk_sources.data(), count);
    if (streams == nullptr) std::fill(ends_.begin(), ends_.end(), 1);  // no streams saved: nothing to link safely
    index_.record(count, streams != nullptr ? streams + done : nullptr, ends_.data());
    done += count;
  }
}

}  // namespace replay_buffer::bindings
