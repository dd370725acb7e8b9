// A large byte array reserved as address space only: no memory is committed until a page is first
// written, and the reservation is not charged against the system's commit limit (MAP_NORESERVE).
//
// For storage whose worst case is far above its usual use (a frame pool sized for episodes of one step
// but filled by episodes of thousands): reserve the worst case, pay for what is touched. Callers keep
// what they touch dense (the frame pool reuses the lowest free slots), so resident memory follows use.
// Huge pages are advised, as for AlignedArray.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>
#include <utility>

#include "replay_buffer/memory/aligned_array.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace replay_buffer::memory {

class ReservedArray {
 public:
  ReservedArray() noexcept = default;

  explicit ReservedArray(std::size_t bytes) : bytes_(round_up(bytes, kHugePageBytes)) {
    if (bytes == 0) {
      bytes_ = 0;
      return;
    }
#if defined(__linux__)
    void* address = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (address == MAP_FAILED) throw std::bad_alloc();
    data_ = static_cast<std::byte*>(address);
#if defined(MADV_HUGEPAGE)
    (void)::madvise(data_, bytes_, MADV_HUGEPAGE);  // advisory; failure is harmless
#endif
#else
    data_ = static_cast<std::byte*>(std::aligned_alloc(kHugePageBytes, bytes_));
    if (data_ == nullptr) throw std::bad_alloc();
#endif
  }

  ReservedArray(ReservedArray&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  ReservedArray& operator=(ReservedArray&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  ReservedArray(const ReservedArray&) = delete;
  ReservedArray& operator=(const ReservedArray&) = delete;
  ~ReservedArray() { release(); }

  std::byte* data() noexcept { return data_; }
  const std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return bytes_; }

 private:
  void release() noexcept {
    if (data_ == nullptr) return;
#if defined(__linux__)
    ::munmap(data_, bytes_);
#else
    std::free(data_);
#endif
    data_ = nullptr;
  }

  std::byte* data_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace replay_buffer::memory
