// Per-field compression in the bindings: parsing codec specs (schema's third element, compress=),
// checking which fields can take one, building the compressing engine and reporting its stats.
//
// Codec specs: "lz4"; "zstd" (level 3); "zstd:<level>" or ("zstd", <level>) with level 1..22;
// ("lz4",); None or "none" (no codec). Anything else is a ValueError naming the field and the codecs known.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "replay_buffer/compression/codec_spec.hpp"
#include "replay_buffer/core/buffer_interface.hpp"
#include "schema.hpp"

namespace replay_buffer::bindings {

// One codec spec for `field` (its name, for errors).
compression::Codec parse_codec(py::handle spec, const std::string& field);

// compress=: None, or a mapping field name -> codec spec (names are checked against the schema later).
std::vector<std::pair<std::string, compression::Codec>> parse_compress(py::handle mapping);

// The codec of every field of `schema`: the schema's own, overridden where compress= names the field
// (a field given two different codecs is an error). Throws ValueError for a compress= name that is not
// a field, a field too small to compress, a dedup observation field with a codec (dedup stores those
// frames once already), or any codec on a file-backed buffer. Changes nothing.
std::vector<compression::Codec> resolve_codecs(const Schema& schema, const std::vector<std::pair<std::string, compression::Codec>>& compress,
                                               bool dedup, bool file_backed);

bool any_codec(const std::vector<compression::Codec>& codecs);

using EngineFactory = std::function<std::unique_ptr<core::ReplayBufferInterface>(std::vector<std::size_t> row_bytes)>;

// The compressing decorator over the buffer make_inner builds (from the columns without a codec plus
// an 8-byte sequence column). Throws ValueError in a build without compression.
std::unique_ptr<core::ReplayBufferInterface> make_compressed(std::size_t capacity, const std::vector<std::size_t>& row_bytes,
                                                             const std::vector<compression::Codec>& codecs, const EngineFactory& make_inner);

// stats(): "compression" -> {field: {"codec", "bytes_held", "bytes_raw", "ratio", "rows_stored_raw"}}
// for a compressed engine (nothing otherwise).
void add_compression_stats(py::dict& stats, const core::ReplayBufferInterface& engine, const Schema& schema, std::size_t size);

}  // namespace replay_buffer::bindings
