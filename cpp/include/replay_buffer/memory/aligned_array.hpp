// Owning, 64-byte-aligned, fixed-size byte array: the unit of storage for one column.
//
// Memory is reserved once at construction and never grows. Pages are not touched here: the OS maps
// them lazily on first write, so a large, mostly empty buffer costs only what it holds. Allocations of
// 2 MiB and more are aligned to 2 MiB and advised for transparent huge pages (fewer TLB misses when
// sampling randomly from gigabytes of columns).
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace replay_buffer::memory {

inline constexpr std::size_t kCacheLineBytes = 64;
inline constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;

constexpr std::size_t round_up(std::size_t value, std::size_t multiple) noexcept {
  return (value + multiple - 1) / multiple * multiple;
}

class AlignedArray {
 public:
  AlignedArray() noexcept = default;

  explicit AlignedArray(std::size_t bytes) : bytes_(bytes) {
    if (bytes == 0) return;
    const std::size_t alignment = bytes >= kHugePageBytes ? kHugePageBytes : kCacheLineBytes;
    // aligned_alloc requires the size to be a multiple of the alignment.
    data_ = static_cast<std::byte*>(std::aligned_alloc(alignment, round_up(bytes, alignment)));
    if (data_ == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (alignment == kHugePageBytes) {
      (void)::madvise(data_, round_up(bytes, alignment), MADV_HUGEPAGE);  // advisory; failure is harmless
    }
#endif
  }

  AlignedArray(AlignedArray&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

  AlignedArray& operator=(AlignedArray&& other) noexcept {
    if (this != &other) {
      std::free(data_);
      data_ = std::exchange(other.data_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }

  AlignedArray(const AlignedArray&) = delete;
  AlignedArray& operator=(const AlignedArray&) = delete;
  ~AlignedArray() { std::free(data_); }

  std::byte* data() noexcept { return data_; }
  const std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return bytes_; }

 private:
  std::byte* data_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace replay_buffer::memory
