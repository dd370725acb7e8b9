// Owning, 64-byte-aligned, fixed-size byte array: the unit of storage for one column.
//
// Memory is reserved once at construction and never grows. Pages are not touched here: the OS maps
// them lazily on first write, so a large, mostly empty buffer costs only what it holds (prefault()
// maps them all up front instead, for steady latency from the first add). Allocations of 2 MiB and
// more are aligned to 2 MiB and advised for transparent huge pages (fewer TLB misses when sampling
// randomly from gigabytes of columns). map_file() backs the array with a file instead (MAP_SHARED):
// its contents outlive the process, and the page cache, not RAM, bounds its size.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#if defined(__linux__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define REPLAY_BUFFER_HAS_MMAP 1
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

  // An array backed by the file at `path`, created or grown to `bytes` (existing contents are kept).
  static AlignedArray map_file(const std::string& path, std::size_t bytes) {
#if defined(REPLAY_BUFFER_HAS_MMAP)
    AlignedArray array;
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
    struct stat info {};
    if (::fstat(fd, &info) != 0 || (static_cast<std::size_t>(info.st_size) < bytes && ::ftruncate(fd, static_cast<off_t>(bytes)) != 0)) {
      const int error = errno;
      ::close(fd);
      throw std::runtime_error("cannot size " + path + ": " + std::strerror(error));
    }
    void* address = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    const int error = errno;
    ::close(fd);  // the mapping keeps the file open
    if (address == MAP_FAILED) throw std::runtime_error("cannot map " + path + ": " + std::strerror(error));
    array.data_ = static_cast<std::byte*>(address);
    array.bytes_ = bytes;
    array.mapped_ = true;
    return array;
#else
    (void)path;
    (void)bytes;
    throw std::runtime_error("file-backed storage needs mmap, which this platform lacks");
#endif
  }

  AlignedArray(AlignedArray&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)), mapped_(std::exchange(other.mapped_, false)) {}

  AlignedArray& operator=(AlignedArray&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
      mapped_ = std::exchange(other.mapped_, false);
    }
    return *this;
  }

  AlignedArray(const AlignedArray&) = delete;
  AlignedArray& operator=(const AlignedArray&) = delete;
  ~AlignedArray() { release(); }

  std::byte* data() noexcept { return data_; }
  const std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return bytes_; }
  bool file_backed() const noexcept { return mapped_; }

  // Maps every page now, keeping the contents (a file-backed array's data stays as it is).
  void prefault() noexcept {
    if (bytes_ == 0) return;
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
    if (::madvise(data_, bytes_, MADV_POPULATE_WRITE) == 0) return;  // Linux >= 5.14, page-aligned arrays
#endif
    constexpr std::size_t kPage = 4096;
    auto* bytes = reinterpret_cast<volatile unsigned char*>(data_);
    for (std::size_t offset = 0; offset < bytes_; offset += kPage) bytes[offset] = bytes[offset];  // a write fault, same value
    bytes[bytes_ - 1] = bytes[bytes_ - 1];
  }

  // Writes a file-backed array's dirty pages to its file and waits for them (no-op otherwise).
  void sync() const {
#if defined(REPLAY_BUFFER_HAS_MMAP)
    if (mapped_ && ::msync(data_, bytes_, MS_SYNC) != 0) throw std::runtime_error(std::string("msync failed: ") + std::strerror(errno));
#endif
  }

 private:
  void release() noexcept {
    if (data_ == nullptr) return;
#if defined(REPLAY_BUFFER_HAS_MMAP)
    if (mapped_) {
      ::munmap(data_, bytes_);
      data_ = nullptr;
      return;
    }
#endif
    std::free(data_);
    data_ = nullptr;
  }

  std::byte* data_ = nullptr;
  std::size_t bytes_ = 0;
  bool mapped_ = false;
};

}  // namespace replay_buffer::memory
