// Shares the rows of one call between the calling thread and a few helper threads (decompressing a
// sample's rows in parallel).
//
// run(n, fn) calls fn(worker, i) once for every i in [0, n): the caller is worker 0 and claims rows
// itself from a shared atomic counter, so it never waits for a helper that is not running: a helper
// that is asleep or descheduled (a loaded machine) just takes no rows, and run() waits only for rows a
// helper has already claimed. Helpers start at the first run() that can use them; with none to be had
// the caller does every row. Cost per run: one mutex round trip and a wake-up; helpers sleep on a
// condition variable between runs.
//
// Thread roles: run() is called by one thread at a time (the owner serializes it); fn must be safe to
// call from several threads at once for different i (worker indexes are distinct). A throw from fn is
// reported by run() as std::logic_error after every row has been attempted.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

namespace replay_buffer::compression {

class RowPool {
 public:
  explicit RowPool(std::size_t helpers) : helpers_(helpers) {}
  RowPool(const RowPool&) = delete;
  RowPool& operator=(const RowPool&) = delete;
  ~RowPool() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& thread : threads_) thread.join();
  }

  std::size_t workers() const noexcept { return helpers_ + 1; }

  template <class Fn>
  void run(std::size_t n, Fn& fn) {
    if (helpers_ > 0 && threads_.empty()) start();
    if (threads_.empty() || n < 2) {
      for (std::size_t i = 0; i < n; ++i) fn(std::size_t{0}, i);
      return;
    }
    {
      std::lock_guard lock(mutex_);
      call_ = [](void* context, std::size_t worker, std::size_t i) { (*static_cast<Fn*>(context))(worker, i); };
      context_ = &fn;
      n_ = n;
      next_.store(0, std::memory_order_relaxed);
      failed_.store(false, std::memory_order_relaxed);
      open_ = true;
      ++generation_;
    }
    wake_.notify_all();
    work(0);
    {
      std::unique_lock lock(mutex_);
      open_ = false;  // a helper waking from now on takes no part
      idle_.wait(lock, [&] { return active_ == 0; });
    }
    if (failed_.load(std::memory_order_relaxed)) throw std::logic_error("a row failed in a parallel run");
  }

 private:
  void start() {
    try {
      for (std::size_t k = 1; k <= helpers_; ++k) threads_.emplace_back([this, k] { helper(k); });
    } catch (const std::system_error&) {  // no threads to be had: run with those that started
      helpers_ = threads_.size();
    }
  }

  // Claims and runs rows until none is left. n_, call_ and context_ are stable while a worker is in here.
  void work(std::size_t worker) noexcept {
    for (std::size_t i = next_.fetch_add(1, std::memory_order_relaxed); i < n_; i = next_.fetch_add(1, std::memory_order_relaxed)) {
      try {
        call_(context_, worker, i);
      } catch (...) {
        failed_.store(true, std::memory_order_relaxed);
      }
    }
  }

  void helper(std::size_t worker) {
    std::uint64_t seen = 0;
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (!open_) continue;
      ++active_;
      lock.unlock();
      work(worker);
      lock.lock();
      if (--active_ == 0) idle_.notify_all();
    }
  }

  std::size_t helpers_;
  std::vector<std::thread> threads_;
  std::mutex mutex_;  // guards the job description and the fields below
  std::condition_variable wake_, idle_;
  std::uint64_t generation_ = 0;
  bool open_ = false, stop_ = false;
  std::size_t active_ = 0;  // helpers inside work()
  std::size_t n_ = 0;
  void (*call_)(void*, std::size_t, std::size_t) = nullptr;
  void* context_ = nullptr;
  std::atomic<std::size_t> next_{0};
  std::atomic<bool> failed_{false};
};

}  // namespace replay_buffer::compression
